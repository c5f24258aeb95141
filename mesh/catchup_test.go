package mesh

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// runsSince returns the handler's entry calls after the first n.
func runsSince(h *fakeHandler, n int) []entriesCall { return h.entryCalls()[n:] }

// checkRuns checks that calls are catch-up runs from A that bring, site by
// site in the order given, exactly the log's entries want[site] = (from, to),
// each once and in order, as contiguous runs of at most fetchRunEntries (the
// batches decoded while the last run was stored, joined).
func checkRuns(t *testing.T, calls []entriesCall, a *testNode, order []string, want map[string][2]uint64) {
	t.Helper()
	next := map[string]uint64{}
	for s, r := range want {
		next[s] = r[0]
	}
	var seen []string
	for i, c := range calls {
		if c.gossip || c.from != a.id {
			t.Fatalf("call %d: gossip=%v from %s, want a catch-up run from A", i, c.gossip, c.from)
		}
		if len(c.run) == 0 || len(c.run) > fetchRunEntries {
			t.Fatalf("call %d: a run of %d entries", i, len(c.run))
		}
		site := c.run[0].Site
		if len(seen) == 0 || seen[len(seen)-1] != site {
			seen = append(seen, site)
		}
		if _, ok := want[site]; !ok {
			t.Fatalf("call %d: a run of site %q, which was not asked for", i, site)
		}
		var env [][]byte
		_ = a.log.RawRange(site, c.run[0].Seq, c.run[len(c.run)-1].Seq, func(_ uint64, e []byte) (bool, error) {
			env = append(env, e)
			return false, nil
		})
		for j, e := range c.run {
			if e.Site != site || e.Seq != next[site] {
				t.Fatalf("call %d entry %d: %s, want %s#%d (every entry once, in order, contiguous)", i, j, e.ID(), site, next[site])
			}
			if j >= len(env) || !bytes.Equal(e.Marshal(), env[j]) {
				t.Fatalf("call %d entry %d: %s differs from A's log", i, j, e.ID())
			}
			next[site]++
		}
	}
	for s, r := range want {
		if next[s] != r[1]+1 {
			t.Errorf("site %s: received up to #%d, want #%d", s, next[s]-1, r[1])
		}
	}
	if !slices.Equal(seen, order) {
		t.Errorf("sites served in the order %v, want %v", seen, order)
	}
}

// Catch-up: B fetches thousands of entries of two sites from A and receives
// each exactly once, in order, in contiguous runs; a fetch when up to date
// brings nothing; a partial one resumes where B is; a diverged head makes A
// resend the last DivergeWindow entries; a site filter is honoured.
func TestCatchup(t *testing.T) {
	ia, ib, ic := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c")
	const nA, nC = 2500, 1300
	logA := newLog()
	logA.add(signChain(t, testFamily, ic, 1, wire.Hash{}, nC)...) // site c's entries, held by A
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, nA)...)
	a := startNode(t, ia, newFamily(testFamily, ia, ib, ic), logA, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib, ic), nil, nil)
	connect(t, b, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hashAt := func(site string, seq uint64) []byte {
		h := a.m.hashAt(site, seq)
		return h[:]
	}

	t.Run("everything", func(t *testing.T) {
		n := len(b.h.entryCalls())
		st, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries != nA+nC || st.Appended != nA+nC || st.Bytes == 0 {
			t.Errorf("stats %+v, want %d entries, all appended", st, nA+nC)
		}
		calls := runsSince(b.h, n)
		checkRuns(t, calls, a, []string{"a", "c"}, map[string][2]uint64{"a": {1, nA}, "c": {1, nC}})
		if st.Frames < (nA+batchEntries-1)/batchEntries+(nC+batchEntries-1)/batchEntries {
			t.Errorf("%d frames: batches larger than %d entries", st.Frames, batchEntries)
		}
	})

	t.Run("up to date", func(t *testing.T) {
		n := len(b.h.entryCalls())
		have := logA.Frontier()
		heads := map[string][]byte{"a": hashAt("a", nA), "c": hashAt("c", nC)}
		st, err := b.m.Fetch(ctx, ia.id, have, heads, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries != 0 || st.Appended != 0 || st.Bytes != 0 {
			t.Errorf("an up-to-date fetch brought %+v", st)
		}
		if calls := runsSince(b.h, n); len(calls) != 0 {
			t.Errorf("an up-to-date fetch called the handler %d times", len(calls))
		}
	})

	t.Run("partial", func(t *testing.T) {
		n := len(b.h.entryCalls())
		st, err := b.m.Fetch(ctx, ia.id, map[string]uint64{"a": 2000, "c": 1299}, map[string][]byte{"a": hashAt("a", 2000)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries != 501 {
			t.Errorf("stats %+v, want 501 entries", st)
		}
		checkRuns(t, runsSince(b.h, n), a, []string{"a", "c"}, map[string][2]uint64{"a": {2001, nA}, "c": {1300, nC}})
	})

	t.Run("diverged head", func(t *testing.T) {
		n := len(b.h.entryCalls())
		wrong := bytes.Repeat([]byte{7}, len(wire.Hash{}))
		st, err := b.m.Fetch(ctx, ia.id, map[string]uint64{"a": 1500}, map[string][]byte{"a": wrong}, []string{"a"})
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries != nA-500 {
			t.Errorf("stats %+v, want %d entries", st, nA-500)
		}
		checkRuns(t, runsSince(b.h, n), a, []string{"a"}, map[string][2]uint64{"a": {1500 - DivergeWindow + 1, nA}})
	})

	t.Run("site filter", func(t *testing.T) {
		n := len(b.h.entryCalls())
		if _, err := b.m.Fetch(ctx, ia.id, map[string]uint64{"c": 1000}, nil, []string{"c"}); err != nil {
			t.Fatal(err)
		}
		checkRuns(t, runsSince(b.h, n), a, []string{"c"}, map[string][2]uint64{"c": {1001, nC}})
	})

	t.Run("handler refuses a site", func(t *testing.T) {
		n := len(b.h.entryCalls())
		b.h.mu.Lock()
		b.h.refuse = func(run []*wire.Signed) error {
			if run[0].Site == "a" {
				return errors.New("refused")
			}
			return nil
		}
		b.h.mu.Unlock()
		defer func() {
			b.h.mu.Lock()
			b.h.refuse = nil
			b.h.mu.Unlock()
		}()
		st, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		calls := runsSince(b.h, n)
		var sites []string
		for _, c := range calls {
			sites = append(sites, c.run[0].Site)
		}
		// The first run of a is refused and the rest of a skipped; c is still
		// taken whole.
		if len(sites) == 0 || sites[0] != "a" || slices.Index(sites[1:], "a") >= 0 {
			t.Errorf("runs of sites %v: want one of a, then only c", sites)
		}
		// The refused run is one batch of a, or several joined if the reader
		// had decoded them before the handler took the first.
		if len(calls) > 0 {
			refused := len(calls[0].run)
			if refused < batchEntries || refused > fetchRunEntries || st.Entries != refused+nC || st.Appended != nC {
				t.Errorf("stats %+v after a refused run of %d, want %d received and %d appended", st, refused, refused+nC, nC)
			}
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		if _, err := b.m.Fetch(cctx, ia.id, nil, nil, nil); err == nil {
			t.Error("a fetch with a cancelled context succeeded")
		}
	})
}

// A catch-up server whose log serves entries that are not what the batch
// says (a gap, or another family's entry) is refused: the fetch fails, the
// batch is counted and nothing of it reaches the handler.
func TestCatchupRejectsMislabelledBatch(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	chain := signChain(t, testFamily, ia, 1, wire.Hash{}, 4)
	for _, tc := range []struct {
		name string
		envs [][]byte
	}{
		{"gap", [][]byte{chain[0].Marshal(), chain[1].Marshal(), chain[3].Marshal()}},
		{"other family", [][]byte{chain[0].Marshal(), signChain(t, "0therfamily", ia, 2, chain[0].Hash, 1)[0].Marshal()}},
		{"garbage", [][]byte{chain[0].Marshal(), []byte("garbage")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logA := newLog()
			for _, env := range tc.envs {
				logA.addRaw("a", env)
			}
			_, b := servingPair(t, ia, ib, logA)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if st, err := b.m.Fetch(ctx, ia.id, nil, nil, nil); err == nil || st.Entries != 0 {
				t.Errorf("fetch of a mislabelled batch: %+v, %v", st, err)
			}
			if n := b.m.Rejections()["catchup_bad_entry"]; n != 1 {
				t.Errorf("%d catchup_bad_entry rejections, want 1", n)
			}
			if calls := b.h.entryCalls(); len(calls) != 0 {
				t.Errorf("the handler got %d runs of a bad batch", len(calls))
			}
		})
	}
}

// A catch-up request of another family, or not even a request, is refused.
func TestCatchupBadRequest(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 3)...)
	a, b := servingPair(t, ia, ib, logA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	other, err := wire.Marshal(&catchupRequest{Family: "0therfamily"})
	if err != nil {
		t.Fatal(err)
	}
	for i, req := range [][]byte{other, []byte("not msgpack \xc1")} {
		s, err := b.m.host.NewStream(ctx, ia.id, catchupProto)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		_ = writeFrame(s, req)
		_ = s.CloseWrite()
		var buf [1]byte
		if n, _ := s.Read(buf[:]); n != 0 {
			t.Errorf("request %d: A answered a bad request", i)
		}
		s.Close()
		waitCount(t, a.m, "catchup_bad_request", uint64(i+1))
	}
}

// A fetch also carries the fork proofs the server knows.
func TestCatchupCarriesForkProofs(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	base := signChain(t, testFamily, ia, 1, wire.Hash{}, 1)[0]
	x := signChain(t, testFamily, ia, 2, base.Hash, 1)[0]
	e := x.Entry
	e.HLC++
	y, err := wire.Sign(&e, ia.siteKey)
	if err != nil {
		t.Fatal(err)
	}
	logA := newLog()
	logA.add(base, x)
	logA.proofs = [][2][][]byte{{{x.Marshal()}, {y.Marshal()}}}
	_, b := servingPair(t, ia, ib, logA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Up to date: no entries, but the proof still comes.
	st, err := b.m.Fetch(ctx, ia.id, logA.Frontier(), map[string][]byte{"a": x.Hash[:]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 0 {
		t.Errorf("stats %+v, want no entries", st)
	}
	forks := b.h.forkCalls()
	if len(forks) != 1 || forks[0].from != ia.id || forks[0].a.Hash != x.Hash || forks[0].b.Hash != y.Hash {
		t.Errorf("fork proofs %+v, want A's proof of %s/%s", forks, x.Hash.Short(), y.Hash.Short())
	}
}

// PushRange sends a range of the log to every connected member, which hands
// it to its handler as a (non-gossip) run.
func TestPushRange(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 10)...)
	a, b := servingPair(t, ia, ib, logA)
	a.m.PushRange("a", 3, 7)
	waitFor(t, "B receives the pushed range", func() bool { return len(b.h.entryCalls()) > 0 })
	checkRuns(t, b.h.entryCalls(), a, []string{"a"}, map[string][2]uint64{"a": {3, 7}})
}

// Probe and FrontierOf return what the member's heartbeat says now.
func TestProbeAndFrontierOf(t *testing.T) {
	ia, ib, ic := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 12)...)
	logA.add(signChain(t, testFamily, ic, 1, wire.Hash{}, 4)...)
	a := startNode(t, ia, newFamily(testFamily, ia, ib, ic), logA, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib, ic), nil, nil)
	connect(t, b, a)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hb, err := b.m.Probe(ctx, ia.id)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"a": 12, "c": 4}
	if hb.Site != "a" || hb.Version != "test" || hb.Protocol != ProtocolVersion || !maps.Equal(hb.Frontier, want) {
		t.Errorf("probe: %+v, want site a, version test, frontier %v", hb, want)
	}
	for site, h := range logA.heads() {
		if !bytes.Equal(hb.Heads[site], h) {
			t.Errorf("probe: head of %s %x, want %x", site, hb.Heads[site], h)
		}
	}

	// The answer is current: A's log grows, the next probe shows it.
	logA.add(signChain(t, testFamily, ia, 13, a.m.hashAt("a", 12), 1)...)
	front, err := b.m.FrontierOf(ctx, ia.id)
	if err != nil {
		t.Fatal(err)
	}
	if want["a"] = 13; !maps.Equal(front, want) {
		t.Errorf("FrontierOf: %v, want %v", front, want)
	}
	if _, err := b.m.Probe(ctx, ic.id); err == nil {
		t.Error("probe of a member that is not running succeeded")
	}
}

// stallLog is a log whose RawRange stops before seq stallAt until released:
// a server that is slow to read its disk.
type stallLog struct {
	*fakeLog
	stallAt uint64
	release chan struct{}
	reading *atomic.Int32 // RawRange calls in progress
}

func (l stallLog) RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (bool, error)) error {
	l.reading.Add(1)
	defer l.reading.Add(-1)
	return l.fakeLog.RawRange(site, from, to, func(seq uint64, env []byte) (bool, error) {
		if seq == l.stallAt {
			<-l.release
		}
		return fn(seq, env)
	})
}

// A session cut short, because the server shut down in the middle of it,
// fails: the entries received are kept, but the fetch must not report a
// complete session. (It did: the stream reset that a closed connection
// causes wraps io.EOF, which the reader took for the end of the session.)
func TestCatchupCutShortFails(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	const n = 3000
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, n)...)
	stall := stallLog{fakeLog: logA, stallAt: 2*batchEntries + 500, release: make(chan struct{}), reading: new(atomic.Int32)}
	var once sync.Once
	release := func() { once.Do(func() { close(stall.release) }) }
	t.Cleanup(release)
	a := startNode(t, ia, newFamily(testFamily, ia, ib), logA, func(c *Config) { c.Log = stall })
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)

	type result struct {
		st  FetchStats
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		st, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
		done <- result{st, err}
	}()
	waitFor(t, "B receives the first batch", func() bool { return len(b.h.entryCalls()) > 0 })
	// Close must wait for the handler still reading A's log (the node closes
	// its database right after): release the read only once A's connections
	// are gone, and check that no read was left running when Close returned.
	go func() {
		defer release() // also after the deadline: then Close returns and the check below tells
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if len(a.m.host.Network().Conns()) == 0 {
				return
			}
		}
	}()
	if err := a.m.Close(); err != nil {
		t.Fatal(err)
	}
	if n := stall.reading.Load(); n != 0 {
		t.Errorf("Close returned with %d catch-up handler(s) still reading the log", n)
	}
	r := <-done
	if r.err == nil {
		t.Errorf("a session cut short after %d of %d entries reported success", r.st.Entries, n)
	}
	if r.st.Entries == 0 || r.st.Entries >= n {
		t.Errorf("%d entries received, want some but not all %d", r.st.Entries, n)
	}
	if ctx.Err() != nil {
		t.Errorf("the fetch ended by its deadline, not by the cut: %v", r.err)
	}
	checkRuns(t, b.h.entryCalls(), a, []string{"a"}, map[string][2]uint64{"a": {1, uint64(r.st.Entries)}})
}

// A log written in commit groups is served in batches that each end at a
// signed entry: a batch that reaches its size inside a group goes on to the
// group's end, and unsigned entries after the last signed one are not sent.
func TestCatchupBatchesEndAtGroupEnds(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	var all []*wire.Signed
	prev := wire.Hash{}
	for len(all) < 2*batchEntries+100 {
		g := groupChain(t, testFamily, ia, uint64(len(all)+1), prev, 300)
		all = append(all, g...)
		prev = g[len(g)-1].Hash
	}
	tail := groupChain(t, testFamily, ia, uint64(len(all)+1), prev, 3)
	tail[2].Sig = nil // a range that ends inside a group
	logA.add(all...)
	logA.add(tail...)
	_, b := servingPair(t, ia, ib, logA)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != len(all) {
		t.Errorf("received %d entries, want the %d up to the last signed one", st.Entries, len(all))
	}
	next := uint64(1)
	for _, c := range b.h.entryCalls() {
		if c.run[0].Seq != next {
			t.Fatalf("a batch starts at %d, want %d", c.run[0].Seq, next)
		}
		if !c.run[len(c.run)-1].IsSigned() {
			t.Errorf("a batch of %d entries from %d ends unsigned", len(c.run), c.run[0].Seq)
		}
		if len(c.run) > fetchRunEntries+300 {
			t.Errorf("a run of %d entries", len(c.run))
		}
		next += uint64(len(c.run))
	}
	if least := (len(all) + batchEntries + 299) / (batchEntries + 300); st.Frames < least {
		t.Errorf("%d frames for %d entries: batches larger than %d entries and a group", st.Frames, len(all), batchEntries)
	}
}
