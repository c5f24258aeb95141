package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/state"
)

// testFamily is an authority with a relay and sites, all running in this
// process on 127.0.0.1.
type testFamily struct {
	t       testing.TB
	authDir string
	auth    *family.Authority
	env     map[string]string
	nodes   map[string]*famNode
	relay   string // relay bootstrap address
}

type famNode struct {
	site string
	data string
	cert []byte
	r    *running
}

func (tf *testFamily) getenv(k string) string { return tf.env[k] }

func newTestFamily(t testing.TB) *testFamily {
	t.Helper()
	tf := &testFamily{t: t, authDir: t.TempDir(), env: map[string]string{"PPSYNC_MACHINE_ID": "test-machine"}, nodes: map[string]*famNode{}}
	var err error
	if tf.auth, _, err = family.CreateFamily(tf.authDir, "Test Practice", time.Now()); err != nil {
		t.Fatal(err)
	}
	return tf
}

// add initialises and admits a node and installs its own certificate, as the
// README's setup does: it learns the others from the relay (its bootstrap).
func (tf *testFamily) add(site, role string) *famNode { return tf.addKnowing(site, role) }

// addKnowing is add plus the named members' certificates installed by hand:
// NOT what users do, only for tests that feed a node entries of a member
// before any connection could have taught it that member.
func (tf *testFamily) addKnowing(site, role string, know ...string) *famNode {
	tf.t.Helper()
	return tf.addWith(site, role, nil, know...)
}

// addWith is addKnowing after mod (if not nil) changed the init options
// (a practice database, for example).
func (tf *testFamily) addWith(site, role string, mod func(*InitOptions), know ...string) *famNode {
	tf.t.Helper()
	fn := &famNode{site: site, data: filepath.Join(tf.t.TempDir(), site)}
	opts := InitOptions{DataDir: fn.data, FamilyFile: filepath.Join(tf.authDir, family.InfoFile), Site: site, Role: role, Env: tf.getenv}
	if mod != nil {
		mod(&opts)
	}
	res, err := Init(opts)
	if err != nil {
		tf.t.Fatal(err)
	}
	b, _ := os.ReadFile(res.JoinRequest)
	req, err := family.ParseJoinRequest(b)
	if err != nil {
		tf.t.Fatal(err)
	}
	c, err := tf.auth.Admit(tf.authDir, req, time.Now())
	if err != nil {
		tf.t.Fatal(err)
	}
	fn.cert, _ = c.Marshal()
	tf.install(fn, fn.cert)
	for _, k := range know {
		tf.install(fn, tf.nodes[k].cert)
	}
	tf.nodes[site] = fn
	return fn
}

func (tf *testFamily) install(fn *famNode, doc []byte) {
	tf.t.Helper()
	if _, err := datadir.InstallOffline(fn.data, doc); err != nil {
		tf.t.Fatal(err)
	}
}

func (tf *testFamily) config(fn *famNode) Config {
	c, err := LoadConfig(fn.data)
	if err != nil {
		tf.t.Fatal(err)
	}
	c.API, c.Listen, c.MDNS, c.Env, c.Version = "127.0.0.1:0", []string{"/ip4/127.0.0.1/tcp/0"}, false, tf.getenv, "test"
	c.HeartbeatInterval = 200 * time.Millisecond
	if os.Getenv("PPSYNC_TEST_LOG") != "" { // debugging aid: every node logs to stderr
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", fn.site)
	}
	c.SyncInterval = Duration(time.Second)
	if tf.relay != "" && fn.site != "relay" {
		c.Bootstrap = []string{tf.relay}
	}
	return c
}

func (tf *testFamily) start(site string) *running { return tf.startWith(site, nil) }

// startWith starts a node like start, after mod (if not nil) changed its config.
func (tf *testFamily) startWith(site string, mod func(*Config)) *running {
	tf.t.Helper()
	fn := tf.nodes[site]
	cfg := tf.config(fn)
	if mod != nil {
		mod(&cfg)
	}
	n, err := Open(context.Background(), cfg)
	if err != nil {
		tf.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: tf.t, n: n, base: "http://" + n.Addr(), cancel: cancel, done: make(chan error, 1)}
	r.key, _ = datadir.ReadAPIKey(fn.data)
	go func() { r.done <- n.Run(ctx) }()
	fn.r = r
	tf.t.Cleanup(r.stop)
	if site == "relay" {
		tf.relay = atkNodeAddr(tf.t, n) // loopback TCP: the only listen address
	}
	return r
}

func (tf *testFamily) stop(site string) {
	if r := tf.nodes[site].r; r != nil {
		r.stop()
		tf.nodes[site].r = nil
	}
}

// emptyDigest is the digest of a state that holds nothing.
func emptyDigest(t testing.TB) string {
	t.Helper()
	db, err := store.Open("", store.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := state.Open(db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d, err := st.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func (tf *testFamily) digest(site string) string {
	d, err := tf.nodes[site].r.n.state.Digest()
	if err != nil {
		tf.t.Fatal(err)
	}
	return d.String()
}

// waitKeysSettled polls until every site holds every data key any of them
// knows of and waits for none, so that no grant entry is still to come.
func (tf *testFamily) waitKeysSettled(d time.Duration, sites ...string) {
	tf.t.Helper()
	deadline := time.Now().Add(d)
	for {
		detail := ""
		all := map[string]bool{}
		for _, s := range sites {
			for _, k := range tf.nodes[s].r.n.ring.Keys() {
				all[k.ID] = true
			}
		}
		for _, s := range sites {
			n := tf.nodes[s].r.n
			held, _ := n.txlog.Held()
			if w := n.ring.Wanted(); len(w) > 0 || held > 0 {
				detail += fmt.Sprintf(" %s wants %v (holds %d entries)", s, w, held)
			}
			for id := range all {
				if !n.ring.Has(id) {
					detail += fmt.Sprintf(" %s lacks %.8s", s, id)
				}
			}
		}
		if detail == "" {
			return
		}
		if time.Now().After(deadline) {
			tf.t.Fatalf("data keys not settled after %s:%s", d, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitConverged polls until every running node holds the same frontier and
// digest, or fails after the deadline.
func (tf *testFamily) waitConverged(d time.Duration, sites ...string) {
	tf.t.Helper()
	empty := emptyDigest(tf.t)
	deadline := time.Now().Add(d)
	for {
		var firstDigest, firstFront, detail string
		same := true
		for i, s := range sites {
			n := tf.nodes[s].r.n
			dg := tf.digest(s)
			// Durable heads too: the state shows a group a moment before its
			// fsync makes the heads move.
			front := fmt.Sprint(n.txlog.Frontier())
			if i == 0 {
				firstFront = front
			}
			same = same && front == firstFront
			if n.ring == nil {
				// A relay holds no readable state: its frontier alone.
				if dg != empty {
					tf.t.Fatalf("the relay %s holds readable state", s)
				}
				detail += fmt.Sprintf(" %s=%s/blind", s, front)
				continue
			}
			detail += fmt.Sprintf(" %s=%s/%s", s, front, dg[:8])
			if firstDigest == "" {
				firstDigest = dg
			}
			same = same && dg == firstDigest
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			tf.t.Fatalf("not converged after %s:%s", d, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tf *testFamily) write(site string, n int, table string) {
	tf.t.Helper()
	r := tf.nodes[site].r
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"ops":[{"op":"put","table":%q,"key":"%s-%d","fields":{"site":%q,"i":%d}}]}`, table, site, i, site, i)
		var tx api.TxResult
		if code := r.call(tf.t, "POST", "/v1/transactions", body, &tx); code != 200 {
			tf.t.Fatalf("write at %s: %d", site, code)
		}
	}
}

func TestFamilyConvergesThroughRelay(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-c"} {
		tf.add(s, "site") // each site holds only its own certificate
	}
	tf.start("relay")
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-c"} {
		tf.start(s)
	}
	var wg sync.WaitGroup
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-c"} {
		wg.Go(func() { tf.write(s, 100, "patients") })
	}
	wg.Wait()
	// Concurrent writes to the same record from every site.
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-c"} {
		r := tf.nodes[s].r
		r.call(t, "POST", "/v1/transactions", fmt.Sprintf(`{"ops":[{"op":"put","table":"shared","key":"k","fields":{"by":%q}}]}`, s), nil)
	}
	tf.waitConverged(30*time.Second, "relay", "clinic-a", "clinic-b", "clinic-c")
	st, _ := tf.nodes["clinic-a"].r.n.Status(context.Background())
	if st.Peers < 1 || !st.Online {
		t.Fatalf("status: peers %d online %v", st.Peers, st.Online)
	}
	// The relay names itself by the name its certificate gives it.
	if rs, _ := tf.nodes["relay"].r.n.Status(context.Background()); rs.Site != "relay" || rs.Role != "relay" {
		t.Fatalf("relay status: site %q role %q, want relay/relay", rs.Site, rs.Role)
	}
}

func TestOfflineSiteCatchesUp(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	for _, s := range []string{"clinic-a", "clinic-b"} {
		tf.add(s, "site")
	}
	tf.start("relay")
	tf.start("clinic-a")
	tf.start("clinic-b")
	tf.write("clinic-b", 10, "patients")
	tf.waitConverged(20*time.Second, "relay", "clinic-a", "clinic-b")
	tf.stop("clinic-b")
	// clinic-a writes thousands while clinic-b is off.
	var req api.BatchRequest
	for i := 0; i < 3000; i++ {
		req.Transactions = append(req.Transactions, api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "appointments", Key: fmt.Sprintf("a%05d", i), Fields: map[string]any{"slot": i}}}})
	}
	if code := tf.nodes["clinic-a"].r.call(t, "POST", "/v1/transactions/batch", req, nil); code != 200 {
		t.Fatalf("batch: %d", code)
	}
	tf.waitConverged(20*time.Second, "relay", "clinic-a")
	tf.stop("clinic-a") // the two sites are never online together from here
	tf.start("clinic-b")
	tf.waitConverged(30*time.Second, "relay", "clinic-b")
	if got := tf.nodes["clinic-b"].r.n.txlog.Frontier()["clinic-a"]; got != 3000 {
		t.Fatalf("clinic-b holds %d of clinic-a's entries", got)
	}
}

// TestSitesReachableOnlyThroughRelay: the sites listen nowhere (as behind a
// NAT), so the only way between them is the relay's circuit.
func TestSitesReachableOnlyThroughRelay(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	for _, s := range []string{"clinic-a", "clinic-b"} {
		fn := tf.nodes[s]
		c := tf.config(fn)
		c.Listen = nil
		n, err := Open(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := &running{t: t, n: n, base: "http://" + n.Addr(), cancel: cancel, done: make(chan error, 1)}
		r.key, _ = datadir.ReadAPIKey(fn.data)
		go func() { r.done <- n.Run(ctx) }()
		fn.r = r
		t.Cleanup(r.stop)
		if len(n.mesh.Addrs()) != 0 {
			t.Fatalf("%s listens on %v", s, n.mesh.Addrs())
		}
	}
	tf.write("clinic-a", 20, "patients")
	tf.write("clinic-b", 20, "notes")
	tf.waitConverged(30*time.Second, "relay", "clinic-a", "clinic-b")
	// The sites reach each other through the relay's circuit.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var via string
		for _, p := range tf.nodes["clinic-a"].r.n.sync.peers() {
			if p.Site == "clinic-b" && p.Connected {
				via = p.Via
			}
		}
		if via == "relay" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clinic-a does not reach clinic-b via the relay (via %q)", via)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// relayAndTwoSites starts a relay and the sites clinic-a and clinic-b, each
// set up as the README says (its own certificate, the relay to bootstrap).
func relayAndTwoSites(t testing.TB) (tf *testFamily, a, b *running) {
	tf = newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	return tf, tf.start("clinic-a"), tf.start("clinic-b")
}
