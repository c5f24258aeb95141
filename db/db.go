// Package db connects ppsync to the practice's own database: it captures the
// changes that any program commits there (this site's writes, which node puts
// into the site's log) and writes the merged rows of the other sites back,
// with capture suppressed for them. One sub-package per database (sqlite,
// postgres) implements Connector; node drives it.
//
// The connector knows nothing of the log or the state: what it needs of them
// it asks through the Syncer it is handed (commit captured changes durably,
// read the merged rows changed since a cursor), which node satisfies.
package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// Errors of the connectors.
var (
	// ErrBinding: the database is not the one this node was set up with.
	ErrBinding = errors.New("db: wrong database")
	// ErrRestored: the database is behind the node (restored from an older
	// backup); it must be repaired (`ppsync db check --repair`) before sync.
	ErrRestored = errors.New("db: database restored from an older backup")
	// ErrUnsupported: a URL of a database ppsync cannot sync.
	ErrUnsupported = errors.New("db: unsupported database")
	// ErrValue: a value a column cannot hold.
	ErrValue = errors.New("db: value does not fit the column")
)

// Column describes one column of a synced table.
type Column struct {
	Name string
	Type string // as declared
	PK   int    // position in the primary key (1-based), 0 when not part of it
}

// Table describes one synced table.
type Table struct {
	Name    string
	Columns []Column
	PK      []string // primary key columns in key order
	// Autoincrement is set when new keys come from a counter the connector
	// can move (SQLite AUTOINCREMENT, a PostgreSQL sequence).
	Autoincrement bool
	// WithoutRowid is set for a SQLite table declared WITHOUT ROWID.
	WithoutRowid bool
}

// Column returns the column named name.
func (t *Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// Skipped is a table that is not synced, and why.
type Skipped struct {
	Table  string
	Reason string
}

// Schema is what the connector read from the database.
type Schema struct {
	Tables  []Table
	Skipped []Skipped
	// Version is the practice software's schema version (SQLite
	// user_version, or the configured query); 0 when unknown.
	Version uint32
}

// Table returns the synced table named name.
func (s *Schema) Table(name string) (*Table, bool) {
	for i := range s.Tables {
		if s.Tables[i].Name == name {
			return &s.Tables[i], true
		}
	}
	return nil, false
}

// Identity names a database: a random ID the connector stored in the
// database's ppsync_meta table, and what the database itself says it is.
type Identity struct {
	ID     string // random, made the first time ppsync saw the database
	Detail string // e.g. the file path, or the server's system identifier and database OID
}

// Batch is changes captured from the database: the ops of one or more
// whole committed transactions, in commit order. Pos is the capture position
// after it; storing Pos with the entry and acknowledging it afterwards makes
// capture exactly once.
type Batch struct {
	Ops []wire.Op
	Pos uint64
}

// Row is a merged record to write into the database: nil Fields deletes it.
type Row struct {
	Table  string
	Key    string
	Fields map[string]any
}

// Syncer is what a connector needs of the node during an apply.
type Syncer interface {
	// CapturePos returns the capture position stored with the log: changes
	// up to it are already in the log.
	CapturePos() uint64
	// Captured commits captured batches to the log durably (with their
	// positions) before returning.
	Captured(ctx context.Context, bs []Batch) error
	// Changed returns up to limit merged rows changed after cursor, and the
	// cursor after them.
	Changed(after uint64, limit int) (rows []Row, next uint64, err error)
	// Merged returns the merged row table/key (nil Fields: absent).
	Merged(table, key string) (Row, error)
}

// ApplyResult says what an apply did.
type ApplyResult struct {
	Captured int    // local changes drained first
	Rows     int    // rows written (upserted or deleted)
	Cursor   uint64 // the apply position now stored in the database
	// Conflicts are the rows the database refused in this apply (new ones
	// and earlier ones tried again): after it, exactly the refused rows the
	// database keeps.
	Conflicts []RowConflict
	// Resolved counts earlier refused rows this apply wrote at last.
	Resolved int
}

// RowConflict is a merged row the database refused (a foreign key still
// referenced, a unique constraint): not half-applied, reported. The
// connector keeps the refused rows in the database, stored with the apply
// position in the same transaction, and every later apply tries them again
// after its own rows (their parent may come in a later batch, the local row
// that still referred to a deleted one may be gone), until one is written.
type RowConflict struct {
	Table, Key string
	Reason     string
	Fields     map[string]any // the merged row that could not be written
}

// Stats are a connector's counters.
type Stats struct {
	Captured       uint64 // changes captured since start
	Applied        uint64 // rows applied since start
	PendingCapture uint64 // change rows waiting in the change table
	// PendingByTable is PendingCapture per table.
	PendingByTable map[string]uint64
	LastCapture    time.Time
	LastApply      time.Time
}

// Connector is one practice database.
type Connector interface {
	// Driver names the database kind ("sqlite", "postgres").
	Driver() string
	// Identity returns the database's identity, creating the random ID on
	// the first call for a database.
	Identity(ctx context.Context) (Identity, error)
	// Schema reads the synced tables.
	Schema(ctx context.Context) (*Schema, error)
	// Install creates ppsync's tables and the capture triggers of every
	// synced table (idempotent; adds triggers for new tables and columns).
	Install(ctx context.Context, s *Schema) error
	// Capture reads committed changes after pos, whole transactions, at
	// most about maxOps operations per batch.
	Capture(ctx context.Context, after uint64, maxOps int) ([]Batch, error)
	// Ack deletes captured changes up to pos.
	Ack(ctx context.Context, upto uint64) error
	// Wake returns a channel that receives when the database may have new
	// changes to capture.
	Wake() <-chan struct{}
	// Apply, inside one database transaction holding the write lock:
	// captures what is pending (handing it to s.Captured), writes the rows
	// changed in the merged state since the stored apply position, and
	// stores the new position, all or nothing.
	Apply(ctx context.Context, s Syncer, maxRows int) (ApplyResult, error)
	// ApplyCursor returns the stored apply position.
	ApplyCursor(ctx context.Context) (uint64, error)
	// Refused returns the merged rows the database refused and that every
	// apply tries again (Fields not filled in), oldest first.
	Refused(ctx context.Context) ([]RowConflict, error)
	// Snapshot reads every synced table in one read transaction and calls fn
	// with batches of puts; it returns the capture position that the
	// snapshot includes (later changes come through Capture).
	Snapshot(ctx context.Context, s *Schema, batchRows int, fn func(ops []wire.Op) error) (pos uint64, err error)
	// Row returns the row of t under key as the database holds it (ok
	// false when it has none).
	Row(ctx context.Context, t *Table, key string) (r Row, ok bool, err error)
	// Rows calls fn with every row of table, as a Row (for `db check`).
	Rows(ctx context.Context, t *Table, fn func(Row) error) error
	// Write writes rows as an apply does (capture suppressed), for repair.
	Write(ctx context.Context, rows []Row) error
	// SetSchema gives the connector the tables it writes.
	SetSchema(s *Schema)
	// SetApplyCursor stores the apply position outside an apply (0: write
	// every merged row again, after a repair or a schema change).
	SetApplyCursor(ctx context.Context, n uint64) error
	// Stats returns the counters.
	Stats() Stats
	// Close closes the connection.
	Close() error
}

// Retries returns, for each refused row that rows does not hold, its current
// merged version: what an apply writes after its own rows.
func Retries(rows []Row, refused []RowConflict, s Syncer) ([]Row, error) {
	if len(refused) == 0 {
		return nil, nil
	}
	have := make(map[[2]string]bool, len(rows))
	for _, r := range rows {
		have[[2]string{r.Table, r.Key}] = true
	}
	var out []Row
	for _, c := range refused {
		if have[[2]string{c.Table, c.Key}] {
			continue
		}
		have[[2]string{c.Table, c.Key}] = true
		r, err := s.Merged(c.Table, c.Key)
		if err != nil {
			return nil, fmt.Errorf("db: read the merged row %s/%s to try it again: %w", c.Table, c.Key, err)
		}
		r.Table, r.Key = c.Table, c.Key
		out = append(out, r)
	}
	return out, nil
}

// NewlyRefused returns the rows of now (refused after an apply) that before
// (refused earlier) does not hold with the same reason: what the stored
// list of refused rows must take in.
func NewlyRefused(before, now []RowConflict) []RowConflict {
	had := make(map[[2]string]string, len(before))
	for _, k := range before {
		had[[2]string{k.Table, k.Key}] = k.Reason
	}
	var out []RowConflict
	for _, k := range now {
		if why, ok := had[[2]string{k.Table, k.Key}]; !ok || why != k.Reason {
			out = append(out, k)
		}
	}
	return out
}

// Resolved returns the rows of before (refused earlier) that now (refused
// after an apply) no longer holds: written at last.
func Resolved(before, now []RowConflict) []RowConflict {
	still := make(map[[2]string]bool, len(now))
	for _, k := range now {
		still[[2]string{k.Table, k.Key}] = true
	}
	var out []RowConflict
	for _, k := range before {
		if !still[[2]string{k.Table, k.Key}] {
			out = append(out, k)
		}
	}
	return out
}

// Newest keeps, of rows read from the merged state's change feed page by
// page, only the last version of each row, in the order of those last
// versions. A row that changed again while the pages were read appears
// twice (its older version on an earlier page): writing both, in an order a
// connector chooses (deletes before upserts, parents first), could put the
// older version last.
func Newest(rows []Row) []Row {
	last := make(map[[2]string]int, len(rows))
	for i, r := range rows {
		last[[2]string{r.Table, r.Key}] = i
	}
	if len(last) == len(rows) {
		return rows
	}
	out := make([]Row, 0, len(last))
	for i, r := range rows {
		if last[[2]string{r.Table, r.Key}] == i {
			out = append(out, r)
		}
	}
	return out
}
