package state

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// A filter holds every key added to it, and at its capacity says of about 1 %
// of keys never added that they may have been; past it, it grows a layer at
// a time and still holds every key.
func TestPresenceFilter(t *testing.T) {
	const n = 50_000
	p := newPresence(n)
	for i := range n - 1 {
		p.add(recordKey("patients", fmt.Sprint(i)))
	}
	if l := len(*p.layers.Load()); l != 1 {
		t.Fatalf("%d layers below its capacity", l)
	}
	wrong := 0
	for i := n; i < 2*n; i++ {
		if p.mayHold(recordKey("patients", fmt.Sprint(i))) {
			wrong++
		}
	}
	if rate := float64(wrong) / n; rate > 0.03 {
		t.Fatalf("%.2f %% of keys never added may be held; want about 1 %%", 100*rate)
	}
	for i := n - 1; i < 4*n; i++ {
		p.add(recordKey("patients", fmt.Sprint(i)))
	}
	if l, c := len(*p.layers.Load()), p.capacity(); l != 3 || c != 7*n {
		t.Fatalf("after %d keys: %d layers for %d keys; want 3 layers for %d", 4*n, l, c, 7*n)
	}
	for i := range 4 * n {
		if !p.mayHold(recordKey("patients", fmt.Sprint(i))) {
			t.Fatalf("key %d was added and is not held", i)
		}
	}
	wrong = 0
	for i := 4 * n; i < 5*n; i++ {
		if p.mayHold(recordKey("patients", fmt.Sprint(i))) {
			wrong++
		}
	}
	if rate := float64(wrong) / n; rate > 0.05 {
		t.Fatalf("grown: %.2f %% of keys never added may be held; want about 2 %%", 100*rate)
	}
}

// Keys added from several goroutines while layers are appended are all held.
func TestPresenceFilterGrowsUnderConcurrentAdds(t *testing.T) {
	p := newPresence(16)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				p.add(recordKey("notes", fmt.Sprint(g, "-", i)))
			}
		})
	}
	wg.Wait()
	for g := range 4 {
		for i := range 2000 {
			if !p.mayHold(recordKey("notes", fmt.Sprint(g, "-", i))) {
				t.Fatalf("key %d-%d was added and is not held", g, i)
			}
		}
	}
}

// buildPresenceBg runs BuildPresence on s, stopped at the test's end.
func buildPresenceBg(t *testing.T, s *State) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.BuildPresence(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("BuildPresence: %v", err)
		}
	})
}

// ownWrite reads ahead as a writer of the node's own transaction does: the
// first such read starts the filter's build.
func ownWrite(t *testing.T, s *State) {
	t.Helper()
	if _, err := s.Prefetch([]wire.Op{put("patients", "any", nil)}); err != nil {
		t.Fatal(err)
	}
}

// No filter is built before the node writes records of its own: a site that
// only receives, or only serves a catch-up, reads as before.
func TestPresenceWaitsForOwnWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, db := openMem(t)
		buildPresenceBg(t, s)
		for i := range 3 {
			apply(t, s, db, ent("b", uint64(i+1), 10, nil, put("patients", fmt.Sprint(i), nil)))
		}
		synctest.Wait()
		if s.filter.Load() != nil {
			t.Fatal("a filter was built before any own write")
		}
		ownWrite(t, s)
		synctest.Wait() // the build waits for a call after the last one begun
		apply(t, s, db, ent("a", 1, 10, nil, put("patients", "own", nil)))
		synctest.Wait()
		if s.inUse() == nil {
			t.Fatal("no filter after own writes began")
		}
	})
}

// Records stored before the filter was built, and records written since,
// are read; a record never stored is not looked for.
func TestPresenceFilterCoversEveryStoredRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, db := openMem(t)
		apply(t, s, db, ent("a", 1, 10, nil, put("patients", "old", map[string]any{"n": int64(1)})))
		buildPresenceBg(t, s)
		ownWrite(t, s)
		synctest.Wait() // the build waits: call 1 may not be committed, for all it knows
		if s.inUse() != nil {
			t.Fatal("a filter was published before a later apply call began")
		}
		apply(t, s, db, ent("a", 2, 11, nil, put("patients", "new", map[string]any{"n": int64(2)})))
		synctest.Wait()
		if s.inUse() == nil {
			t.Fatal("no filter built")
		}
		for _, k := range []string{"old", "new"} {
			if s.neverStored(recordKey("patients", k)) {
				t.Fatalf("record %q is stored and the filter says it never was", k)
			}
			pre, err := s.Prefetch([]wire.Op{put("patients", k, nil)})
			if err != nil {
				t.Fatal(err)
			}
			if r := pre.(*prefetched).recs[0]; !r.stored {
				t.Fatalf("record %q read ahead as not stored", k)
			}
		}
		if !s.neverStored(recordKey("patients", "never")) {
			t.Fatal("the filter holds a record never stored (or is not in use)")
		}
	})
}

// The build waits for the apply call under way, whose batch may be committed
// after the build's snapshot, until a later call begins; then the records
// that call stored are in the filter.
func TestPresenceBuildWaitsForTheCallUnderWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, db := openMem(t)
		apply(t, s, db, ent("a", 1, 10, nil, put("patients", "p1", nil)))
		b := db.NewIndexedBatch() // call 2 under way: p2
		if err := s.ApplyAll(b, []*wire.Signed{ent("a", 2, 11, nil, put("patients", "p2", nil))}); err != nil {
			t.Fatal(err)
		}
		buildPresenceBg(t, s)
		ownWrite(t, s)
		synctest.Wait()
		if s.inUse() != nil {
			t.Fatal("a filter was published while an apply call was under way")
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
		apply(t, s, db, ent("a", 3, 12, nil, put("patients", "p3", nil))) // call 3 begins
		synctest.Wait()
		if s.inUse() == nil {
			t.Fatal("no filter once a later call began")
		}
		for _, k := range []string{"p1", "p2", "p3"} {
			if s.neverStored(recordKey("patients", k)) {
				t.Fatalf("record %s is stored and the filter says it never was", k)
			}
		}
	})
}

// A filter outgrown by the records written grows: the records it holds and
// those written later are all held, with no new scan.
func TestPresenceFilterGrowsWithTheRecords(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, db := openMem(t)
		s.presenceMin = 4
		buildPresenceBg(t, s)
		ownWrite(t, s)
		synctest.Wait()
		p := s.inUse()
		if p == nil || p.capacity() != 4 {
			t.Fatalf("filter %+v: want capacity 4", p)
		}
		for i := range 20 {
			apply(t, s, db, ent("a", uint64(i+1), 10, nil, put("patients", fmt.Sprint(i), nil)))
		}
		if s.inUse() != p || len(*p.layers.Load()) < 3 {
			t.Fatalf("after 20 records: %d layers; want the same filter, grown", len(*p.layers.Load()))
		}
		for i := range 20 {
			if s.neverStored(recordKey("patients", fmt.Sprint(i))) {
				t.Fatalf("record %d is stored and the grown filter says it never was", i)
			}
		}
	})
}

// TestPresenceKeepsApplyExact: a state whose filter is built, and grows,
// while entries are applied (read ahead or not, in small calls
// and in runs long enough to be read with one iterator, with Clears between)
// ends byte for byte as one without a filter. A filter that missed a stored
// record would have a put start it afresh, losing its other fields.
func TestPresenceKeepsApplyExact(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 23))
			fast, fdb := openMem(t)
			slow, sdb := openMem(t)
			fast.presenceMin = 8
			// One field of several each time: a record read as absent
			// would lose the others.
			maker := &entryMaker{rng: rng, keys: 300, dels: 5, fields: func() map[string]any {
				return map[string]any{fmt.Sprint("f", rng.IntN(4)): int64(rng.IntN(5))}
			}}
			entry := maker.next
			both := func(es []*wire.Signed, pre []any) {
				applyBoth(t, fdb, sdb, slow, es, func(b *pebble.Batch) error { return fast.ApplyPrefetched(b, es, pre) })
			}
			for range 10 { // records stored before the first build
				both([]*wire.Signed{entry()}, nil)
			}
			buildPresenceBg(t, fast)
			var upcoming []*wire.Signed
			reads := map[*wire.Signed]any{}
			for round := range 150 {
				for len(upcoming) < 10 {
					upcoming = append(upcoming, entry())
				}
				for _, e := range upcoming {
					if rng.IntN(3) == 0 {
						p, err := fast.Prefetch(e.Payload())
						if err != nil {
							t.Fatal(err)
						}
						reads[e] = p
					}
				}
				switch {
				case round%37 == 36:
					mustClear(t, fast)
					mustClear(t, slow)
				case round%11 == 10: // a catch-up's run, read with one iterator
					run := make([]*wire.Signed, readAheadEntries)
					for i := range run {
						run[i] = entry()
					}
					both(run, nil)
					continue
				}
				es := upcoming[:1+rng.IntN(4)]
				upcoming = upcoming[len(es):]
				pre := make([]any, len(es))
				for i, e := range es {
					pre[i] = reads[e]
					delete(reads, e)
				}
				both(es, pre)
			}
			if p := fast.inUse(); p == nil || len(*p.layers.Load()) < 3 {
				t.Fatal("the filter did not grow: the test did not see layers added")
			}
			mustMatch(t, "the filtered state", fast, fdb, slow, sdb)
		})
	}
}
