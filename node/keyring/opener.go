package keyring

import (
	"crypto/ed25519"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/seal"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/txlog"
)

// Self is the site's own certificate: grants to it are opened with its key.
type Self struct {
	Site  string
	Epoch uint64
	Key   ed25519.PrivateKey
}

// Opener is the log's applier at a site: it takes in the grants of every
// entry, opens sealed entries with the keys held, and hands them to the
// state. An entry that names a held key but does not open (altered, or
// sealed wrongly by its writer) applies nothing, at every site alike, and is
// logged.
type Opener struct {
	Ring  *Ring
	Self  Self
	State txlog.Applier
}

// ApplyAll implements txlog.Applier.
func (o *Opener) ApplyAll(b *pebble.Batch, es []*wire.Signed) error {
	if err := o.prepare(b, es); err != nil {
		return err
	}
	return o.State.ApplyAll(b, es)
}

// Prefetch implements txlog.Prefetcher: the state reads ahead if it can
// (an own entry's operations are known before it is sealed; nil otherwise).
func (o *Opener) Prefetch(ops []wire.Op) (any, error) {
	if p, ok := o.State.(txlog.Prefetcher); ok {
		return p.Prefetch(ops)
	}
	return nil, nil
}

// ApplyPrefetched implements txlog.Prefetcher.
func (o *Opener) ApplyPrefetched(b *pebble.Batch, es []*wire.Signed, pre []any) error {
	if err := o.prepare(b, es); err != nil {
		return err
	}
	if p, ok := o.State.(txlog.Prefetcher); ok {
		return p.ApplyPrefetched(b, es, pre)
	}
	return o.State.ApplyAll(b, es)
}

// ApplyLoad implements txlog.LoadApplier when the state does.
func (o *Opener) ApplyLoad(b *pebble.Batch, es []*wire.Signed, loads []uint64) error {
	if err := o.prepare(b, es); err != nil {
		return err
	}
	if la, ok := o.State.(txlog.LoadApplier); ok {
		return la.ApplyLoad(b, es, loads)
	}
	return o.State.ApplyAll(b, es)
}

func (o *Opener) prepare(b *pebble.Batch, es []*wire.Signed) error {
	if err := o.Take(b, es); err != nil {
		return err
	}
	for _, s := range es {
		o.open(s)
	}
	return nil
}

// Take takes in the grants of entries, whether they are applied now or held
// (the log's Take hook): an entry may carry the very key it is sealed with.
func (o *Opener) Take(b *pebble.Batch, es []*wire.Signed) error {
	for _, s := range es {
		for i := range s.Grants {
			if err := o.takeGrant(b, s, &s.Grants[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// OpenAll opens the sealed entries of a run whose keys are held, ahead of
// the log (a catch-up batch as it is decoded). An entry that does not open
// is left for the log's applier, which says so.
func (o *Opener) OpenAll(run []*wire.Signed) {
	for _, s := range run {
		_ = o.tryOpen(s)
	}
}

// Open opens a sealed entry with a held key, for reading (the log view). It
// returns the operations, or nil when the key is not held or it does not open.
func (o *Opener) Open(s *wire.Signed) []wire.Op {
	if s.Key == "" {
		return s.Ops
	}
	o.open(s)
	return s.Opened
}

// open opens s for applying, and says so in the log when a held key does
// not open it.
func (o *Opener) open(s *wire.Signed) {
	if err := o.tryOpen(s); err != nil {
		o.Ring.log.Warn("a sealed entry does not open with its key: nothing of it is applied (every site sees the same)",
			"entry", s.ID().String(), "key", s.Key, "err", err)
	}
}

// tryOpen sets s.Opened when s is sealed with a held key and opens; an
// entry in clear, already opened or sealed with a key not held is left as it
// is (nil).
func (o *Opener) tryOpen(s *wire.Signed) error {
	if s.Key == "" || s.Opened != nil {
		return nil
	}
	k, ok := o.Ring.Key(s.Key)
	if !ok {
		return nil
	}
	ops, err := OpenOps(k, &s.Entry)
	if err != nil {
		return err
	}
	s.Opened = ops
	return nil
}

// OpenOps opens a sealed entry's operations with k and checks them.
func OpenOps(k seal.Key, e *wire.Entry) ([]wire.Op, error) {
	ad, err := wire.SealAD(e)
	if err != nil {
		return nil, err
	}
	plain, err := seal.Open(k, e.Sealed, ad)
	if err != nil {
		return nil, err
	}
	ops, err := wire.UnmarshalOps(plain)
	if err != nil {
		return nil, fmt.Errorf("keyring: the opened operations do not decode: %w", err)
	}
	if err := wire.ValidateOps(ops); err != nil {
		return nil, err
	}
	return ops, nil
}

// SealOps seals e's operations with k: the txlog's Seal hook.
func SealOps(k seal.Key, e *wire.Entry) error {
	plain, err := wire.Marshal(e.Ops)
	if err != nil {
		return err
	}
	e.Key = k.ID
	e.Schema = max(e.Schema, wire.SchemaSealed)
	ad, err := wire.SealAD(e)
	if err != nil {
		return err
	}
	e.Sealed = seal.Seal(k, plain, ad)
	e.Opened, e.Ops = e.Ops, nil
	return nil
}

// takeGrant remembers that a certificate has a key, and keeps the key when
// the grant is addressed to this site.
func (o *Opener) takeGrant(b *pebble.Batch, s *wire.Signed, g *wire.Grant) error {
	r := o.Ring
	cert := Cert(g.To, g.ToEpoch)
	r.mu.Lock()
	known := r.given[g.Key][cert]
	_, holds := r.keys[g.Key]
	r.markGiven(g.Key, cert)
	r.addExcl(g.Key, g.Excl)
	if _, ok := r.epoch[g.Key]; !ok {
		r.epoch[g.Key] = g.KeyEpoch
	}
	r.mu.Unlock()
	if !known {
		if err := b.Set(key(spaceGiven, g.Key, cert), nil, nil); err != nil {
			return fmt.Errorf("keyring: note a grant: %w", err)
		}
		r.notify()
	}
	if len(g.Excl) > 0 && !holds {
		ex, err := wire.Marshal(r.Excl(g.Key))
		if err != nil {
			return err
		}
		if err := b.Set(key(spaceExcl, g.Key), ex, nil); err != nil {
			return fmt.Errorf("keyring: note a key's exclusions: %w", err)
		}
	}
	if holds || g.To != o.Self.Site || g.ToEpoch != o.Self.Epoch || o.Self.Key == nil {
		return nil
	}
	k, err := seal.Unwrap(seal.Wrapped{Ephemeral: g.Eph, Box: g.Box}, o.Self.Key, g.KeyEpoch, GrantAD(r.family, g))
	if err != nil || k.ID != g.Key {
		r.log.Warn("a data key given to this site does not open (wrapped to another key, or altered): waiting for another grant",
			"key", g.Key, "from", s.ID().String(), "err", err)
		return nil
	}
	if err := r.store(b, k, r.Excl(k.ID)); err != nil {
		return err
	}
	r.remember(k, nil)
	r.log.Info("received a family data key", "key", k.ID, "epoch", k.Epoch, "from", s.Site)
	return nil
}
