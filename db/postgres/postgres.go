// Package postgres is ppsync's connector for a PostgreSQL practice database
// (PostgreSQL 13 or newer: xid8 and pg_current_xact_id), in pure Go
// (github.com/jackc/pgx/v5). Any existing server works: no restart, no
// wal_level = logical, no replication slot.
//
// # ppsync's objects in the database
//
// Everything ppsync creates lives in its own schema, ppsync, so the practice
// software's schema gains only three triggers per synced table:
//
//   - ppsync.meta (k, v): the database's random ID, the capture counter
//     (capture_pos) and the apply position (apply_cursor).
//   - ppsync.changes (id bigserial, xid xid8 DEFAULT pg_current_xact_id(),
//     tbl, op, pk json, vals json, pos bigint): the captured changes; pos is
//     NULL until a capture gives the row its batch position.
//   - _ppsync_capture, AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, calls
//     ppsync.capture(table, key columns...); _ppsync_wake, the same events FOR
//     EACH STATEMENT, does NOTIFY ppsync_changes (delivered at commit, folded
//     per transaction: a cheap wake-up, never the data); _ppsync_truncate,
//     BEFORE TRUNCATE, records a delete of every row a TRUNCATE removes. All
//     three skip their work when ppsync.applying is 'on' (echo suppression).
//
// The functions are SECURITY DEFINER with a fixed search_path, so the practice
// software's role needs no rights on ppsync's schema and cannot write change
// rows of its own. ppsync's role needs CREATE on the database and the right to
// create triggers on, read, write and lock the synced tables (owning them is
// simplest).
//
// The row function reads rows only through row_to_json(NEW/OLD) and names no
// column, so the practice software can add, drop or rename columns without its
// writes failing in ppsync's trigger. It runs with fixed settings (TimeZone
// UTC, DateStyle ISO, IntervalStyle postgres, extra_float_digits 3,
// bytea_output hex), so the recorded text never depends on the writing
// program's session. An insert records every column; an update records only
// the columns whose text changed (two sites changing different columns of a
// row both keep their change), or, when the key changed, a delete of the old
// key and a put of the whole new row; a delete records the key. The key is
// recorded with its column names, so a change recorded just before the
// practice software redefined a primary key is still read correctly. On this
// kind of machine the trigger costs about 20 µs per inserted row and 50 µs per
// updated row (a plain insert or update costs 2 to 4 µs).
//
// # Capture position (exactly once, no gaps)
//
// Change ids are taken when a row is written, not when its transaction
// commits, so "everything above the last id" would lose the rows of a
// transaction that commits after a later one was read. ppsync never uses a
// high-water mark on ids or xids. Instead a capture marks rows individually
// (consume and mark), in one READ COMMITTED transaction under an advisory
// lock:
//
//  1. It reads the unmarked rows its statement snapshot sees. A row is
//     visible only once its transaction committed, and a transaction's rows
//     become visible all at once, so every transaction it sees is finished and
//     whole; a transaction still running is picked up by a later capture,
//     whatever its ids or xid.
//  2. It groups them by xid: one database transaction becomes one Batch (one
//     of more than maxOps rows or about 256 KiB is cut into consecutive
//     batches, so no entry outgrows its limits). It orders the groups by their
//     largest change id, gives each batch the next value of a counter kept in
//     ppsync.meta, writes that value into the rows' pos and stores the counter,
//     in the same transaction.
//  3. Batch.Pos is that counter value: it grows strictly, in the order batches
//     are handed out, across captures and restarts, and a row keeps its pos
//     once the marking committed. A capture returns whole transactions, about
//     maxOps ops in all.
//
// The node stores Pos with the entry, then calls Ack(Pos), which deletes the
// rows with pos <= Pos. After a crash between the two, Capture(after=Pos)
// deletes the rows marked <= after and hands out nothing twice; after a crash
// before the entry was stored, Capture(after=older) hands out the batches
// marked above older again, with the same positions and ops. The marking
// commits on its own, before the batches reach the node, so an apply that
// captured pending changes and then rolled back leaves them marked with the
// positions the node may already hold. A counter below the position the node
// asks for means the database was restored from an older backup
// (db.ErrRestored); Positions reports the counter and the apply position for
// the node to notice it, and Rebase (db check --repair) moves the counter
// past the node's position and drops the restored change rows.
//
// Why order by the largest change id: when two transactions write the same
// row, the second one waits on the row lock until the first commits, so its
// change row for that row, and thus its largest id, comes after every id of
// the first. More generally, a transaction that wrote anything after another
// committed sorts after it, which is the order in which the database applied
// them wherever they touch the same rows; transactions that overlapped
// without touching the same rows commute. Ids are unique, so the order is
// deterministic. Across captures it holds too: a transaction captured later
// had not committed when the earlier capture read, so it cannot precede one
// that capture saw. (Ordering by xid would not do: an older transaction can
// write a row after a younger one committed its write of the same row.)
//
// Why not "xid below pg_snapshot_xmin(pg_current_snapshot())": that horizon
// is what a high-water mark needs. With per-row marking, visibility already
// means "certainly finished", and the horizon would only delay: any long
// write transaction of another program (even one left idle) would hold back
// the capture of every later transaction, and an apply could not drain a
// local change that committed before the apply locked its table. The xid is
// still stored, to group a transaction's rows.
//
// Snapshot: Install creates the triggers first (CREATE TRIGGER waits for the
// table's writers in flight, so every write not captured has committed when
// it returns). Snapshot then takes the advisory lock and, in one REPEATABLE
// READ transaction, deletes the change rows it sees and reads every synced
// table: a change row is visible exactly when its transaction's effects are
// in the snapshot, so nothing is missed or doubled. It returns the capture
// counter, which every later batch exceeds.
//
// # Apply
//
// One transaction, with SET LOCAL ppsync.applying = 'on'. It drains what is
// pending (a capture, handed to Syncer.Captured), reads the merged rows
// changed since the stored cursor, locks their tables in SHARE ROW EXCLUSIVE
// mode (other programs' writes to them wait; reads do not) and drains again:
// every local change to those tables committed before the lock is now in the
// merge, and none can commit until the apply does. Should the rows now touch a
// table not locked yet, it is locked and the drain repeated. A lock waits at
// most half of deadlock_timeout, so in a lock cycle with another program
// ppsync gives up (and tries again with a growing pause), never the practice
// software's transaction. Rows are written parents first and deleted
// children first (the foreign key graph from pg_constraint; PostgreSQL defers
// only DEFERRABLE constraints, which are deferred to the end of the batch),
// upserted with INSERT ... ON CONFLICT (key) DO UPDATE of the fields present
// (OVERRIDING SYSTEM VALUE, for identity columns): one statement for all the
// rows of a table with the same fields present, their values read by
// json_populate_recordset (each value parsed by its column type's input
// function, as for a single row), all in one round trip inside one
// savepoint. If any row is refused (or two keys name one row), that
// savepoint is rolled back and the rows are written one at a time, each in
// its own savepoint, retried while any succeeds, and the rest reported as
// db.RowConflict. The drained
// change rows are deleted and the apply cursor stored in the same
// transaction. Cascaded deletes and updates (ON DELETE CASCADE) happen in the
// apply's transaction and are not captured: every site cascades on its own.
//
// # IDs
//
// A row inserted without an explicit ID takes the next value of its column's
// sequence (serial, bigserial, identity), and every site's database has its
// own sequences, so two sites would hand out the same IDs. With Options.Slot
// (the slot in the site's certificate: 1, 2, 3, ...) each site's new IDs
// come from its own range, [slot·10^12+1, (slot+1)·10^12) (RangeSize, Range).
// Install applies the rule to every sequence owned by a column of a synced
// table: if its increment is 1 and its next value is below the range, it is
// restarted at slot·10^12+1 (ALTER SEQUENCE ... RESTART WITH). A sequence
// already inside the range, or above it, is left alone: a sequence only ever
// moves forward, never back and never into another site's range, and running
// Install again changes nothing. Rows applied from other sites do not move a
// sequence (PostgreSQL, unlike SQLite, leaves a sequence alone when a row is
// inserted with an explicit ID), so a site keeps handing out IDs from its own
// range whatever it receives. The rows that exist when ppsync arrives keep
// their IDs.
//
// A sequence is read without a lock first, so one already in its range
// (every start after the first) is never locked. One below its range is
// restarted under its lock (taken by ALTER SEQUENCE, which nextval and setval
// wait for, so nothing moves it between the read and the restart); the lock
// waits for the transactions that took a value from the sequence, at most
// 2 s, then Install fails and the node tries again.
//
// Left alone, with a warning in the log: a sequence whose increment is not 1,
// one whose column (integer, serial) or MAXVALUE cannot hold the range (make
// the column bigint), and one ppsync's role may not alter (it must own the
// table); their new IDs can collide between sites. IDs the practice software
// sets explicitly (its own counter, max(id)+1) are its own business: ppsync
// moves sequences only. Slot 0 (older certificates) leaves every sequence
// alone.
//
// # Values
//
// Each value is read through row_to_json (in the trigger and when reading
// tables, with the same settings) and decoded by the column's type: int2/4/8
// as int64; float4/8 as float64 (a float4 as the float64 of its shortest
// text, so 0.1 stays 0.1; NaN and infinities as the text "NaN", "Infinity",
// "-Infinity", since entries carry JSON numbers only); numeric as its exact
// text; bool as bool; bytea as db.Blob; timestamptz as RFC 3339 text in UTC
// with six fractional digits; timestamp as ISO text with six fractional
// digits; date as ISO text; json and jsonb as their text (for jsonb its
// canonical text); arrays and composite types as their JSON text; every other
// type (text, varchar, char, uuid, enums, time, interval, ...) as its text;
// NULL as nil. One loss: row_to_json writes a json or jsonb value that is the
// JSON literal null like SQL NULL, so it is read as NULL. Values are written
// back through json_populate_record, which parses each with the column type's
// own input function. A value the column cannot hold exactly (out of range,
// more digits than a numeric(p,s) or timestamp(p) keeps, a float4 that would
// round, too long for varchar(n), not valid for the type) is refused with an
// error naming table, key and column, never cut: Write fails with
// db.ErrValue, Apply reports the row as a conflict.
//
// Not captured: writes made with session_replication_role = replica (which
// silences all ordinary triggers, e.g. pg_restore --disable-triggers), and a
// TRUNCATE of a single partition instead of its partitioned table.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ppsync/ppsync/db"
)

// Names of ppsync's objects in the practice database.
const (
	ppSchema        = "ppsync"
	metaTable       = "ppsync.meta"
	changeTable     = "ppsync.changes"
	refusedTable    = "ppsync.refused"
	captureFunc     = "ppsync.capture"
	wakeFunc        = "ppsync.wake"
	truncateFunc    = "ppsync.truncated"
	keyFunc         = "ppsync.key"
	triggerName     = "_ppsync_capture"  // the row trigger that records changes
	wakeTrigger     = "_ppsync_wake"     // the statement trigger that notifies
	truncateTrigger = "_ppsync_truncate" // the statement trigger that records a TRUNCATE
	notifyChan      = "ppsync_changes"
	applyingGUC     = "ppsync.applying"
	// lockKey is the advisory lock that serializes ppsync's captures, snapshots
	// and applies on one database ("ppsync" in ASCII).
	lockKey = int64(0x707073796e63)
)

// Options configure the connector.
type Options struct {
	// Tables, when set, are the only tables synced.
	Tables []string
	// Exclude are tables never synced.
	Exclude []string
	// Schema is the PostgreSQL schema whose tables are synced (default public).
	Schema string
	// Password, when set, is used instead of one in the URL or PGPASSWORD.
	Password string
	// PasswordFile, when set and Password is not, holds the password (its
	// trailing newline is ignored).
	PasswordFile string
	// VersionQuery, when set, returns the practice software's schema version
	// (one integer); Schema.Version is 0 without it.
	VersionQuery string
	// Slot is the site's number in its family (its certificate's slot: 1, 2,
	// 3, ...). When it is set, Install moves the synced tables' sequences into
	// the site's ID range (see "IDs" in the package doc); 0 leaves them alone.
	Slot uint32
	// PollInterval is how often the change table is checked in case a
	// notification was missed (default 5s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Conn is a PostgreSQL practice database.
type Conn struct {
	opts     Options
	log      *slog.Logger
	schema   string // the synced PostgreSQL schema
	where    string // USER@HOST:PORT/DB, for messages (never the password)
	password string
	pool     *pgxpool.Pool
	cfg      *pgxpool.Config

	lockTimeout time.Duration // for the apply's table locks (half deadlock_timeout)

	wake   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	stats  db.Stats
	sch    *db.Schema
	tables map[string]*tableInfo // column types, by table name
	fk     *fkGraph
	// rangeWarn are the columns whose new IDs are not from this site's
	// range, in plain words (RangeWarnings), as of the last Install.
	rangeWarn []string
}

// Open connects to the PostgreSQL database a URL names
// (postgres://USER@HOST:PORT/DBNAME?sslmode=...) and creates ppsync's schema
// and tables in it if they are missing.
func Open(ctx context.Context, rawURL string, o Options) (*Conn, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 5 * time.Second
	}
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.Schema == ppSchema {
		return nil, fmt.Errorf("postgres: the schema %q is ppsync's own; name the practice software's schema", ppSchema)
	}
	where := redact(rawURL)
	if o.Password == "" && o.PasswordFile != "" {
		b, err := os.ReadFile(o.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("postgres: read the password file: %w", err)
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s is not a PostgreSQL URL ppsync can use: %s", where, scrub(err.Error(), o.Password, urlPassword(rawURL)))
	}
	if o.Password != "" {
		cfg.ConnConfig.Password = o.Password
	}
	c := &Conn{opts: o, log: o.Logger, schema: o.Schema, where: where, password: cfg.ConnConfig.Password,
		wake: make(chan struct{}, 1), tables: map[string]*tableInfo{}}
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	// Fixed session settings: values are read and parsed the same way
	// whatever the server's defaults.
	for k, v := range map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
		"extra_float_digits": "3", "bytea_output": "hex", "application_name": "ppsync"} {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	if cfg.MaxConns < 6 { // an apply holds one, its drain another, catalog reads a third
		cfg.MaxConns = 6
	}
	c.cfg = cfg
	if c.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, c.errf("connect", err)
	}
	if err := c.pool.Ping(ctx); err != nil {
		c.pool.Close()
		return nil, c.errf("connect", err)
	}
	if err := c.ensureTables(ctx); err != nil {
		c.pool.Close()
		return nil, err
	}
	c.lockTimeout = time.Second / 2
	var dt string
	if err := c.pool.QueryRow(ctx, `SELECT setting FROM pg_settings WHERE name = 'deadlock_timeout'`).Scan(&dt); err == nil {
		if ms, err := strconv.Atoi(dt); err == nil && ms > 0 {
			c.lockTimeout = max(time.Duration(ms)*time.Millisecond/2, 10*time.Millisecond)
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(2)
	go c.listen(bg)
	go c.poll(bg)
	return c, nil
}

// redact gives the URL without a password, for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "the database URL"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func urlPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			return p
		}
	}
	return u.Query().Get("password")
}

// scrub removes passwords from a message.
func scrub(msg string, secrets ...string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "********")
		}
	}
	return msg
}

// errf wraps err for a message about the database, without its password.
// When the server is down or cannot be reached, the message says so in
// plain words (ServerDownError).
func (c *Conn) errf(what string, err error) error {
	if err == nil {
		return nil
	}
	if why, ok := serverAway(err); ok {
		return &ServerDownError{Where: c.where, Why: scrub(why, c.password), What: what, Err: err}
	}
	if c.password != "" && strings.Contains(err.Error(), c.password) {
		return fmt.Errorf("postgres: %s (%s): %s", what, c.where, scrub(err.Error(), c.password))
	}
	return fmt.Errorf("postgres: %s (%s): %w", what, c.where, err)
}

// ServerDownError is an operation that failed because the PostgreSQL server
// is not running, is shutting down or starting up, or cannot be reached. Its
// message says so plainly (it is what `ppsync db status` shows while the
// outage lasts); the node tries again and goes on by itself once the server
// answers. Err is the driver's error.
type ServerDownError struct {
	Where string // the database's URL, without a password
	Why   string // "is not running (...)", "is shutting down", ...
	What  string // what ppsync was doing
	Err   error
}

func (e *ServerDownError) Error() string {
	return fmt.Sprintf("postgres: the PostgreSQL server %s (database %s, while: %s)", e.Why, e.Where, e.What)
}

func (e *ServerDownError) Unwrap() error { return e.Err }

// serverAway says whether err means the server is down or unreachable
// rather than refusing something, and why, in plain words.
func serverAway(err error) (string, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "57P01": // admin_shutdown: it ended the session
			return "is shutting down (it ended ppsync's session: " + pe.Message + ")", true
		case pe.Code == "57P02": // crash_shutdown
			return "is restarting after a crash of one of its processes (" + pe.Message + ")", true
		case pe.Code == "57P03": // cannot_connect_now
			switch m := pe.Message; {
			case strings.Contains(m, "shutting down"):
				return "is shutting down (" + m + ")", true
			case strings.Contains(m, "starting up"), strings.Contains(m, "recovery"), strings.Contains(m, "not yet accepting"):
				return "is starting up (" + m + ")", true
			default:
				return "is not accepting connections (" + m + ")", true
			}
		case strings.HasPrefix(pe.Code, "08"): // connection_exception
			return "cannot be reached (" + pe.Message + ")", true
		}
		return "", false
	}
	var ce *pgconn.ConnectError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return "is not running, or does not listen at that address", true
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, net.ErrClosed):
		return "closed the connection (it stopped or restarted)", true
	case errors.As(err, &ce):
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "cannot be reached (no answer in time)", true
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			return "cannot be reached (" + oe.Err.Error() + ")", true
		}
		return "cannot be reached", true
	}
	return "", false
}

// Driver implements db.Connector.
func (c *Conn) Driver() string { return "postgres" }

// Close stops the listener and the poll and closes the connections.
func (c *Conn) Close() error {
	if c.cancel != nil {
		c.cancel()
		c.wg.Wait()
		c.cancel = nil
	}
	c.pool.Close()
	return nil
}

func (c *Conn) ensureTables(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		stmts := []string{
			`SELECT pg_advisory_xact_lock(` + strconv.FormatInt(lockKey, 10) + `)`,
			`CREATE SCHEMA IF NOT EXISTS ` + ppSchema,
			`CREATE TABLE IF NOT EXISTS ` + metaTable + ` (k text PRIMARY KEY, v text NOT NULL)`,
			`CREATE TABLE IF NOT EXISTS ` + changeTable + ` (
				id bigserial PRIMARY KEY,
				xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
				tbl text NOT NULL,
				op "char" NOT NULL,
				pk json NOT NULL,
				vals json,
				pos bigint)`,
			// Merged rows the database refused, tried again by every apply.
			`CREATE TABLE IF NOT EXISTS ` + refusedTable + ` (
				tbl text NOT NULL,
				key text NOT NULL,
				reason text NOT NULL,
				since timestamptz NOT NULL DEFAULT now(),
				n bigserial,
				PRIMARY KEY (tbl, key))`,
		}
		// CREATE INDEX IF NOT EXISTS takes a SHARE lock on the table even
		// when the index exists, and would wait behind (and then hold up)
		// every open practice transaction whose trigger wrote a change row:
		// create the indexes only when they are missing.
		var have int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE oid IN (to_regclass($1), to_regclass($2))`,
			ppSchema+".changes_pos", ppSchema+".changes_unmarked").Scan(&have); err != nil {
			return err
		}
		if have < 2 {
			stmts = append(stmts,
				`SET LOCAL lock_timeout = '5s'`,
				`CREATE INDEX IF NOT EXISTS changes_pos ON `+changeTable+` (pos)`,
				`CREATE INDEX IF NOT EXISTS changes_unmarked ON `+changeTable+` (xid) WHERE pos IS NULL`)
		}
		stmts = append(stmts, captureFuncs...)
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return c.errf("create ppsync's schema and tables (the role needs CREATE on the database)", err)
	}
	return nil
}

// Wake implements db.Connector.
func (c *Conn) Wake() <-chan struct{} { return c.wake }

func (c *Conn) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// listen keeps a LISTEN connection and wakes capture on each notification;
// after a reconnect it wakes once, for what came while it was away.
func (c *Conn) listen(ctx context.Context) {
	defer c.wg.Done()
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, c.cfg.ConnConfig.Copy())
		if err == nil {
			if _, err = conn.Exec(ctx, `LISTEN `+notifyChan); err == nil {
				c.poke()
				for {
					if _, err = conn.WaitForNotification(ctx); err != nil {
						break
					}
					c.poke()
				}
			}
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Debug("postgres: LISTEN connection lost, reconnecting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// poll is the slow fallback: it wakes capture when unmarked changes wait.
func (c *Conn) poll(ctx context.Context) {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var pending bool
		if err := c.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+changeTable+` WHERE pos IS NULL)`).Scan(&pending); err == nil && pending {
			c.poke()
		}
	}
}

// Identity implements db.Connector: a random ID kept in ppsync.meta, and
// the server's system identifier with the database's OID and name, so a
// restored copy on another server or in another database is told apart.
func (c *Conn) Identity(ctx context.Context) (db.Identity, error) {
	id, err := c.meta(ctx, c.pool, "id")
	if err != nil {
		return db.Identity{}, err
	}
	if id == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return db.Identity{}, fmt.Errorf("postgres: database ID: %w", err)
		}
		if _, err := c.pool.Exec(ctx, `INSERT INTO `+metaTable+` (k, v) VALUES ('id', $1) ON CONFLICT (k) DO NOTHING`, hex.EncodeToString(b[:])); err != nil {
			return db.Identity{}, c.errf("store the database ID", err)
		}
		if id, err = c.meta(ctx, c.pool, "id"); err != nil {
			return db.Identity{}, err
		}
	}
	var oid uint32
	var name string
	if err := c.pool.QueryRow(ctx, `SELECT oid, datname FROM pg_database WHERE datname = current_database()`).Scan(&oid, &name); err != nil {
		return db.Identity{}, c.errf("read the database's OID", err)
	}
	system := "unknown (pg_control_system() is not allowed for this role)"
	var sysid int64
	if err := c.pool.QueryRow(ctx, `SELECT system_identifier FROM pg_control_system()`).Scan(&sysid); err == nil {
		system = strconv.FormatInt(sysid, 10)
	}
	return db.Identity{ID: id, Detail: fmt.Sprintf("postgres database %q (OID %d) of the server with system identifier %s", name, oid, system)}, nil
}

type queryRower interface {
	QueryRow(ctx context.Context, q string, args ...any) pgx.Row
}

func (c *Conn) meta(ctx context.Context, q queryRower, k string) (string, error) {
	var v string
	err := q.QueryRow(ctx, `SELECT v FROM `+metaTable+` WHERE k = $1`, k).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", c.errf("read "+k, err)
	}
	return v, nil
}

func (c *Conn) metaUint(ctx context.Context, q queryRower, k string) (uint64, error) {
	v, err := c.meta(ctx, q, k)
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("postgres: %s %q in %s is damaged: %w", k, v, metaTable, err)
	}
	return n, nil
}

type execer interface {
	Exec(ctx context.Context, q string, args ...any) (pgconn.CommandTag, error)
}

func setMeta(ctx context.Context, e execer, k string, v uint64) error {
	_, err := e.Exec(ctx, `INSERT INTO `+metaTable+` (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v`, k, strconv.FormatUint(v, 10))
	return err
}

// Stats implements db.Connector.
func (c *Conn) Stats() db.Stats {
	c.mu.Lock()
	st := c.stats
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st.PendingByTable = map[string]uint64{}
	rows, err := c.pool.Query(ctx, `SELECT tbl, count(*) FROM `+changeTable+` GROUP BY tbl`)
	if err != nil {
		return st
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var n int64
		if rows.Scan(&t, &n) == nil {
			st.PendingByTable[t] = uint64(n)
			st.PendingCapture += uint64(n)
		}
	}
	return st
}

func (c *Conn) note(f func(*db.Stats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

// quote quotes an SQL identifier.
func quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// lit quotes an SQL string literal.
func lit(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// qual is the schema-qualified, quoted name of a synced table.
func (c *Conn) qual(table string) string { return quote(c.schema) + "." + quote(table) }
