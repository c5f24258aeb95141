package state

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// DefaultLimit is the page size used when a caller asks for limit <= 0.
const DefaultLimit = 1000

func pageLimit(limit int) int {
	if limit <= 0 {
		return DefaultLimit
	}
	return limit
}

// Record is one record as readers see it.
type Record struct {
	Table string
	Key   string
	// Fields holds the field values (nil, bool, string, int64, float64,
	// []any, map[string]any). It is nil for a deleted record.
	Fields map[string]any
	// Version is the newest put of the record, or for a deleted record the
	// delete that removed it.
	Version Version
	// Deleted is true for a record that no longer exists (only Changes
	// returns such records).
	Deleted bool
}

// Change is a record changed after a cursor, with its current content.
type Change struct {
	Cursor uint64 // the feed position of the record's latest change
	Record
	// FieldVersions holds, for each field, the write whose value it holds
	// (a database connector tells its own captured rows by them).
	FieldVersions map[string]Version
}

// Stats are counters for status pages and metrics.
type Stats struct {
	// Records counts live records. Apply maintains it through its batch, so
	// it is exact as long as batches are committed one after the other.
	Records uint64
	// Conflicts counts recorded conflicts.
	Conflicts uint64
	// Cursor is the newest change-feed cursor handed out.
	Cursor uint64
	// ClearedAt is the feed cursor when the state was last cleared for a
	// rebuild (0: never). A follower whose cursor is at or below it should
	// re-read the whole state to notice records that a rebuild dropped.
	ClearedAt uint64
}

// Get returns the live record table/key; ok is false when it does not exist
// (never written, or deleted).
func (s *State) Get(table, key string) (rec Record, ok bool, err error) {
	raw, found, err := getCopy(s.db, recordKey(table, key))
	if err != nil {
		return Record{}, false, fmt.Errorf("state: get: %w", err)
	}
	if !found {
		return Record{}, false, nil
	}
	rec, err = decodeRecordFor("get", table, key, raw)
	if err != nil || rec.Deleted {
		return Record{}, false, err
	}
	return rec, true, nil
}

// Tombstone reports whether table/key was deleted (a delete is its newest
// change), as opposed to live or never written.
func (s *State) Tombstone(table, key string) (Version, bool, error) {
	raw, found, err := getCopy(s.db, recordKey(table, key))
	if err != nil {
		return Version{}, false, fmt.Errorf("state: get: %w", err)
	}
	if !found {
		return Version{}, false, nil
	}
	rec, err := decodeRecordFor("get", table, key, raw)
	if err != nil {
		return Version{}, false, err
	}
	return rec.Version, rec.Deleted, nil
}

func decodeRecordFor(op, table, key string, raw []byte) (Record, error) {
	sr, err := decodeRecord(raw)
	var rec Record
	if err == nil {
		rec, err = sr.toRecord(table, key)
	}
	if err != nil {
		return Record{}, damaged(op, recordName(table, key), err)
	}
	return rec, nil
}

// List returns up to limit live records of table whose keys sort after
// afterKey (byte order), in key order. Pass "" to start and the last key
// returned to page on. A limit of zero or less means DefaultLimit.
func (s *State) List(table, afterKey string, limit int) ([]Record, error) {
	limit = pageLimit(limit)
	lower := tablePrefix(table)
	if afterKey != "" {
		// Encoded keys are prefix-free, so this is the first key after afterKey's.
		lower = append(recordKey(table, afterKey), 0)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: tableEnd(table)})
	if err != nil {
		return nil, fmt.Errorf("state: list: %w", err)
	}
	var out []Record
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		rec, err := iterRecord("list", it)
		if err != nil {
			return nil, errors.Join(err, it.Close())
		}
		if !rec.Deleted {
			out = append(out, rec)
		}
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("state: list: %w", err)
	}
	return out, nil
}

// iterRecord decodes the record under a record iterator.
func iterRecord(op string, it *pebble.Iterator) (Record, error) {
	table, key, err := splitRecordKey(it.Key())
	if err != nil {
		return Record{}, damaged(op, fmt.Sprintf("record key %q", it.Key()), err)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return Record{}, fmt.Errorf("state: %s: %w", op, err)
	}
	return decodeRecordFor(op, table, key, v)
}

// Tables returns the names of the tables that hold at least one live record,
// sorted.
func (s *State) Tables() ([]string, error) {
	p := spacePrefix(spaceRecord)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return nil, fmt.Errorf("state: tables: %w", err)
	}
	var out []string
	ok := it.First()
	for ok {
		table, key, err := splitRecordKey(it.Key())
		if err != nil {
			return nil, errors.Join(damaged("tables", fmt.Sprintf("record key %q", it.Key()), err), it.Close())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("state: tables: %w", err), it.Close())
		}
		sr, err := decodeRecord(v)
		if err != nil {
			return nil, errors.Join(damaged("tables", recordName(table, key), err), it.Close())
		}
		if sr.exists() {
			out = append(out, table)
			ok = it.SeekGE(tableEnd(table)) // skip the rest of the table
		} else {
			ok = it.Next()
		}
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("state: tables: %w", err)
	}
	return out, nil
}

// Changes returns up to limit records changed after cursor after, in feed
// order, with their current content (a record deleted since is returned with
// Deleted set). The feed keeps one entry per record, its latest change, so a
// record changed twice since the cursor is returned once. next is the cursor
// to pass to the following call (after itself when nothing is newer). A limit
// of zero or less means DefaultLimit.
func (s *State) Changes(after uint64, limit int) (changes []Change, next uint64, err error) {
	limit = pageLimit(limit)
	if after == math.MaxUint64 {
		return nil, after, nil
	}
	snap := s.db.NewSnapshot()
	defer func() {
		if cerr := snap.Close(); cerr != nil && err == nil {
			changes, next, err = nil, 0, fmt.Errorf("state: changes: %w", cerr)
		}
	}()
	p := spacePrefix(spaceFeed)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: feedKey(after + 1), UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return nil, 0, fmt.Errorf("state: changes: %w", err)
	}
	next = after
	for ok := it.First(); ok && len(changes) < limit; ok = it.Next() {
		c, err := s.change(snap, it)
		if err != nil {
			return nil, 0, errors.Join(err, it.Close())
		}
		changes = append(changes, c)
		next = c.Cursor
	}
	if err := it.Close(); err != nil {
		return nil, 0, fmt.Errorf("state: changes: %w", err)
	}
	return changes, next, nil
}

func (s *State) change(snap *pebble.Snapshot, it *pebble.Iterator) (Change, error) {
	cursor, err := seqOfKey(it.Key())
	if err != nil {
		return Change{}, damaged("changes", fmt.Sprintf("feed key %x", it.Key()), err)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return Change{}, fmt.Errorf("state: changes: %w", err)
	}
	table, key, err := splitFeedValue(v)
	if err != nil {
		return Change{}, damaged("changes", fmt.Sprintf("feed entry %d", cursor), err)
	}
	raw, found, err := getCopy(snap, recordKey(table, key))
	if err != nil {
		return Change{}, fmt.Errorf("state: changes: %w", err)
	}
	c := Change{Cursor: cursor, Record: Record{Table: table, Key: key, Deleted: true}}
	if found {
		if c.Record, err = decodeRecordFor("changes", table, key, raw); err != nil {
			return Change{}, err
		}
		if sr, err := decodeRecord(raw); err == nil && len(sr.Fields) > 0 {
			c.FieldVersions = make(map[string]Version, len(sr.Fields))
			for _, f := range sr.Fields {
				c.FieldVersions[f.Name] = f.Ver
			}
		}
	}
	return c, nil
}

// digestDomain starts every digest, naming the algorithm and layout version.
const digestDomain = "ppsync state digest v1\n"

// Digest returns SHA-256 over every stored record (live and deleted, with
// the versions that order them) in key order: for each, the length of the
// key (uvarint) and the key without the state prefix, then the length of the
// value and the value, the value as format 0x01 spells it (codec.go): the
// node's own feed cursor is left out (a damaged value is hashed as it is).
// Nodes that applied the same set of entries compute the
// same digest whatever order the entries arrived in. Conflicts, the change
// feed and the other indexes are not included. It streams: memory use does
// not grow with the number of records.
func (s *State) Digest() (wire.Hash, error) {
	p := spacePrefix(spaceRecord)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return wire.Hash{}, fmt.Errorf("state: digest: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(digestDomain))
	var lenBuf [binary.MaxVarintLen64]byte
	format := [1]byte{recordFormat}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()[len(p):]
		v, err := it.ValueAndErr()
		if err != nil {
			return wire.Hash{}, errors.Join(fmt.Errorf("state: digest: %w", err), it.Close())
		}
		h.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(k)))])
		h.Write(k)
		if _, body, err := splitRecord(v); err == nil {
			h.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(1+len(body)))])
			h.Write(format[:])
			h.Write(body)
		} else { // damaged: hashed as it is, so that it shows as a differing digest
			h.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(v)))])
			h.Write(v)
		}
	}
	if err := it.Close(); err != nil {
		return wire.Hash{}, fmt.Errorf("state: digest: %w", err)
	}
	var out wire.Hash
	h.Sum(out[:0])
	return out, nil
}

// Stats returns the state's counters.
func (s *State) Stats() (Stats, error) {
	c, err := loadCounts(s.db, "stats")
	if err != nil {
		return Stats{}, fmt.Errorf("state: stats: %w", err)
	}
	f, err := loadFloor(s.db, "stats")
	if err != nil {
		return Stats{}, fmt.Errorf("state: stats: %w", err)
	}
	return Stats{Records: c.Records, Conflicts: c.Conflicts, Cursor: s.cursor.Load(), ClearedAt: f.ClearedAt}, nil
}

// Clear deletes the whole state (records, conflicts, change feed, indexes)
// in one synced batch, for a rebuild from the logs. The change-feed cursor and
// conflict IDs are not reset: they keep growing, so every record the rebuild
// writes reaches followers as a change newer than anything they have seen,
// and Stats().ClearedAt tells them a rebuild happened. Clear must not run
// concurrently with Apply.
func (s *State) Clear(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("state: clear: %w", err)
	}
	floor := storedFloor{Cursor: s.cursor.Load(), Conflict: s.conflictID.Load()}
	floor.ClearedAt = floor.Cursor
	enc := encodeUints(floor.Cursor, floor.Conflict, floor.ClearedAt)
	p := []byte{store.PrefixState}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(p, store.PrefixEnd(p), nil); err != nil {
		return fmt.Errorf("state: clear: %w", err)
	}
	if err := b.Set(metaKey(metaFloor), enc, nil); err != nil {
		return fmt.Errorf("state: clear: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: clear: %w", err)
	}
	s.fresh = nil
	s.clears.Add(1)
	s.log.Info("state cleared for a rebuild", "cursor", floor.Cursor, "conflict_id", floor.Conflict)
	return nil
}
