package main

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/family"
)

// joinRequest writes a join request for site into dir, as `ppsync init`
// would, and returns its path and the node's peer ID.
func joinRequest(t *testing.T, familyJSON, site, role, name string) (string, string) {
	t.Helper()
	info, err := family.LoadInfo(familyJSON)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	req, err := family.NewJoinRequest(info, site, family.Role(role), pub, "fp-"+site, "db-"+name, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	data, err := req.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "join-request.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, req.PeerID.String()
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestFamilyFlow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "authority")
	out := t.TempDir()

	r := ppsync(t, "", nil, "family", "create", "--dir", dir, "--name", "Smile Dental")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, `Created family "Smile Dental"`) {
		t.Errorf("create printed %q", r.stdout)
	}
	if m := mode(t, filepath.Join(dir, "authority.key")); m != 0o600 {
		t.Errorf("authority.key mode %o, want 600", m)
	}
	familyJSON := filepath.Join(dir, "family.json")
	if m := mode(t, familyJSON); m != 0o644 {
		t.Errorf("family.json mode %o, want 644", m)
	}
	// A second create in the same directory is refused.
	ppsync(t, "", nil, "family", "create", "--dir", dir, "--name", "Other").want(t, exitError, "already exists")

	// Bootstrap addresses: a relay address is added once; a bad one refused.
	relayReq, relayPeer := joinRequest(t, familyJSON, "relay", "relay", "relay")
	addr := "/ip4/203.0.113.7/tcp/4001/p2p/" + relayPeer
	ppsync(t, "", nil, "family", "bootstrap", "--dir", dir, "--add", addr).want(t, exitOK)
	r = ppsync(t, "", nil, "family", "bootstrap", "--dir", dir, "--add", addr, "--json")
	r.want(t, exitOK)
	var fr familyResult
	if err := json.Unmarshal([]byte(r.stdout), &fr); err != nil || len(fr.Bootstrap) != 1 || fr.Bootstrap[0] != addr {
		t.Errorf("bootstrap --json: %q (%v)", r.stdout, err)
	}
	ppsync(t, "", nil, "family", "bootstrap", "--dir", dir, "--add", "/ip4/203.0.113.7/tcp/4001").want(t, exitError, "/p2p/PEER_ID")

	// Admit the relay and a clinic.
	relayCert := filepath.Join(out, "relay.cert")
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", relayReq, "--out", relayCert).want(t, exitOK)
	reqA, _ := joinRequest(t, familyJSON, "clinic-a", "site", "a1")
	certA := filepath.Join(out, "clinic-a.cert")
	r = ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", reqA, "--out", certA, "--json")
	r.want(t, exitOK)
	if err := json.Unmarshal([]byte(r.stdout), &fr); err != nil || fr.Site != "clinic-a" || fr.Epoch != 1 || fr.Out != certA {
		t.Errorf("admit --json: %q (%v)", r.stdout, err)
	}
	if m := mode(t, certA); m != 0o644 {
		t.Errorf("certificate mode %o, want 644", m)
	}
	data, err := os.ReadFile(certA)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := family.ParseCertificate(data)
	if err != nil || cert.Site != "clinic-a" || cert.Epoch != 1 {
		t.Fatalf("certificate: %+v, %v", cert, err)
	}
	info, err := family.LoadInfo(familyJSON)
	if err != nil || cert.Verify(info) != nil {
		t.Fatalf("certificate does not verify: %v", err)
	}

	// Admitting the same site again is refused, even from a new request.
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", reqA, "--out", certA).want(t, exitError, "already has a site", "family move")
	reqA2, _ := joinRequest(t, familyJSON, "clinic-a", "site", "a2")
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", reqA2, "--out", filepath.Join(out, "x")).want(t, exitError, "already has a site")

	// Moving it issues epoch 2; moving an unknown site is refused.
	certA2 := filepath.Join(out, "clinic-a-2.cert")
	r = ppsync(t, "", nil, "family", "move", "--dir", dir, "--request", reqA2, "--out", certA2)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "epoch 2") {
		t.Errorf("move printed %q", r.stdout)
	}
	reqB, _ := joinRequest(t, familyJSON, "clinic-b", "site", "b")
	ppsync(t, "", nil, "family", "move", "--dir", dir, "--request", reqB, "--out", filepath.Join(out, "b")).want(t, exitError, "no site \"clinic-b\"")

	// Revoke.
	revFile := filepath.Join(out, "clinic-a.revoked")
	r = ppsync(t, "", nil, "family", "revoke", "--dir", dir, "--site", "clinic-a", "--out", revFile, "--reason", "stolen laptop", "--json")
	r.want(t, exitOK)
	if err := json.Unmarshal([]byte(r.stdout), &fr); err != nil || fr.Epoch != 2 {
		t.Errorf("revoke --json: %q (%v)", r.stdout, err)
	}
	if m := mode(t, revFile); m != 0o644 {
		t.Errorf("revocation mode %o, want 644", m)
	}
	ppsync(t, "", nil, "family", "revoke", "--dir", dir, "--site", "clinic-z", "--out", filepath.Join(out, "z")).want(t, exitError, "no site \"clinic-z\"")

	// A request of another family is refused.
	other := filepath.Join(t.TempDir(), "other")
	ppsync(t, "", nil, "family", "create", "--dir", other, "--name", "Other").want(t, exitOK)
	reqOther, _ := joinRequest(t, filepath.Join(other, "family.json"), "clinic-c", "site", "c")
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", reqOther, "--out", filepath.Join(out, "c")).want(t, exitError, "this join request is for family")
	if _, err := os.Stat(filepath.Join(out, "c")); !os.IsNotExist(err) {
		t.Error("a refused admit wrote its --out file")
	}

	// Not an authority directory, not a join request.
	ppsync(t, "", nil, "family", "admit", "--dir", out, "--request", reqB, "--out", filepath.Join(out, "d")).want(t, exitError)
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", certA, "--out", filepath.Join(out, "d")).want(t, exitError, "certificate")
	ppsync(t, "", nil, "family", "admit", "--dir", dir, "--request", filepath.Join(out, "none"), "--out", filepath.Join(out, "d")).want(t, exitError, "cannot read")
}
