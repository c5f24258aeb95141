//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ppsync/ppsync/db/postgres"
)

// The practice database of the PostgresFaults scenario: a small practice
// schema in PostgreSQL, written with plain SQL through pgx from the test
// process as the practice software writes it.

// pgSchema is every site's practice database: IDs from sequences (bigserial,
// which ppsync moves into the site's own range), values of many types, two
// foreign keys, a composite key; and a table with a serial (integer) key,
// too small for the ranges, which the writers leave alone. The harness's
// own table, outside the synced schema, holds one mark per transaction a
// writer commits (see pgWriter.attempt).
const pgSchema = `
CREATE SCHEMA harness;
CREATE TABLE harness.commits (n bigint PRIMARY KEY);
CREATE TABLE patients (id bigserial PRIMARY KEY, name text NOT NULL, dob date, balance numeric(12,2), photo bytea,
	visits integer, score double precision, active boolean, seen_at timestamptz, tags text[], extra jsonb);
CREATE TABLE appointments (id bigserial PRIMARY KEY, patient bigint NOT NULL REFERENCES patients(id), at timestamp(0) NOT NULL, room smallint);
CREATE TABLE notes (patient bigint NOT NULL REFERENCES patients(id), n integer NOT NULL, body text, PRIMARY KEY (patient, n));
CREATE TABLE rooms (id serial PRIMARY KEY, label text);
`

// pgRangeWarning is the one warning every site's `db status` must show: the
// serial (integer) column of rooms, which no writer writes, cannot hold a
// site's ID range.
const pgRangeWarning = "rooms.id: the column's type (int4) cannot hold this site's ID range"

// The tables of pgSchema; cols are the key's columns.
var (
	pgPatients     = &dbTable{name: "patients", cols: []string{"id"}, pk: 1}
	pgAppointments = &dbTable{name: "appointments", cols: []string{"id"}, pk: 1}
	pgNotes        = &dbTable{name: "notes", cols: []string{"patient", "n"}, pk: 2}
	pgTables       = []*dbTable{pgPatients, pgAppointments, pgNotes}
)

func pgTableNamed(name string) *dbTable {
	for _, t := range pgTables {
		if t.name == name {
			return t
		}
	}
	return nil
}

// pgPreRange: the rows in site i's database before its node first runs have
// explicit IDs i*pgPreRange+n (the practice's own data, kept as it is); the
// rows inserted once the node ran take their IDs from the sequences, which
// ppsync moved into the site's range (slot·postgres.RangeSize+1 on).
const pgPreRange = 1_000_000

// pgEffect is one row change of a committed transaction, with the row's
// text as the transaction left it (read back in the same transaction).
type pgEffect struct {
	Kind  byte // 'i', 'u' or 'd'
	Table *dbTable
	Key   string
	Text  string // 'i', 'u': the row's text (row::text)
}

// pgTx is one committed transaction of a writer's ledger.
type pgTx struct {
	At      time.Time // when the writer saw it committed
	Effects []pgEffect
	Before  bool // committed before the site's node first ran
}

// pgRow is what the ledgers say of one row.
type pgRow struct {
	Table                     *dbTable
	Key                       string
	Text                      string // "" once deleted
	Inserts, Updates, Deletes int
	LoggedDeletes             int // deletes committed once the node ran
}

// pgWriter is the practice software of one site: plain SQL transactions
// through one pgx connection, every transaction whose commit succeeded in its
// ledger. While the server is down its transactions fail and it tries again
// (a new connection) until one commits; a commit whose answer was lost is
// looked up by the mark it wrote (see pgWriter.attempt) once the server is
// back, and enters the ledger only if it committed.
type pgWriter struct {
	h    *Harness
	srv  *pgServer
	site *Node
	idx  int
	name string        // the database's name
	rd   *pgxpool.Pool // the harness's reads

	mu       sync.Mutex // one transaction at a time; guards everything below
	conn     *pgx.Conn  // nil until (re)connected
	rng      *rand.Rand
	patients idSet[int64]
	appts    idSet[int64]
	notes    idSet[[2]int64]
	apptsOf  map[int64]map[int64]bool
	notesOf  map[int64]map[int64]bool
	nextNote map[int64]int64
	nextPre  int64 // explicit IDs before the node ran
	own      map[string]bool
	slot     int64 // the range its sequences' IDs come from (0: none seen yet)
	ledger   []pgTx
	changes  int
	failed   int
	failures []string
	running  bool
	// outage counts the attempts that failed because the server was gone
	// (retried), inDoubt the commits whose answer was lost, resolved the
	// ones of those found committed.
	outage, inDoubt, resolved int
	doubt                     *pgDoubt
	marks                     int64 // the last transaction mark handed out

	commits   atomic.Int64
	attempts  atomic.Int64 // failed attempts (outage), for the scenario to see
	stopWrite context.CancelFunc
	done      chan struct{}
}

// pgDoubt is a transaction whose COMMIT got no answer.
type pgDoubt struct {
	mark int64
	b    *pgTxb
}

func newPGWriter(ctx context.Context, h *Harness, srv *pgServer, site *Node, idx int, name string, seed uint64) (*pgWriter, error) {
	w := &pgWriter{h: h, srv: srv, site: site, idx: idx, name: name, rng: rand.New(rand.NewPCG(seed, 0x9600+uint64(idx))),
		apptsOf: map[int64]map[int64]bool{}, notesOf: map[int64]map[int64]bool{}, nextNote: map[int64]int64{}, own: map[string]bool{}}
	cfg, err := srv.connConfig(pgRoleName, name)
	if err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pcfg.ConnConfig = cfg
	pcfg.MaxConns = 3
	if w.rd, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *pgWriter) close() {
	w.stop()
	w.mu.Lock()
	if w.conn != nil {
		_ = w.conn.Close(context.Background())
		w.conn = nil
	}
	w.mu.Unlock()
	w.rd.Close()
}

// owns reports whether this writer inserted the row table/key.
func (w *pgWriter) owns(table, key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.own[table+"/"+key]
}

func (w *pgWriter) start(ctx context.Context, every time.Duration) {
	w.mu.Lock()
	w.running = true
	w.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	w.stopWrite, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			w.tx(ctx, 1+w.intn(5))
		}
	}()
}

func (w *pgWriter) stop() {
	if w.stopWrite != nil {
		w.stopWrite()
		<-w.done
		w.stopWrite = nil
	}
}

func (w *pgWriter) intn(n int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rng.IntN(n)
}

func (w *pgWriter) committed() int64 { return w.commits.Load() }

// waitCommits waits until k more transactions than from committed.
func (w *pgWriter) waitCommits(ctx context.Context, from int64, k int, what string) error {
	_, err := waitFor(ctx, 60*time.Second, 10*time.Millisecond, fmt.Sprintf("%s's writer committing %d transactions %s", w.site.Name, k, what), func() (bool, string) {
		n := w.committed() - from
		return n >= int64(k), fmt.Sprintf("%d committed", n)
	})
	return err
}

// pgTxb is a transaction being written.
type pgTxb struct {
	w       *pgWriter
	tx      pgx.Tx
	ctx     context.Context
	effects []pgEffect
	touched map[string]bool
	after   []func()
	err     error
}

func (b *pgTxb) touch(t *dbTable, key string) bool {
	k := t.name + "/" + key
	if b.touched[k] {
		return false
	}
	b.touched[k] = true
	return true
}

// exec runs a statement that must change want rows (-1: any).
func (b *pgTxb) exec(want int64, q string, args ...any) {
	if b.err != nil {
		return
	}
	tag, err := b.tx.Exec(b.ctx, q, args...)
	if err != nil {
		b.err = fmt.Errorf("%s: %w", q, err)
		return
	}
	if want >= 0 && tag.RowsAffected() != want {
		b.w.h.Violate("db-row", "%s", clip(fmt.Sprintf("%s's database: %q %v changed %d rows, the writer's committed rows say %d (a row of its own was removed or added behind its back)",
			b.w.site.Name, q, args, tag.RowsAffected(), want)))
	}
}

// rows runs a statement whose RETURNING gives the key columns and the
// row's text, and records each row as an effect of kind.
func (b *pgTxb) rows(kind byte, t *dbTable, want int, q string, args ...any) [][]int64 {
	if b.err != nil {
		return nil
	}
	rs, err := b.tx.Query(b.ctx, q, args...)
	if err != nil {
		b.err = fmt.Errorf("%s: %w", q, err)
		return nil
	}
	var keys [][]int64
	for rs.Next() {
		pk := make([]int64, t.pk)
		dst := make([]any, 0, t.pk+1)
		for i := range pk {
			dst = append(dst, &pk[i])
		}
		var text string
		dst = append(dst, &text)
		if err := rs.Scan(dst...); err != nil {
			rs.Close()
			b.err = err
			return nil
		}
		key := pgKey(t, pk)
		b.touch(t, key)
		b.effects = append(b.effects, pgEffect{Kind: kind, Table: t, Key: key, Text: text})
		keys = append(keys, pk)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		b.err = fmt.Errorf("%s: %w", q, err)
		return nil
	}
	if len(keys) != want {
		b.w.h.Violate("db-row", "%s", clip(fmt.Sprintf("%s's database: %q %v changed %d rows, the writer's committed rows say %d", b.w.site.Name, q, args, len(keys), want)))
	}
	return keys
}

// pgKey is a row's record key, as ppsync names it.
func pgKey(t *dbTable, pk []int64) string {
	vals := make([]any, len(pk))
	for i, v := range pk {
		vals[i] = v
	}
	return rowKey(t, vals)
}

// pgOutage says whether err is the server going away or not being there
// (the transaction did not commit, or its commit's answer was lost), as
// opposed to the database refusing a statement.
func pgOutage(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "57P"): // connection exception, admin/crash shutdown, cannot connect now
			return true
		}
		return false
	}
	return err != nil && !errors.Is(err, context.Canceled)
}

// tx writes one transaction of k random changes, retried until it commits.
func (w *pgWriter) tx(ctx context.Context, k int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.run(ctx, func(b *pgTxb) {
		for range k {
			w.randomChange(b)
		}
	})
}

// run writes one transaction (w.mu held) and retries it while the server
// is away, up to two minutes. Only a committed transaction enters the
// ledger.
func (w *pgWriter) run(ctx context.Context, fill func(*pgTxb)) bool {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok, err := w.attempt(ctx, fill)
		switch {
		case ok:
			return true
		case err == nil:
			return false // nothing to write
		case ctx.Err() != nil:
			return false // stopped (a commit left in doubt is looked up by settleDoubt)
		case !pgOutage(err):
			w.fail(err)
			return false
		case time.Now().After(deadline):
			w.fail(fmt.Errorf("the server still away after 2 minutes: %w", err))
			return false
		}
		w.outage++
		w.attempts.Add(1)
		if pause(ctx, 50*time.Millisecond) != nil {
			return false
		}
	}
}

// attempt writes the transaction once; first it settles a commit left in
// doubt (committed: that is this transaction, done).
func (w *pgWriter) attempt(ctx context.Context, fill func(*pgTxb)) (bool, error) {
	c, err := w.connection(ctx)
	if err != nil {
		return false, err
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if d := w.doubt; d != nil {
		committed, err := markCommitted(tctx, c, d.mark)
		if err != nil {
			w.drop()
			return false, err
		}
		w.doubt = nil
		if committed {
			w.resolved++
			w.committedTx(d.b)
			return true, nil
		}
		// It did not commit: write this one anew.
	}
	tx, err := c.Begin(tctx)
	if err != nil {
		w.drop()
		return false, err
	}
	// The transaction's mark says, after a commit without an answer,
	// whether it committed. Its transaction ID cannot: an ID handed out
	// just before a crash that was never written to the WAL is handed out
	// again after it, so pg_xact_status may answer for another
	// transaction.
	w.marks++
	mark := w.marks
	if _, err := tx.Exec(tctx, `INSERT INTO harness.commits (n) VALUES ($1)`, mark); err != nil {
		_ = tx.Rollback(context.Background())
		w.drop()
		return false, err
	}
	b := &pgTxb{w: w, tx: tx, ctx: tctx, touched: map[string]bool{}}
	fill(b)
	if b.err != nil || len(b.effects) == 0 {
		if rerr := tx.Rollback(context.Background()); rerr != nil || pgOutage(b.err) {
			w.drop()
		}
		return false, b.err
	}
	if err := tx.Commit(tctx); err != nil {
		// Whatever the error, the commit may have happened (the server
		// went away, or the writer was stopped, after it was sent): the
		// transaction's status says, once it can be asked.
		w.drop()
		w.inDoubt++
		w.doubt = &pgDoubt{mark: mark, b: b}
		return false, err
	}
	w.committedTx(b)
	return true, nil
}

// settleDoubt looks up a commit left without an answer when the writer
// stopped: it enters the ledger if it committed.
func (w *pgWriter) settleDoubt(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.doubt
	if d == nil {
		return
	}
	c, err := w.connection(ctx)
	if err != nil {
		return
	}
	committed, err := markCommitted(ctx, c, d.mark)
	if err != nil {
		return
	}
	w.doubt = nil
	if committed {
		w.resolved++
		w.committedTx(d.b)
	}
}

// markCommitted reports whether the transaction that wrote mark into
// harness.commits committed. The probe inserts the same mark: while that
// transaction is still in progress the insert waits for it, then finds the
// mark (committed) or takes it (it did not commit); the probe is rolled
// back.
func markCommitted(ctx context.Context, c *pgx.Conn, mark int64) (bool, error) {
	tx, err := c.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.Background())
	tag, err := tx.Exec(ctx, `INSERT INTO harness.commits (n) VALUES ($1) ON CONFLICT DO NOTHING`, mark)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 0, nil
}

func (w *pgWriter) committedTx(b *pgTxb) {
	for _, f := range b.after {
		f()
	}
	for _, e := range b.effects {
		if e.Kind == 'i' {
			w.own[e.Table.name+"/"+e.Key] = true
		}
	}
	w.ledger = append(w.ledger, pgTx{At: time.Now(), Effects: b.effects, Before: !w.running})
	w.changes += len(b.effects)
	w.commits.Add(1)
}

func (w *pgWriter) connection(ctx context.Context) (*pgx.Conn, error) {
	if w.conn != nil && !w.conn.IsClosed() {
		return w.conn, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := w.srv.connect(cctx, pgRoleName, w.name)
	if err != nil {
		return nil, err
	}
	w.conn = c
	return c, nil
}

func (w *pgWriter) drop() {
	if w.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = w.conn.Close(ctx)
		cancel()
		w.conn = nil
	}
}

func (w *pgWriter) fail(err error) {
	w.failed++
	if len(w.failures) < 5 {
		w.failures = append(w.failures, err.Error())
	}
}

// newID checks an ID a sequence handed out: once the node ran, every one
// must lie in one range of postgres.RangeSize, the site's own.
func (w *pgWriter) newID(t *dbTable, id int64) {
	slot := id / postgres.RangeSize
	switch {
	case slot == 0:
		w.h.Violate("db-range", "%s's database: the sequence of %s handed out id %d, below any site's range: ppsync did not move it into the site's range", w.site.Name, t.name, id)
	case w.slot == 0:
		w.slot = slot
	case w.slot != slot:
		w.h.Violate("db-range", "%s's database: the sequence of %s handed out id %d, in the range of slot %d; earlier IDs were in slot %d's", w.site.Name, t.name, id, slot, w.slot)
	}
}

const (
	pgPatientCols = "name, dob, balance, photo, visits, score, active, seen_at, tags, extra"
	pgPatientArgs = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
)

func (w *pgWriter) patientVals(id int64) []any {
	return []any{w.pname(id), w.dob(), w.balance(), w.photo(), int32(w.rng.IntN(40)), w.score(), w.active(), w.seenAt(), w.tags(), w.extra()}
}

// insertPatient inserts a patient: with an explicit ID before the node ran,
// with the sequence's afterwards.
func (w *pgWriter) insertPatient(b *pgTxb) int64 {
	var keys [][]int64
	if !w.running {
		w.nextPre++
		id := int64(w.idx)*pgPreRange + w.nextPre
		keys = b.rows('i', pgPatients, 1, `INSERT INTO patients AS t (id, `+pgPatientCols+`) VALUES ($11, `+pgPatientArgs+`) RETURNING t.id, t::text`,
			append(w.patientVals(id), id)...)
	} else {
		keys = b.rows('i', pgPatients, 1, `INSERT INTO patients AS t (`+pgPatientCols+`) VALUES (`+pgPatientArgs+`) RETURNING t.id, t::text`, w.patientVals(0)...)
	}
	if len(keys) != 1 {
		return 0
	}
	id := keys[0][0]
	if w.running {
		w.newID(pgPatients, id)
	}
	b.after = append(b.after, func() { w.patients.add(id) })
	return id
}

func (w *pgWriter) insertAppointment(b *pgTxb, patient int64) {
	var keys [][]int64
	if !w.running {
		w.nextPre++
		id := int64(w.idx)*pgPreRange + w.nextPre
		keys = b.rows('i', pgAppointments, 1, `INSERT INTO appointments AS t (id, patient, at, room) VALUES ($1, $2, $3, $4) RETURNING t.id, t::text`, id, patient, w.when(), w.room())
	} else {
		keys = b.rows('i', pgAppointments, 1, `INSERT INTO appointments AS t (patient, at, room) VALUES ($1, $2, $3) RETURNING t.id, t::text`, patient, w.when(), w.room())
	}
	if len(keys) != 1 {
		return
	}
	id := keys[0][0]
	if w.running {
		w.newID(pgAppointments, id)
	}
	b.after = append(b.after, func() {
		w.appts.add(id)
		if w.apptsOf[patient] == nil {
			w.apptsOf[patient] = map[int64]bool{}
		}
		w.apptsOf[patient][id] = true
	})
}

func (w *pgWriter) insertNote(b *pgTxb, patient int64) {
	n := w.nextNote[patient] + 1
	if len(b.rows('i', pgNotes, 1, `INSERT INTO notes AS t (patient, n, body) VALUES ($1, $2, $3) RETURNING t.patient, t.n, t::text`, patient, n, w.body())) != 1 {
		return
	}
	b.after = append(b.after, func() {
		w.nextNote[patient] = max(w.nextNote[patient], n)
		w.notes.add([2]int64{patient, n})
		if w.notesOf[patient] == nil {
			w.notesOf[patient] = map[int64]bool{}
		}
		w.notesOf[patient][n] = true
	})
}

// burst writes txs transactions back to back, each inserting pairs new
// patients with one appointment each (two multi-row INSERTs, as an import
// would), and returns the range of the patients' IDs and how many
// transactions committed.
func (w *pgWriter) burst(ctx context.Context, txs, pairs int) (first, last int64, committed int) {
	for range txs {
		w.mu.Lock()
		ok := w.run(ctx, func(b *pgTxb) {
			var args []any
			var vals []string
			for i := range pairs {
				var marks []string
				for j, v := range w.patientVals(0) {
					args = append(args, v)
					marks = append(marks, "$"+strconv.Itoa(i*10+j+1))
				}
				vals = append(vals, "("+strings.Join(marks, ", ")+")")
			}
			pats := b.rows('i', pgPatients, pairs, `INSERT INTO patients AS t (`+pgPatientCols+`) VALUES `+strings.Join(vals, ", ")+` RETURNING t.id, t::text`, args...)
			if len(pats) != pairs {
				return
			}
			args, vals = nil, nil
			for i, pk := range pats {
				args = append(args, pk[0], w.when(), w.room())
				vals = append(vals, fmt.Sprintf("($%d, $%d, $%d)", 3*i+1, 3*i+2, 3*i+3))
			}
			apps := b.rows('i', pgAppointments, pairs, `INSERT INTO appointments AS t (patient, at, room) VALUES `+strings.Join(vals, ", ")+` RETURNING t.id, t::text`, args...)
			if len(apps) != pairs {
				return
			}
			lo, hi := pats[0][0], pats[0][0]
			for i := range pats {
				id, aid := pats[i][0], apps[i][0]
				w.newID(pgPatients, id)
				w.newID(pgAppointments, aid)
				lo, hi = min(lo, id), max(hi, id)
				b.after = append(b.after, func() {
					w.patients.add(id)
					w.appts.add(aid)
					w.apptsOf[id] = map[int64]bool{aid: true}
				})
			}
			b.after = append(b.after, func() {
				if first == 0 {
					first = lo
				}
				last = hi
			})
		})
		w.mu.Unlock()
		if ok {
			committed++
		}
	}
	return first, last, committed
}

// randomChange adds one change (or a few that belong together) of the
// practice software's kinds.
func (w *pgWriter) randomChange(b *pgTxb) {
	r := w.rng.IntN(100)
	switch {
	case r < 35:
		id := w.insertPatient(b)
		if id != 0 && w.rng.IntN(2) == 0 {
			w.insertAppointment(b, id)
		}
		if id != 0 && w.rng.IntN(2) == 0 {
			w.insertNote(b, id)
		}
	case r < 50:
		if p, ok := w.patients.pick(w.rng); ok && b.touch(pgPatients, strconv.FormatInt(p, 10)) {
			w.insertAppointment(b, p)
		}
	case r < 60:
		if p, ok := w.patients.pick(w.rng); ok && b.touch(pgPatients, strconv.FormatInt(p, 10)) {
			w.insertNote(b, p)
		}
	case r < 72:
		w.updatePatient(b)
	case r < 80:
		if a, ok := w.appts.pick(w.rng); ok && b.touch(pgAppointments, strconv.FormatInt(a, 10)) {
			b.rows('u', pgAppointments, 1, `UPDATE appointments AS t SET at = $1, room = $2 WHERE id = $3 RETURNING t.id, t::text`, w.when(), w.room(), a)
		}
	case r < 86:
		if nk, ok := w.notes.pick(w.rng); ok && b.touch(pgNotes, pgKey(pgNotes, nk[:])) {
			b.rows('u', pgNotes, 1, `UPDATE notes AS t SET body = $1 WHERE patient = $2 AND n = $3 RETURNING t.patient, t.n, t::text`, w.body(), nk[0], nk[1])
		}
	case r < 91:
		if a, ok := w.appts.pick(w.rng); ok && b.touch(pgAppointments, strconv.FormatInt(a, 10)) {
			b.exec(1, `DELETE FROM appointments WHERE id = $1`, a)
			w.deleted(b, pgAppointments, []int64{a})
		}
	case r < 95:
		if nk, ok := w.notes.pick(w.rng); ok && b.touch(pgNotes, pgKey(pgNotes, nk[:])) {
			b.exec(1, `DELETE FROM notes WHERE patient = $1 AND n = $2`, nk[0], nk[1])
			w.deleted(b, pgNotes, nk[:])
		}
	default:
		w.deletePatient(b)
	}
}

func (w *pgWriter) updatePatient(b *pgTxb) {
	p, ok := w.patients.pick(w.rng)
	if !ok || !b.touch(pgPatients, strconv.FormatInt(p, 10)) {
		return
	}
	cols := strings.Split(pgPatientCols, ", ")
	vals := w.patientVals(p)
	set := map[int]bool{}
	for range 1 + w.rng.IntN(3) {
		set[w.rng.IntN(len(cols))] = true
	}
	var sets []string
	var args []any
	for i := range cols {
		if set[i] {
			args = append(args, vals[i])
			sets = append(sets, fmt.Sprintf("%s = $%d", cols[i], len(args)))
		}
	}
	args = append(args, p)
	b.rows('u', pgPatients, 1, fmt.Sprintf(`UPDATE patients AS t SET %s WHERE id = $%d RETURNING t.id, t::text`, strings.Join(sets, ", "), len(args)), args...)
}

// deleted records the delete of one row.
func (w *pgWriter) deleted(b *pgTxb, t *dbTable, pk []int64) {
	b.effects = append(b.effects, pgEffect{Kind: 'd', Table: t, Key: pgKey(t, pk)})
	pk = slices.Clone(pk)
	b.after = append(b.after, func() {
		switch t {
		case pgAppointments:
			w.appts.remove(pk[0])
			for _, m := range w.apptsOf {
				delete(m, pk[0])
			}
		case pgNotes:
			w.notes.remove([2]int64{pk[0], pk[1]})
			delete(w.notesOf[pk[0]], pk[1])
		case pgPatients:
			w.patients.remove(pk[0])
			delete(w.apptsOf, pk[0])
			delete(w.notesOf, pk[0])
		}
	})
}

// deletePatient deletes a patient with its appointments and notes (the
// foreign keys), in this transaction.
func (w *pgWriter) deletePatient(b *pgTxb) {
	p, ok := w.patients.pick(w.rng)
	if !ok {
		return
	}
	pkey := strconv.FormatInt(p, 10)
	if b.touched[pgPatients.name+"/"+pkey] {
		return
	}
	for a := range w.apptsOf[p] {
		if b.touched[pgAppointments.name+"/"+strconv.FormatInt(a, 10)] {
			return
		}
	}
	for n := range w.notesOf[p] {
		if b.touched[pgNotes.name+"/"+pgKey(pgNotes, []int64{p, n})] {
			return
		}
	}
	b.touch(pgPatients, pkey)
	b.exec(int64(len(w.apptsOf[p])), `DELETE FROM appointments WHERE patient = $1`, p)
	for a := range w.apptsOf[p] {
		b.touch(pgAppointments, strconv.FormatInt(a, 10))
		w.deleted(b, pgAppointments, []int64{a})
	}
	b.exec(int64(len(w.notesOf[p])), `DELETE FROM notes WHERE patient = $1`, p)
	for n := range w.notesOf[p] {
		b.touch(pgNotes, pgKey(pgNotes, []int64{p, n}))
		w.deleted(b, pgNotes, []int64{p, n})
	}
	b.exec(1, `DELETE FROM patients WHERE id = $1`, p)
	w.deleted(b, pgPatients, []int64{p})
}

// Values of many types, some of them hard: text with quotes and non-ASCII
// letters, exact decimals, doubles with every digit, bytes with zeros,
// microsecond timestamps, arrays, JSON, NULLs.

func (w *pgWriter) pname(id int64) string {
	return fmt.Sprintf("%s %d/%d", dbWords[w.rng.IntN(len(dbWords))], id, w.rng.IntN(1000))
}

func (w *pgWriter) dob() any {
	if w.rng.IntN(8) == 0 {
		return nil
	}
	return fmt.Sprintf("19%02d-%02d-%02d", 20+w.rng.IntN(80), 1+w.rng.IntN(12), 1+w.rng.IntN(28))
}

func (w *pgWriter) balance() any {
	switch w.rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return fmt.Sprintf("-%d.%02d", w.rng.IntN(1000), w.rng.IntN(100))
	}
	return fmt.Sprintf("%d.%02d", w.rng.IntN(10_000_000_000), w.rng.IntN(100))
}

func (w *pgWriter) photo() any {
	if w.rng.IntN(3) == 0 {
		return nil
	}
	b := make([]byte, 1+w.rng.IntN(48))
	for i := range b {
		if w.rng.IntN(4) > 0 {
			b[i] = byte(w.rng.IntN(256))
		}
	}
	return b
}

func (w *pgWriter) score() any {
	switch w.rng.IntN(8) {
	case 0:
		return nil
	case 1:
		return float64(w.rng.IntN(100))
	}
	return w.rng.NormFloat64() * 1e6
}

func (w *pgWriter) active() any {
	if w.rng.IntN(5) == 0 {
		return nil
	}
	return w.rng.IntN(2) == 0
}

func (w *pgWriter) seenAt() any {
	if w.rng.IntN(5) == 0 {
		return nil
	}
	return time.Date(2020+w.rng.IntN(7), time.Month(1+w.rng.IntN(12)), 1+w.rng.IntN(28), w.rng.IntN(24), w.rng.IntN(60), w.rng.IntN(60), w.rng.IntN(1_000_000)*1000, time.UTC)
}

func (w *pgWriter) tags() any {
	if w.rng.IntN(3) == 0 {
		return nil
	}
	out := []string{}
	for range w.rng.IntN(4) {
		out = append(out, dbWords[w.rng.IntN(len(dbWords))])
	}
	return out
}

func (w *pgWriter) extra() any {
	if w.rng.IntN(3) == 0 {
		return nil
	}
	return map[string]any{"insurer": dbWords[w.rng.IntN(len(dbWords))], "n": w.rng.IntN(1000), "ok": w.rng.IntN(2) == 0}
}

func (w *pgWriter) when() string {
	return fmt.Sprintf("2026-%02d-%02d %02d:%02d:00", 1+w.rng.IntN(12), 1+w.rng.IntN(28), 8+w.rng.IntN(10), 15*w.rng.IntN(4))
}

func (w *pgWriter) room() any {
	if w.rng.IntN(4) == 0 {
		return nil
	}
	return int16(1 + w.rng.IntN(9))
}

func (w *pgWriter) body() any {
	switch w.rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return strings.Repeat("long note ", 100+w.rng.IntN(200))
	}
	return fmt.Sprintf("seen %s, %d", dbWords[w.rng.IntN(len(dbWords))], w.rng.IntN(1e6))
}

// pgExpected folds every writer's ledger into the rows every database must
// hold (deleted rows with Text "").
func pgExpected(ws []*pgWriter) map[string]*pgRow {
	out := map[string]*pgRow{}
	for _, w := range ws {
		w.mu.Lock()
		for _, tx := range w.ledger {
			for _, e := range tx.Effects {
				k := e.Table.name + "/" + e.Key
				r := out[k]
				if r == nil {
					r = &pgRow{Table: e.Table, Key: e.Key}
					out[k] = r
				}
				switch e.Kind {
				case 'i':
					r.Text = e.Text
					r.Inserts++
				case 'u':
					r.Text = e.Text
					r.Updates++
				case 'd':
					r.Text = ""
					r.Deletes++
					if !tx.Before {
						r.LoggedDeletes++
					}
				}
			}
		}
		w.mu.Unlock()
	}
	return out
}

// pgDump reads every table of a database in one read transaction: "table/key"
// -> the row's text, and the keys in key order.
func pgDump(ctx context.Context, p *pgxpool.Pool) (dbDump, error) {
	out := dbDump{rows: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tx, err := p.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return out, err
	}
	defer tx.Rollback(context.Background())
	for _, t := range pgTables {
		pk := strings.Join(t.cols, ", ")
		rs, err := tx.Query(ctx, `SELECT `+pk+`, t::text FROM `+t.name+` t ORDER BY `+pk)
		if err != nil {
			return out, err
		}
		for rs.Next() {
			key := make([]int64, t.pk)
			var text string
			dst := []any{}
			for i := range key {
				dst = append(dst, &key[i])
			}
			if err := rs.Scan(append(dst, &text)...); err != nil {
				rs.Close()
				return out, err
			}
			k := t.name + "/" + pgKey(t, key)
			out.rows[k] = text
			out.order = append(out.order, k)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return out, err
		}
	}
	return out, nil
}

// pgCountRange counts the patients with IDs in [first, last].
func pgCountRange(ctx context.Context, p *pgxpool.Pool, first, last int64) (int, error) {
	var n int
	err := p.QueryRow(ctx, `SELECT count(*) FROM patients WHERE id BETWEEN $1 AND $2`, first, last).Scan(&n)
	return n, err
}
