package state

import (
	"context"
	"crypto/ed25519"
	"log/slog"
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
