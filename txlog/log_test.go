package txlog

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
)

func TestOwnWritesChainAndSurviveReopen(t *testing.T) {
	e := newEnv(t, "a", nil)
	var prev *wire.Signed
	for i := 1; i <= 20; i++ {
		s, err := e.log.Write(bg, put("patients", fmt.Sprint(i), map[string]any{"name": "x"}))
		if err != nil {
			t.Fatal(err)
		}
		if s.Seq != uint64(i) || s.Epoch != 1 || s.Site != "a" || s.Family != testFamily {
			t.Fatalf("write %d stamped %s epoch %d", i, s.ID(), s.Epoch)
		}
		if prev != nil && (s.Prev != prev.Hash || s.HLC <= prev.HLC) {
			t.Fatalf("write %d does not follow %d (prev or HLC)", i, i-1)
		}
		if err := s.Verify(e.self.Key.Public().(ed25519.PublicKey)); err != nil {
			t.Fatal(err)
		}
		if !e.applied(s.ID()) {
			t.Fatalf("%s stored but not applied", s.ID())
		}
		prev = s
	}
	e.reopen(nil)
	if h := e.log.Head("a"); h.Seq != 20 || h.Hash != prev.Hash {
		t.Fatalf("head after reopen = %d %s, want 20 %s", h.Seq, h.Hash.Short(), prev.Hash.Short())
	}
	s, err := e.log.Write(bg, put("patients", "21", map[string]any{"k": 1}))
	if err != nil || s.Seq != 21 || s.Prev != prev.Hash {
		t.Fatalf("write after reopen: %v %v", s, err)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 || rep.Entries != 21 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func TestDepsNameTheWritersFrontier(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	run := chain(t, "b", 1, bKey, 0, wire.Hash{}, 3, "")
	if _, err := e.log.AppendRun(bg, run); err != nil {
		t.Fatal(err)
	}
	s, err := e.log.Write(bg, put("t", "k", map[string]any{"f": 1}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Deps["b"] != 3 || len(s.Deps) != 1 {
		t.Fatalf("deps = %v, want b:3", s.Deps)
	}
	if s.HLC <= run[2].HLC {
		t.Fatalf("own HLC %d not after observed %d", s.HLC, run[2].HLC)
	}
}

// TestWriteSeenCapsDeps: a write whose writer saw less than the log holds
// (a practice database) names only what it saw.
func TestWriteSeenCapsDeps(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	cKey := e.keys.add(t, "c", 1)
	for _, r := range [][]*wire.Signed{chain(t, "b", 1, bKey, 0, wire.Hash{}, 3, ""), chain(t, "c", 1, cKey, 0, wire.Hash{}, 2, "")} {
		if _, err := e.log.AppendRun(bg, r); err != nil {
			t.Fatal(err)
		}
	}
	out, err := e.log.WriteSeen(bg, [][]wire.Op{put("t", "k", map[string]any{"f": 1})}, map[string]uint64{"b": 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := out[0].Deps; d["b"] != 1 || len(d) != 1 {
		t.Fatalf("deps = %v, want b:1 only", d)
	}
	out, err = e.log.WriteSeen(bg, [][]wire.Op{put("t", "k", map[string]any{"f": 2})}, nil, nil)
	if err != nil || out[0].Deps != nil {
		t.Fatalf("deps = %v (%v), want none", out[0].Deps, err)
	}
}

func TestGroupCommitConcurrentWriters(t *testing.T) {
	e := newEnv(t, "a", nil)
	const writers, each = 64, 40
	var wg sync.WaitGroup
	seqs := make(chan uint64, writers*each)
	for w := 0; w < writers; w++ {
		wg.Go(func() {
			for i := 0; i < each; i++ {
				s, err := e.log.Write(bg, put("t", fmt.Sprintf("%d-%d", w, i), map[string]any{"v": i}))
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- s.Seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d issued twice", s)
		}
		seen[s] = true
	}
	if len(seen) != writers*each || e.log.Head("a").Seq != writers*each {
		t.Fatalf("%d seqs, head %d", len(seen), e.log.Head("a").Seq)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 {
		t.Fatalf("verify: %v %v", rep.Damage, err)
	}
	if e.marks.count() != writers*each {
		t.Fatalf("applied %d, want %d", e.marks.count(), writers*each)
	}
}

func TestWriteManyIsAllOrNothing(t *testing.T) {
	e := newEnv(t, "a", nil)
	big := make([]byte, wire.MaxEntryBytes)
	_, err := e.log.WriteMany(bg, [][]wire.Op{
		put("t", "1", map[string]any{"a": 1}),
		put("t", "2", map[string]any{"blob": string(big)}),
	})
	if !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("oversized transaction: %v", err)
	}
	if h := e.log.Head("a"); h.Seq != 0 {
		t.Fatalf("a failed batch left head at %d", h.Seq)
	}
	out, err := e.log.WriteMany(bg, [][]wire.Op{put("t", "1", map[string]any{"a": 1}), put("t", "2", map[string]any{"a": 2})})
	if err != nil || len(out) != 2 || out[1].Seq != 2 {
		t.Fatalf("batch: %v %v", out, err)
	}
	if _, err := e.log.Write(bg, []wire.Op{{Kind: wire.OpPut, Table: "", Key: "k"}}); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("empty table name: %v", err)
	}
}

func TestRelayWritesNothing(t *testing.T) {
	e := newEnv(t, "", nil)
	if _, err := e.log.Write(bg, put("t", "k", map[string]any{"a": 1})); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("relay write: %v", err)
	}
	bKey := e.keys.add(t, "b", 1)
	if _, err := e.log.AppendRun(bg, chain(t, "b", 1, bKey, 0, wire.Hash{}, 5, "")); err != nil {
		t.Fatalf("relay stores others' logs: %v", err)
	}
}

func TestRemoteRules(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	run := chain(t, "b", 1, bKey, 0, wire.Hash{}, 5, "")

	if _, err := e.log.AppendRemote(bg, run[1]); !isGap(err, 0, 2) {
		t.Fatalf("gap: %v", err)
	}
	res, err := e.log.AppendRemote(bg, run[0])
	if err != nil || res.Appended != 1 {
		t.Fatalf("next entry: %+v %v", res, err)
	}
	res, err = e.log.AppendRemote(bg, run[0])
	if err != nil || res.Duplicates != 1 || res.Appended != 0 {
		t.Fatalf("duplicate: %+v %v", res, err)
	}
	if e.marks.count() != 1 {
		t.Fatalf("duplicate applied again: %d applies", e.marks.count())
	}
	// Forged: right site, wrong key.
	forger := chain(t, "b", 1, e.keys.add(t, "zz", 1), 1, run[0].Hash, 1, "forged")[0]
	if _, err := e.log.AppendRemote(bg, forger); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("forged: %v", err)
	}
	// Unknown site.
	stranger := chain(t, "nobody", 1, bKey, 0, wire.Hash{}, 1, "")[0]
	if _, err := e.log.AppendRemote(bg, stranger); err == nil {
		t.Fatal("entry of an unknown site accepted")
	}
	// Other family.
	other := *run[1]
	other.Family = "another"
	if _, err := e.log.AppendRemote(bg, &other); !errors.Is(err, ErrWrongFamily) {
		t.Fatalf("other family: %v", err)
	}
	if h := e.log.Head("b"); h.Seq != 1 {
		t.Fatalf("rejected entries moved the head to %d", h.Seq)
	}
	// Run with overlap: 1 duplicate, 4 new.
	res, err = e.log.AppendRun(bg, run)
	if err != nil || res.Duplicates != 1 || res.Appended != 4 {
		t.Fatalf("overlapping run: %+v %v", res, err)
	}
}

func isGap(err error, have, got uint64) bool {
	var g *GapError
	return errors.As(err, &g) && g.Have == have && g.Got == got
}

func TestRunVerification(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	run := chain(t, "b", 1, bKey, 0, wire.Hash{}, 10, "")

	broken := append([]*wire.Signed(nil), run...)
	mid := *run[4]
	mid.Prev[0] ^= 1
	broken[4] = &mid
	if _, err := e.log.AppendRun(bg, broken); !errors.Is(err, ErrChain) {
		t.Fatalf("broken link: %v", err)
	}
	badLast := append([]*wire.Signed(nil), run...)
	last := *run[9]
	last.Sig = append([]byte(nil), last.Sig...)
	last.Sig[0] ^= 1
	badLast[9] = &last
	if _, err := e.log.AppendRun(bg, badLast); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("bad last signature: %v", err)
	}
	if e.log.Head("b").Seq != 0 {
		t.Fatal("a rejected run was appended")
	}
	// An epoch change inside a run needs the old epoch's last signature too.
	b2 := e.keys.add(t, "b", 2)
	ep2 := chain(t, "b", 2, b2, 10, run[9].Hash, 3, "")
	mixed := append(append([]*wire.Signed(nil), run...), ep2...)
	forgedOld := *mixed[9]
	forgedOld.Sig = make([]byte, 64)
	mixed[9] = &forgedOld
	if _, err := e.log.AppendRun(bg, mixed); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("forged end of epoch 1: %v", err)
	}
	mixed[9] = run[9]
	res, err := e.log.AppendRun(bg, mixed)
	if err != nil || res.Appended != 13 {
		t.Fatalf("run across a move: %+v %v", res, err)
	}
	if h := e.log.Head("b"); h.Seq != 13 || h.Epoch != 2 {
		t.Fatalf("head %+v", h)
	}
	// Epoch must not go backwards: such an entry is fenced.
	old := chain(t, "b", 1, bKey, 13, e.log.Head("b").Hash, 1, "")
	if _, err := e.log.AppendRemote(bg, old[0]); !errors.Is(err, ErrFenced) {
		t.Fatalf("epoch going back: %v", err)
	}
}

func TestForkEvidenceAndQuarantine(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	main := chain(t, "b", 1, bKey, 0, wire.Hash{}, 5, "main")
	if _, err := e.log.AppendRun(bg, main); err != nil {
		t.Fatal(err)
	}
	// A clone of site b wrote a different seq 3 onwards.
	branch := chain(t, "b", 1, bKey, 2, main[1].Hash, 4, "clone")
	res, err := e.log.AppendRun(bg, branch)
	var fe *ForkError
	if !errors.As(err, &fe) || !errors.Is(err, ErrForked) || fe.Seq != 3 || fe.Held != main[2].Hash || fe.Offered != branch[0].Hash {
		t.Fatalf("fork: %v", err)
	}
	if res.Quarantined != 3 {
		t.Fatalf("quarantined %d, want 3", res.Quarantined)
	}
	forks := e.log.Forks()
	if len(forks) != 1 || forks[0].Site != "b" || forks[0].Seq != 3 {
		t.Fatalf("forks %+v", forks)
	}
	ev, err := e.log.Evidence("b")
	if err != nil || len(ev) != 1 || ev[0].Hash != branch[0].Hash {
		t.Fatalf("evidence %v %v", ev, err)
	}
	// Later entries of either branch are quarantined, not applied.
	more := chain(t, "b", 1, bKey, 5, main[4].Hash, 2, "main")
	if _, err := e.log.AppendRun(bg, more); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("after fork: %v", err)
	}
	if e.log.Head("b").Seq != 5 || e.applied(more[0].ID()) {
		t.Fatal("entry of a forked site applied")
	}
	q, _ := e.log.Quarantined("b")
	if len(q) != 5 {
		t.Fatalf("quarantine holds %d, want 5", len(q))
	}
	// Everything survives a restart.
	e.reopen(nil)
	if len(e.log.Forks()) != 1 {
		t.Fatal("fork forgotten after reopen")
	}
	// A forged "fork" (bad signature) proves nothing and is rejected.
	e2 := newEnv(t, "a", nil)
	bKey2 := e2.keys.add(t, "b", 1)
	m2 := chain(t, "b", 1, bKey2, 0, wire.Hash{}, 3, "")
	e2.log.AppendRun(bg, m2)
	fake := *chain(t, "b", 1, bKey2, 1, m2[0].Hash, 1, "x")[0]
	fake.Sig = make([]byte, 64)
	if _, err := e2.log.AppendRemote(bg, &fake); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("forged fork: %v", err)
	}
	if len(e2.log.Forks()) != 0 {
		t.Fatal("a forged entry created a fork record")
	}
}

func TestOwnSiteForkStopsWrites(t *testing.T) {
	e := newEnv(t, "a", nil)
	for i := 0; i < 3; i++ {
		if _, err := e.log.Write(bg, put("t", fmt.Sprint(i), map[string]any{"v": i})); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := e.log.Get("a", 1)
	clone := chain(t, "a", 1, e.self.Key, 1, first.Hash, 1, "clone")
	if _, err := e.log.AppendRemote(bg, clone[0]); !errors.Is(err, ErrForked) {
		t.Fatalf("clone entry: %v", err)
	}
	if _, err := e.log.Write(bg, put("t", "x", map[string]any{"v": 1})); !errors.Is(err, ErrForked) {
		t.Fatalf("write after own fork: %v", err)
	}
	e.reopen(nil)
	if _, err := e.log.Write(bg, put("t", "x", map[string]any{"v": 1})); !errors.Is(err, ErrForked) {
		t.Fatalf("write after own fork and restart: %v", err)
	}
}

func TestRestoredCopyCatchesUpOwnLog(t *testing.T) {
	e := newEnv(t, "a", nil)
	// The family holds seqs 1..4 of site a that this (restored) node lacks.
	theirs := chain(t, "a", 1, e.self.Key, 0, wire.Hash{}, 4, "")
	if _, err := e.log.AppendRun(bg, theirs); err != nil {
		t.Fatal(err)
	}
	s, err := e.log.Write(bg, put("t", "k", map[string]any{"v": 1}))
	if err != nil || s.Seq != 5 || s.Prev != theirs[3].Hash {
		t.Fatalf("write after catching up own log: %v %v", s, err)
	}
}

func TestNewerSchemaHeldUntilUpgrade(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	ent := &wire.Entry{Family: testFamily, Site: "b", Epoch: 1, Seq: 1, HLC: 1, Schema: wire.SchemaVersion + 1,
		Ops: put("t", "k", map[string]any{"new": true})}
	s, err := wire.Sign(ent, bKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.AppendRemote(bg, s); err != nil {
		t.Fatal(err)
	}
	if e.applied(s.ID()) || e.log.Head("b").Seq != 1 {
		t.Fatal("newer-schema entry was applied, or not stored")
	}
	if n, _ := e.log.Held(); n != 1 {
		t.Fatalf("held = %d", n)
	}
	if got, err := e.log.Get("b", 1); err != nil || got.Hash != s.Hash {
		t.Fatal("held entry not served for forwarding")
	}
	e.reopen(nil) // same build: still held
	if e.applied(s.ID()) {
		t.Fatal("applied without upgrade")
	}
	e.reopen(func(c *Config) { c.Schema = wire.SchemaVersion + 1 }) // upgraded build
	if !e.applied(s.ID()) {
		t.Fatal("not applied after upgrade")
	}
	if n, _ := e.log.Held(); n != 0 {
		t.Fatalf("held after upgrade = %d", n)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	e := newEnv(t, "a", nil)
	for i := 0; i < 5; i++ {
		e.log.Write(bg, put("t", fmt.Sprint(i), map[string]any{"v": i}))
	}
	s3, _ := e.log.Get("a", 3)
	bad := wire.Signed{Entry: s3.Entry, Hash: s3.Hash, Body: s3.Body, Sig: make([]byte, 64)}
	if err := e.db.Set(e.log.keys.entry("a", 3), bad.Marshal(), nil); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Set(e.log.keys.entry("a", 4), []byte("garbage"), nil); err != nil {
		t.Fatal(err)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damage) < 2 {
		t.Fatalf("damage not found: %v", rep.Damage)
	}
	t.Log(rep.Damage)
}

func TestReplayAppliesEverything(t *testing.T) {
	e := newEnv(t, "a", nil)
	for i := 0; i < 25; i++ {
		e.log.Write(bg, put("t", fmt.Sprint(i), map[string]any{"v": i}))
	}
	fresh := &counter{}
	var last uint64
	if err := e.log.Replay(bg, fresh, 7, func(done, total uint64) { last = done }); err != nil {
		t.Fatal(err)
	}
	if fresh.calls != 25 || last != 25 {
		t.Fatalf("replay applied %d, progress %d", fresh.calls, last)
	}
}

func TestCloseAnswersEveryWriter(t *testing.T) {
	e := newEnv(t, "a", nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []uint64
	for w := 0; w < 16; w++ {
		wg.Go(func() {
			for {
				s, err := e.log.Write(context.Background(), put("t", "k", map[string]any{"w": w}))
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Error(err)
					}
					return
				}
				mu.Lock()
				acked = append(acked, s.Seq)
				n := len(acked)
				mu.Unlock()
				if n == 200 {
					go e.log.Close()
				}
			}
		})
	}
	wg.Wait()
	e.log.Close()
	e.db.Close()
	e.log = nil
	e.open(nil)
	h := e.log.Head("a")
	for _, s := range acked {
		if s > h.Seq {
			t.Fatalf("acknowledged seq %d lost (head %d)", s, h.Seq)
		}
	}
}

type counter struct{ calls int }

func (c *counter) ApplyAll(_ *pebble.Batch, es []*wire.Signed) error { c.calls += len(es); return nil }

func TestForkProofSpreads(t *testing.T) {
	// Node 1 sees both branches and records the fork; node 2 holds only one
	// branch and learns of the fork from node 1's proof.
	e1 := newEnv(t, "a", nil)
	bKey := e1.keys.add(t, "b", 1)
	main := chain(t, "b", 1, bKey, 0, wire.Hash{}, 4, "main")
	branch := chain(t, "b", 1, bKey, 1, main[0].Hash, 2, "clone")
	e1.log.AppendRun(bg, main)
	if _, err := e1.log.AppendRun(bg, branch); !errors.Is(err, ErrForked) {
		t.Fatalf("fork: %v", err)
	}
	heldRun, otherRun, err := e1.log.ForkProof("b")
	if err != nil || len(heldRun) != 1 || len(otherRun) != 1 {
		t.Fatalf("proof: %v %v %v", heldRun, otherRun, err)
	}
	held, other := heldRun[0], otherRun[0]
	if held.Seq != 2 || other.Seq != 2 || held.Hash == other.Hash {
		t.Fatalf("proof: %v %v", held, other)
	}
	one := func(s *wire.Signed) []*wire.Signed { return []*wire.Signed{s} }

	e2 := newEnv(t, "a", nil)
	e2.keys.keys["b"] = e1.keys.keys["b"]
	e2.log.AppendRun(bg, main[:3])
	// Not proofs: the same entry twice, a forged entry, unrelated seqs.
	if _, err := e2.log.AddForkProof(bg, one(held), one(held)); !errors.Is(err, ErrNoProof) {
		t.Fatalf("same entry: %v", err)
	}
	forged := wire.Signed{Entry: other.Entry, Hash: other.Hash, Body: other.Body, Sig: make([]byte, 64)}
	if _, err := e2.log.AddForkProof(bg, one(held), one(&forged)); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("forged proof: %v", err)
	}
	if _, err := e2.log.AddForkProof(bg, one(main[0]), one(main[2])); !errors.Is(err, ErrNoProof) {
		t.Fatalf("unrelated: %v", err)
	}
	added, err := e2.log.AddForkProof(bg, heldRun, otherRun)
	if err != nil || !added {
		t.Fatalf("proof: %v %v", added, err)
	}
	if fs := e2.log.Forks(); len(fs) != 1 || fs[0].Site != "b" || fs[0].Seq != 2 {
		t.Fatalf("forks after proof: %+v", fs)
	}
	// The site's log stops growing.
	if _, err := e2.log.AppendRun(bg, main[3:]); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("after proof: %v", err)
	}
	// And the proof can be passed on from here.
	if h, o, err := e2.log.ForkProof("b"); err != nil || h[0].Hash != held.Hash || o[0].Hash != other.Hash {
		t.Fatalf("re-proof: %v", err)
	}
}

func TestMovedSiteOldMachineFenced(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	old := chain(t, "b", 1, bKey, 0, wire.Hash{}, 4, "")
	if _, err := e.log.AppendRun(bg, old); err != nil {
		t.Fatal(err)
	}
	// The site moved: its new machine (epoch 2) caught up to seq 4 and wrote on.
	b2 := e.keys.add(t, "b", 2)
	newer := chain(t, "b", 2, b2, 4, old[3].Hash, 2, "new")
	if _, err := e.log.AppendRun(bg, newer); err != nil {
		t.Fatal(err)
	}
	// The old machine, not told yet, wrote seq 5 and 6 too.
	stale := chain(t, "b", 1, bKey, 4, old[3].Hash, 3, "old")
	res, err := e.log.AppendRun(bg, stale)
	if !errors.Is(err, ErrFenced) || errors.Is(err, ErrForked) || res.Quarantined != 3 {
		t.Fatalf("stale run: %+v %v", res, err)
	}
	if len(e.log.Forks()) != 0 {
		t.Fatal("the old machine's entries were taken for a fork")
	}
	// One more written after the new machine's head: also fenced.
	after := chain(t, "b", 1, bKey, 6, newer[1].Hash, 1, "old")
	if _, err := e.log.AppendRemote(bg, after[0]); !errors.Is(err, ErrFenced) {
		t.Fatalf("old epoch after the new head: %v", err)
	}
	if h := e.log.Head("b"); h.Seq != 6 || h.Epoch != 2 || h.Hash != newer[1].Hash {
		t.Fatalf("head %+v", h)
	}
	if q, _ := e.log.Quarantined("b"); len(q) != 4 {
		t.Fatalf("fenced entries kept: %d", len(q))
	}
}

func TestClockSetBackAcrossRestart(t *testing.T) {
	now := time.UnixMilli(2_000_000_000_000)
	clock := func() time.Time { return now }
	e := newEnv(t, "a", func(c *Config) { c.Clock = hlc.New(clock) })
	first, err := e.log.Write(bg, put("t", "k", map[string]any{"v": 1}))
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(-time.Hour) // the machine's clock is set back, then the node restarts
	e.reopen(func(c *Config) { c.Clock = hlc.New(clock) })
	second, err := e.log.Write(bg, put("t", "k", map[string]any{"v": 2}))
	if err != nil {
		t.Fatal(err)
	}
	if second.HLC <= first.HLC {
		t.Fatalf("entry written after the restart has HLC %d, not after %d", second.HLC, first.HLC)
	}
}

// An entry written with a newer practice software (App above this site's)
// is stored and served but held; once the site's practice software reaches
// that version, ReleaseHeld applies it without a restart. Own entries carry
// the site's version and the schema that says so.
func TestNewerPracticeSchemaHeldUntilReleased(t *testing.T) {
	var app atomic.Uint32
	app.Store(3)
	e := newEnv(t, "a", func(c *Config) { c.App = app.Load })
	bKey := e.keys.add(t, "b", 1)
	ent := &wire.Entry{Family: testFamily, Site: "b", Epoch: 1, Seq: 1, HLC: 1, Schema: wire.SchemaFor(4), App: 4,
		Ops: put("t", "k", map[string]any{"allergies": "penicillin"})}
	s, err := wire.Sign(ent, bKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.AppendRemote(bg, s); err != nil {
		t.Fatal(err)
	}
	if e.applied(s.ID()) || e.log.Head("b").Seq != 1 {
		t.Fatal("an entry of a newer practice software was applied, or not stored")
	}
	if err := e.log.ReleaseHeld(bg); err != nil || e.applied(s.ID()) {
		t.Fatalf("released before the upgrade (%v)", err)
	}
	app.Store(4)
	if err := e.log.ReleaseHeld(bg); err != nil {
		t.Fatal(err)
	}
	if !e.applied(s.ID()) {
		t.Fatal("not applied after the practice software's upgrade")
	}
	if n, _ := e.log.Held(); n != 0 {
		t.Fatalf("held after the upgrade = %d", n)
	}
	own, err := e.log.Write(bg, put("t", "x", map[string]any{"v": 1}))
	if err != nil {
		t.Fatal(err)
	}
	if own.App != 4 || own.Schema != 2 {
		t.Fatalf("own entry carries app %d schema %d, want 4 and 2", own.App, own.Schema)
	}
}
