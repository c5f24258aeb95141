package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDemoConverges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	const records = 30
	var out bytes.Buffer
	if err := runDemo(ctx, demoOptions{Dir: dir, NoWait: true, Out: &out, Version: "test", Records: records}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"All four nodes hold the same data",
		"The three practice databases hold the same rows",
		"ppsync db check: no differences",
		"sqlite3 " + filepath.Join(dir, "databases", "clinic-south.db") + " 'SELECT * FROM patients LIMIT 5'",
		"read from clinic-east.db",
		"the relay's alert arrived by email (to manager@clinic-east.example)",
		"Subject: ppsync: clinic-east has not synced since",
		"What to check first",
		"and the recovery notice: \"ppsync: clinic-east is syncing again",
	} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("the output lacks %q:\n%s", want, out.String())
		}
	}

	// The practice databases, opened afresh after the demo: the same rows
	// everywhere, every clinic's rows in its own ID range, foreign keys
	// intact, the payments made while clinic-east was off there too.
	var first [32]byte
	for i, s := range demoSites {
		p, err := openDemoDB(s, filepath.Join(dir, "databases", s+".db"), int64(i+1)*demoIDRange)
		if err != nil {
			t.Fatal(err)
		}
		defer p.close()
		sum, counts, err := p.dump(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = sum
		} else if sum != first {
			t.Errorf("%s holds other rows than %s", s, demoSites[0])
		}
		// records at each clinic, then twice as many at the two that stayed on.
		if want := 3*records + 2*2*records; counts["patients"] != want || counts["invoices"] != want || counts["clinical_notes"] != want || counts["appointments"] < want {
			t.Errorf("%s: %v, want %d patients with an invoice and a note each, and at least one appointment", s, counts, want)
		}
		for j, site := range demoSites {
			var n int
			lo, hi := int64(j+1)*demoIDRange, int64(j+2)*demoIDRange
			if err := p.r.QueryRow(`SELECT count(*) FROM patients WHERE registered_at = ? AND NOT (id > ? AND id < ?)`, site, lo, hi).Scan(&n); err != nil || n != 0 {
				t.Errorf("%s: %d patients registered at %s have an ID outside its range (%v)", s, n, site, err)
			}
		}
		var bad int
		if err := p.r.QueryRow(`SELECT count(*) FROM pragma_foreign_key_check`).Scan(&bad); err != nil || bad != 0 {
			t.Errorf("%s: %d rows break a foreign key (%v)", s, bad, err)
		}
		var paid int
		if err := p.r.QueryRow(`SELECT count(*) FROM invoices WHERE status = 'paid'`).Scan(&paid); err != nil || paid != 2*(records/2) {
			t.Errorf("%s: %d invoices paid, want %d (%v)", s, paid, 2*(records/2), err)
		}
	}
}

// Rows written with plain SQL at a clinic take the next ID of the clinic's
// own range even when another clinic's higher IDs are in the table, where
// AUTOINCREMENT would continue after them.
func TestDemoIDRanges(t *testing.T) {
	ctx := context.Background()
	p, err := createDemoDB("clinic-north", filepath.Join(t.TempDir(), "north.db"), demoIDRange)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	// clinic-east's patient, as ppsync writes it back.
	if _, err := p.w.Exec(`INSERT INTO patients(id, name, date_of_birth, registered_at) VALUES (3000007, 'from east', '1970-01-01', 'clinic-east')`); err != nil {
		t.Fatal(err)
	}
	add := func() int64 {
		tx, err := p.w.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		id, err := p.insert(ctx, tx, "patients", "n", "1980-01-01", nil, nil, "clinic-north")
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		return id
	}
	if a, b := add(), add(); a != demoIDRange+1 || b != demoIDRange+2 {
		t.Errorf("clinic-north's new patients are %d and %d, want %d and %d", a, b, demoIDRange+1, demoIDRange+2)
	}
	// What AUTOINCREMENT alone would do, even with sqlite_sequence set to
	// the range: continue after the highest ID in the table.
	var auto int64
	tx, err := p.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`UPDATE sqlite_sequence SET seq = ? WHERE name = 'patients'`, demoIDRange+2); err != nil {
		t.Fatal(err)
	}
	res, err := tx.Exec(`INSERT INTO patients(name, date_of_birth, registered_at) VALUES ('auto', '1980-01-01', 'clinic-north')`)
	if err != nil {
		t.Fatal(err)
	}
	if auto, err = res.LastInsertId(); err != nil || auto != 3000008 {
		t.Errorf("AUTOINCREMENT gave %d (%v); the demo's comment says 3000008", auto, err)
	}
}
