package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ppsync/ppsync/db"
)

// Benchmarks of the SQLite connector on real files, each beside its baseline
// measured in the same run (`make bench`):
//   - capture: a bulk insert of 100,000 rows in one transaction with the
//     capture triggers, against the same insert without them, then reading
//     the captured changes back as batches; into a table keyed by its rowid
//     (an INTEGER PRIMARY KEY) and into one with a composite key, whose
//     triggers also record the key;
//   - apply: 100,000 merged rows written through Apply (write lock, capture
//     suppressed, position stored), against a plain batched insert of the
//     same rows.

const benchRows = 100_000

const benchSchema = `CREATE TABLE patients (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, dob TEXT, phone TEXT, balance REAL, notes TEXT)`

// benchNotesSchema is a table whose key is not its rowid.
const benchNotesSchema = `CREATE TABLE notes (patient INTEGER NOT NULL, n INTEGER NOT NULL, written TEXT, author TEXT, weight REAL, body TEXT, PRIMARY KEY (patient, n))`

func benchFile(b *testing.B, name string) (string, *sql.DB) {
	b.Helper()
	path := filepath.Join(b.TempDir(), name)
	d, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	for _, q := range []string{benchSchema, benchNotesSchema} {
		if _, err := d.Exec(q); err != nil {
			b.Fatal(err)
		}
	}
	return path, d
}

func benchInsert(b *testing.B, d *sql.DB, n int) time.Duration {
	b.Helper()
	start := time.Now()
	tx, err := d.Begin()
	if err != nil {
		b.Fatal(err)
	}
	st, err := tx.Prepare(`INSERT INTO patients(name, dob, phone, balance, notes) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := st.Exec(fmt.Sprintf("Patient %d", i), "1984-03-12", "+41 31 555 01 23", float64(i)/7, "allergic to penicillin"); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// benchInsertNotes is benchInsert into notes: ten notes per patient.
func benchInsertNotes(b *testing.B, d *sql.DB, n int) time.Duration {
	b.Helper()
	start := time.Now()
	tx, err := d.Begin()
	if err != nil {
		b.Fatal(err)
	}
	st, err := tx.Prepare(`INSERT INTO notes(patient, n, written, author, weight, body) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := st.Exec(i/10+1, i%10+1, "2024-03-12 09:30", "Dr. Muster", float64(i)/7, "allergic to penicillin"); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func BenchmarkCapture100k(b *testing.B) {
	benchCapture(b, "patients, integer key", benchInsert)
}

// BenchmarkCaptureCompositeKey100k is BenchmarkCapture100k into a table
// whose key is not its rowid.
func BenchmarkCaptureCompositeKey100k(b *testing.B) {
	benchCapture(b, "notes, composite key", benchInsertNotes)
}

func benchCapture(b *testing.B, what string, insert func(*testing.B, *sql.DB, int) time.Duration) {
	for b.Loop() {
		_, plain := benchFile(b, "plain.db")
		base := insert(b, plain, benchRows)

		path, d := benchFile(b, "captured.db")
		c, err := Open(context.Background(), path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		s, err := c.Schema(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Install(context.Background(), s); err != nil {
			b.Fatal(err)
		}
		c.SetSchema(s)
		with := insert(b, d, benchRows)
		start := time.Now()
		var pos uint64
		ops := 0
		for {
			bs, err := c.Capture(context.Background(), pos, 2000)
			if err != nil {
				b.Fatal(err)
			}
			if len(bs) == 0 {
				break
			}
			for _, x := range bs {
				ops += len(x.Ops)
				pos = x.Pos
			}
			if err := c.Ack(context.Background(), pos); err != nil {
				b.Fatal(err)
			}
		}
		read := time.Since(start)
		c.Close()
		if ops != benchRows {
			b.Fatalf("captured %d changes, want %d", ops, benchRows)
		}
		rate := func(d time.Duration) float64 { return float64(benchRows) / d.Seconds() }
		b.ReportMetric(rate(base), "plain-rows/s")
		b.ReportMetric(rate(with), "triggered-rows/s")
		b.ReportMetric(base.Seconds()/with.Seconds(), "ratio")
		b.ReportMetric(rate(read), "capture-read-rows/s")
		fmt.Printf("capture 100k (%s): plain insert %.0f rows/s, with capture triggers %.0f rows/s (ratio %.2f); reading the changes back as entries %.0f rows/s\n",
			what, rate(base), rate(with), base.Seconds()/with.Seconds(), rate(read))
	}
}

// feed stands for the node during an apply: it hands out prepared merged
// rows as the state's change feed would.
type feed struct {
	rows []db.Row
}

func (f *feed) CapturePos() uint64                         { return 0 }
func (f *feed) Captured(context.Context, []db.Batch) error { return nil }
func (f *feed) Merged(table, key string) (db.Row, error)   { return db.Row{Table: table, Key: key}, nil }
func (f *feed) Changed(after uint64, limit int) ([]db.Row, uint64, error) {
	from := int(after)
	to := min(from+limit, len(f.rows))
	return f.rows[from:to], uint64(to), nil
}

func BenchmarkApply100k(b *testing.B) {
	rows := make([]db.Row, benchRows)
	for i := range rows {
		rows[i] = db.Row{Table: "patients", Key: fmt.Sprint(i + 1), Fields: map[string]any{
			"id": int64(i + 1), "name": fmt.Sprintf("Patient %d", i), "dob": "1984-03-12", "phone": "+41 31 555 01 23",
			"balance": float64(i) / 7, "notes": "allergic to penicillin"}}
	}
	for b.Loop() {
		// Baseline: the same rows as a plain batched insert, 5,000 per transaction.
		_, plain := benchFile(b, "plain.db")
		start := time.Now()
		for off := 0; off < len(rows); off += 5000 {
			tx, err := plain.Begin()
			if err != nil {
				b.Fatal(err)
			}
			st, err := tx.Prepare(`INSERT INTO patients(id, name, dob, phone, balance, notes) VALUES (?, ?, ?, ?, ?, ?)`)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range rows[off:min(off+5000, len(rows))] {
				f := r.Fields
				if _, err := st.Exec(f["id"], f["name"], f["dob"], f["phone"], f["balance"], f["notes"]); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}
		base := time.Since(start)

		path, d := benchFile(b, "applied.db")
		c, err := Open(context.Background(), path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		s, err := c.Schema(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Install(context.Background(), s); err != nil {
			b.Fatal(err)
		}
		c.SetSchema(s)
		f := &feed{rows: rows}
		start = time.Now()
		for {
			res, err := c.Apply(context.Background(), f, 5000)
			if err != nil {
				b.Fatal(err)
			}
			if res.Cursor >= uint64(len(rows)) {
				break
			}
		}
		applied := time.Since(start)
		c.Close()
		var n int
		if err := d.QueryRow(`SELECT count(*) FROM patients`).Scan(&n); err != nil || n != benchRows {
			b.Fatalf("applied %d rows (%v), want %d", n, err, benchRows)
		}
		var pending int
		if err := d.QueryRow(`SELECT count(*) FROM ` + changesTable).Scan(&pending); err != nil || pending != 0 {
			b.Fatalf("the apply was captured back: %d change rows (%v)", pending, err)
		}
		rate := func(d time.Duration) float64 { return float64(benchRows) / d.Seconds() }
		b.ReportMetric(rate(base), "plain-rows/s")
		b.ReportMetric(rate(applied), "apply-rows/s")
		b.ReportMetric(base.Seconds()/applied.Seconds(), "ratio")
		fmt.Printf("apply 100k into SQLite: plain batched insert %.0f rows/s, ppsync apply %.0f rows/s (ratio %.2f)\n",
			rate(base), rate(applied), base.Seconds()/applied.Seconds())
	}
}
