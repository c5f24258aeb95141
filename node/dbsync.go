package node

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/db/postgres"
	"github.com/ppsync/ppsync/db/sqlite"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/state"
)

// Keys of the practice database's progress in the node's store, written in
// the same batch as the entries they account for.
var (
	keyCapturePos   = []byte{store.PrefixDB, 'c'} // changes up to it are in the log
	keyLoaded       = []byte{store.PrefixDB, 'l'} // the initial load finished
	keyApplied      = []byte{store.PrefixDB, 'a'} // the apply position last stored in the database
	keyLoadProgress = []byte{store.PrefixDB, 'p'} // where an unfinished initial load stands
)

// rebaser is what a connector offers to notice and repair a database
// restored from an older backup.
type rebaser interface {
	Positions(ctx context.Context) (changeSeq, applyCursor uint64, err error)
	Rebase(ctx context.Context, pos uint64) error
}

// errRestored is the problem a restored database shows until it is repaired.
var errRestored = fmt.Errorf("%w: its positions are behind this node's, so it holds older rows than the family and new changes could be mistaken for ones already sent; nothing is synced until `ppsync db check --repair` has run (stop the practice software from writing meanwhile)", db.ErrRestored)

// Limits of one database step.
const (
	dbMaxOps       = 2000 // operations per captured entry
	dbMaxApplyRows = 5000 // merged rows written per database transaction
	dbSnapshotRows = 1000 // rows per entry of the initial load
)

// openConnector opens the practice database a URL names: sqlite:PATH or
// postgres://USER@HOST:PORT/DB.
func openConnector(ctx context.Context, raw string, tables, exclude []string, pg pgAuth, n *Node) (db.Connector, error) {
	switch {
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(raw, "sqlite:"), "//")
		if path == "" {
			return nil, fmt.Errorf("%w: %q names no file (use sqlite:/path/to/practice.db or postgres://USER@HOST:PORT/DBNAME)", db.ErrUnsupported, raw)
		}
		o := sqlite.Options{Tables: tables, Exclude: exclude}
		if n != nil {
			o.Logger = n.log
		}
		return sqlite.Open(ctx, path, o)
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		o := postgres.Options{Tables: tables, Exclude: exclude, Password: pg.password, PasswordFile: pg.passwordFile}
		if n != nil {
			o.Logger = n.log
			if n.cert != nil {
				o.Slot = n.cert.Slot // new IDs from this site's range
			}
		}
		return postgres.Open(ctx, raw, o)
	}
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		return nil, fmt.Errorf("%w: %q: ppsync syncs sqlite:PATH and postgres://... databases", db.ErrUnsupported, u.Scheme+":")
	}
	return nil, fmt.Errorf("%w: %q is not a database URL (use sqlite:/path/to/practice.db or postgres://USER@HOST:PORT/DBNAME)", db.ErrUnsupported, raw)
}

// pgAuth is where a PostgreSQL password comes from: db_password_file in
// ppsync.toml, or PPSYNC_DB_PASSWORD (or PGPASSWORD) in the environment.
// It is never printed.
type pgAuth struct{ password, passwordFile string }

func pgAuthOf(passwordFile string, env func(string) string) pgAuth {
	a := pgAuth{passwordFile: passwordFile}
	if env != nil {
		a.password = env("PPSYNC_DB_PASSWORD")
		if a.password == "" {
			a.password = env("PGPASSWORD")
		}
	}
	return a
}

// dbsync keeps the practice database and the node in step: one goroutine
// captures the database's changes into this site's log and writes the merged
// rows of the other sites back. One owner, so capture and the drain inside an
// apply never capture the same change twice.
type dbsync struct {
	n    *Node
	c    db.Connector
	kick chan struct{}

	mu sync.Mutex // guards the fields below
	// seen is the frontier the practice database has seen: the log's when
	// the node started (nothing from others is written into the database
	// before the first capture), then the one before each apply pass that
	// brought the database level with the state. Captured changes say in
	// their deps that they saw no more.
	seen     map[string]uint64
	schema   *db.Schema
	loading  bool
	restored bool // the database is behind the node: sync waits for a repair
	// echoCursor is a state cursor up to which every change is the
	// database's own (nothing to write back), so status counts nothing
	// waiting although the stored apply position is older.
	echoCursor uint64
	loadRows   uint64
	lastErr    string
	// refused are the merged rows the database refused, as the connector
	// keeps them (with the apply position); every apply tries them again.
	// retry asks for an apply that tries them although nothing new came
	// (a local change or a repair may have removed the cause); lastRetry
	// is when they were last tried.
	refused   []db.RowConflict
	retry     bool
	lastRetry time.Time
	captured  uint64
	applied   uint64
	// per table, since start
	perCaptured map[string]uint64
	perApplied  map[string]uint64
	// when each table last had a change captured, a row applied
	lastCaptured map[string]time.Time
	lastApplied  map[string]time.Time
	appliedNow   map[string]uint64 // rows handed to the apply in progress
	// own holds the seqs of this site's entries that came from the
	// database (capture, initial load): a row whose newest version is one
	// of them is already in the database as it is merged, and is not
	// written back. Kept in memory: after a restart such rows are written
	// back once, which changes nothing.
	own seqSet
	// durable is the state cursor up to which the apply in progress may
	// write: changes the log has made durable. The state shows a group as
	// soon as it is committed, before its sync; an apply position stored in
	// the database past what a crash keeps would skip the changes that take
	// those cursors after the restart.
	durable uint64
}

// seqSet is a set of seqs kept as sorted, disjoint, inclusive ranges.
type seqSet struct{ r [][2]uint64 }

func (s *seqSet) add(from, to uint64) {
	if n := len(s.r); n > 0 && s.r[n-1][1]+1 >= from {
		s.r[n-1][1] = max(s.r[n-1][1], to)
		return
	}
	s.r = append(s.r, [2]uint64{from, to})
	if len(s.r) > 4096 { // bounded: forget the oldest (they are written back once)
		s.r = s.r[len(s.r)-4096:]
	}
}

func (s *seqSet) has(x uint64) bool {
	for i := len(s.r) - 1; i >= 0; i-- {
		if x >= s.r[i][0] && x <= s.r[i][1] {
			return true
		}
		if x > s.r[i][1] {
			return false
		}
	}
	return false
}

// fromDB records own entries that came from the database.
func (d *dbsync) fromDB(out []*wire.Signed) {
	if len(out) == 0 {
		return
	}
	d.mu.Lock()
	d.own.add(out[0].Seq, out[len(out)-1].Seq)
	d.mu.Unlock()
}

// isEcho reports whether a merged record is exactly what this database
// already holds: the record's newest change and every field's value came
// from this database's own captured changes.
func (d *dbsync) isEcho(r state.Change) bool {
	self := d.n.id.Site
	d.mu.Lock()
	defer d.mu.Unlock()
	mine := func(v state.Version) bool { return v.Site == self && d.own.has(v.Seq) }
	if !mine(r.Version) {
		return false
	}
	for _, v := range r.FieldVersions {
		if !mine(v) {
			return false
		}
	}
	return true
}

// needsApply reports whether a merged change after cursor must be written
// into the database (not only this database's own captured changes), and
// the cursor up to which it looked: changes the state takes in while it
// scans lie past that cursor and are looked at next time.
func (d *dbsync) needsApply(cursor uint64) (need bool, seen uint64, err error) {
	seen, err = d.toWrite(cursor, 0, func(state.Change) bool {
		need = true
		return false
	})
	return need, seen, err
}

// toWrite calls fn with each merged change after cursor that is to be
// written into the database (not only the database's own), looking at
// most at limit changes (0: all), until fn returns false. It returns the
// cursor up to which it looked: the start of the page where fn stopped, or
// the end of what it read.
func (d *dbsync) toWrite(cursor uint64, limit int, fn func(state.Change) bool) (uint64, error) {
	looked := 0
	for limit == 0 || looked < limit {
		page := 1000
		if limit > 0 {
			page = min(page, limit-looked)
		}
		cs, next, err := d.n.state.Changes(cursor, page)
		if err != nil {
			return cursor, err
		}
		for _, c := range cs {
			if !d.isEcho(c) && !fn(c) {
				return cursor, nil
			}
		}
		if len(cs) == 0 || next == cursor {
			return cursor, nil
		}
		looked += len(cs)
		cursor = next
	}
	return cursor, nil
}

func newDBSync(n *Node, c db.Connector) *dbsync {
	return &dbsync{n: n, c: c, kick: make(chan struct{}, 1), perCaptured: map[string]uint64{}, perApplied: map[string]uint64{}, appliedNow: map[string]uint64{},
		lastCaptured: map[string]time.Time{}, lastApplied: map[string]time.Time{}, seen: n.openFrontier}
}

// loadRefused reads the rows the database refused (kept in the database
// itself) with their merged versions. Open calls it before the node answers,
// so that status shows them from the first request after a restart; the
// owner goroutine calls it again when it starts.
func (d *dbsync) loadRefused(ctx context.Context) error {
	refused, err := d.c.Refused(ctx)
	if err != nil {
		return err
	}
	for i, k := range refused {
		if r, err := d.Merged(k.Table, k.Key); err == nil {
			refused[i].Fields = r.Fields
		}
	}
	d.mu.Lock()
	d.refused, d.retry = refused, len(refused) > 0
	d.mu.Unlock()
	return nil
}

// poke asks for an apply soon (entries arrived).
func (d *dbsync) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *dbsync) setErr(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		d.lastErr = ""
		return
	}
	if d.lastErr != err.Error() {
		d.n.log.Error("practice database", "err", err)
	}
	d.lastErr = err.Error()
}

// run is the owner goroutine.
func (d *dbsync) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if err := d.start(ctx); err != nil {
			d.setErr(err)
			if !d.wait(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		break
	}
	d.setErr(nil)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		err := d.step(ctx)
		d.setErr(err)
		select {
		case <-ctx.Done():
			return
		case <-d.c.Wake():
		case <-d.kick:
		case <-t.C:
			d.checkSchema(ctx)
		}
	}
}

func (d *dbsync) wait(ctx context.Context, dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// start reads the schema, installs the triggers and, the first time, loads
// the existing rows.
func (d *dbsync) start(ctx context.Context) error {
	s, err := d.c.Schema(ctx)
	if err != nil {
		return err
	}
	for _, k := range s.Skipped {
		d.n.log.Warn("practice database table not synced", "table", k.Table, "why", k.Reason)
	}
	if err := d.c.Install(ctx, s); err != nil {
		return err
	}
	d.c.SetSchema(s)
	d.mu.Lock()
	d.schema = s
	d.mu.Unlock()
	// Entries held for a practice software newer than the one this node
	// last saw may fit the database now.
	if err := d.n.txlog.ReleaseHeld(ctx); err != nil {
		return err
	}
	loaded, err := d.getKey(keyLoaded)
	if err != nil {
		return err
	}
	if rb, ok := d.c.(rebaser); ok && loaded != 0 {
		seq, cur, err := rb.Positions(ctx)
		if err != nil {
			return err
		}
		applied, err := d.getKey(keyApplied)
		if err != nil {
			return err
		}
		if seq < d.CapturePos() || cur < applied {
			d.n.log.Error("the practice database was restored from an older backup", "change_counter", seq, "captured", d.CapturePos(), "apply_position", cur, "applied", applied)
			d.mu.Lock()
			d.restored = true
			d.mu.Unlock()
		}
	}
	if loaded != 0 && !d.isRestored() {
		if err := d.rewindApply(ctx); err != nil {
			return err
		}
	}
	if err := d.loadRefused(ctx); err != nil {
		return err
	}
	if loaded == 0 && d.n.id.Role == "site" {
		return d.load(ctx, s)
	}
	return nil
}

// rewindApply moves the database's apply position back to the state's
// cursor as the node opened when it is past it: the database was given
// changes that the node lost in a crash (before this build waited for the
// log's sync, see dbsync.durable) or the node's data directory was restored
// from an older backup. The changes that took those cursors since the node
// opened would be skipped; from the cursor at the opening on, every merged
// row is written again (the same values, or the ones the database is
// missing).
func (d *dbsync) rewindApply(ctx context.Context) error {
	cur, err := d.c.ApplyCursor(ctx)
	if err != nil {
		return err
	}
	kept := d.n.openCursor
	if cur <= kept {
		return nil
	}
	d.n.log.Warn("the practice database was given changes past what this node holds (a crash, or its data directory restored from a backup): the rows changed since are written again", "apply_position", cur, "kept", kept)
	if err := d.n.db.Set(keyApplied, u64(kept), pebble.Sync); err != nil {
		return fmt.Errorf("node: record the apply position: %w", err)
	}
	return d.c.SetApplyCursor(ctx, kept)
}

// refusedRetryEvery is how often rows the database refused are tried again
// when nothing else asks for it.
const refusedRetryEvery = 30 * time.Second

// retryDue reports whether the refused rows should be tried again now.
func (d *dbsync) retryDue() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.refused) > 0 && (d.retry || d.n.cfg.Now().Sub(d.lastRetry) >= refusedRetryEvery)
}

// applied records what an apply did to the refused rows, and logs the new
// ones.
func (d *dbsync) appliedRefused(res db.ApplyResult) {
	type key struct{ t, k string }
	d.mu.Lock()
	old := make(map[key]bool, len(d.refused))
	for _, c := range d.refused {
		old[key{c.Table, c.Key}] = true
	}
	d.refused, d.retry, d.lastRetry = res.Conflicts, false, d.n.cfg.Now()
	d.mu.Unlock()
	for _, c := range res.Conflicts {
		if !old[key{c.Table, c.Key}] {
			d.n.log.Warn("practice database refused a merged row; it is tried again after every change", "table", c.Table, "key", c.Key, "why", c.Reason)
		}
	}
	if res.Resolved > 0 {
		d.n.log.Info("practice database took rows it had refused", "rows", res.Resolved)
	}
}

// load publishes every existing row as this site's entries and stores the
// capture position the snapshot includes at the end.
//
// The database is read on its own goroutine while the rows read before are
// committed: batches of dbSnapshotRows rows wait in a short queue (at most
// dbLoadQueue batches), and whatever has queued up, up to about
// dbLoadGroupBytes, is committed as one group: entries of at most
// dbLoadEntryBytes each, stored with the load's progress in one batch and one
// durable sync. Memory is bounded by these sizes, not by the tables'.
func (d *dbsync) load(ctx context.Context, s *db.Schema) error {
	d.mu.Lock()
	d.loading, d.loadRows = true, 0
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.loading = false
		d.mu.Unlock()
	}()
	// Where an interrupted load stopped: the first read's capture position
	// (changes after it are captured later, so nothing is missed; rows
	// changed since are sent again, which changes nothing), and the last
	// row published.
	var prog loadProgress
	if raw, closer, err := d.n.db.Get(keyLoadProgress); err == nil {
		err = json.Unmarshal(raw, &prog)
		closer.Close()
		if err != nil {
			return fmt.Errorf("node: the initial load's progress is damaged: %w", err)
		}
		d.n.log.Info("resuming the initial load of the practice database", "table", prog.Table, "after", prog.Key)
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("node: read the initial load's progress: %w", err)
	}

	// Rows whose key is one integer column are distinct within one read
	// (a primary key), so the state may take their entries as new records
	// without looking for them first.
	loadID := d.n.state.NewLoad()
	intKey := map[string]string{}
	for _, t := range s.Tables {
		if len(t.PK) == 1 {
			intKey[t.Name] = t.PK[0]
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	queue := make(chan loadBatch, dbLoadQueue)
	var (
		readPos uint64
		readErr error
	)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(queue)
		send := func(b loadBatch) error {
			b.txs, b.size = appendLoadEntries(nil, b.ops) // here, beside the commits
			b.loads = make([]uint64, len(b.txs))
			for i, tx := range b.txs {
				if distinctKeys(tx, intKey) {
					b.loads[i] = loadID
				}
			}
			select {
			case queue <- b:
				return nil
			case <-rctx.Done():
				return rctx.Err()
			}
		}
		if r, ok := d.c.(resumable); ok {
			readPos, readErr = r.SnapshotFrom(rctx, s, dbSnapshotRows, prog.Table, prog.Key, func(ops []wire.Op, table, lastKey string, pos uint64) error {
				return send(loadBatch{ops: ops, table: table, key: lastKey, pos: pos})
			})
			return
		}
		readPos, readErr = d.c.Snapshot(rctx, s, dbSnapshotRows, func(ops []wire.Op) error {
			return send(loadBatch{ops: ops})
		})
	}()
	// stop ends the read (if it still runs) and waits for it: its read
	// transaction is over when load returns.
	stop := func() {
		cancel()
		for range queue {
		}
		<-readDone
	}

	_, resumed := d.c.(resumable)
	var group []loadBatch
	for {
		b, ok := <-queue
		if !ok {
			break
		}
		group = append(group[:0], b)
		size := b.size
	fill: // take what else is queued, up to a group's size
		for size < dbLoadGroupBytes {
			select {
			case b, ok := <-queue:
				if !ok {
					break fill
				}
				group = append(group, b)
				size += b.size
			default:
				break fill
			}
		}
		if err := d.publishLoad(ctx, &prog, group, resumed); err != nil {
			stop()
			return err
		}
		clear(group) // the rows are committed: let them go
	}
	<-readDone
	if readErr != nil {
		return readErr
	}
	if !resumed {
		prog.Pos, prog.Started = readPos, true // a full read: its own position
	}
	if !prog.Started {
		prog.Pos = readPos // nothing to publish
	}
	b := d.n.db.NewBatch()
	defer b.Close()
	if err := errors.Join(b.Set(keyCapturePos, u64(prog.Pos), nil), b.Set(keyLoaded, u64(1), nil), b.Delete(keyLoadProgress, nil)); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("node: store the end of the initial load: %w", err)
	}
	d.n.log.Info("practice database loaded", "rows", d.loadRows)
	return nil
}

// Sizes of the initial load's work (see load).
const (
	dbLoadQueue      = 8         // batches read ahead of the commits
	dbLoadGroupBytes = 512 << 10 // estimated bytes of rows committed in one durable write
	dbLoadEntryBytes = 256 << 10 // estimated bytes of one entry (the limit is wire.MaxEntryBytes)
)

// loadBatch is one batch of the initial load's read, with where it ends.
type loadBatch struct {
	ops        []wire.Op
	txs        [][]wire.Op // ops cut into entries
	loads      []uint64    // per entry: the load's ID if its keys are distinct from all others of the load, else 0
	size       uint64      // estimated bytes of ops
	table, key string      // the last row (resumable connectors)
	pos        uint64      // the read's capture position (resumable connectors)
}

// publishLoad commits the batches of one group as entries, with the load's
// progress after the last of them, in one durable write: all or nothing.
func (d *dbsync) publishLoad(ctx context.Context, prog *loadProgress, group []loadBatch, resumed bool) error {
	var txs [][]wire.Op
	var loads []uint64
	rows := 0
	for _, b := range group {
		txs = append(txs, b.txs...)
		loads = append(loads, b.loads...)
		rows += len(b.ops)
	}
	if len(txs) == 0 {
		return nil
	}
	last := group[len(group)-1]
	if !prog.Started {
		prog.Pos, prog.Started = last.pos, true
	}
	if resumed {
		prog.Table, prog.Key = last.table, last.key
	}
	pb, err := json.Marshal(prog)
	if err != nil {
		return err
	}
	out, err := d.n.writeLoad(ctx, txs, loads, func(b *pebble.Batch) error {
		return b.Set(keyLoadProgress, pb, nil)
	})
	if err != nil {
		return fmt.Errorf("node: initial load of the practice database: %w", err)
	}
	d.fromDB(out)
	d.mu.Lock()
	d.loadRows += uint64(rows)
	d.mu.Unlock()
	return nil
}

// appendLoadEntries cuts a batch of rows into entries of at most
// dbLoadEntryBytes (estimated) and wire.MaxOps operations, and returns the
// batch's estimated size.
func appendLoadEntries(txs [][]wire.Op, ops []wire.Op) ([][]wire.Op, uint64) {
	var total, size uint64
	start := 0
	for i := range ops {
		n := opSize(&ops[i])
		if i > start && (size+n > dbLoadEntryBytes || i-start >= wire.MaxOps) {
			txs = append(txs, ops[start:i:i])
			start, size = i, 0
		}
		size += n
		total += n
	}
	if start < len(ops) {
		txs = append(txs, ops[start:])
	}
	return txs, total
}

// distinctKeys reports whether ops are puts of rows keyed by one integer
// column (intKey: table -> its one key column): such keys are distinct
// across one consistent read of a table.
func distinctKeys(ops []wire.Op, intKey map[string]string) bool {
	for i := range ops {
		op := &ops[i]
		col, ok := intKey[op.Table]
		if !ok || op.Kind != wire.OpPut {
			return false
		}
		if _, ok := op.Fields[col].(int64); !ok {
			return false
		}
	}
	return true
}

// loadProgress is where an initial load stands (stored with each batch).
type loadProgress struct {
	Started bool   `json:"started"`
	Pos     uint64 `json:"pos"`   // the capture position of the load's first read
	Table   string `json:"table"` // the last row published
	Key     string `json:"key"`
}

// resumable is a connector whose initial load can go on after a crash.
type resumable interface {
	SnapshotFrom(ctx context.Context, s *db.Schema, batchRows int, table, afterKey string, fn func(ops []wire.Op, table, lastKey string, pos uint64) error) (uint64, error)
}

// step captures what is pending, then writes back what changed.
func (d *dbsync) step(ctx context.Context) (err error) {
	d.mu.Lock()
	restored := d.restored
	d.mu.Unlock()
	if restored {
		return errRestored
	}
	if d.n.id.Role == "site" {
		if err := d.capture(ctx); err != nil {
			return err
		}
	}
	// What the state holds now is in the database once this step ends well.
	front := d.n.txlog.Frontier()
	defer func() {
		if err == nil {
			d.mu.Lock()
			d.seen = front
			d.mu.Unlock()
		}
	}()
	for {
		// Take the database's write lock only when the merged state moved
		// past what the database holds: an idle node never blocks the
		// practice software.
		ss, err := d.n.state.Stats()
		if err != nil {
			return err
		}
		cur, err := d.c.ApplyCursor(ctx)
		if err != nil {
			return err
		}
		if !d.retryDue() {
			if ss.Cursor <= cur {
				return nil
			}
			from := max(cur, d.echoFloor()) // changes up to it were all the database's own
			if ss.Cursor <= from {
				return nil
			}
			need, seen, err := d.needsApply(from)
			if err != nil {
				return err
			}
			if !need {
				d.mu.Lock()
				d.echoCursor = max(d.echoCursor, seen)
				d.mu.Unlock()
				return nil
			}
		}
		// Write only what the log holds durably (see dbsync.durable).
		if err := d.n.txlog.Durable(ctx); err != nil {
			return fmt.Errorf("node: wait for the log before an apply: %w", err)
		}
		d.mu.Lock()
		clear(d.appliedNow)
		d.durable = ss.Cursor
		d.mu.Unlock()
		res, err := d.c.Apply(ctx, d, dbMaxApplyRows)
		if err != nil {
			return err
		}
		d.n.log.Debug("practice database apply", "from", cur, "to", res.Cursor, "rows", res.Rows, "captured", res.Captured, "refused", len(res.Conflicts), "resolved", res.Resolved)
		if err := d.n.db.Set(keyApplied, u64(res.Cursor), pebble.NoSync); err != nil {
			return fmt.Errorf("node: record the apply position: %w", err)
		}
		d.mu.Lock()
		d.applied += uint64(res.Rows)
		if res.Rows > 0 {
			now := d.n.cfg.Now()
			for t, k := range d.appliedNow {
				d.perApplied[t] += k
				d.lastApplied[t] = now
			}
		}
		d.mu.Unlock()
		d.appliedRefused(res)
		if res.Rows < dbMaxApplyRows {
			// Changes that came in during the apply wait for the next
			// one: now, if this one moved on.
			after, err := d.n.state.Stats()
			if err != nil || after.Cursor <= ss.Cursor || res.Cursor <= cur {
				return err
			}
		}
	}
}

// capture commits the database's pending changes to the log, each batch
// with its capture position in the same durable write, then deletes them from
// the change table.
func (d *dbsync) capture(ctx context.Context) error {
	for {
		pos := d.CapturePos()
		bs, err := d.c.Capture(ctx, pos, dbMaxOps)
		if err != nil {
			return err
		}
		if len(bs) == 0 {
			return nil
		}
		if err := d.Captured(ctx, bs); err != nil {
			return err
		}
		last := bs[len(bs)-1].Pos
		if err := d.c.Ack(ctx, last); err != nil {
			return err
		}
		d.mu.Lock()
		d.retry = d.retry || len(d.refused) > 0 // the change may have removed what a refused row ran into
		d.mu.Unlock()
	}
}

// CapturePos implements db.Syncer.
func (d *dbsync) CapturePos() uint64 {
	v, err := d.getKey(keyCapturePos)
	if err != nil {
		return 0
	}
	return v
}

// Captured implements db.Syncer: each batch becomes one entry, stored with
// its capture position.
func (d *dbsync) Captured(ctx context.Context, bs []db.Batch) error {
	if d.n.id.Role != "site" {
		return nil
	}
	for _, b := range bs {
		if len(b.Ops) == 0 { // only changes of rows deleted since: move the position alone
			if err := d.setKeys(map[string]uint64{string(keyCapturePos): b.Pos}); err != nil {
				return err
			}
			continue
		}
		pos := b.Pos
		d.mu.Lock()
		seen := d.seen
		d.mu.Unlock()
		out, err := d.n.writeOwn(ctx, [][]wire.Op{b.Ops}, nil, seen, func(pb *pebble.Batch) error {
			return pb.Set(keyCapturePos, u64(pos), nil)
		})
		if err != nil {
			return fmt.Errorf("node: capture from the practice database: %w", err)
		}
		d.fromDB(out)
		d.mu.Lock()
		d.captured += uint64(len(b.Ops))
		now := d.n.cfg.Now()
		for _, op := range b.Ops {
			d.perCaptured[op.Table]++
			d.lastCaptured[op.Table] = now
		}
		d.mu.Unlock()
	}
	return nil
}

// Changed implements db.Syncer.
func (d *dbsync) Changed(after uint64, limit int) ([]db.Row, uint64, error) {
	cs, next, err := d.n.state.Changes(after, limit)
	if err != nil {
		return nil, after, err
	}
	d.mu.Lock()
	durable := d.durable
	d.mu.Unlock()
	rows := make([]db.Row, 0, len(cs))
	for i, c := range cs {
		if c.Cursor > durable { // not durable when the apply began: the next apply's
			next = after
			if i > 0 {
				next = cs[i-1].Cursor
			}
			break
		}
		if d.isEcho(c) {
			continue
		}
		rows = append(rows, rowOf(c.Record))
		d.mu.Lock()
		d.appliedNow[c.Table]++
		d.mu.Unlock()
	}
	return rows, next, nil
}

// Merged implements db.Syncer.
func (d *dbsync) Merged(table, key string) (db.Row, error) {
	rec, ok, err := d.n.state.Get(table, key)
	if err != nil || !ok {
		return db.Row{Table: table, Key: key}, err
	}
	return rowOf(rec), nil
}

func rowOf(r state.Record) db.Row {
	if r.Deleted {
		return db.Row{Table: r.Table, Key: r.Key}
	}
	return db.Row{Table: r.Table, Key: r.Key, Fields: r.Fields}
}

// checkSchema notices a table or column added while the node runs: the
// triggers are installed again and every merged row is written again (rows
// held back for lack of a column now fit).
func (d *dbsync) checkSchema(ctx context.Context) {
	s, err := d.c.Schema(ctx)
	if err != nil {
		d.setErr(err)
		return
	}
	d.mu.Lock()
	old := d.schema
	d.mu.Unlock()
	if old != nil && sameSchema(old, s) {
		return
	}
	d.n.log.Info("practice database schema changed: capture triggers updated", "tables", len(s.Tables))
	if err := d.c.Install(ctx, s); err != nil {
		d.setErr(err)
		return
	}
	d.c.SetSchema(s)
	d.mu.Lock()
	d.schema = s
	d.mu.Unlock()
	if err := d.c.SetApplyCursor(ctx, 0); err != nil {
		d.setErr(err)
	}
	if err := d.n.db.Set(keyApplied, u64(0), pebble.Sync); err != nil {
		d.setErr(err)
	}
	if old == nil || s.Version > old.Version {
		// Entries written with a newer practice software may fit now.
		if err := d.n.txlog.ReleaseHeld(ctx); err != nil {
			d.setErr(err)
		}
	}
	d.poke()
}

func sameSchema(a, b *db.Schema) bool {
	if len(a.Tables) != len(b.Tables) || a.Version != b.Version {
		return false
	}
	for i := range a.Tables {
		x, y := a.Tables[i], b.Tables[i]
		if x.Name != y.Name || len(x.Columns) != len(y.Columns) {
			return false
		}
		for j := range x.Columns {
			if x.Columns[j] != y.Columns[j] {
				return false
			}
		}
	}
	return true
}

func (d *dbsync) getKey(k []byte) (uint64, error) {
	v, closer, err := d.n.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("node: read the practice database's progress: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("node: the practice database's progress is damaged (%d bytes)", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func (d *dbsync) setKeys(kv map[string]uint64) error {
	b := d.n.db.NewBatch()
	defer b.Close()
	for k, v := range kv {
		if err := b.Set([]byte(k), u64(v), nil); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("node: store the practice database's progress: %w", err)
	}
	return nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}
