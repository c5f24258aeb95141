package family

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAdmitMoveRevokeFlow(t *testing.T) {
	auth, info, dir := testFamily(t)
	roster := testRoster(t, info)
	add := func(c *Certificate) {
		t.Helper()
		if _, err := roster.Add(c); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}

	reqA := testRequest(t, info, "clinic-a", RoleSite)
	a1, err := auth.Admit(dir, reqA, t0)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if a1.Epoch != 1 || a1.Site != "clinic-a" || a1.PeerID != reqA.PeerID || a1.Role != RoleSite ||
		a1.MachineFingerprint != reqA.MachineFingerprint || a1.DatabaseID != reqA.DatabaseID || !a1.RequestedAt.Equal(reqA.CreatedAt) {
		t.Fatalf("certificate does not carry the request: %+v", a1)
	}
	add(a1)
	relay, err := auth.Admit(dir, testRequest(t, info, "relay", RoleRelay), t0)
	if err != nil {
		t.Fatalf("Admit relay: %v", err)
	}
	add(relay)
	if a1.Slot != 1 || relay.Slot != 2 {
		t.Fatalf("slots %d and %d, want 1 and 2 (one per site, in admission order)", a1.Slot, relay.Slot)
	}

	// The certificate file round-trips and verifies.
	data := mustMarshal(t, a1)
	parsed, err := ParseCertificate(data)
	if err != nil || !parsed.Equal(a1) {
		t.Fatalf("ParseCertificate: %v", err)
	}

	// Move clinic-a to a new machine: epoch 2 supersedes epoch 1.
	reqA2 := testRequest(t, info, "clinic-a", RoleSite)
	a2, err := auth.Move(dir, reqA2, t0.Add(time.Hour))
	if err != nil {
		t.Fatalf("Move: %v", err)
	}
	if a2.Epoch != 2 || a2.PeerID != reqA2.PeerID || a2.Slot != a1.Slot {
		t.Fatalf("moved certificate: epoch %d peer %s slot %d (want the site's slot %d)", a2.Epoch, a2.PeerID, a2.Slot, a1.Slot)
	}
	add(a2)
	wantErr(t, roster.Check(a1), ErrSuperseded, "superseded by epoch 2")
	wantErr(t, roster.Check(a2), nil)

	// Move with the same node (a fingerprint change on the same machine) works too.
	a3, err := auth.Move(dir, reqA2, t0.Add(2*time.Hour))
	if err != nil || a3.Epoch != 3 {
		t.Fatalf("Move again: epoch %v, %v", a3, err)
	}
	add(a3)

	// Revoke: the revocation's epoch is the newest issued.
	rev, err := auth.Revoke(dir, "clinic-a", "machine retired", t0.Add(3*time.Hour))
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if rev.Epoch != 3 || rev.Reason != "machine retired" {
		t.Fatalf("revocation %+v", rev)
	}
	if _, err := roster.AddRevocation(rev); err != nil {
		t.Fatal(err)
	}
	wantErr(t, roster.Check(a3), ErrRevoked, "machine retired")

	// Revoking again returns the recorded revocation.
	again, err := auth.Revoke(dir, "clinic-a", "other words", t0.Add(4*time.Hour))
	if err != nil || !again.Equal(rev) {
		t.Fatalf("second Revoke: %v (equal %v)", err, again != nil && again.Equal(rev))
	}

	// A revoked site can be re-homed with move, past the revoked epoch.
	a4, err := auth.Move(dir, testRequest(t, info, "clinic-a", RoleSite), t0.Add(5*time.Hour))
	if err != nil || a4.Epoch != 4 {
		t.Fatalf("Move after revoke: %v, %v", a4, err)
	}
	add(a4)
	if m, ok := roster.Site("clinic-a"); !ok || m.Epoch != 4 {
		t.Fatalf("Site = %+v, %v", m, ok)
	}

	// The registry lists the newest certificate per site, and revocations.
	certs, revs, err := auth.Issued(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || certs[0].Site != "clinic-a" || certs[0].Epoch != 4 || certs[1].Site != "relay" || len(revs) != 1 || !revs[0].Equal(rev) {
		t.Fatalf("Issued = %d certs, %d revocations", len(certs), len(revs))
	}
	for _, name := range []string{"issued/clinic-a.json", "issued/relay.json", "revoked/clinic-a.json"} {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name))); err != nil {
			t.Errorf("registry file: %v", err)
		}
	}

	// A freshly loaded authority sees the same registry.
	auth2, _, err := LoadAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = auth2.Admit(dir, testRequest(t, info, "relay", RoleRelay), t0)
	wantErr(t, err, ErrSiteExists, "relay")
}

func TestRegistryRefusals(t *testing.T) {
	auth, info, dir := testFamily(t)
	_, otherInfo, _ := testFamily(t)
	reqA := testRequest(t, info, "clinic-a", RoleSite)
	if _, err := auth.Admit(dir, reqA, t0); err != nil {
		t.Fatal(err)
	}
	badReq := testRequest(t, info, "clinic-z", RoleSite)
	badReq.MachineFingerprint = ""

	tests := []struct {
		name      string
		op        func() error
		target    error
		fragments []string
	}{
		{"admit existing site", func() error {
			_, err := auth.Admit(dir, testRequest(t, info, "clinic-a", RoleSite), t0)
			return err
		}, ErrSiteExists, []string{`"clinic-a"`, "ppsync family move"}},
		{"admit request of another family", func() error {
			_, err := auth.Admit(dir, testRequest(t, otherInfo, "clinic-b", RoleSite), t0)
			return err
		}, ErrWrongFamily, []string{"this join request is for family " + otherInfo.FamilyID + ", not " + info.FamilyID}},
		{"move request of another family", func() error {
			_, err := auth.Move(dir, testRequest(t, otherInfo, "clinic-a", RoleSite), t0)
			return err
		}, ErrWrongFamily, []string{"this join request is for family"}},
		{"admit peer of another site", func() error {
			req := *reqA
			req.Site = "clinic-b"
			_, err := auth.Admit(dir, &req, t0)
			return err
		}, ErrConflict, []string{"already serves site \"clinic-a\""}},
		{"admit invalid request", func() error {
			_, err := auth.Admit(dir, badReq, t0)
			return err
		}, ErrFormat, []string{"machine_fingerprint"}},
		{"admit nil request", func() error {
			_, err := auth.Admit(dir, nil, t0)
			return err
		}, ErrFormat, nil},
		{"move unknown site", func() error {
			_, err := auth.Move(dir, testRequest(t, info, "clinic-b", RoleSite), t0)
			return err
		}, ErrUnknownSite, []string{`"clinic-b"`, "ppsync family admit"}},
		{"move with another role", func() error {
			_, err := auth.Move(dir, testRequest(t, info, "clinic-a", RoleRelay), t0)
			return err
		}, ErrConflict, []string{"--role site"}},
		{"revoke unknown site", func() error {
			_, err := auth.Revoke(dir, "clinic-b", "", t0)
			return err
		}, ErrUnknownSite, []string{`"clinic-b"`}},
		{"revoke path traversal", func() error {
			_, err := auth.Revoke(dir, "../issued/clinic-a", "", t0)
			return err
		}, ErrFormat, []string{"site ID"}},
		{"revoke reason with control characters", func() error {
			_, err := auth.Revoke(dir, "clinic-a", "a\x00b", t0)
			return err
		}, ErrFormat, []string{"reason"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, tt.op(), tt.target, tt.fragments...)
		})
	}

	// None of the refusals changed the registry.
	certs, revs, err := auth.Issued(dir)
	if err != nil || len(certs) != 1 || certs[0].Epoch != 1 || len(revs) != 0 {
		t.Fatalf("registry changed: %d certs, %d revocations, %v", len(certs), len(revs), err)
	}
}

func TestRegistryDetectsTampering(t *testing.T) {
	auth, info, dir := testFamily(t)
	if _, err := auth.Admit(dir, testRequest(t, info, "clinic-a", RoleSite), t0); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, issuedDir, "clinic-a.json")
	data, _ := os.ReadFile(path)
	os.WriteFile(path, editJSON(t, data, func(m map[string]any) { m["epoch"] = 7 }), 0o644)
	_, err := auth.Move(dir, testRequest(t, info, "clinic-a", RoleSite), t0)
	wantErr(t, err, ErrBadSignature, path)

	// A valid certificate of another site under this name is refused too.
	other, err := auth.issue(testRequest(t, info, "clinic-b", RoleSite), 1, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, mustMarshal(t, other), 0o644)
	_, err = auth.Revoke(dir, "clinic-a", "", t0)
	wantErr(t, err, ErrConflict, `holds site "clinic-b"`)
}
