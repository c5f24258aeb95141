// Package sqlite is ppsync's connector for a SQLite practice database (a
// file on the node's machine), in pure Go (modernc.org/sqlite).
//
// Capture: AFTER INSERT/UPDATE/DELETE triggers on every synced table write
// each change into _ppsync_changes (an AUTOINCREMENT table: ids are never
// reused and, SQLite having one writer at a time, in commit order). An update
// records only the columns it changed, so two sites that change different
// columns of one row both keep their change. Values keep their storage class
// (integer, real, text, blob, null), not the declared type.
//
// Apply: in one BEGIN IMMEDIATE transaction (the write lock), the pending
// changes are captured first, so a local change not yet captured takes part
// in the merge, then the merged rows are written with capture suppressed (a
// flag row in _ppsync_applying, written at the start of the transaction and
// removed before its commit, that the triggers' WHEN clause checks: no other
// connection can write meanwhile and readers never see it), and the apply
// position is stored in _ppsync_meta in the same transaction.
package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the pure-Go driver

	"github.com/ppsync/ppsync/db"
)

// Names of ppsync's own tables in the practice database.
const (
	metaTable     = "_ppsync_meta"
	changesTable  = "_ppsync_changes"
	applyingTable = "_ppsync_applying"
	refusedTable  = "_ppsync_refused"
	triggerPrefix = "_ppsync_"
)

// Options configure the connector.
type Options struct {
	// Tables, when set, are the only tables synced.
	Tables []string
	// Exclude are tables never synced.
	Exclude []string
	// PollInterval is how often the database is checked for commits by
	// other programs (PRAGMA data_version; default 25ms).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Conn is a SQLite practice database.
type Conn struct {
	path string
	opts Options
	log  *slog.Logger
	w    *sql.DB // the one writing connection (BEGIN IMMEDIATE)
	r    *sql.DB // reads and the commit poll

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	stats  db.Stats
	schema *db.Schema
}

// Open opens the SQLite database at path (which must exist: ppsync syncs
// the practice's database, it does not create one).
func Open(ctx context.Context, path string, o Options) (*Conn, error) {
	if o.PollInterval <= 0 {
		o.PollInterval = 25 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("sqlite: the practice database %s cannot be opened: %w", abs, err)
	}
	dsn := func(lock string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "foreign_keys(1)")
		q.Set("_txlock", lock)
		return "file:" + abs + "?" + q.Encode()
	}
	c := &Conn{path: abs, opts: o, log: o.Logger, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if c.w, err = sql.Open("sqlite", dsn("immediate")); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	c.w.SetMaxOpenConns(1)
	if c.r, err = sql.Open("sqlite", dsn("deferred")); err != nil {
		c.w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	c.r.SetMaxOpenConns(4) // the commit poll, a long snapshot, capture reads and status at once
	if err := c.w.PingContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("sqlite: %s is not a SQLite database ppsync can open: %w", abs, err)
	}
	if err := c.ensureTables(ctx); err != nil {
		c.Close()
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.poll(pctx)
	return c, nil
}

// Driver implements db.Connector.
func (c *Conn) Driver() string { return "sqlite" }

// Path returns the database file's absolute path.
func (c *Conn) Path() string { return c.path }

// Close stops the poll and closes the connections.
func (c *Conn) Close() error {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
	return errors.Join(c.w.Close(), c.r.Close())
}

func (c *Conn) ensureTables(ctx context.Context) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS ` + metaTable + ` (k TEXT PRIMARY KEY, v TEXT NOT NULL)`,
		// op: 'i' (a row inserted: rid), 'u' (columns of mask changed: rid),
		// 'put' or 'delete' (the values, or the key, recorded as JSON). An
		// 'i' or 'u' of a table whose key is not its rowid also records the
		// row's key in pk ('' otherwise, and in changes an earlier version
		// recorded).
		`CREATE TABLE IF NOT EXISTS ` + changesTable + ` (id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, vals TEXT, rid INTEGER, mask INTEGER)`,
		`CREATE TABLE IF NOT EXISTS ` + applyingTable + ` (x INTEGER)`,
		// Merged rows the database refused, tried again by every apply.
		`CREATE TABLE IF NOT EXISTS ` + refusedTable + ` (tbl TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL, since TEXT NOT NULL, PRIMARY KEY (tbl, key))`,
	}
	for _, s := range stmts {
		if _, err := c.w.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("sqlite: create ppsync's tables in %s: %w", c.path, err)
		}
	}
	return nil
}

// poll wakes capture when another connection committed (PRAGMA
// data_version changes), every PollInterval.
func (c *Conn) poll(ctx context.Context) {
	defer close(c.done)
	conn, err := c.r.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	t := time.NewTicker(c.opts.PollInterval)
	defer t.Stop()
	var last int64 = -1
	for {
		var v int64
		if err := conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err == nil && v != last {
			last = v
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Wake implements db.Connector.
func (c *Conn) Wake() <-chan struct{} { return c.wake }

// Identity implements db.Connector: a random ID kept in _ppsync_meta, and
// the file's path.
func (c *Conn) Identity(ctx context.Context) (db.Identity, error) {
	id, err := c.meta(ctx, c.w, "id")
	if err != nil {
		return db.Identity{}, err
	}
	if id == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return db.Identity{}, fmt.Errorf("sqlite: database ID: %w", err)
		}
		id = hex.EncodeToString(b[:])
		if _, err := c.w.ExecContext(ctx, `INSERT OR IGNORE INTO `+metaTable+`(k, v) VALUES ('id', ?)`, id); err != nil {
			return db.Identity{}, fmt.Errorf("sqlite: store the database ID: %w", err)
		}
		if id, err = c.meta(ctx, c.w, "id"); err != nil {
			return db.Identity{}, err
		}
	}
	return db.Identity{ID: id, Detail: "sqlite:" + c.path}, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func (c *Conn) meta(ctx context.Context, q querier, k string) (string, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT v FROM `+metaTable+` WHERE k = ?`, k).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("sqlite: read %s: %w", k, err)
	}
	return v, nil
}

// Schema implements db.Connector.
func (c *Conn) Schema(ctx context.Context) (*db.Schema, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT name, coalesce(sql, '') FROM sqlite_schema WHERE type = 'table' ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read the tables: %w", err)
	}
	type tinfo struct{ name, sql string }
	var all []tinfo
	for rows.Next() {
		var t tinfo
		if err := rows.Scan(&t.name, &t.sql); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: read the tables: %w", err)
		}
		all = append(all, t)
	}
	rows.Close()
	s := &db.Schema{}
	only := map[string]bool{}
	for _, t := range c.opts.Tables {
		only[t] = true
	}
	for _, t := range all {
		if strings.HasPrefix(t.name, "sqlite_") || strings.HasPrefix(t.name, "_ppsync") {
			continue
		}
		if (len(only) > 0 && !only[t.name]) || contains(c.opts.Exclude, t.name) {
			continue
		}
		tab, err := c.tableInfo(ctx, t.name)
		if err != nil {
			return nil, err
		}
		if len(tab.PK) == 0 {
			s.Skipped = append(s.Skipped, db.Skipped{Table: t.name, Reason: "it has no primary key"})
			continue
		}
		tab.Autoincrement = strings.Contains(strings.ToUpper(t.sql), "AUTOINCREMENT")
		tab.WithoutRowid = strings.Contains(strings.ToUpper(t.sql), "WITHOUT ROWID")
		s.Tables = append(s.Tables, tab)
	}
	for name := range only {
		if _, ok := s.Table(name); !ok && !skipped(s, name) {
			return nil, fmt.Errorf("sqlite: db_tables names %q, which %s does not have", name, c.path)
		}
	}
	var v int64
	if err := c.r.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return nil, fmt.Errorf("sqlite: read user_version: %w", err)
	}
	s.Version = uint32(v)
	return s, nil
}

func skipped(s *db.Schema, name string) bool {
	for _, k := range s.Skipped {
		if k.Table == name {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (c *Conn) tableInfo(ctx context.Context, name string) (db.Table, error) {
	t := db.Table{Name: name}
	rows, err := c.r.QueryContext(ctx, `SELECT name, type, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid`, name)
	if err != nil {
		return t, fmt.Errorf("sqlite: read the columns of %s: %w", name, err)
	}
	defer rows.Close()
	pk := map[int]string{}
	for rows.Next() {
		var col db.Column
		var hidden int
		if err := rows.Scan(&col.Name, &col.Type, &col.PK, &hidden); err != nil {
			return t, fmt.Errorf("sqlite: read the columns of %s: %w", name, err)
		}
		if hidden != 0 { // generated and virtual-table hidden columns are not data
			continue
		}
		t.Columns = append(t.Columns, col)
		if col.PK > 0 {
			pk[col.PK] = col.Name
		}
	}
	if err := rows.Err(); err != nil {
		return t, fmt.Errorf("sqlite: read the columns of %s: %w", name, err)
	}
	for i := 1; i <= len(pk); i++ {
		t.PK = append(t.PK, pk[i])
	}
	return t, nil
}

// Stats implements db.Connector.
func (c *Conn) Stats() db.Stats {
	c.mu.Lock()
	st := c.stats
	c.mu.Unlock()
	st.PendingByTable = map[string]uint64{}
	rows, err := c.r.Query(`SELECT tbl, count(*) FROM ` + changesTable + ` GROUP BY tbl`)
	if err != nil {
		return st
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var n uint64
		if rows.Scan(&t, &n) == nil {
			st.PendingByTable[t] = n
			st.PendingCapture += n
		}
	}
	return st
}

func (c *Conn) note(f func(*db.Stats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}
