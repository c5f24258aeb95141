package txlog

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/state"
)

var _ Prefetcher = (*state.State)(nil)

// Concurrent writers of the same few records, with the state reading ahead
// on their goroutines (Prefetcher), and a remote site's runs mixed into the
// groups, leave the state that applying the logged entries one by one
// leaves: the log passes only reads ahead that nothing committed after.
func TestPrefetchedWritesLeaveTheSameState(t *testing.T) {
	var st *state.State
	e := newEnv(t, "a", func(c *Config) {
		var err error
		if st, err = state.Open(c.DB, nil); err != nil {
			t.Fatal(err)
		}
		c.Apply = st
	})
	bKey := e.keys.add(t, "b", 1)
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				k := fmt.Sprint("p", (w+i)%3)
				ops := put("patients", k, map[string]any{fmt.Sprint("f", i%3): int64(w*1000 + i)})
				if i%7 == 3 {
					ops = []wire.Op{{Kind: wire.OpDelete, Table: "patients", Key: k}}
				}
				if _, err := e.log.Write(bg, ops); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() { // another site writes the same records
		var prev wire.Hash
		for i := range 10 {
			run := chain(t, "b", 1, bKey, uint64(i), prev, 1, fmt.Sprint(i))
			run[0].Ops[0].Key = fmt.Sprint("p", i%5)
			var err error
			if run[0].Body, err = wire.EncodeBody(&run[0].Entry); err != nil {
				t.Error(err)
				return
			}
			run[0].Hash = wire.HashOf(run[0].Body)
			run[0].Sig = signHash(&Identity{Key: bKey}, run[0].Hash)
			if _, err := e.log.AppendRun(bg, run); err != nil {
				t.Error(err)
				return
			}
			prev = run[0].Hash
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}

	// The same entries applied one by one, in the order the log applied
	// them (each site's in seq order; the sites touch disjoint fields only
	// through versions, which do not depend on the order).
	db, err := store.Open("ref", store.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ref, err := state.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	var all []*wire.Signed
	for _, site := range []string{"a", "b"} {
		es, err := e.log.Range(site, 1, writers*each)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, es...)
	}
	if len(all) != writers*each+10 {
		t.Fatalf("%d entries logged, want %d", len(all), writers*each+10)
	}
	for _, s := range all {
		b := db.NewIndexedBatch()
		if err := ref.ApplyAll(b, []*wire.Signed{s}); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	for _, table := range []string{"patients"} {
		for k := range 5 {
			got, gok, err := st.Get(table, fmt.Sprint("p", k))
			if err != nil {
				t.Fatal(err)
			}
			want, wok, err := ref.Get(table, fmt.Sprint("p", k))
			if err != nil {
				t.Fatal(err)
			}
			if gok != wok || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("record p%d: the log left %v (%v), one by one %v (%v)", k, got, gok, want, wok)
			}
		}
	}
	g, err := st.Digest()
	if err != nil {
		t.Fatal(err)
	}
	w, err := ref.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g[:], w[:]) {
		t.Fatal("the state digests differ")
	}
}

// heldPrefetch holds a writer between its read ahead and its request.
type heldPrefetch struct {
	*state.State
	first      atomic.Bool
	read, hold chan struct{}
}

// Prefetch holds the first writer after its read.
func (h *heldPrefetch) Prefetch(ops []wire.Op) (any, error) {
	p, err := h.State.Prefetch(ops)
	if h.first.CompareAndSwap(false, true) {
		h.read <- struct{}{}
		<-h.hold
	}
	return p, err
}

// A read ahead that a group committed after is not used: the committer reads
// again and the writer's put merges with what that group wrote.
func TestStaleReadAheadIsNotUsed(t *testing.T) {
	h := &heldPrefetch{read: make(chan struct{}), hold: make(chan struct{})}
	e := newEnv(t, "a", func(c *Config) {
		st, err := state.Open(c.DB, nil)
		if err != nil {
			t.Fatal(err)
		}
		h.State = st
		c.Apply = h
	})
	errs := make(chan error, 1)
	go func() {
		_, err := e.log.Write(bg, put("patients", "held", map[string]any{"x": int64(1)}))
		errs <- err
	}()
	<-h.read // it read the record as absent
	if _, err := e.log.Write(bg, put("patients", "held", map[string]any{"y": int64(2)})); err != nil {
		t.Fatal(err)
	}
	close(h.hold)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	r, ok, err := h.Get("patients", "held")
	if err != nil || !ok {
		t.Fatalf("record: %v %v", ok, err)
	}
	if len(r.Fields) != 2 || r.Fields["x"] != int64(1) || r.Fields["y"] != int64(2) {
		t.Fatalf("record fields %v, want x and y", r.Fields)
	}
}
