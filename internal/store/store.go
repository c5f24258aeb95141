// Package store opens the node's one Pebble database with the options ppsync
// relies on, and allocates its key spaces.
//
// Every package that keeps data in the database owns one key prefix, so that
// the transaction log and the state can share one database and write an entry
// and its effect in one synced batch:
//
//	't'  txlog: entries, frontiers, fork evidence, quarantine, held entries
//	's'  state: records, conflicts, change feed
//	'm'  node metadata (database ID, format)
//	'd'  node: the practice database's capture position and load progress
//	'a'  alert: rules, the monitor's state, the outbox
//	'k'  keyring: the family's data keys and who holds them
//	'F'  family spaces: 'F' + the 32 bytes of a family ID, then that family's
//	     keys laid out as above (see Space)
//
// A process that serves several families from one database keeps the keys
// of its first (primary) family exactly as listed above (the empty Space),
// and those of every further family under that family's Space: a component's
// key is its Space, then its own prefix byte, then the rest as usual.
package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Key prefixes of the packages sharing the database.
const (
	PrefixTxlog byte = 't'
	PrefixState byte = 's'
	PrefixMeta  byte = 'm'
	PrefixDB    byte = 'd'
	PrefixAlert byte = 'a'
	PrefixKeys  byte = 'k'
	// PrefixFamily starts a family's Space.
	PrefixFamily byte = 'F'
)

// Space is the key space of one family in a database shared by several:
// every key a component writes or reads for that family is the Space, then
// the component's own prefix byte, then the rest of its key as usual. The
// empty Space is the primary family's, whose keys are those of a database
// serving one family. Make a non-empty one with FamilySpace.
type Space []byte

// Prefix returns a new slice holding the Space followed by p: the start of
// every key of the component whose prefix byte is p.
func (s Space) Prefix(p byte) []byte {
	k := make([]byte, 0, len(s)+1)
	k = append(k, s...)
	return append(k, p)
}

// FamilySpace returns the Space of a family: 'F' followed by the 32 bytes
// of its ID. A family ID is a SHA-256 written as 64 lower-case hex digits;
// anything else is refused.
func FamilySpace(familyID string) (Space, error) {
	if len(familyID) != 64 {
		return nil, fmt.Errorf("store: family ID %.80q is not 64 hex digits (%d characters)", familyID, len(familyID))
	}
	for i := 0; i < len(familyID); i++ {
		if c := familyID[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil, fmt.Errorf("store: family ID %q has %q at position %d; it must be lower-case hex digits", familyID, c, i+1)
		}
	}
	id, err := hex.DecodeString(familyID)
	if err != nil {
		return nil, fmt.Errorf("store: family ID %q: %w", familyID, err)
	}
	return append(Space{PrefixFamily}, id...), nil
}

// spaceRange returns the bounds of every key in a non-empty Space.
func spaceRange(s Space) (lo, hi []byte, err error) {
	if len(s) == 0 {
		return nil, nil, errors.New("the empty space is the primary family's whole database, not a family space")
	}
	return []byte(s), PrefixEnd(s), nil
}

// DeleteSpace deletes every key of the Space s, synced. It refuses the
// empty Space (which would be the primary family's keys and everything else).
func DeleteSpace(db *pebble.DB, s Space) error {
	lo, hi, err := spaceRange(s)
	if err != nil {
		return fmt.Errorf("store: delete space: %w", err)
	}
	if err := db.DeleteRange(lo, hi, pebble.Sync); err != nil {
		return fmt.Errorf("store: delete space %x: %w", []byte(s), err)
	}
	return nil
}

// SpaceSize returns about how many bytes the keys of the Space s take:
// Pebble's estimate of their tables on disk, or, for a space under 16 MiB
// (whose data may still be in the memtable, which the estimate leaves out),
// the bytes of its keys and values counted.
func SpaceSize(db *pebble.DB, s Space) (uint64, error) {
	lo, hi, err := spaceRange(s)
	if err != nil {
		return 0, fmt.Errorf("store: space size: %w", err)
	}
	n, err := db.EstimateDiskUsage(lo, hi)
	if err != nil {
		return 0, fmt.Errorf("store: size of space %x: %w", []byte(s), err)
	}
	if n >= exactSizeBelow {
		return n, nil
	}
	// The estimate counts flushed tables only: a small or young space
	// lives mostly in the memtable. Count its keys and values instead.
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return n, fmt.Errorf("store: size of space %x: %w", []byte(s), err)
	}
	var sum uint64
	for it.First(); it.Valid() && sum < exactSizeBelow; it.Next() {
		sum += uint64(len(it.Key()) + len(it.Value()))
	}
	if err := it.Close(); err != nil {
		return n, fmt.Errorf("store: size of space %x: %w", []byte(s), err)
	}
	return max(n, sum), nil
}

// exactSizeBelow is the size under which SpaceSize counts a space's bytes
// instead of trusting the estimate (a bounded scan).
const exactSizeBelow = 16 << 20

// Options tune the database. The zero value is the production setting.
type Options struct {
	// FS replaces the real filesystem (tests use vfs.NewMem or a crashable FS).
	FS vfs.FS
	// Logger receives Pebble's own messages at debug level; nil discards them.
	Logger *slog.Logger
	// CacheSize is the block cache in bytes (default 128 MiB).
	CacheSize int64
	// MemTableSize is the size of one memtable in bytes (default 16 MiB). Up
	// to two fill while one is flushed, so the memtables take up to about
	// three times this.
	MemTableSize uint64
}

// ForMemory returns the cache and memtable sizes for a process whose soft
// memory limit is limit bytes: the block cache a third of it (8 MiB to
// 1 GiB; below about 32 MiB the bloom filter and index blocks of a store of
// a million records no longer stay cached, and every record lookup reads
// them from disk again) and memtables a twelfth (4 to 16 MiB).
func ForMemory(limit uint64) Options {
	return Options{
		CacheSize:    int64(min(max(limit/3, 8<<20), 1<<30)),
		MemTableSize: min(max(limit/12, 4<<20), 16<<20),
	}
}

// l0CompactionThreshold is the number of L0 sublevels that starts a
// compaction out of L0 (Pebble's default is 4). Every flush holds log
// entries, records and change-feed keys spread over the whole key range, so
// each L0 compaction rewrites the overlapping files of the level below;
// doing it a quarter as often took about a seventh of the CPU off a
// 1,000,000-entry catch-up (docs/performance.md, "Compacting L0 less
// often"). A point lookup may check up to this many L0 files' bloom filters
// instead of 4. Writes stop at three times it, as with Pebble's defaults
// (4 and 12).
const l0CompactionThreshold = 16

// Open opens (creating if needed) the Pebble database in dir.
func Open(dir string, o Options) (*pebble.DB, error) {
	db, err := pebble.Open(dir, pebbleOptions(o))
	if err != nil {
		return nil, fmt.Errorf("store: open database in %s: %w", dir, err)
	}
	return db, nil
}

// pebbleOptions returns Pebble's options for o.
func pebbleOptions(o Options) *pebble.Options {
	if o.CacheSize == 0 {
		o.CacheSize = 128 << 20
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 16 << 20
	}
	po := &pebble.Options{
		// Explicit: new stores get the newest format; pebble's default is the oldest.
		FormatMajorVersion:    pebble.FormatNewest,
		CacheSize:             o.CacheSize,
		MemTableSize:          o.MemTableSize,
		MaxOpenFiles:          256,
		Logger:                pebbleLogger{o.Logger},
		FS:                    o.FS,
		L0CompactionThreshold: l0CompactionThreshold,
		L0StopWritesThreshold: 3 * l0CompactionThreshold,
	}
	// Bloom filters on every level: applying an entry looks up records that
	// often do not exist yet, and without filters each miss reads every level.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return po
}

// PrefixEnd returns the smallest key greater than every key starting with p.
func PrefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l != nil {
		p.l.Debug("pebble", "msg", fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.l != nil {
		p.l.Error("pebble", "msg", fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.l != nil {
		p.l.Error("pebble fatal", "msg", msg)
	}
	panic("pebble: " + msg)
}
