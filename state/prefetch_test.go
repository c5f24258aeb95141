package state

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// TestApplyPrefetchedMatchesApplyAll: entries applied with records read
// ahead (Prefetch before the batch, as a writer does) leave exactly the bytes
// ApplyAll leaves, when earlier entries of the same call write the same
// records (puts and deletes), when calls committed since the read (or the
// call under way when it was taken) wrote them, when some entries were not
// read ahead, and when a Clear came between the reads and the apply.
func TestApplyPrefetchedMatchesApplyAll(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			fast, fdb := openMem(t)
			slow, sdb := openMem(t)
			maker := &entryMaker{rng: rng, keys: 20, dels: 4, deps: true, fields: func() map[string]any {
				return map[string]any{"n": int64(rng.IntN(5)), "s": fmt.Sprint(rng.IntN(3))}
			}}
			entry := maker.next
			// Entries are made ahead (upcoming) and read ahead at random
			// times: in the round they are applied, rounds before (with
			// calls committed since), or while fast's batch is applied but
			// not yet committed.
			var upcoming []*wire.Signed
			reads := map[*wire.Signed]any{}
			used := 0
			readAhead := func() {
				for len(upcoming) < 20 {
					upcoming = append(upcoming, entry())
				}
				for _, e := range upcoming {
					if rng.IntN(4) > 0 {
						continue
					}
					p, err := fast.Prefetch(e.Payload())
					if err != nil {
						t.Fatal(err)
					}
					reads[e] = p
				}
			}
			for round := range 80 {
				readAhead()
				es := upcoming[:1+rng.IntN(6)]
				upcoming = upcoming[len(es):]
				pre := make([]any, len(es))
				for i, e := range es {
					if pre[i] = reads[e]; pre[i] != nil {
						used++
					}
					delete(reads, e)
				}
				if round%17 == 16 { // the reads ahead are stale now
					mustClear(t, fast)
					mustClear(t, slow)
				}
				applyBoth(t, fdb, sdb, slow, es, func(b *pebble.Batch) error {
					err := fast.ApplyPrefetched(b, es, pre)
					if rng.IntN(3) == 0 {
						readAhead() // during the call, before its commit
					}
					return err
				})
			}
			if used == 0 {
				t.Fatal("nothing was read ahead")
			}
			mustMatch(t, "ApplyPrefetched", fast, fdb, slow, sdb)
		})
	}
}

// A record read ahead is used: applying does not read it again, though
// apply calls committed since wrote other records. A write the State cannot
// know of (straight into the database, which the log never does: see
// txlog.Prefetcher) shows that the read ahead, not the database, was used.
func TestApplyPrefetchedUsesTheReadAhead(t *testing.T) {
	s, db := openMem(t)
	e1 := ent("a", 1, 10, nil, put("patients", "p1", map[string]any{"n": int64(1)}))
	early, err := s.Prefetch(e1.Payload())
	if err != nil {
		t.Fatal(err)
	}
	apply(t, s, db, ent("b", 1, 20, nil, put("patients", "p2", map[string]any{"m": int64(2)})))
	writeBehind(t, s, db, "patients", "p1")
	applyPrefetched(t, s, db, e1, early)
	r, ok := mustGet(t, s, "patients", "p1")
	if !ok || len(r.Fields) != 1 || r.Fields["n"] != int64(1) {
		t.Fatalf("record %+v: want only the field of the entry read ahead (the read ahead was used)", r)
	}
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := s.ApplyPrefetched(b, []*wire.Signed{e1}, []any{"not a read"}); err == nil {
		t.Fatal("a foreign read ahead was taken")
	}
}

// A read ahead of a record that a later apply call wrote, or that the call
// under way when the read began wrote (its batch committed after the read),
// is read again; so is one older than the State remembers
// (recentApplies calls).
func TestApplyPrefetchedRereadsWhatCallsSinceWrote(t *testing.T) {
	fields := func(t *testing.T, s *State) map[string]any {
		t.Helper()
		r, ok := mustGet(t, s, "patients", "p1")
		if !ok {
			t.Fatal("p1 missing")
		}
		return r.Fields
	}
	e1 := ent("a", 1, 10, nil, put("patients", "p1", map[string]any{"n": int64(1)}))
	e2 := ent("b", 1, 20, nil, put("patients", "p1", map[string]any{"m": int64(2)}))
	t.Run("written after the read", func(t *testing.T) {
		s, db := openMem(t)
		pre, err := s.Prefetch(e1.Payload())
		if err != nil {
			t.Fatal(err)
		}
		apply(t, s, db, e2)
		applyPrefetched(t, s, db, e1, pre)
		if f := fields(t, s); len(f) != 2 {
			t.Fatalf("fields %v: want n and m (the stale read was used)", f)
		}
	})
	t.Run("written by the call under way", func(t *testing.T) {
		s, db := openMem(t)
		b := db.NewIndexedBatch()
		if err := s.ApplyAll(b, []*wire.Signed{e2}); err != nil {
			t.Fatal(err)
		}
		pre, err := s.Prefetch(e1.Payload()) // before b is committed: p1 absent
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
		applyPrefetched(t, s, db, e1, pre)
		if f := fields(t, s); len(f) != 2 {
			t.Fatalf("fields %v: want n and m (the stale read was used)", f)
		}
	})
	t.Run("after a large call that keeps no record of its writes", func(t *testing.T) {
		s, db := openMem(t)
		pre, err := s.Prefetch(e1.Payload())
		if err != nil {
			t.Fatal(err)
		}
		run := make([]*wire.Signed, readAheadEntries)
		for i := range run {
			run[i] = ent("c", uint64(i+1), 5, nil, put("notes", fmt.Sprint(i), nil))
		}
		applyBatchAll(t, s, db, run)
		writeBehind(t, s, db, "patients", "p1")
		applyPrefetched(t, s, db, e1, pre)
		if f := fields(t, s); len(f) != 2 {
			t.Fatalf("fields %v: want n and the field written behind (the read was used)", f)
		}
	})
	t.Run("older than the State remembers", func(t *testing.T) {
		s, db := openMem(t)
		pre, err := s.Prefetch(e1.Payload())
		if err != nil {
			t.Fatal(err)
		}
		for i := range recentApplies + 1 {
			apply(t, s, db, ent("c", uint64(i+1), 5, nil, put("notes", fmt.Sprint(i), nil)))
		}
		writeBehind(t, s, db, "patients", "p1")
		applyPrefetched(t, s, db, e1, pre)
		if f := fields(t, s); len(f) != 2 {
			t.Fatalf("fields %v: want n and the field written behind (the old read was used)", f)
		}
	})
}

// writeBehind stores a record of one field under table/key straight into
// the database, past the State's apply calls.
func writeBehind(t *testing.T, s *State, db *pebble.DB, table, key string) {
	t.Helper()
	other, odb := openMem(t)
	apply(t, other, odb, ent("z", 1, 1000, nil, put(table, key, map[string]any{"behind": "x"})))
	raw, ok, err := getCopy(odb, recordKey(table, key))
	if err != nil || !ok {
		t.Fatalf("record written behind: %v %v", ok, err)
	}
	if err := db.Set(recordKey(table, key), raw, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// applyBatchAll applies es with one ApplyAll call, in a batch of its own.
func applyBatchAll(t *testing.T, s *State, db *pebble.DB, es []*wire.Signed) {
	t.Helper()
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := s.ApplyAll(b, es); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// applyPrefetched applies e with its read ahead in a batch of its own.
func applyPrefetched(t *testing.T, s *State, db *pebble.DB, e *wire.Signed, pre any) {
	t.Helper()
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := s.ApplyPrefetched(b, []*wire.Signed{e}, []any{pre}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}
