// Package alertdb keeps alert rules, the monitor's state and the outbox in
// the node's Pebble database (key prefix 'a', under the family's store.Space
// when several families share the database), so that a restart neither
// alerts twice for one outage, nor misses a recovery, nor loses a message
// that was decided but not yet sent.
package alertdb

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/alert"
	"github.com/ppsync/ppsync/internal/store"
)

// Kinds of record under the prefix.
const (
	kRule     = 'r' // rule ID -> Rule
	kState    = 's' // rule ID -> State
	kOutbox   = 'o' // delivery ID -> Delivery not yet sent
	kLastSent = 'l' // rule ID -> the last Delivery sent
)

// DB is the alert key space of one family in a Pebble database.
type DB struct {
	db    *pebble.DB
	space []byte // the family's store.Space; empty for the primary family
}

// New wraps the node's database, with the keys of the primary family (those
// of a database serving one family).
func New(db *pebble.DB) DB { return DB{db: db} }

// NewIn wraps a database shared by several families, with the keys under the
// family's space (store.FamilySpace): space + 'a' + ….
func NewIn(db *pebble.DB, space store.Space) DB {
	return DB{db: db, space: append([]byte(nil), space...)}
}

// prefix returns the start of every key of one kind.
func (d DB) prefix(kind byte) []byte {
	k := make([]byte, 0, len(d.space)+2)
	k = append(k, d.space...)
	return append(k, store.PrefixAlert, kind)
}

func (d DB) key(kind byte, id string) []byte {
	return append(d.prefix(kind), id...)
}

func (d DB) get(k []byte, v any) (bool, error) {
	b, closer, err := d.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("alertdb: read %q: %w", k, err)
	}
	defer closer.Close()
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("alertdb: decode %q: %w", k, err)
	}
	return true, nil
}

func set(b *pebble.Batch, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("alertdb: encode %q: %w", k, err)
	}
	return b.Set(k, data, nil)
}

func list[T any](d DB, kind byte) ([]T, error) {
	lo := d.prefix(kind)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: store.PrefixEnd(lo)})
	if err != nil {
		return nil, fmt.Errorf("alertdb: list: %w", err)
	}
	defer it.Close()
	var out []T
	for it.First(); it.Valid(); it.Next() {
		var v T
		if err := json.Unmarshal(it.Value(), &v); err != nil {
			return nil, fmt.Errorf("alertdb: decode %q: %w", it.Key(), err)
		}
		out = append(out, v)
	}
	return out, it.Error()
}

// Rules returns every rule, in ID order.
func (d DB) Rules() ([]alert.Rule, error) { return list[alert.Rule](d, kRule) }

// Rule returns one rule.
func (d DB) Rule(id string) (alert.Rule, bool, error) {
	var r alert.Rule
	ok, err := d.get(d.key(kRule, id), &r)
	return r, ok, err
}

// PutRule saves a rule (new or changed).
func (d DB) PutRule(r alert.Rule) error {
	b := d.db.NewBatch()
	defer b.Close()
	if err := set(b, d.key(kRule, r.ID), r); err != nil {
		return err
	}
	return commit(b)
}

// RemoveRule deletes a rule with its state, its last-sent record and the
// messages still waiting to be sent for it.
func (d DB) RemoveRule(id string) error {
	pending, err := d.Pending()
	if err != nil {
		return err
	}
	b := d.db.NewBatch()
	defer b.Close()
	for _, k := range [][]byte{d.key(kRule, id), d.key(kState, id), d.key(kLastSent, id)} {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	for _, p := range pending {
		if p.Rule == id {
			if err := b.Delete(d.key(kOutbox, p.ID), nil); err != nil {
				return err
			}
		}
	}
	return commit(b)
}

// State returns what the monitor remembers of a rule.
func (d DB) State(id string) (alert.State, error) {
	var st alert.State
	_, err := d.get(d.key(kState, id), &st)
	return st, err
}

// Decide saves a rule's state and the deliveries the monitor decided on, in
// one synced batch: a message is either decided and queued, or neither.
func (d DB) Decide(id string, st alert.State, ds []alert.Delivery) error {
	b := d.db.NewBatch()
	defer b.Close()
	if err := set(b, d.key(kState, id), st); err != nil {
		return err
	}
	for _, x := range ds {
		if err := set(b, d.key(kOutbox, x.ID), x); err != nil {
			return err
		}
	}
	return commit(b)
}

// Pending returns the deliveries not yet sent (and those given up, until
// their rule is removed or a later message is sent).
func (d DB) Pending() ([]alert.Delivery, error) { return list[alert.Delivery](d, kOutbox) }

// Attempted records an attempt: a sent delivery leaves the outbox and becomes
// its rule's last sent message; a failed one stays with its next try.
func (d DB) Attempted(x alert.Delivery) error {
	b := d.db.NewBatch()
	defer b.Close()
	if x.Sent.IsZero() {
		if err := set(b, d.key(kOutbox, x.ID), x); err != nil {
			return err
		}
		return commit(b)
	}
	if err := b.Delete(d.key(kOutbox, x.ID), nil); err != nil {
		return err
	}
	if err := set(b, d.key(kLastSent, x.Rule), x); err != nil {
		return err
	}
	return commit(b)
}

// LastSent returns the last message sent for a rule.
func (d DB) LastSent(id string) (alert.Delivery, bool, error) {
	var x alert.Delivery
	ok, err := d.get(d.key(kLastSent, id), &x)
	return x, ok, err
}

func commit(b *pebble.Batch) error {
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("alertdb: save: %w", err)
	}
	return nil
}
