package state

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// Conflict is a report of two concurrent writes to the same field (or a
// delete and a put of the same record) by different sites: neither writer had
// seen the other's entry when it wrote. The merge already picked the winner
// deterministically; the report lets people check the loser. Conflicts are
// local to the node that found them (they depend on arrival order) and are
// not part of the digest.
type Conflict struct {
	ID    uint64 // local, increasing: newer conflicts have higher IDs
	Table string
	Key   string
	// Field is the field both sides wrote, or "" when one side deleted the
	// whole record and the other put fields into it.
	Field string
	// Incoming is the entry whose Apply found the conflict; Existing is the
	// write it met (the current writer of the field or record).
	Incoming ConflictSide
	Existing ConflictSide
	// Winner is the entry whose write the state keeps: the newer version.
	Winner wire.ID
}

// ConflictSide is one side of a conflict.
type ConflictSide struct {
	Version Version
	Deleted bool // this side deleted the record
	// Value is the field value this side wrote. For a record-level conflict
	// (Field "") the put side's Value is the map of the fields that entry
	// holds in the record; a delete side's Value is nil.
	Value any
}

type storedSide struct {
	Ver     Version `codec:"v"`
	Deleted bool    `codec:"d"`
	Val     []byte  `codec:"x,omitempty"` // wire.Marshal of the value
}

type storedConflict struct {
	Table    string     `codec:"t"`
	Key      string     `codec:"k"`
	Field    string     `codec:"f"`
	Incoming storedSide `codec:"i"`
	Existing storedSide `codec:"e"`
}

// concurrent reports whether the applied entry and the entry that wrote x
// are concurrent: they come from different sites and neither saw the other.
// An entry E saw X iff E.Deps[X.site] >= X.seq.
func (a *applier) concurrent(x Version) (bool, error) {
	if x.IsZero() || x.Site == a.e.Site {
		return false, nil
	}
	if a.e.Deps[x.Site] >= x.Seq {
		return false, nil // the applied entry saw x
	}
	id := x.Entry()
	deps, ok := a.deps[id]
	if !ok {
		raw, found, err := getCopy(a.b, depsKey(x.Site, x.Seq))
		if err != nil {
			return false, a.fail(err)
		}
		if found {
			if deps, err = decodeDeps(raw); err != nil {
				return false, damaged("apply", fmt.Sprintf("the deps index of entry %s", id), err)
			}
		}
		if a.deps == nil {
			a.deps = make(map[wire.ID]map[string]uint64)
		}
		a.deps[id] = deps
	}
	return deps[a.e.Site] < a.e.Seq, nil // false: x saw the applied entry
}

// putConflicts records the conflicts of a put at v before it is merged.
func (a *applier) putConflicts(op *wire.Op, rec *storedRecord, v Version, names []string, vals [][]byte) error {
	for i, name := range names {
		j, ok := rec.field(name)
		if !ok {
			continue
		}
		f := &rec.Fields[j]
		if bytes.Equal(f.Val, vals[i]) {
			continue // both wrote the same value: nothing to choose between
		}
		c, err := a.concurrent(f.Ver)
		if err != nil {
			return err
		}
		if !c {
			continue
		}
		if err := a.record(op, name, storedSide{Ver: v, Val: vals[i]}, storedSide{Ver: f.Ver, Val: f.Val}); err != nil {
			return err
		}
	}
	if rec.Del.IsZero() {
		return nil
	}
	c, err := a.concurrent(rec.Del)
	if err != nil {
		return err
	}
	if !c {
		return nil
	}
	in, err := fieldsValue(names, vals)
	if err != nil {
		return a.fail(err)
	}
	return a.record(op, "", storedSide{Ver: v, Val: in}, storedSide{Ver: rec.Del, Deleted: true})
}

// deleteConflicts records the conflicts of a delete at v before it is merged:
// one per concurrent entry whose put the record holds.
func (a *applier) deleteConflicts(op *wire.Op, rec *storedRecord, v Version) error {
	if !rec.exists() {
		return nil
	}
	// The writers of the record: each entry's newest version in it.
	var writers []Version
	note := func(w Version) {
		for i := range writers {
			if writers[i].Entry() == w.Entry() {
				if w.Compare(writers[i]) > 0 {
					writers[i] = w
				}
				return
			}
		}
		writers = append(writers, w)
	}
	note(rec.Put)
	for _, f := range rec.Fields {
		note(f.Ver)
	}
	for _, w := range writers {
		c, err := a.concurrent(w)
		if err != nil {
			return err
		}
		if !c {
			continue
		}
		var names []string
		var vals [][]byte
		for _, f := range rec.Fields {
			if f.Ver.Entry() == w.Entry() {
				names = append(names, f.Name)
				vals = append(vals, f.Val)
			}
		}
		ex, err := fieldsValue(names, vals)
		if err != nil {
			return a.fail(err)
		}
		if err := a.record(op, "", storedSide{Ver: v, Deleted: true}, storedSide{Ver: w, Val: ex}); err != nil {
			return err
		}
	}
	return nil
}

// fieldsValue encodes the named encoded values as one map value.
func fieldsValue(names []string, vals [][]byte) ([]byte, error) {
	m := make(map[string]any, len(names))
	for i, name := range names {
		var v any
		if err := wire.Unmarshal(vals[i], &v); err != nil {
			return nil, fmt.Errorf("field %q: %w", name, err)
		}
		m[name] = v
	}
	return wire.Marshal(m)
}

// record stores one conflict under a new ID, unless the same two entries were
// already found in conflict on the same field (in either arrival order): a
// replayed entry records nothing twice.
func (a *applier) record(op *wire.Op, field string, in, ex storedSide) error {
	seen := conflictSeenKey(op.Table, op.Key, field, in.Ver.Entry(), ex.Ver.Entry())
	_, dup, err := getCopy(a.b, seen)
	if err != nil || dup {
		return a.fail(err)
	}
	enc, err := wire.Marshal(&storedConflict{Table: op.Table, Key: op.Key, Field: field, Incoming: in, Existing: ex})
	if err != nil {
		return a.fail(err)
	}
	id := a.s.conflictID.Add(1)
	if err := a.b.Set(conflictKey(id), enc, nil); err != nil {
		return a.fail(err)
	}
	if err := a.b.Set(seen, conflictKey(id)[2:], nil); err != nil {
		return a.fail(err)
	}
	a.conflicts++
	a.s.log.Debug("conflict", "id", id, "table", op.Table, "key", op.Key, "field", field,
		"incoming", in.Ver.String(), "existing", ex.Ver.String())
	return nil
}

func (c *storedConflict) decode(id uint64) (Conflict, error) {
	out := Conflict{ID: id, Table: c.Table, Key: c.Key, Field: c.Field}
	var err error
	if out.Incoming, err = c.Incoming.decode(); err != nil {
		return Conflict{}, err
	}
	if out.Existing, err = c.Existing.decode(); err != nil {
		return Conflict{}, err
	}
	out.Winner = out.Incoming.Version.Entry()
	if out.Existing.Version.Compare(out.Incoming.Version) > 0 {
		out.Winner = out.Existing.Version.Entry()
	}
	return out, nil
}

func (s *storedSide) decode() (ConflictSide, error) {
	out := ConflictSide{Version: s.Ver, Deleted: s.Deleted}
	if len(s.Val) > 0 {
		if err := wire.Unmarshal(s.Val, &out.Value); err != nil {
			return ConflictSide{}, err
		}
	}
	return out, nil
}

// Conflicts returns up to limit recorded conflicts, newest first. A limit of
// zero or less means DefaultLimit.
func (s *State) Conflicts(limit int) ([]Conflict, error) {
	limit = pageLimit(limit)
	p := spacePrefix(spaceConflict)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return nil, fmt.Errorf("state: conflicts: %w", err)
	}
	var out []Conflict
	for ok := it.Last(); ok && len(out) < limit; ok = it.Prev() {
		id, err := seqOfKey(it.Key())
		if err != nil {
			err = damaged("conflicts", fmt.Sprintf("conflict key %x", it.Key()), err)
			return nil, errors.Join(err, it.Close())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("state: conflicts: %w", err), it.Close())
		}
		var sc storedConflict
		err = wire.Unmarshal(v, &sc)
		var c Conflict
		if err == nil {
			c, err = sc.decode(id)
		}
		if err != nil {
			return nil, errors.Join(damaged("conflicts", fmt.Sprintf("conflict %d", id), err), it.Close())
		}
		out = append(out, c)
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("state: conflicts: %w", err)
	}
	return out, nil
}
