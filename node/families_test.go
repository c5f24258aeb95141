package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/node/api"
)

// A relay holds a family to [relay] family_max_mb: past it the relay takes
// none of the family's new entries and says so, while the site keeps them;
// with the limit raised (a restart with the new setting) it takes them all.
func TestRelayFamilyStorageLimit(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.startWith("relay", func(c *Config) { c.Relay.MaxMB = 1 })
	tf.start("clinic-a")
	site := tf.nodes["clinic-a"].r
	blob := strings.Repeat("x", 60_000)
	for i := range 40 { // about 2.4 MB
		body := fmt.Sprintf(`{"ops":[{"op":"put","table":"scans","key":"s-%d","fields":{"image":%q}}]}`, i, blob)
		var tx api.TxResult
		if code := site.call(t, "POST", "/v1/transactions", body, &tx); code != 200 {
			t.Fatalf("write %d: %d", i, code)
		}
	}
	head := site.n.txlog.Head("clinic-a").Seq
	relay := tf.nodes["relay"].r.n
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := relay.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		warned := false
		for _, w := range st.Warnings {
			warned = warned || strings.Contains(w, "over its storage limit")
		}
		if warned && relay.txlog.Frontier()["clinic-a"] < head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay holds %d of %d entries and warns %q", relay.txlog.Frontier()["clinic-a"], head, st.Warnings)
		}
		time.Sleep(20 * time.Millisecond)
	}
	held := relay.txlog.Frontier()["clinic-a"]
	if held == 0 {
		t.Fatal("the relay took nothing of the family below its limit")
	}
	fs, err := relay.Families(context.Background())
	if err != nil || len(fs) != 1 || !fs[0].OverStorage || fs[0].BytesStored < 1<<20 {
		t.Fatalf("families: %+v, %v", fs, err)
	}
	// The site keeps every entry; the relay takes them once allowed.
	listen := tf.relay[:strings.Index(tf.relay, "/p2p/")] // the same address: the site dials it again
	tf.stop("relay")
	tf.startWith("relay", func(c *Config) { c.Relay.MaxMB, c.Listen = 0, []string{listen} })
	deadline = time.Now().Add(30 * time.Second)
	for tf.nodes["relay"].r.n.txlog.Frontier()["clinic-a"] < head {
		if time.Now().After(deadline) {
			t.Fatalf("with no limit the relay holds %d of %d entries", tf.nodes["relay"].r.n.txlog.Frontier()["clinic-a"], head)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the relay held %d of %d entries at its 1 MB limit, all after it was lifted", held, head)
}

// A stopped relay joins a second family (relay join, admit, install while
// stopped), serves it at its next start beside its first, in its own key
// space, and removing the family (stopped again) erases it: directory,
// join request and every key of its space.
func TestRelayJoinsAndRemovesAFamilyWhileStopped(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	relayDir := tf.nodes["relay"].data
	if cfg, err := LoadConfig(relayDir); err != nil || cfg.Memory() != DefaultRelayMemoryLimit {
		t.Fatalf("init --role relay wrote memory_limit %d (%v), want %d", cfg.Memory(), err, DefaultRelayMemoryLimit)
	}

	otherDir := t.TempDir()
	other, info, err := family.CreateFamily(otherDir, "Other Practice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	res, err := RelayJoin(relayDir, filepath.Join(otherDir, family.InfoFile), "", tf.getenv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FamilyID != info.FamilyID || filepath.Base(res.JoinRequest) != "join-request-"+info.FamilyID+".json" {
		t.Fatalf("join: %+v", res)
	}
	raw, err := os.ReadFile(res.JoinRequest)
	if err != nil {
		t.Fatal(err)
	}
	req, err := family.ParseJoinRequest(raw)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := other.Admit(otherDir, req, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := cert.Marshal()
	if _, err := InstallAt(relayDir, cb); err != nil {
		t.Fatalf("install while stopped: %v", err)
	}
	// A certificate of a family the relay did not join is refused, saying
	// what to do.
	unjoinedDir := t.TempDir()
	unjoined, uinfo, err := family.CreateFamily(unjoinedDir, "Unjoined", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ureq, err := family.NewJoinRequest(uinfo, "relay", family.RoleRelay, req.PublicKey, req.MachineFingerprint, req.DatabaseID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ucert, err := unjoined.Admit(unjoinedDir, ureq, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ub, _ := ucert.Marshal()
	if _, err := InstallAt(relayDir, ub); err == nil || !strings.Contains(err.Error(), "ppsync relay join") {
		t.Errorf("install of an unjoined family's certificate: %v", err)
	}
	if _, err := RelayJoin(relayDir, filepath.Join(otherDir, family.InfoFile), "", tf.getenv, nil); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Errorf("joining a family it serves again: %v", err)
	}

	r := tf.start("relay")
	fs, err := r.n.Families(context.Background())
	if err != nil || len(fs) != 2 || fs[1].FamilyID != info.FamilyID || fs[1].State != "serving" || fs[1].Site != "relay" {
		t.Fatalf("families after a start: %+v, %v", fs, err)
	}
	m := r.n.family(info.FamilyID)
	if m == nil || m.mesh.Host() != r.n.mesh.Host() || !m.mesh.Host().Listening() {
		t.Fatal("the second family is not served on the relay's host")
	}
	first := r.n.id.FamilyID
	tf.stop("relay")

	space, err := store.FamilySpace(info.FamilyID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RemoveFamilyOffline(relayDir, first); err == nil {
		t.Error("the relay's first family was removed")
	}
	if _, err := RemoveFamilyOffline(relayDir, info.FamilyID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(relayDir, FamiliesDir, info.FamilyID), res.JoinRequest} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after remove-family (%v)", p, err)
		}
	}
	db, err := store.Open(filepath.Join(relayDir, DBDir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: space, UpperBound: store.PrefixEnd(space)})
	if err != nil {
		t.Fatal(err)
	}
	if it.First() {
		t.Errorf("the removed family's key space still holds %x", it.Key())
	}
	_ = it.Close()
}
