package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/node/api"
)

// joinFamily has a running relay join one more family, as its support
// would: `ppsync relay join`, the family's admission, `ppsync install` at
// the running relay. It returns the family's authority, as a testFamily
// whose relay is this one.
func (tf *testFamily) joinFamily(relay *running, name string) *testFamily {
	tf.t.Helper()
	other := &testFamily{t: tf.t, authDir: tf.t.TempDir(), env: tf.env, nodes: map[string]*famNode{}, relay: tf.relay}
	var err error
	var info *family.Info
	if other.auth, info, err = family.CreateFamily(other.authDir, name, time.Now()); err != nil {
		tf.t.Fatal(err)
	}
	res, err := RelayJoin(tf.nodes["relay"].data, filepath.Join(other.authDir, family.InfoFile), "", tf.getenv, nil)
	if err != nil {
		tf.t.Fatal(err)
	}
	raw, err := os.ReadFile(res.JoinRequest)
	if err != nil {
		tf.t.Fatal(err)
	}
	req, err := family.ParseJoinRequest(raw)
	if err != nil {
		tf.t.Fatal(err)
	}
	cert, err := other.auth.Admit(other.authDir, req, time.Now())
	if err != nil {
		tf.t.Fatal(err)
	}
	cb, _ := cert.Marshal()
	if _, err := relay.n.Install(context.Background(), cb); err != nil {
		tf.t.Fatal(err)
	}
	if relay.n.family(info.FamilyID) == nil {
		tf.t.Fatalf("the relay does not serve family %s after the install", name)
	}
	other.nodes["relay"] = &famNode{site: "relay", data: filepath.Join(tf.nodes["relay"].data, FamiliesDir, info.FamilyID), r: relay}
	return other
}

// settledGoroutines is the process's goroutine count once the goroutines
// of closed connections and finished work have ended: the lowest of a few
// looks.
func settledGoroutines() int {
	low := runtime.NumGoroutine()
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		low = min(low, runtime.NumGoroutine())
	}
	return low
}

// waitGoroutines polls until at most max goroutines run, or fails.
func waitGoroutines(t *testing.T, max int, d time.Duration, what string) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := settledGoroutines()
		if n <= max {
			return n
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
			t.Fatalf("%s: %d goroutines after %s, want at most %d", what, n, d, max)
		}
	}
}

// A relay's family with no connected member costs no goroutine: a relay
// serving 40 more families runs no more goroutines than with its first
// alone. A member that connects wakes its family (it syncs through the
// relay); once it has left the family sleeps again, its goroutines end, and
// its alert monitor still tells on time that the site stopped syncing.
func TestRelayIdleFamiliesCostNoGoroutines(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	relay := tf.startWith("relay", func(c *Config) { c.SleepAfter = 300 * time.Millisecond })
	const slack = 12 // API connections and libp2p's housekeeping come and go
	base := settledGoroutines()

	const n = 40
	fams := make([]*testFamily, n)
	for i := range fams {
		fams[i] = tf.joinFamily(relay, fmt.Sprintf("Practice %d", i))
	}
	idle := waitGoroutines(t, base+slack, 20*time.Second, fmt.Sprintf("%d more idle families", n))
	t.Logf("goroutines: %d with the relay's first family, %d with %d more (idle)", base, idle, n)

	// A site of family 7 connects and writes; the relay takes its entries.
	fam := fams[7]
	fam.add("clinic-x", "site")
	fam.start("clinic-x")
	fam.write("clinic-x", 5, "patients")
	m := relay.n.family(fam.auth.FamilyID())
	waitFor(t, 30*time.Second, "the relay to hold the site's entries", func() bool { return m.txlog.Frontier()["clinic-x"] == 5 })
	if !m.mesh.Awake() {
		t.Fatal("the family of a connected member is asleep")
	}
	awake := runtime.NumGoroutine()
	for i, f := range fams {
		if i != 7 && relay.n.family(f.auth.FamilyID()).mesh.Awake() {
			t.Fatalf("family %d woke for another family's member", i)
		}
	}

	// An alert rule on the site; the site leaves.
	hooks := newHookSink(t)
	if _, err := m.AddAlert(context.Background(), api.AlertRequest{Site: "clinic-x", Webhook: hooks.srv.URL, Days: "daily",
		Hours: []string{"00:00-24:00"}, TZ: "UTC", After: "2s"}); err != nil {
		t.Fatal(err)
	}
	fam.stop("clinic-x")
	waitFor(t, 30*time.Second, "the family to sleep after its member left", func() bool { return !m.mesh.Awake() })
	waitFor(t, 30*time.Second, "the alert that the site stopped syncing", func() bool {
		for _, ev := range hooks.events() {
			if ev["event"] == "alert" && ev["kind"] == "not-synced" && ev["site"] == "clinic-x" {
				return true
			}
		}
		return false
	})
	// The committer stops after txlog.DefaultIdleAfter without a write.
	after := waitGoroutines(t, idle+slack, 30*time.Second, "the family asleep again")
	t.Logf("goroutines: %d while a member was connected, %d once it left", awake, after)
}
