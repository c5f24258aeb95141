package keyring

import (
	"crypto/ed25519"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/seal"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

type site struct {
	name string
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	db   *pebble.DB
	ring *Ring
	op   *Opener
}

func newSite(t *testing.T, name string) *site {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	db, err := store.Open("", store.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r, err := Open(db, "fam", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return &site{name: name, pub: pub, priv: priv, db: db, ring: r,
		op: &Opener{Ring: r, Self: Self{Site: name, Epoch: 1, Key: priv}, State: nopState{}}}
}

type nopState struct{}

func (nopState) ApplyAll(*pebble.Batch, []*wire.Signed) error { return nil }

func (s *site) recipient() Recipient { return Recipient{Site: s.name, Epoch: 1, Public: s.pub} }

// take applies an entry at s through its opener, in a committed batch.
func (s *site) take(t *testing.T, e *wire.Signed) {
	t.Helper()
	b := s.db.NewIndexedBatch()
	defer b.Close()
	if err := s.op.ApplyAll(b, []*wire.Signed{e}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

func sealed(t *testing.T, k seal.Key, seq uint64, grants []wire.Grant) *wire.Signed {
	t.Helper()
	e := wire.Entry{Family: "fam", Site: "a", Epoch: 1, Seq: seq, HLC: 7, Schema: 1, Grants: grants,
		Ops: []wire.Op{{Kind: wire.OpPut, Table: "patients", Key: "p1", Fields: map[string]any{"name": "Ada"}}}}
	if seq > 1 {
		e.Prev[0] = 1
	}
	if err := SealOps(k, &e); err != nil {
		t.Fatal(err)
	}
	e.Opened = nil // as it arrives elsewhere
	return &wire.Signed{Entry: e}
}

// TestGrantOpensOnlyForItsRecipient: a key given to b in the entry it
// seals opens that entry at b, is remembered across a reopen, and c (not
// given it) can neither hold it nor open the entry, but knows it exists.
func TestGrantOpensOnlyForItsRecipient(t *testing.T) {
	a, b, c := newSite(t, "a"), newSite(t, "b"), newSite(t, "c")
	k := seal.NewKey(1)
	if err := a.ring.Add(k, nil); err != nil {
		t.Fatal(err)
	}
	needs := a.ring.Needed([]Recipient{a.recipient(), b.recipient()}, time.Now())
	if len(needs) != 2 {
		t.Fatalf("needs %+v, want a and b", needs)
	}
	grants, err := a.ring.Offer(needs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e := sealed(t, k, 1, grants)
	b.take(t, e)
	if !b.ring.Has(k.ID) || len(e.Opened) != 1 || e.Opened[0].Fields["name"] != "Ada" {
		t.Fatalf("b holds the key %v and opened %+v", b.ring.Has(k.ID), e.Opened)
	}
	e2 := sealed(t, k, 1, grants)
	c.take(t, e2)
	if c.ring.Has(k.ID) || e2.Opened != nil {
		t.Fatal("c opened a key given to a and b")
	}
	if w := c.ring.Wanted(); len(w) != 1 || w[0] != k.ID {
		t.Fatalf("c wants %v, want the key it saw given", w)
	}
	r, err := Open(b.db, "fam", slog.New(slog.DiscardHandler))
	if err != nil || !r.Has(k.ID) {
		t.Fatalf("b lost the key at a reopen: %v", err)
	}
	// Nobody lacks the key any more among a and b; c does.
	if n := b.ring.Needed([]Recipient{a.recipient(), b.recipient(), c.recipient()}, time.Now()); len(n) != 1 || n[0].To.Site != "c" {
		t.Fatalf("needs %+v, want c only", n)
	}
}

// TestExcludedCertificateIsNeverGiven: a key made after a revocation lists
// the revoked certificate; no holder offers it there.
func TestExcludedCertificateIsNeverGiven(t *testing.T) {
	a, x := newSite(t, "a"), newSite(t, "x")
	k := seal.NewKey(2)
	if err := a.ring.Add(k, []string{Cert("x", 1)}); err != nil {
		t.Fatal(err)
	}
	if n := a.ring.Needed([]Recipient{x.recipient()}, time.Now()); len(n) != 0 {
		t.Fatalf("the revoked x is offered %+v", n)
	}
	if !a.ring.Covers([]string{Cert("x", 1)}) || a.ring.Covers([]string{Cert("y", 1)}) {
		t.Fatal("Covers does not follow the exclusions")
	}
}

// TestAlteredBodyAppliesNothing: a sealed body changed by one bit, or moved
// to another seq, does not open: the entry applies nothing.
func TestAlteredBodyAppliesNothing(t *testing.T) {
	a := newSite(t, "a")
	k := seal.NewKey(1)
	if err := a.ring.Add(k, nil); err != nil {
		t.Fatal(err)
	}
	e := sealed(t, k, 1, nil)
	e.Sealed[len(e.Sealed)-1] ^= 1
	a.take(t, e)
	if e.Opened != nil {
		t.Fatal("an altered body opened")
	}
	m := sealed(t, k, 1, nil)
	m.Seq, m.Prev[0] = 2, 1 // the same ciphertext at another place of the chain
	a.take(t, m)
	if m.Opened != nil {
		t.Fatal("a body moved to another seq opened")
	}
}
