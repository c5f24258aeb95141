package state

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/ppsync/ppsync/internal/wire"
)

// ErrDamaged marks a stored value of the state that cannot be decoded (see
// DamagedError). The state is derived data: `ppsync verify` rebuilds it from
// the logs.
var ErrDamaged = errors.New("state: stored data is damaged")

// Version orders the writes to a record: by HLC, then site ID, then seq, then
// the index of the operation within its entry (so that a later operation of a
// transaction beats an earlier one on the same record). It is a total order.
// The zero Version is older than every write.
type Version struct {
	HLC  uint64 `codec:"h"`
	Site string `codec:"s"`
	Seq  uint64 `codec:"q"`
	Op   uint32 `codec:"o"`
}

// Compare returns -1, 0 or +1 as v is older than, the same as, or newer than w.
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.HLC, w.HLC); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Site, w.Site); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Seq, w.Seq); c != 0 {
		return c
	}
	return cmp.Compare(v.Op, w.Op)
}

// IsZero reports whether v is the zero version (no write).
func (v Version) IsZero() bool { return v == Version{} }

// Entry returns the ID of the entry that wrote v.
func (v Version) Entry() wire.ID { return wire.ID{Site: v.Site, Seq: v.Seq} }

func (v Version) String() string {
	return fmt.Sprintf("%s#%d/op%d@%d", v.Site, v.Seq, v.Op, v.HLC)
}

// storedField is one field of a stored record: the newest write of it.
type storedField struct {
	Name string
	Ver  Version
	Val  []byte // wire.Marshal of the normalized value
}

// storedRecord is the value under a record key. Its invariants, which make it
// a pure function of the set of entries applied:
//
//   - Del is the newest delete of the record (zero if none);
//   - Put is the newest put newer than Del (zero if none): the record exists
//     iff Put is not zero;
//   - Fields holds, for each field name, the newest write of it if that write
//     is newer than Del, sorted by name; every field's Ver is at most Put.
//
// Cursor is not part of that function: it is this node's change-feed cursor
// of the record's latest visible change (0: not known from the record, see
// feed), which differs between nodes. The digest leaves it out.
//
// See codec.go for its encoding.
type storedRecord struct {
	Put    Version
	Del    Version
	Fields []storedField
	Cursor uint64
}

func (r *storedRecord) exists() bool { return !r.Put.IsZero() }

func (r *storedRecord) field(name string) (int, bool) {
	return slices.BinarySearchFunc(r.Fields, name, func(f storedField, n string) int { return cmp.Compare(f.Name, n) })
}

// put merges a put of fields (names sorted, values encoded) at version v.
// It reports whether anything changed; any change of a put is visible to
// readers (the record exists afterwards, with a newer version or field).
func (r *storedRecord) put(v Version, names []string, vals [][]byte) bool {
	if v.Compare(r.Del) <= 0 {
		return false // older than the tombstone: invisible
	}
	if r.Put.IsZero() && len(r.Fields) == 0 { // a new record: the fields as given
		r.Put = v
		r.Fields = make([]storedField, len(names))
		for i, name := range names {
			r.Fields[i] = storedField{Name: name, Ver: v, Val: vals[i]}
		}
		return true
	}
	r.Fields = slices.Grow(r.Fields, len(names))
	changed := false
	if v.Compare(r.Put) > 0 {
		r.Put = v
		changed = true
	}
	for i, name := range names {
		j, ok := r.field(name)
		if ok {
			if v.Compare(r.Fields[j].Ver) > 0 {
				r.Fields[j] = storedField{Name: name, Ver: v, Val: vals[i]}
				changed = true
			}
			continue
		}
		r.Fields = slices.Insert(r.Fields, j, storedField{Name: name, Ver: v, Val: vals[i]})
		changed = true
	}
	return changed
}

// del merges a delete at version v. It reports whether anything changed,
// and whether readers can see the change: a delete older than every write of
// the record only moves its tombstone.
func (r *storedRecord) del(v Version) (changed, visible bool) {
	if v.Compare(r.Del) <= 0 {
		return false, false
	}
	existed, fields := r.exists(), len(r.Fields)
	r.Del = v
	if r.Put.Compare(v) <= 0 {
		r.Put = Version{}
	}
	r.Fields = slices.DeleteFunc(r.Fields, func(f storedField) bool { return f.Ver.Compare(v) <= 0 })
	return true, existed && (!r.exists() || len(r.Fields) != fields)
}

// toRecord decodes r's fields for a reader.
func (r *storedRecord) toRecord(table, key string) (Record, error) {
	rec := Record{Table: table, Key: key, Version: r.Put, Deleted: !r.exists()}
	if rec.Deleted {
		rec.Version = r.Del
		return rec, nil
	}
	rec.Fields = make(map[string]any, len(r.Fields))
	for _, f := range r.Fields {
		var v any
		if err := wire.Unmarshal(f.Val, &v); err != nil {
			return Record{}, fmt.Errorf("field %q: %w", f.Name, err)
		}
		rec.Fields[f.Name] = v
	}
	return rec, nil
}

// DamagedError reports a stored value of the state that cannot be decoded.
// It matches ErrDamaged with errors.Is.
type DamagedError struct {
	Op   string // the operation that found it
	What string // what is damaged, e.g. `record "patients"/"p1"`
	Err  error  // what is wrong with it
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("state: %s: %s is damaged (%v); run `ppsync verify` to rebuild the state from the logs", e.Op, e.What, e.Err)
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// Unwrap returns the decoding error.
func (e *DamagedError) Unwrap() error { return e.Err }

func damaged(op, what string, err error) error { return &DamagedError{Op: op, What: what, Err: err} }

func recordName(table, key string) string { return fmt.Sprintf("record %q/%q", table, key) }
