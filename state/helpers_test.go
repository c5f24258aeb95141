package state

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// openMem opens a state on a fresh in-memory database, closed at cleanup.
func openMem(t testing.TB) (*State, *pebble.DB) {
	t.Helper()
	s, db := openMemNoCleanup(t)
	t.Cleanup(func() { _ = db.Close() })
	return s, db
}

// openMemNoCleanup opens a state on a fresh in-memory database the caller closes.
func openMemNoCleanup(t testing.TB) (*State, *pebble.DB) {
	t.Helper()
	db, err := store.Open("db", store.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db, slog.New(slog.DiscardHandler))
	if err != nil {
		_ = db.Close()
		t.Fatal(err)
	}
	return s, db
}

func put(table, key string, fields map[string]any) wire.Op {
	if fields == nil {
		fields = map[string]any{}
	}
	return wire.Op{Kind: wire.OpPut, Table: table, Key: key, Fields: fields}
}

func del(table, key string) wire.Op {
	return wire.Op{Kind: wire.OpDelete, Table: table, Key: key}
}

// ent builds an unsigned entry: Apply does not look at signatures.
func ent(site string, seq, hlc uint64, deps map[string]uint64, ops ...wire.Op) *wire.Signed {
	return &wire.Signed{Entry: wire.Entry{
		Family: "fam", Site: site, Epoch: 1, Seq: seq, HLC: hlc, Schema: wire.SchemaVersion, Deps: deps, Ops: ops,
	}}
}

// signed builds a really signed entry, as txlog would pass it.
func signed(t testing.TB, key ed25519.PrivateKey, site string, seq, hlc uint64, ops ...wire.Op) *wire.Signed {
	t.Helper()
	e := &wire.Entry{Family: "fam", Site: site, Epoch: 1, Seq: seq, HLC: hlc, Schema: wire.SchemaVersion, Ops: ops}
	if seq > 1 {
		e.Prev = wire.Hash{1}
	}
	sg, err := wire.Sign(e, key)
	if err != nil {
		t.Fatal(err)
	}
	return sg
}

// apply applies entries one batch each.
func apply(t testing.TB, s *State, db *pebble.DB, entries ...*wire.Signed) {
	t.Helper()
	for _, e := range entries {
		applyBatch(t, s, db, e)
	}
}

// applyBatch applies entries in one batch.
func applyBatch(t testing.TB, s *State, db *pebble.DB, entries ...*wire.Signed) {
	t.Helper()
	b := db.NewIndexedBatch()
	defer b.Close()
	for _, e := range entries {
		if err := s.Apply(b, e); err != nil {
			t.Fatalf("apply %s: %v", e.ID(), err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

func mustGet(t testing.TB, s *State, table, key string) (Record, bool) {
	t.Helper()
	r, ok, err := s.Get(table, key)
	if err != nil {
		t.Fatalf("get %s/%s: %v", table, key, err)
	}
	return r, ok
}

func mustDigest(t testing.TB, s *State) wire.Hash {
	t.Helper()
	d, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustClear(t testing.TB, s *State) {
	t.Helper()
	if err := s.Clear(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// applyBoth applies es to two states kept side by side: fastApply to the
// first (the way under test), ApplyAll to the second, each in a batch of its
// own database, committed.
func applyBoth(t testing.TB, fdb, sdb *pebble.DB, slow *State, es []*wire.Signed, fastApply func(*pebble.Batch) error) {
	t.Helper()
	for i, db := range []*pebble.DB{fdb, sdb} {
		b := db.NewIndexedBatch()
		var err error
		if i == 0 {
			err = fastApply(b)
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

// mustMatch fails unless the two states hold the same bytes, key for key,
// and the same digest: the first applied the way named way, the second with
// ApplyAll.
func mustMatch(t testing.TB, way string, fast *State, fdb *pebble.DB, slow *State, sdb *pebble.DB) {
	t.Helper()
	f, s := dumpState(t, fdb), dumpState(t, sdb)
	if len(f) != len(s) {
		t.Fatalf("%s left %d keys, ApplyAll %d", way, len(f), len(s))
	}
	for i := range f {
		if !bytes.Equal(f[i][0], s[i][0]) || !bytes.Equal(f[i][1], s[i][1]) {
			t.Fatalf("key %d differs: %s %x=%x, ApplyAll %x=%x", i, way, f[i][0], f[i][1], s[i][0], s[i][1])
		}
	}
	if mustDigest(t, fast) != mustDigest(t, slow) {
		t.Fatal("digests differ")
	}
}

// entryMaker makes random entries of sites a, b and c, each site's in seq
// order, with HLCs that grow: one to three operations each on keys 0 to
// keys-1 of two tables, a delete one time in dels and otherwise a put of
// fields(). With deps each entry says it saw site a's latest.
type entryMaker struct {
	rng    *rand.Rand
	keys   int
	dels   int
	fields func() map[string]any
	deps   bool
	hlc    uint64
	seq    map[string]uint64
}

func (m *entryMaker) next() *wire.Signed {
	if m.seq == nil {
		m.seq, m.hlc = map[string]uint64{}, 100
	}
	site := []string{"a", "b", "c"}[m.rng.IntN(3)]
	m.seq[site]++
	m.hlc += uint64(m.rng.IntN(3))
	var ops []wire.Op
	for range 1 + m.rng.IntN(3) {
		tb, k := []string{"patients", "notes"}[m.rng.IntN(2)], fmt.Sprint(m.rng.IntN(m.keys))
		if m.rng.IntN(m.dels) == 0 {
			ops = append(ops, del(tb, k))
		} else {
			ops = append(ops, put(tb, k, m.fields()))
		}
	}
	var deps map[string]uint64
	if m.deps {
		deps = map[string]uint64{"a": m.seq["a"]}
	}
	return ent(site, m.seq[site], m.hlc, deps, ops...)
}
