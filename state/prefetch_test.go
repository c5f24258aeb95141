package state

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// TestApplyPrefetchedMatchesApplyAll: entries applied with records read
// ahead (Prefetch before the batch, as a writer does) leave exactly the bytes
// ApplyAll leaves, when earlier entries of the same call write the same
// records (puts and deletes), when some entries were not read ahead, and when
// a Clear came between the reads and the apply.
func TestApplyPrefetchedMatchesApplyAll(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			fast, fdb := openMem(t)
			slow, sdb := openMem(t)
			hlc := uint64(100)
			seq := map[string]uint64{}
			entry := func() *wire.Signed {
				site := []string{"a", "b", "c"}[rng.IntN(3)]
				seq[site]++
				hlc += uint64(rng.IntN(3))
				var ops []wire.Op
				for range 1 + rng.IntN(3) {
					tb, k := []string{"patients", "notes"}[rng.IntN(2)], fmt.Sprint(rng.IntN(20))
					if rng.IntN(4) == 0 {
						ops = append(ops, del(tb, k))
					} else {
						ops = append(ops, put(tb, k, map[string]any{"n": int64(rng.IntN(5)), "s": fmt.Sprint(rng.IntN(3))}))
					}
				}
				return ent(site, seq[site], hlc, map[string]uint64{"a": seq["a"]}, ops...)
			}
			used := 0
			for round := range 50 {
				es := make([]*wire.Signed, 1+rng.IntN(6))
				pre := make([]any, len(es))
				for i := range es {
					es[i] = entry()
					if rng.IntN(4) > 0 {
						p, err := fast.Prefetch(es[i].Payload())
						if err != nil {
							t.Fatal(err)
						}
						pre[i] = p
						used++
					}
				}
				if round%17 == 16 { // the reads ahead are stale now
					mustClear(t, fast)
					mustClear(t, slow)
				}
				for i, db := range []*pebble.DB{fdb, sdb} {
					b := db.NewIndexedBatch()
					var err error
					if i == 0 {
						err = fast.ApplyPrefetched(b, es, pre)
					} else {
						err = slow.ApplyAll(b, es)
					}
					if err != nil {
						t.Fatal(err)
					}
					if err := b.Commit(pebble.NoSync); err != nil {
						t.Fatal(err)
					}
					b.Close()
				}
			}
			if used == 0 {
				t.Fatal("nothing was read ahead")
			}
			f, s := dumpState(t, fdb), dumpState(t, sdb)
			if len(f) != len(s) {
				t.Fatalf("ApplyPrefetched left %d keys, ApplyAll %d", len(f), len(s))
			}
			for i := range f {
				if !bytes.Equal(f[i][0], s[i][0]) || !bytes.Equal(f[i][1], s[i][1]) {
					t.Fatalf("key %d differs: ApplyPrefetched %x=%x, ApplyAll %x=%x", i, f[i][0], f[i][1], s[i][0], s[i][1])
				}
			}
			if mustDigest(t, fast) != mustDigest(t, slow) {
				t.Fatal("digests differ")
			}
		})
	}
}

// A record read ahead is used: applying does not read it again. A read taken
// before another batch wrote the record would be wrong, which is why the log
// passes only reads with no commit since (see txlog.Prefetcher); here the
// stale read shows that the read ahead, not the database, was used.
func TestApplyPrefetchedUsesTheReadAhead(t *testing.T) {
	s, db := openMem(t)
	e1 := ent("a", 1, 10, nil, put("patients", "p1", map[string]any{"n": int64(1)}))
	stale, err := s.Prefetch(e1.Payload())
	if err != nil {
		t.Fatal(err)
	}
	apply(t, s, db, ent("b", 1, 20, nil, put("patients", "p1", map[string]any{"m": int64(2)})))
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := s.ApplyPrefetched(b, []*wire.Signed{e1}, []any{stale}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	r, ok := mustGet(t, s, "patients", "p1")
	if !ok || len(r.Fields) != 1 || r.Fields["n"] != int64(1) {
		t.Fatalf("record %+v: want only the field of the entry read ahead (the stale read was used)", r)
	}
	if err := s.ApplyPrefetched(b, []*wire.Signed{e1}, []any{"not a read"}); err == nil {
		t.Fatal("a foreign read ahead was taken")
	}
}
