//go:build linux

package fault

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the practice software's driver: plain SQL from the test process

	"github.com/ppsync/ppsync/db"
)

// The practice database of the DatabaseFaults scenario: a small practice
// schema, written with plain SQL from the test process as the practice
// software writes it.

// dbSchema is every site's practice database. tag has no declared type, so
// it keeps whatever storage class it is given (integer, real, text, blob,
// null): the values must reach every site in that class.
const dbSchema = `
CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, dob TEXT, balance REAL, photo BLOB, visits INTEGER, tag);
CREATE TABLE appointments (id INTEGER PRIMARY KEY, patient INTEGER NOT NULL REFERENCES patients(id), at TEXT NOT NULL, room INTEGER);
CREATE TABLE notes (patient INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT, PRIMARY KEY (patient, n));
`

// dbTable describes one table of dbSchema: its columns in order, the first
// pk of them its primary key.
type dbTable struct {
	name string
	cols []string
	pk   int
}

var (
	tPatients     = &dbTable{name: "patients", cols: []string{"id", "name", "dob", "balance", "photo", "visits", "tag"}, pk: 1}
	tAppointments = &dbTable{name: "appointments", cols: []string{"id", "patient", "at", "room"}, pk: 1}
	tNotes        = &dbTable{name: "notes", cols: []string{"patient", "n", "body"}, pk: 2}
	dbTables      = []*dbTable{tPatients, tAppointments, tNotes}
)

func dbTableNamed(name string) *dbTable {
	for _, t := range dbTables {
		if t.name == name {
			return t
		}
	}
	return nil
}

// dbSiteRange: site i's new rows get ids i*dbSiteRange+n (patients and
// appointments; its notes belong to its own patients), so that sites never
// write the same row.
const dbSiteRange = 1_000_000

// rowKey is a row's record key, as ppsync names it (db.EncodeKey of its
// primary key values: "1000001", or "[1000001,2]" for a note).
func rowKey(t *dbTable, vals []any) string {
	k, err := db.EncodeKey(vals[:t.pk])
	if err != nil {
		return fmt.Sprint(vals[:t.pk])
	}
	return k
}

// renderVal shows a value with its storage class, as the harness bound it or
// as typeof() and the driver read it.
func renderVal(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case int64:
		return "integer:" + strconv.FormatInt(x, 10)
	case float64:
		return "real:" + strconv.FormatFloat(x, 'g', -1, 64)
	case string:
		return "text:" + strconv.Quote(x)
	case []byte:
		return "blob:" + hex.EncodeToString(x)
	}
	return fmt.Sprintf("%T:%v", v, v)
}

func renderRow(vals []any) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = renderVal(v)
	}
	return strings.Join(parts, " | ")
}

// dbEffect is one row change of a transaction: an insert or a delete of a
// whole row, or an update of some columns.
type dbEffect struct {
	Kind  byte // 'i', 'u' or 'd'
	Table *dbTable
	Key   string
	Vals  []any       // 'i': every column
	Set   map[int]any // 'u': column index -> new value
	Rowid int64       // 'i' of a note: the rowid SQLite gave it (not its key)
}

// dbTx is one committed transaction of a site's ledger.
type dbTx struct {
	At      time.Time
	Effects []dbEffect
	// Before: committed before the site's node first ran (no capture
	// triggers yet: the initial load publishes the rows as they are then).
	Before bool
}

// dbRow is what the ledgers say of one row once every committed transaction
// is applied in order.
type dbRow struct {
	Table                     *dbTable
	Key                       string
	Vals                      []any // nil once deleted
	Inserts, Updates, Deletes int   // committed changes of the row
	// LoggedDeletes are the deletes committed once the node ran: each is
	// captured (a delete before that leaves nothing for the initial load).
	LoggedDeletes int
	// Rowid of a note, and PrevAtRowid the earlier note of its site (deleted
	// since) that had held that rowid, if any.
	Rowid       int64
	PrevAtRowid string
}

// idSet is a set that can hand out a random member.
type idSet[K comparable] struct {
	list []K
	at   map[K]int
}

func (s *idSet[K]) add(k K) {
	if s.at == nil {
		s.at = map[K]int{}
	}
	if _, ok := s.at[k]; ok {
		return
	}
	s.at[k] = len(s.list)
	s.list = append(s.list, k)
}

func (s *idSet[K]) remove(k K) {
	i, ok := s.at[k]
	if !ok {
		return
	}
	last := s.list[len(s.list)-1]
	s.list[i] = last
	s.at[last] = i
	s.list = s.list[:len(s.list)-1]
	delete(s.at, k)
}

func (s *idSet[K]) pick(rng *rand.Rand) (K, bool) {
	var zero K
	if len(s.list) == 0 {
		return zero, false
	}
	return s.list[rng.IntN(len(s.list))], true
}

// dbWriter is the practice software of one site: plain SQL transactions
// against the site's own database file, from the test process, recording
// every transaction whose commit succeeded in its ledger. It writes only
// rows of its own id range: its inserts, updates of its rows, deletes.
type dbWriter struct {
	h    *Harness
	site *Node
	idx  int // the site's number: ids idx*dbSiteRange+n
	path string
	db   *sql.DB // the practice software's connection (BEGIN IMMEDIATE)
	rd   *sql.DB // the harness's reads (dumps, counts)

	mu  sync.Mutex // one transaction at a time; guards everything below
	rng *rand.Rand
	// The committed rows of this site, to pick what to update or delete.
	patients  idSet[int64]
	appts     idSet[int64]
	notes     idSet[[2]int64]
	apptsOf   map[int64]map[int64]bool // patient -> its appointments
	notesOf   map[int64]map[int64]bool // patient -> its notes' n
	nextPat   int64
	nextAppt  int64
	nextNote  map[int64]int64
	ledger    []dbTx
	failed    int      // transactions rolled back after an error
	failures  []string // the first errors
	changes   int      // row changes committed
	running   bool     // the node has run: transactions from now on are captured
	commits   atomic.Int64
	stopWrite context.CancelFunc
	done      chan struct{}
}

// dbDSN is the practice software's way to open the file: a busy timeout, as
// docs/operations.md asks of it, foreign keys on, and BEGIN IMMEDIATE so that a
// transaction waits for the write lock at its start, never at its commit.
func dbDSN(path string, lock string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", lock)
	return "file:" + path + "?" + q.Encode()
}

// createPracticeDB creates the SQLite file at path with dbSchema (in WAL
// mode, as the node would set it).
func createPracticeDB(ctx context.Context, path string) error {
	d, err := sql.Open("sqlite", dbDSN(path, "immediate"))
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := d.ExecContext(ctx, `PRAGMA journal_mode=WAL`); err != nil {
		return fmt.Errorf("fault: %s: %w", path, err)
	}
	if _, err := d.ExecContext(ctx, dbSchema); err != nil {
		return fmt.Errorf("fault: create the practice schema in %s: %w", path, err)
	}
	return nil
}

func newDBWriter(h *Harness, site *Node, idx int, path string, seed uint64) (*dbWriter, error) {
	w := &dbWriter{h: h, site: site, idx: idx, path: path, rng: rand.New(rand.NewPCG(seed, 0xdb00+uint64(idx))),
		apptsOf: map[int64]map[int64]bool{}, notesOf: map[int64]map[int64]bool{}, nextPat: 1, nextAppt: 1, nextNote: map[int64]int64{}}
	var err error
	if w.db, err = sql.Open("sqlite", dbDSN(path, "immediate")); err != nil {
		return nil, err
	}
	w.db.SetMaxOpenConns(1)
	if w.rd, err = sql.Open("sqlite", dbDSN(path, "deferred")); err != nil {
		w.db.Close()
		return nil, err
	}
	w.rd.SetMaxOpenConns(2)
	return w, nil
}

func (w *dbWriter) close() {
	w.stop()
	w.db.Close()
	w.rd.Close()
}

func (w *dbWriter) base() int64 { return int64(w.idx) * dbSiteRange }

// owns reports whether a record key of table t is in this site's range.
func (w *dbWriter) owns(t *dbTable, key string) bool {
	first := key
	if strings.HasPrefix(key, "[") {
		first, _, _ = strings.Cut(strings.TrimPrefix(key, "["), ",")
	}
	id, err := strconv.ParseInt(first, 10, 64)
	return err == nil && id > w.base() && id < w.base()+dbSiteRange
}

// start runs the writer in the background: a transaction every `every`
// until stop.
func (w *dbWriter) start(ctx context.Context, every time.Duration) {
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
			w.tx(1 + w.intn(5))
		}
	}()
}

// stop ends the background writer (the transaction in flight finishes).
func (w *dbWriter) stop() {
	if w.stopWrite != nil {
		w.stopWrite()
		<-w.done
	}
}

func (w *dbWriter) intn(n int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rng.IntN(n)
}

// txb is a transaction being written.
type txb struct {
	w       *dbWriter
	tx      *sql.Tx
	ctx     context.Context
	effects []dbEffect
	touched map[string]bool // rows this transaction touched: each once
	after   []func()        // changes of the writer's model once committed
	err     error
}

func (b *txb) exec(want int64, q string, args ...any) {
	if b.err != nil {
		return
	}
	r, err := b.tx.ExecContext(b.ctx, q, args...)
	if err != nil {
		b.err = fmt.Errorf("%s: %w", q, err)
		return
	}
	if want >= 0 {
		if n, err := r.RowsAffected(); err == nil && n != want {
			// Every row of this site is written by this writer alone: a row
			// it committed is there with the values it committed.
			b.w.h.Violate("db-row", "%s", clip(fmt.Sprintf("%s's database: %q %v changed %d rows, the writer's committed rows say %d (a row of its own was removed or added behind its back)",
				b.w.site.Name, q, args, n, want)))
		}
	}
}

func (b *txb) touch(t *dbTable, key string) bool {
	k := t.name + "/" + key
	if b.touched[k] {
		return false
	}
	b.touched[k] = true
	return true
}

// tx writes one transaction of k random statements and commits it.
func (w *dbWriter) tx(k int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.run(func(b *txb) {
		for range k {
			w.randomChange(b)
		}
	})
}

// burst writes txs transactions back to back, each inserting pairs new
// patients with one appointment each (two multi-row INSERTs, as an import
// would), and returns the range of the patients' ids and how many
// transactions committed.
func (w *dbWriter) burst(txs, pairs int) (first, last int64, committed int) {
	for range txs {
		w.mu.Lock()
		ok := w.run(func(b *txb) {
			var pats, apps [][]any
			for range pairs {
				id := w.base() + w.nextPat
				w.nextPat++
				pats = append(pats, []any{id, w.name(id), w.dob(), w.balance(), w.photo(), int64(w.rng.IntN(40)), w.tag()})
				aid := w.base() + w.nextAppt
				w.nextAppt++
				apps = append(apps, []any{aid, id, w.when(), w.room()})
				if first == 0 {
					first = id
				}
				last = id
			}
			b.insertRows(tPatients, pats)
			b.insertRows(tAppointments, apps)
			for i := range pats {
				id, aid := pats[i][0].(int64), apps[i][0].(int64)
				b.after = append(b.after, func() {
					w.patients.add(id)
					w.appts.add(aid)
					w.apptsOf[id] = map[int64]bool{aid: true}
				})
			}
		})
		w.mu.Unlock()
		if ok {
			committed++
		}
	}
	return first, last, committed
}

// insertRows inserts new rows of t with one multi-row INSERT.
func (b *txb) insertRows(t *dbTable, rows [][]any) {
	marks := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(t.cols)), ", ") + ")"
	var all []string
	var args []any
	for _, vals := range rows {
		all = append(all, marks)
		args = append(args, vals...)
		b.touch(t, rowKey(t, vals))
		b.effects = append(b.effects, dbEffect{Kind: 'i', Table: t, Key: rowKey(t, vals), Vals: vals})
	}
	b.exec(int64(len(rows)), `INSERT INTO `+t.name+` (`+strings.Join(t.cols, ", ")+`) VALUES `+strings.Join(all, ", "), args...)
}

// run writes one transaction (w.mu held): BEGIN IMMEDIATE, fill, COMMIT.
// Only a transaction whose commit returned no error enters the ledger.
func (w *dbWriter) run(fill func(*txb)) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		w.fail(fmt.Errorf("begin: %w", err))
		return false
	}
	b := &txb{w: w, tx: tx, ctx: ctx, touched: map[string]bool{}}
	fill(b)
	if b.err != nil {
		_ = tx.Rollback()
		w.fail(b.err)
		return false
	}
	if len(b.effects) == 0 {
		_ = tx.Rollback()
		return false
	}
	if err := tx.Commit(); err != nil {
		w.fail(fmt.Errorf("commit: %w", err))
		return false
	}
	for _, f := range b.after {
		f()
	}
	w.ledger = append(w.ledger, dbTx{At: time.Now(), Effects: b.effects, Before: !w.running})
	w.changes += len(b.effects)
	w.commits.Add(1)
	return true
}

func (w *dbWriter) fail(err error) {
	w.failed++
	if len(w.failures) < 5 {
		w.failures = append(w.failures, err.Error())
	}
}

// randomChange adds one statement (or a few that belong together) of the
// practice software's kinds: new patients (often with an appointment and a
// note), appointments, notes, updates of its own rows, deletes.
func (w *dbWriter) randomChange(b *txb) {
	r := w.rng.IntN(100)
	switch {
	case r < 35:
		id := w.insertPatient(b)
		if w.rng.IntN(2) == 0 {
			w.insertAppointment(b, id)
		}
		if w.rng.IntN(2) == 0 {
			w.insertNote(b, id)
		}
	case r < 50:
		if p, ok := w.patients.pick(w.rng); ok && b.touch(tPatients, strconv.FormatInt(p, 10)) {
			w.insertAppointment(b, p)
		}
	case r < 60:
		if p, ok := w.patients.pick(w.rng); ok && b.touch(tPatients, strconv.FormatInt(p, 10)) {
			w.insertNote(b, p)
		}
	case r < 72:
		w.updatePatient(b)
	case r < 80:
		w.updateAppointment(b)
	case r < 86:
		w.updateNote(b)
	case r < 91:
		if a, ok := w.appts.pick(w.rng); ok && b.touch(tAppointments, strconv.FormatInt(a, 10)) {
			b.exec(1, `DELETE FROM appointments WHERE id = ?`, a)
			w.deleted(b, tAppointments, []any{a})
		}
	case r < 95:
		if nk, ok := w.notes.pick(w.rng); ok && b.touch(tNotes, rowKey(tNotes, []any{nk[0], nk[1]})) {
			b.exec(1, `DELETE FROM notes WHERE patient = ? AND n = ?`, nk[0], nk[1])
			w.deleted(b, tNotes, []any{nk[0], nk[1]})
		}
	default:
		w.deletePatient(b)
	}
}

func (w *dbWriter) insertPatient(b *txb) int64 {
	id := w.base() + w.nextPat
	w.nextPat++
	vals := []any{id, w.name(id), w.dob(), w.balance(), w.photo(), int64(w.rng.IntN(40)), w.tag()}
	b.exec(1, `INSERT INTO patients (id, name, dob, balance, photo, visits, tag) VALUES (?, ?, ?, ?, ?, ?, ?)`, vals...)
	b.touch(tPatients, rowKey(tPatients, vals))
	b.effects = append(b.effects, dbEffect{Kind: 'i', Table: tPatients, Key: rowKey(tPatients, vals), Vals: vals})
	b.after = append(b.after, func() { w.patients.add(id) })
	return id
}

func (w *dbWriter) insertAppointment(b *txb, patient int64) {
	id := w.base() + w.nextAppt
	w.nextAppt++
	vals := []any{id, patient, w.when(), w.room()}
	b.exec(1, `INSERT INTO appointments (id, patient, at, room) VALUES (?, ?, ?, ?)`, vals...)
	b.touch(tAppointments, rowKey(tAppointments, vals))
	b.effects = append(b.effects, dbEffect{Kind: 'i', Table: tAppointments, Key: rowKey(tAppointments, vals), Vals: vals})
	b.after = append(b.after, func() {
		w.appts.add(id)
		if w.apptsOf[patient] == nil {
			w.apptsOf[patient] = map[int64]bool{}
		}
		w.apptsOf[patient][id] = true
	})
}

func (w *dbWriter) insertNote(b *txb, patient int64) {
	w.nextNote[patient]++
	n := w.nextNote[patient]
	vals := []any{patient, n, w.body()}
	b.exec(1, `INSERT INTO notes (patient, n, body) VALUES (?, ?, ?)`, vals...)
	var rowid int64
	if b.err == nil {
		if err := b.tx.QueryRowContext(b.ctx, `SELECT rowid FROM notes WHERE patient = ? AND n = ?`, patient, n).Scan(&rowid); err != nil {
			b.err = fmt.Errorf("read a note's rowid: %w", err)
		}
	}
	b.touch(tNotes, rowKey(tNotes, vals))
	b.effects = append(b.effects, dbEffect{Kind: 'i', Table: tNotes, Key: rowKey(tNotes, vals), Vals: vals, Rowid: rowid})
	b.after = append(b.after, func() {
		w.notes.add([2]int64{patient, n})
		if w.notesOf[patient] == nil {
			w.notesOf[patient] = map[int64]bool{}
		}
		w.notesOf[patient][n] = true
	})
}

// update sets some columns of one row of t.
func (w *dbWriter) update(b *txb, t *dbTable, pk []any, set map[int]any) {
	var cols []string
	var args []any
	idx := make([]int, 0, len(set))
	for i := range set {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		cols = append(cols, t.cols[i]+" = ?")
		args = append(args, set[i])
	}
	var where []string
	for i := range t.pk {
		where = append(where, t.cols[i]+" = ?")
	}
	args = append(args, pk...)
	b.exec(1, `UPDATE `+t.name+` SET `+strings.Join(cols, ", ")+` WHERE `+strings.Join(where, " AND "), args...)
	b.effects = append(b.effects, dbEffect{Kind: 'u', Table: t, Key: rowKey(t, pk), Set: set})
}

func (w *dbWriter) updatePatient(b *txb) {
	p, ok := w.patients.pick(w.rng)
	if !ok || !b.touch(tPatients, strconv.FormatInt(p, 10)) {
		return
	}
	set := map[int]any{}
	for range 1 + w.rng.IntN(3) {
		switch c := 1 + w.rng.IntN(6); c {
		case 1:
			set[c] = w.name(p)
		case 2:
			set[c] = w.dob()
		case 3:
			set[c] = w.balance()
		case 4:
			set[c] = w.photo()
		case 5:
			set[c] = int64(w.rng.IntN(40))
		case 6:
			set[c] = w.tag()
		}
	}
	w.update(b, tPatients, []any{p}, set)
}

func (w *dbWriter) updateAppointment(b *txb) {
	a, ok := w.appts.pick(w.rng)
	if !ok || !b.touch(tAppointments, strconv.FormatInt(a, 10)) {
		return
	}
	set := map[int]any{2: w.when()}
	if w.rng.IntN(2) == 0 {
		set[3] = w.room()
	}
	w.update(b, tAppointments, []any{a}, set)
}

func (w *dbWriter) updateNote(b *txb) {
	nk, ok := w.notes.pick(w.rng)
	if !ok || !b.touch(tNotes, rowKey(tNotes, []any{nk[0], nk[1]})) {
		return
	}
	w.update(b, tNotes, []any{nk[0], nk[1]}, map[int]any{2: w.body()})
}

// deleted records the delete of one row.
func (w *dbWriter) deleted(b *txb, t *dbTable, pk []any) {
	b.effects = append(b.effects, dbEffect{Kind: 'd', Table: t, Key: rowKey(t, pk)})
	b.after = append(b.after, func() {
		switch t {
		case tAppointments:
			id := pk[0].(int64)
			w.appts.remove(id)
			for _, m := range w.apptsOf {
				delete(m, id)
			}
		case tNotes:
			p, n := pk[0].(int64), pk[1].(int64)
			w.notes.remove([2]int64{p, n})
			delete(w.notesOf[p], n)
		case tPatients:
			id := pk[0].(int64)
			w.patients.remove(id)
			delete(w.apptsOf, id)
			delete(w.notesOf, id)
		}
	})
}

// deletePatient deletes a patient with its appointments (the foreign key)
// and notes, in this transaction.
func (w *dbWriter) deletePatient(b *txb) {
	p, ok := w.patients.pick(w.rng)
	if !ok {
		return
	}
	pkey := strconv.FormatInt(p, 10)
	if b.touched[tPatients.name+"/"+pkey] {
		return
	}
	for a := range w.apptsOf[p] {
		if b.touched[tAppointments.name+"/"+strconv.FormatInt(a, 10)] {
			return
		}
	}
	for n := range w.notesOf[p] {
		if b.touched[tNotes.name+"/"+rowKey(tNotes, []any{p, n})] {
			return
		}
	}
	b.touch(tPatients, pkey)
	b.exec(int64(len(w.apptsOf[p])), `DELETE FROM appointments WHERE patient = ?`, p)
	for a := range w.apptsOf[p] {
		b.touch(tAppointments, strconv.FormatInt(a, 10))
		w.deleted(b, tAppointments, []any{a})
	}
	b.exec(int64(len(w.notesOf[p])), `DELETE FROM notes WHERE patient = ?`, p)
	for n := range w.notesOf[p] {
		b.touch(tNotes, rowKey(tNotes, []any{p, n}))
		w.deleted(b, tNotes, []any{p, n})
	}
	b.exec(1, `DELETE FROM patients WHERE id = ?`, p)
	w.deleted(b, tPatients, []any{p})
}

// Values of every storage class, some of them hard: text with quotes and
// non-ASCII letters, reals with every digit, integral reals, integers beyond
// 2^53, blobs with zero bytes, NULLs.

var dbWords = []string{"Müller", "O'Brien", `"Dr" Ng`, "Ñandú", "Σοφία", "李", "plain"}

func (w *dbWriter) name(id int64) string {
	return fmt.Sprintf("%s %d/%d", dbWords[w.rng.IntN(len(dbWords))], id, w.rng.IntN(1000))
}

func (w *dbWriter) dob() any {
	if w.rng.IntN(8) == 0 {
		return nil
	}
	return fmt.Sprintf("19%02d-%02d-%02d", 20+w.rng.IntN(80), 1+w.rng.IntN(12), 1+w.rng.IntN(28))
}

func (w *dbWriter) balance() any {
	switch w.rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return float64(w.rng.IntN(500)) // integral: still a real
	}
	return w.rng.Float64() * 10000
}

func (w *dbWriter) photo() any {
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

// tag, in the column without a type, keeps its storage class.
func (w *dbWriter) tag() any {
	switch w.rng.IntN(8) {
	case 0:
		return nil
	case 1:
		return int64(w.rng.IntN(1000))
	case 2:
		return int64(1)<<62 + int64(w.rng.IntN(1000)) // beyond a float64's integers
	case 3:
		return strconv.Itoa(w.rng.IntN(100)) // text that looks like a number
	case 4:
		return float64(w.rng.IntN(100)) // an integral real
	case 5:
		return w.rng.Float64()
	case 6:
		return []byte{0, byte(w.rng.IntN(256)), 0}
	}
	return dbWords[w.rng.IntN(len(dbWords))]
}

func (w *dbWriter) when() string {
	return fmt.Sprintf("2026-%02d-%02d %02d:%02d", 1+w.rng.IntN(12), 1+w.rng.IntN(28), 8+w.rng.IntN(10), 15*w.rng.IntN(4))
}

func (w *dbWriter) room() any {
	if w.rng.IntN(4) == 0 {
		return nil
	}
	return int64(1 + w.rng.IntN(9))
}

func (w *dbWriter) body() any {
	switch w.rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return strings.Repeat("long note ", 100+w.rng.IntN(200))
	}
	return fmt.Sprintf("seen %s, %d", dbWords[w.rng.IntN(len(dbWords))], w.rng.IntN(1e6))
}

// Committed returns how many transactions committed so far.
func (w *dbWriter) committed() int64 { return w.commits.Load() }

// waitCommits waits until the writer has committed k more transactions than
// from (the practice software keeps working while a fault lasts).
func (w *dbWriter) waitCommits(ctx context.Context, from int64, k int, what string) error {
	_, err := waitFor(ctx, 30*time.Second, 10*time.Millisecond, fmt.Sprintf("%s's writer committing %d transactions %s", w.site.Name, k, what), func() (bool, string) {
		n := w.committed() - from
		return n >= int64(k), fmt.Sprintf("%d committed", n)
	})
	return err
}

// expected folds every writer's ledger, transaction by transaction, into
// the rows every database must hold (and the deleted ones, Vals nil).
func expected(ws []*dbWriter) map[string]*dbRow {
	out := map[string]*dbRow{}
	for _, w := range ws {
		w.mu.Lock()
		rowids := map[int64]string{} // rowid -> the last note of this site there
		for _, tx := range w.ledger {
			for _, e := range tx.Effects {
				k := e.Table.name + "/" + e.Key
				r := out[k]
				if r == nil {
					r = &dbRow{Table: e.Table, Key: e.Key}
					out[k] = r
				}
				switch e.Kind {
				case 'i':
					r.Vals = slices.Clone(e.Vals)
					r.Inserts++
					if e.Rowid != 0 {
						r.Rowid, r.PrevAtRowid = e.Rowid, rowids[e.Rowid]
						rowids[e.Rowid] = k
					}
				case 'u':
					if r.Vals != nil {
						r.Vals = slices.Clone(r.Vals)
						for i, v := range e.Set {
							r.Vals[i] = v
						}
					}
					r.Updates++
				case 'd':
					r.Vals = nil
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

// dbDump is one database's rows: "table/key" -> the row with each value's
// storage class, and the keys in primary key order.
type dbDump struct {
	rows  map[string]string
	order []string
}

// dumpDB reads every synced table in one read transaction, ordered by
// primary key, each value with its storage class (typeof).
func dumpDB(ctx context.Context, d *sql.DB) (dbDump, error) {
	out := dbDump{rows: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tx, err := d.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return out, err
	}
	defer tx.Rollback()
	for _, t := range dbTables {
		var sel []string
		for _, c := range t.cols {
			sel = append(sel, "typeof("+c+")", c)
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+strings.Join(sel, ", ")+` FROM `+t.name+` ORDER BY `+strings.Join(t.cols[:t.pk], ", "))
		if err != nil {
			return out, err
		}
		raw := make([]any, 2*len(t.cols))
		ptrs := make([]any, len(raw))
		for i := range raw {
			ptrs[i] = &raw[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return out, err
			}
			vals := make([]any, len(t.cols))
			parts := make([]string, len(t.cols))
			for i := range t.cols {
				class, _ := raw[2*i].(string)
				vals[i] = raw[2*i+1]
				parts[i] = renderVal(vals[i])
				if got, _, _ := strings.Cut(parts[i], ":"); got != class {
					parts[i] = class + "?" + parts[i] // the driver's type disagrees with typeof: show both
				}
			}
			k := t.name + "/" + rowKey(t, vals)
			out.rows[k] = strings.Join(parts, " | ")
			out.order = append(out.order, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return out, err
		}
	}
	return out, nil
}

// countRange counts the patients with ids in [first, last] in a database.
func countRange(ctx context.Context, d *sql.DB, first, last int64) (int, error) {
	var n int
	err := d.QueryRowContext(ctx, `SELECT count(*) FROM patients WHERE id BETWEEN ? AND ?`, first, last).Scan(&n)
	return n, err
}

// rowsOf counts the patients of site idx's range in a database.
func rowsOf(ctx context.Context, d *sql.DB, idx int) (int, error) {
	return countRange(ctx, d, int64(idx)*dbSiteRange+1, int64(idx+1)*dbSiteRange-1)
}
