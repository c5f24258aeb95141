package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/internal/wire"
)

// practiceSchema: patients keyed by their rowid (an INTEGER PRIMARY KEY),
// notes with a composite key (a rowid of their own, which SQLite reuses).
const practiceSchema = `
CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE notes (patient INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT, PRIMARY KEY (patient, n));
`

// practice is a practice database in a temporary file: app is the practice
// software's own connection; c is ppsync's connector, when open.
type practice struct {
	t    *testing.T
	path string
	app  *sql.DB
	c    *Conn
}

func newPractice(t *testing.T, schema string) *practice {
	t.Helper()
	p := &practice{t: t, path: filepath.Join(t.TempDir(), "practice.db")}
	app, err := sql.Open("sqlite", "file:"+p.path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	app.SetMaxOpenConns(1)
	t.Cleanup(func() { app.Close() })
	p.app = app
	p.exec(schema)
	t.Cleanup(func() { p.stop() })
	return p
}

// start opens the connector and installs the triggers, as a node's start does.
func (p *practice) start() {
	p.t.Helper()
	ctx := context.Background()
	c, err := Open(ctx, p.path, Options{})
	if err != nil {
		p.t.Fatal(err)
	}
	s, err := c.Schema(ctx)
	if err != nil {
		c.Close()
		p.t.Fatal(err)
	}
	if err := c.Install(ctx, s); err != nil {
		c.Close()
		p.t.Fatal(err)
	}
	c.SetSchema(s)
	p.c = c
}

// stop closes the connector, as a node's stop (or kill) does.
func (p *practice) stop() {
	if p.c != nil {
		p.c.Close()
		p.c = nil
	}
}

// exec runs the practice software's statements, each in its own transaction.
func (p *practice) exec(stmts ...string) {
	p.t.Helper()
	for _, s := range stmts {
		if _, err := p.app.Exec(s); err != nil {
			p.t.Fatalf("%s: %v", s, err)
		}
	}
}

// tx runs the statements in one transaction.
func (p *practice) tx(stmts ...string) {
	p.t.Helper()
	tx, err := p.app.Begin()
	if err != nil {
		p.t.Fatal(err)
	}
	defer tx.Rollback()
	for _, s := range stmts {
		if _, err := tx.Exec(s); err != nil {
			p.t.Fatalf("%s: %v", s, err)
		}
	}
	if err := tx.Commit(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *practice) rowid(where string) int64 {
	p.t.Helper()
	var r int64
	if err := p.app.QueryRow(`SELECT rowid FROM notes WHERE ` + where).Scan(&r); err != nil {
		p.t.Fatalf("rowid of note %s: %v", where, err)
	}
	return r
}

// capture reads every waiting change, at most maxOps a read, acknowledging
// each read, and returns the batches' ops as text.
func (p *practice) capture(maxOps int) [][]string {
	p.t.Helper()
	ctx := context.Background()
	var out [][]string
	var pos uint64
	for {
		bs, err := p.c.Capture(ctx, pos, maxOps)
		if err != nil {
			p.t.Fatal(err)
		}
		if len(bs) == 0 {
			return out
		}
		for _, b := range bs {
			if b.Pos <= pos {
				p.t.Fatalf("batch position %d after %d", b.Pos, pos)
			}
			pos = b.Pos
			if len(b.Ops) > 0 {
				out = append(out, opStrings(b.Ops))
			}
		}
		if err := p.c.Ack(ctx, pos); err != nil {
			p.t.Fatal(err)
		}
	}
}

// captureAll is capture with reads large enough for every change: one batch.
func (p *practice) captureAll() []string {
	p.t.Helper()
	bs := p.capture(10000)
	if len(bs) > 1 {
		p.t.Fatalf("one read gave %d batches: %q", len(bs), bs)
	}
	if len(bs) == 0 {
		return nil
	}
	return bs[0]
}

func opStrings(ops []wire.Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		s := op.Kind.String() + " " + op.Table + " " + op.Key
		if op.Fields != nil {
			var fs []string
			for k, v := range op.Fields {
				fs = append(fs, fmt.Sprintf("%s=%v", k, v))
			}
			sort.Strings(fs)
			s += " " + strings.Join(fs, ",")
		}
		out[i] = s
	}
	return out
}

func wantOps(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("captured:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// The known bug's deterministic repro: with the node stopped, a note is
// inserted and deleted and another takes its rowid. Before, the insert of
// the deleted note was read as a second put of the new one.
func TestCaptureReusedRowidWhileStopped(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.stop()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'first')`)
	r := p.rowid(`patient = 1 AND n = 1`)
	p.exec(`DELETE FROM notes WHERE patient = 1 AND n = 1`)
	p.exec(`INSERT INTO notes VALUES (1, 2, 'second')`)
	if r2 := p.rowid(`patient = 1 AND n = 2`); r2 != r {
		t.Fatalf("note (1,2) has rowid %d, not the deleted note's %d: the test shows nothing", r2, r)
	}
	p.start()
	wantOps(t, p.captureAll(),
		`delete notes [1,1]`,
		`put notes [1,2] body=second,n=2,patient=1`)
}

// An update, the delete, and a new row at the same rowid, each in its own
// transaction or all in one: the deleted note's changes are covered by its
// delete, the new note is put once.
func TestCaptureUpdateDeleteReinsertAtSameRowid(t *testing.T) {
	for _, oneTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("one-transaction=%v", oneTx), func(t *testing.T) {
			p := newPractice(t, practiceSchema)
			p.start()
			stmts := []string{
				`INSERT INTO notes VALUES (1, 1, 'first')`,
				`UPDATE notes SET body = 'edited' WHERE patient = 1 AND n = 1`,
				`DELETE FROM notes WHERE patient = 1 AND n = 1`,
				`INSERT INTO notes VALUES (1, 2, 'second')`,
				`UPDATE notes SET body = 'second, edited' WHERE patient = 1 AND n = 2`,
			}
			if oneTx {
				p.tx(stmts...)
			} else {
				p.exec(stmts...)
			}
			wantOps(t, p.captureAll(),
				`delete notes [1,1]`,
				`put notes [1,2] body=second, edited,n=2,patient=1`,
				`put notes [1,2] body=second, edited`)
		})
	}
}

// A note inserted again under the same key at the same rowid: the first
// insert is covered by the delete that follows it.
func TestCaptureSameKeyAtSameRowid(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'first')`,
		`DELETE FROM notes WHERE patient = 1 AND n = 1`,
		`INSERT INTO notes VALUES (1, 1, 'again')`)
	wantOps(t, p.captureAll(),
		`delete notes [1,1]`,
		`put notes [1,1] body=again,n=1,patient=1`)
}

// Key changes keep their rowid: the changes recorded under the old key are
// covered by its delete, also when a key comes back to a row.
func TestCaptureKeyChange(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'first')`)
	wantOps(t, p.captureAll(), `put notes [1,1] body=first,n=1,patient=1`)

	p.exec(`UPDATE notes SET n = 2 WHERE patient = 1 AND n = 1`)
	wantOps(t, p.captureAll(),
		`delete notes [1,1]`,
		`put notes [1,2] body=first,n=2,patient=1`)

	// Pending together: an update, away to (1,3) and back to (1,2), an
	// update; then (1,2) deleted and a new note at its rowid.
	r := p.rowid(`patient = 1 AND n = 2`)
	p.exec(`UPDATE notes SET body = 'b' WHERE patient = 1 AND n = 2`,
		`UPDATE notes SET n = 3 WHERE patient = 1 AND n = 2`,
		`UPDATE notes SET n = 2, body = 'c' WHERE patient = 1 AND n = 3`,
		`UPDATE notes SET body = 'd' WHERE patient = 1 AND n = 2`)
	wantOps(t, p.captureAll(),
		`delete notes [1,2]`,
		`delete notes [1,3]`,
		`put notes [1,2] body=d,n=2,patient=1`,
		`put notes [1,2] body=d`)

	p.exec(`UPDATE notes SET body = 'e' WHERE patient = 1 AND n = 2`,
		`UPDATE notes SET patient = 2 WHERE patient = 1 AND n = 2`,
		`DELETE FROM notes`,
		`INSERT INTO notes VALUES (7, 7, 'new')`)
	if r2 := p.rowid(`patient = 7`); r2 != r {
		t.Fatalf("note (7,7) has rowid %d, want the reused %d", r2, r)
	}
	wantOps(t, p.captureAll(),
		`delete notes [1,2]`,
		`delete notes [2,2]`,
		`put notes [7,7] body=new,n=7,patient=7`)
}

// Several changes waiting, rowids reused twice, read whole or a few at a
// time (a delete that covers a change then lies in a later read).
func TestCaptureSeveralPendingReuses(t *testing.T) {
	want := []string{
		`put patients 1 id=1,name=Ada`,
		`put notes [1,1] body=a2,n=1,patient=1`,
		`delete notes [1,2]`,
		`delete notes [1,3]`,
		`put notes [1,4] body=d,n=4,patient=1`,
		`put notes [1,1] body=a2`,
		`delete patients 2`,
		`put patients 1 name=Ada`,
		`put patients 1 name=Ada`,
	}
	for _, maxOps := range []int{1, 2, 3, 10000} {
		t.Run(fmt.Sprintf("maxOps=%d", maxOps), func(t *testing.T) {
			p := newPractice(t, practiceSchema)
			p.start()
			p.exec(`INSERT INTO patients VALUES (1, 'Ada')`,
				`INSERT INTO notes VALUES (1, 1, 'a')`,
				`INSERT INTO notes VALUES (1, 2, 'b')`,
				`DELETE FROM notes WHERE n = 2`,
				`INSERT INTO notes VALUES (1, 3, 'c')`,
				`DELETE FROM notes WHERE n = 3`,
				`INSERT INTO notes VALUES (1, 4, 'd')`,
				`UPDATE notes SET body = 'a2' WHERE n = 1`,
				`UPDATE patients SET name = 'Ada' WHERE id = 1`, // no change: nothing recorded
				`INSERT INTO patients VALUES (2, 'Bo')`,
				`DELETE FROM patients WHERE id = 2`,
				`UPDATE patients SET name = 'Ada L' WHERE id = 1`,
				`UPDATE patients SET name = 'Ada' WHERE id = 1`)
			if p.rowid(`n = 4`) != 2 {
				t.Fatal("note (1,4) did not get rowid 2")
			}
			var got []string
			for _, b := range p.capture(maxOps) {
				got = append(got, b...)
			}
			// patient 2's insert is left to its delete (gone since), like
			// the notes'.
			wantOps(t, got, want...)
		})
	}
}

// A row that moved to another rowid (VACUUM may renumber the rowids of a
// table without an INTEGER PRIMARY KEY; an UPDATE may set one) is found by
// its key, and a row that took its old rowid is captured as itself.
func TestCaptureRowMovedToAnotherRowid(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'a')`,
		`UPDATE notes SET body = 'a2' WHERE patient = 1 AND n = 1`)
	r := p.rowid(`n = 1`)
	p.exec(`UPDATE notes SET rowid = 100 WHERE n = 1`,
		fmt.Sprintf(`INSERT INTO notes(rowid, patient, n, body) VALUES (%d, 1, 2, 'b')`, r))
	wantOps(t, p.captureAll(),
		`put notes [1,1] body=a2,n=1,patient=1`,
		`put notes [1,1] body=a2`,
		`put notes [1,2] body=b,n=2,patient=1`)
}

// Keys of every storage class, NULL included (a rowid table allows it in a
// key that is not its rowid), are recorded by the triggers as capture
// reads them back, so a row's changes are read from its rowid.
func TestCaptureKeyOfEveryStorageClass(t *testing.T) {
	p := newPractice(t, `CREATE TABLE k (a REAL, b TEXT, c BLOB, d, v TEXT, PRIMARY KEY (a, b, c, d))`)
	p.start()
	p.exec(`INSERT INTO k VALUES (5, 'x', x'00ff', NULL, 'v1')`,
		`INSERT INTO k VALUES (0.1, '[1]', NULL, 2.5, 'v2')`,
		`INSERT INTO k VALUES (-1e300, '', '', 'text', 'v3')`,
		`UPDATE k SET v = v || '!'`)
	ctx := context.Background()
	rows, err := p.app.Query(`SELECT rid, pk FROM ` + changesTable + ` WHERE op IN ('i', 'u')`)
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[int64][]string{}
	var rids []int64
	for rows.Next() {
		var rid int64
		var pk string
		if err := rows.Scan(&rid, &pk); err != nil {
			t.Fatal(err)
		}
		recorded[rid] = append(recorded[rid], pk)
		rids = append(rids, rid)
	}
	rows.Close()
	tab, _ := p.c.currentSchema().Table("k")
	cur, err := readRows(ctx, p.app, tab, rids, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 3 || len(rids) != 6 {
		t.Fatalf("recorded %v", recorded)
	}
	for rid, pks := range recorded {
		for _, pk := range pks {
			if pk == "" || cur[rid].key != pk {
				t.Errorf("rowid %d: the trigger recorded key %q, capture reads %q", rid, pk, cur[rid].key)
			}
		}
	}
	got := p.captureAll()
	if len(got) != 6 {
		t.Fatalf("captured %q", got)
	}
}

// Only tables whose key is not the rowid record it (the others' inserts
// stay as cheap as before).
func TestKeyIsRowid(t *testing.T) {
	p := newPractice(t, `
CREATE TABLE a (id INTEGER PRIMARY KEY, x);
CREATE TABLE b (id INTEGER PRIMARY KEY DESC, x);
CREATE TABLE c (id INT PRIMARY KEY, x);
CREATE TABLE d (p, n, x, PRIMARY KEY (p, n));
CREATE TABLE e (id integer, x, PRIMARY KEY (id DESC));
CREATE TABLE f (id INTEGER PRIMARY KEY AUTOINCREMENT, x);
CREATE TABLE g (id TEXT PRIMARY KEY, x);
CREATE TABLE h (id INTEGER PRIMARY KEY, x) WITHOUT ROWID;
`)
	p.start()
	want := map[string]bool{"a": true, "b": false, "c": false, "d": false, "e": true, "f": true, "g": false, "h": false}
	for name, w := range want {
		tab, ok := p.c.currentSchema().Table(name)
		if !ok {
			t.Fatalf("table %s not synced", name)
		}
		got, err := keyIsRowid(context.Background(), p.c.r, tab)
		if err != nil {
			t.Fatal(err)
		}
		if got != w {
			t.Errorf("table %s: key is the rowid: %v, want %v", name, got, w)
		}
		if name == "d" {
			p.exec(`INSERT INTO d (p, n, x) VALUES (1, 1, 'x')`)
		} else {
			p.exec(fmt.Sprintf(`INSERT INTO %s (id, x) VALUES (1, 'x')`, name))
		}
	}
	rows, err := p.app.Query(`SELECT tbl, pk FROM ` + changesTable + ` WHERE op = 'i' ORDER BY tbl`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var tbl, pk string
		if err := rows.Scan(&tbl, &pk); err != nil {
			t.Fatal(err)
		}
		if (pk == "") != want[tbl] {
			t.Errorf("table %s: insert recorded key %q", tbl, pk)
		}
	}
}

// installOldTriggers puts the previous version's triggers in place: inserts
// and updates recorded by rowid alone, whatever the key.
func (p *practice) installOldTriggers() {
	p.t.Helper()
	s := p.c.currentSchema()
	for i := range s.Tables {
		t := &s.Tables[i]
		for _, kind := range []string{"ins", "upd", "del"} {
			p.exec(`DROP TRIGGER ` + quote(triggerPrefix+t.Name+"_"+kind))
		}
		p.exec(triggerSQL(t, true)...)
	}
}

// Changes recorded by the previous version's triggers and still waiting at
// the upgrade are captured exactly once, rowid reuses among them included;
// Install runs at every start.
func TestCaptureUpgradeFromRowidOnlyChanges(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.installOldTriggers()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'first')`)
	wantOps(t, p.captureAll(), `put notes [1,1] body=first,n=1,patient=1`)
	p.stop()

	p.exec(`INSERT INTO patients VALUES (1, 'Ada')`,
		`UPDATE notes SET body = 'edited' WHERE patient = 1 AND n = 1`,
		`INSERT INTO notes VALUES (2, 1, 'x')`,
		`INSERT INTO notes VALUES (3, 1, 'y')`,
		`UPDATE notes SET body = 'y2' WHERE patient = 3`,
		`DELETE FROM notes WHERE patient = 3`,  // the highest rowid:
		`INSERT INTO notes VALUES (4, 1, 'z')`, // reused here
		`UPDATE notes SET body = 'z2' WHERE patient = 4`,
		`UPDATE notes SET n = 2 WHERE patient = 2`, // a key change
		`UPDATE notes SET body = 'x2' WHERE patient = 2`,
		`INSERT INTO notes VALUES (5, 1, 'w')`,
		`INSERT INTO notes VALUES (6, 1, 'v')`,
		`DELETE FROM notes WHERE patient = 5`, // not the highest: its rowid stays free
		`UPDATE patients SET name = 'Ada L' WHERE id = 1`)
	var old int
	if err := p.app.QueryRow(`SELECT count(*) FROM ` + changesTable + ` WHERE op IN ('i', 'u') AND pk = ''`).Scan(&old); err != nil || old != 12 {
		t.Fatalf("%d changes in the old format (%v), want 12", old, err)
	}
	p.start() // the upgrade
	p.stop()
	p.start() // and a start after it
	p.exec(`INSERT INTO notes VALUES (7, 1, 'u')`)
	wantOps(t, p.captureAll(),
		`put patients 1 id=1,name=Ada L`,
		`put notes [1,1] body=edited`,
		`delete notes [3,1]`,
		`put notes [4,1] body=z2,n=1,patient=4`,
		`put notes [4,1] body=z2`,
		`delete notes [2,1]`,
		`put notes [2,2] body=x2,n=2,patient=2`,
		`put notes [2,2] body=x2`,
		`put notes [6,1] body=v,n=1,patient=6`,
		`delete notes [5,1]`,
		`put patients 1 name=Ada L`,
		`put notes [7,1] body=u,n=1,patient=7`)
}

// capturingFeed is feed that keeps what an apply captured first.
type capturingFeed struct {
	feed
	captured [][]string
}

func (f *capturingFeed) Captured(_ context.Context, bs []db.Batch) error {
	for _, b := range bs {
		f.captured = append(f.captured, opStrings(b.Ops))
	}
	return nil
}

// An apply captures the waiting changes first, a reused rowid among them,
// and its own writes are not captured back (the triggers' WHEN clause is
// kept for tables that record their key).
func TestApplyCapturesFirstAndIsNotCapturedBack(t *testing.T) {
	p := newPractice(t, practiceSchema)
	p.start()
	p.exec(`INSERT INTO notes VALUES (1, 1, 'first')`,
		`DELETE FROM notes WHERE patient = 1 AND n = 1`,
		`INSERT INTO notes VALUES (1, 2, 'second')`)
	f := &capturingFeed{feed: feed{rows: []db.Row{
		{Table: "notes", Key: "[1,1]", Fields: map[string]any{"patient": int64(1), "n": int64(1), "body": "remote"}},
		{Table: "notes", Key: "[1,2]", Fields: nil},
		{Table: "patients", Key: "1", Fields: map[string]any{"id": int64(1), "name": "Ada"}},
	}}}
	res, err := p.c.Apply(context.Background(), f, 100)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 3 || len(f.captured) != 1 {
		t.Fatalf("apply wrote %d rows, captured %q", res.Rows, f.captured)
	}
	wantOps(t, f.captured[0],
		`delete notes [1,1]`,
		`put notes [1,2] body=second,n=2,patient=1`)
	wantOps(t, p.captureAll())
	p.exec(`UPDATE notes SET body = 'local' WHERE patient = 1`)
	wantOps(t, p.captureAll(), `put notes [1,1] body=local`)
}
