package txlog

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
)

// groupRun is chain as a writer with one signature per commit group writes it:
// only the last entry is signed.
func groupRun(t testing.TB, site string, key ed25519.PrivateKey, prevSeq uint64, prev wire.Hash, n int, salt string) []*wire.Signed {
	t.Helper()
	out := chain(t, site, 1, key, prevSeq, prev, n, salt)
	for _, s := range out[:n-1] {
		s.Sig = nil
	}
	return out
}

// unsigned returns a copy of s without its signature.
func unsigned(s *wire.Signed) *wire.Signed {
	c := *s
	c.Sig = nil
	return &c
}

// A request of several transactions is one commit group: only its last
// entry is signed, every entry verifies through it, and a large request is
// signed at least every wire.MaxGroupEntries entries.
func TestOwnGroupSignsItsEnd(t *testing.T) {
	var mu sync.Mutex
	var reported [][]*wire.Signed
	e := newEnv(t, "a", func(c *Config) {
		c.Committed = func(es []*wire.Signed) {
			mu.Lock()
			reported = append(reported, es)
			mu.Unlock()
		}
	})
	txs := make([][]wire.Op, 10)
	for i := range txs {
		txs[i] = put("patients", fmt.Sprint(i), map[string]any{"n": i})
	}
	out, err := e.log.WriteMany(bg, txs)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range out {
		if s.IsSigned() != (i == len(out)-1) {
			t.Fatalf("entry %s signed %v: only the group's last entry must be", s.ID(), s.IsSigned())
		}
	}
	stored, err := e.log.Range("a", 1, 0)
	if err != nil || len(stored) != 10 {
		t.Fatalf("range: %d entries, %v", len(stored), err)
	}
	pub := e.self.Key.Public().(ed25519.PublicKey)
	if err := wire.VerifyRun(stored, func(string, uint64) (ed25519.PublicKey, error) { return pub, nil }); err != nil {
		t.Fatalf("the stored group does not verify: %v", err)
	}
	if err := stored[3].Verify(pub); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("Verify of an unsigned entry alone: %v, want ErrSignature", err)
	}
	mu.Lock()
	if len(reported) != 1 || len(reported[0]) != 10 || reported[0][9].Hash != out[9].Hash {
		t.Fatalf("Committed saw %d runs, want the group of 10", len(reported))
	}
	mu.Unlock()

	big := make([][]wire.Op, 600)
	for i := range big {
		big[i] = put("patients", fmt.Sprint("big", i), map[string]any{"n": i})
	}
	out, err = e.log.WriteMany(bg, big)
	if err != nil {
		t.Fatal(err)
	}
	var signedAt []int
	for i, s := range out {
		if s.IsSigned() {
			signedAt = append(signedAt, i+1)
		}
	}
	if !slices.Equal(signedAt, []int{256, 512, 600}) {
		t.Fatalf("a group of 600 signed at %v, want every %d and its end", signedAt, wire.MaxGroupEntries)
	}
	if h := e.log.Head("a"); h.Seq != 610 {
		t.Fatalf("head %d", h.Seq)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 || rep.Entries != 610 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// Concurrent writers share commit groups: after every write is answered,
// the head is signed, fewer entries are signed than written, and the log
// verifies end to end.
func TestConcurrentWritersShareSignatures(t *testing.T) {
	e := newEnv(t, "a", nil)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 40 {
				if _, err := e.log.Write(bg, put("p", fmt.Sprint(w, "-", i), map[string]any{"n": i})); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	h := e.log.Head("a")
	head, err := e.log.Get("a", h.Seq)
	if err != nil || !head.IsSigned() || h.Seq != 640 {
		t.Fatalf("head %d signed %v (%v): the head of a durable log must be signed", h.Seq, head != nil && head.IsSigned(), err)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	all, _ := e.log.Range("a", 1, 0)
	n := 0
	for _, s := range all {
		if s.IsSigned() {
			n++
		}
	}
	t.Logf("%d of %d entries signed", n, len(all))
}

// A run from a peer is taken when it chains and its last entry is signed;
// every way of passing off entries the site did not sign is refused, and
// nothing of a refused run is stored.
func TestGroupRunsFromPeers(t *testing.T) {
	e := newEnv(t, "a", nil)
	bKey := e.keys.add(t, "b", 1)
	other := e.keys.add(t, "x", 1) // a key that is not b's
	first := groupRun(t, "b", bKey, 0, wire.Hash{}, 4, "main")
	if res, err := e.log.AppendRun(bg, first); err != nil || res.Appended != 4 {
		t.Fatalf("a group: %+v %v", res, err)
	}
	next := groupRun(t, "b", bKey, 4, first[3].Hash, 4, "main")

	forgedEnd := groupRun(t, "b", other, 4, first[3].Hash, 4, "main")
	altered := slices.Clone(next)
	altered[1] = unsigned(chain(t, "b", 1, bKey, 5, next[0].Hash, 1, "altered")[0])
	branch := groupRun(t, "b", bKey, 5, next[0].Hash, 3, "clone") // another copy from #6
	spliced := []*wire.Signed{next[0], next[1], branch[1], branch[2]}
	for _, tc := range []struct {
		name string
		run  []*wire.Signed
		want error
	}{
		{"forged group end", forgedEnd, wire.ErrSignature},
		{"altered unsigned middle", altered, ErrChain},
		{"spliced from two branches", spliced, ErrChain},
		{"no signed end", next[:3], wire.ErrSignature},
		{"one unsigned entry", next[:1], wire.ErrSignature},
	} {
		if _, err := e.log.AppendRun(bg, tc.run); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if h := e.log.Head("b"); h.Seq != 4 {
			t.Fatalf("%s: head moved to %d", tc.name, h.Seq)
		}
		if _, err := e.log.Get("b", 5); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: an entry of a refused run is readable: %v", tc.name, err)
		}
	}
	if _, err := e.log.AppendRemote(bg, next[0]); !errors.Is(err, wire.ErrSignature) || !strings.Contains(err.Error(), "no signature") {
		t.Fatalf("a gossiped unsigned entry alone: %v, want a refusal that says it is unsigned", err)
	}
	if len(e.log.Forks()) != 0 {
		t.Fatal("a refused run recorded a fork")
	}
	if res, err := e.log.AppendRun(bg, next); err != nil || res.Appended != 4 {
		t.Fatalf("the genuine group after the refusals: %+v %v", res, err)
	}
	// A run that overlaps what is held and ends signed is taken for its new part.
	last := groupRun(t, "b", bKey, 8, next[3].Hash, 2, "main")
	if res, err := e.log.AppendRun(bg, append(slices.Clone(next[2:]), last...)); err != nil || res.Appended != 2 || res.Duplicates != 2 {
		t.Fatalf("overlapping run: %+v %v", res, err)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// Verify accepts unsigned entries only when a signed entry of their chain
// and epoch follows them: a stored log whose last entry lost its signature
// is damaged, and so is every unsigned entry before it.
func TestVerifyNeedsSignedGroupEnds(t *testing.T) {
	e := newEnv(t, "a", nil)
	txs := make([][]wire.Op, 5)
	for i := range txs {
		txs[i] = put("t", fmt.Sprint(i), map[string]any{"v": i})
	}
	out, err := e.log.WriteMany(bg, txs)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.Set(e.log.keys.entry("a", 5), unsigned(out[4]).Marshal(), nil); err != nil {
		t.Fatal(err)
	}
	rep, err := e.log.Verify(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, d := range rep.Damage {
		if !strings.Contains(d.Problem, "unsigned") {
			t.Errorf("unexpected damage: %s", d)
		}
		seqs = append(seqs, d.Seq)
	}
	slices.Sort(seqs)
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("damage at %v, want every entry of the unsigned group: %v", seqs, rep.Damage)
	}
}

// A fork whose divergent entries are inside commit groups: the evidence and
// the proof carry each branch up to its signed group end, a third party
// takes the proof, and one branch alone or a spliced branch proves nothing.
func TestForkInsideGroups(t *testing.T) {
	e1 := newEnv(t, "a", nil)
	bKey := e1.keys.add(t, "b", 1)
	main := groupRun(t, "b", bKey, 0, wire.Hash{}, 6, "main")
	branch := groupRun(t, "b", bKey, 2, main[1].Hash, 5, "clone") // parts at #3, both unsigned there
	if _, err := e1.log.AppendRun(bg, main); err != nil {
		t.Fatal(err)
	}
	res, err := e1.log.AppendRun(bg, branch)
	var fe *ForkError
	if !errors.As(err, &fe) || fe.Seq != 3 || fe.Held != main[2].Hash || fe.Offered != branch[0].Hash {
		t.Fatalf("fork: %v", err)
	}
	if res.Quarantined != 4 {
		t.Fatalf("quarantined %d, want 4", res.Quarantined)
	}
	held, other, err := e1.log.ForkProof("b")
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 4 || held[0].Hash != main[2].Hash || !held[3].IsSigned() || len(other) != 5 || other[0].Hash != branch[0].Hash || !other[4].IsSigned() {
		t.Fatalf("proof: held %d entries, other %d: want each branch to its signed end", len(held), len(other))
	}
	e1.reopen(nil)
	if h, o, err := e1.log.ForkProof("b"); err != nil || len(h) != 4 || len(o) != 5 {
		t.Fatalf("proof after reopen: %d %d %v", len(h), len(o), err)
	}

	e2 := newEnv(t, "a", nil)
	e2.keys.keys["b"] = e1.keys.keys["b"]
	if _, err := e2.log.AppendRun(bg, main); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		a, b []*wire.Signed
		want error
	}{
		{"unsigned fork point alone", held[:1], other[:1], wire.ErrSignature},
		{"one branch without its end", held, other[:3], wire.ErrSignature},
		{"spliced branch", held, []*wire.Signed{other[0], other[1], main[4], main[5]}, ErrChain},
		{"forged branch end", held, append(slices.Clone(other[:4]), forgedCopy(other[4])), wire.ErrSignature},
	} {
		if added, err := e2.log.AddForkProof(bg, tc.a, tc.b); !errors.Is(err, tc.want) || added {
			t.Errorf("%s: %v (added %v), want %v", tc.name, err, added, tc.want)
		}
	}
	if len(e2.log.Forks()) != 0 {
		t.Fatal("a refused proof recorded a fork")
	}
	added, err := e2.log.AddForkProof(bg, held, other)
	if err != nil || !added {
		t.Fatalf("proof: %v %v", added, err)
	}
	h2, o2, err := e2.log.ForkProof("b")
	if err != nil || len(h2) != 4 || len(o2) != 5 || o2[4].Hash != other[4].Hash {
		t.Fatalf("re-proof: %d %d %v", len(h2), len(o2), err)
	}
	// The third party's proof passes on again.
	e3 := newEnv(t, "a", nil)
	e3.keys.keys["b"] = e1.keys.keys["b"]
	if added, err := e3.log.AddForkProof(bg, h2, o2); err != nil || !added {
		t.Fatalf("passed-on proof: %v %v", added, err)
	}
}

// forgedCopy returns s with a signature that is not the site's.
func forgedCopy(s *wire.Signed) *wire.Signed {
	c := *s
	c.Sig = make([]byte, 64)
	return &c
}
