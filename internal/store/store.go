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
package store

import (
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
)

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

// Open opens (creating if needed) the Pebble database in dir.
func Open(dir string, o Options) (*pebble.DB, error) {
	if o.CacheSize == 0 {
		o.CacheSize = 128 << 20
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 16 << 20
	}
	po := &pebble.Options{
		// Explicit: new stores get the newest format; pebble's default is the oldest.
		FormatMajorVersion: pebble.FormatNewest,
		CacheSize:          o.CacheSize,
		MemTableSize:       o.MemTableSize,
		MaxOpenFiles:       256,
		Logger:             pebbleLogger{o.Logger},
		FS:                 o.FS,
	}
	// Bloom filters on every level: applying an entry looks up records that
	// often do not exist yet, and without filters each miss reads every level.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("store: open database in %s: %w", dir, err)
	}
	return db, nil
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
