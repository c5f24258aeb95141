package txlog

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// SyncStats counts every sync that made entries durable, the entries, and
// the time: one sync per write for a lone writer, one for a batch, none for
// a Durable with nothing to save; many writers share syncs.
func TestSyncStatsCountSyncsAndEntries(t *testing.T) {
	e := newEnv(t, "a", nil)
	check := func(what string, syncs, entries uint64) SyncStats {
		t.Helper()
		s := e.log.SyncStats()
		if s.Syncs != syncs || s.Entries != entries {
			t.Fatalf("%s: %d syncs of %d entries, want %d of %d", what, s.Syncs, s.Entries, syncs, entries)
		}
		var n uint64
		for _, b := range s.Buckets {
			n += b
		}
		if n != s.Syncs {
			t.Fatalf("%s: buckets hold %d syncs of %d", what, n, s.Syncs)
		}
		if s.Syncs > 0 && s.Time <= 0 {
			t.Fatalf("%s: %d syncs took no time", what, s.Syncs)
		}
		return s
	}
	check("opened", 0, 0)
	for i := range 3 {
		if _, err := e.log.Write(bg, put("patients", fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	check("three writes one after another", 3, 3)
	if _, err := e.log.WriteMany(bg, [][]wire.Op{put("t", "1", nil), put("t", "2", nil), put("t", "3", nil), put("t", "4", nil)}); err != nil {
		t.Fatal(err)
	}
	check("a batch of four", 4, 7)
	if err := e.log.Durable(bg); err != nil {
		t.Fatal(err)
	}
	check("Durable with nothing to save", 4, 7)

	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 10 {
				if _, err := e.log.Write(bg, put("u", fmt.Sprint(w, "-", i), nil)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	s := e.log.SyncStats()
	if s.Entries != 167 || s.Syncs <= 4 || s.Syncs > 164 {
		t.Fatalf("16 writers: %d syncs of %d entries in all, want 167 entries in 5 to 164 syncs", s.Syncs, s.Entries)
	}
	check("after the writers", s.Syncs, 167)
}

// A sync is counted in the first bucket whose bound it does not exceed.
func TestSyncStatsBuckets(t *testing.T) {
	bounds := SyncBucketBounds()
	l := &Log{}
	s := &l.syncs
	one := []*pending{{grp: []*request{{}}, n: 2}}
	barrier := []*pending{{barrier: make(chan struct{})}}
	s.add(one, 0)
	s.add(one, bounds[0])
	s.add(one, bounds[0]+1)
	s.add(barrier, bounds[3])
	s.add(one, bounds[len(bounds)-1]+time.Nanosecond)
	s.add(one, time.Hour)
	got := l.SyncStats()
	want := make([]uint64, len(bounds)+1)
	want[0], want[1], want[3], want[len(bounds)] = 2, 1, 1, 2
	for i := range want {
		if got.Buckets[i] != want[i] {
			t.Fatalf("buckets %v, want %v", got.Buckets, want)
		}
	}
	if got.Syncs != 6 || got.Entries != 10 {
		t.Fatalf("%d syncs of %d entries, want 6 of 10", got.Syncs, got.Entries)
	}
}
