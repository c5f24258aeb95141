package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// KV is one key and its value.
type KV struct{ Key, Value []byte }

// Ingester hands tables of new keys to a database whole (Pebble's
// ingestion): each table is written to a file of its own, synced, and the
// files are moved into the database in one atomic step, placed at the
// lowest level whose data they do not overlap. Keys that are always new and
// written in order (a site's log entries received in a catch-up) then skip
// the write-ahead log, the memtable and the compactions that would rewrite
// them level by level.
//
// Ingestion is atomic with nothing else: a caller that ingests keys and then
// commits a batch must make the ingested keys mean nothing until that batch
// is durable (the log stores entries above a site's head, which it reads
// only up to the head the batch moves). It is safe for concurrent use.
type Ingester struct {
	db   *pebble.DB
	fs   vfs.FS
	dir  string
	wo   sstable.WriterOptions
	next atomic.Uint64
}

// NewIngester returns an ingester for db, opened by Open with o, that
// writes its files in dir (created if needed; on the database's file
// system, as the database's own directory). Files left in dir by a crash
// are removed: they were never ingested.
func NewIngester(db *pebble.DB, dir string, o Options) (*Ingester, error) {
	po := pebbleOptions(o)
	po.EnsureDefaults()
	in := &Ingester{db: db, fs: po.FS, dir: dir, wo: po.MakeWriterOptions(0, db.TableFormat())}
	// What is ingested is mostly ciphertext (sealed entries), which no block
	// compression shrinks: trying costs the committer a third of writing a
	// table.
	in.wo.Compression = sstable.NoCompression
	if err := in.fs.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create the ingestion directory: %w", err)
	}
	left, err := in.fs.List(dir)
	if err != nil {
		return nil, fmt.Errorf("store: list the ingestion directory: %w", err)
	}
	for _, name := range left {
		if err := in.fs.Remove(in.fs.PathJoin(dir, name)); err != nil {
			return nil, fmt.Errorf("store: remove %s left by an interrupted ingestion: %w", name, err)
		}
	}
	return in, nil
}

// Ingest stores tables in the database atomically: all of them or none.
// Each table's keys must be sorted, new to the database's live data or
// meant to replace it, and no two tables' key ranges may overlap. Empty
// tables are skipped.
func (in *Ingester) Ingest(ctx context.Context, tables [][]KV) (err error) {
	var paths []string
	defer func() {
		if err != nil { // on success the database moved the files
			for _, p := range paths {
				_ = in.fs.Remove(p)
			}
		}
	}()
	for _, t := range tables {
		if len(t) == 0 {
			continue
		}
		p := in.fs.PathJoin(in.dir, strconv.FormatUint(in.next.Add(1), 10)+".sst")
		paths = append(paths, p)
		if err := in.write(p, t); err != nil {
			return err
		}
	}
	if len(paths) == 0 {
		return nil
	}
	if err := in.db.Ingest(ctx, paths); err != nil {
		return fmt.Errorf("store: ingest %d tables: %w", len(paths), err)
	}
	return nil
}

// write writes one table to path and syncs it.
func (in *Ingester) write(path string, t []KV) error {
	f, err := in.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("store: create %s: %w", filepath.Base(path), err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), in.wo)
	for _, kv := range t {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return errors.Join(fmt.Errorf("store: write %s: %w", filepath.Base(path), err), w.Close())
		}
	}
	if err := w.Close(); err != nil { // finishes, syncs and closes the file
		return fmt.Errorf("store: write %s: %w", filepath.Base(path), err)
	}
	return nil
}
