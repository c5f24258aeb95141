package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// TestDatabaseInitialLoadEntriesAndState: the initial load publishes every
// row exactly once, cuts batches of large rows into entries the wire takes
// (a batch of 1,000 rows of 1-3 KB each is far over an entry's limit), and
// leaves the state that a rebuild from the logs gives: rows keyed by an
// integer (applied without reading first), by text, and a column without
// type that holds the integer 5 and the text '5' (one record key, written
// twice).
func TestDatabaseInitialLoadEntriesAndState(t *testing.T) {
	path, d := practiceFileOf(t,
		`CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT, notes TEXT)`,
		`CREATE TABLE codes(code TEXT PRIMARY KEY, label TEXT)`,
		`CREATE TABLE odd(k PRIMARY KEY, v TEXT)`)
	const patients, codes = 3000, 500
	tx, err := d.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= patients; i++ {
		notes := strings.Repeat(fmt.Sprintf("note %d; ", i), 100+i%200)
		if _, err := tx.Exec(`INSERT INTO patients(id, name, notes) VALUES (?, ?, ?)`, i, fmt.Sprint("patient ", i), notes); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= codes; i++ {
		if _, err := tx.Exec(`INSERT INTO codes(code, label) VALUES (?, ?)`, fmt.Sprintf("C%04d", i), "label"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(`INSERT INTO odd(k, v) VALUES (5, 'integer'), ('5', 'text'), (6, 'six')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	tf := newTestFamily(t)
	tf.addDB("clinic-a", "sqlite:"+path)
	r := tf.start("clinic-a")
	waitUntil(t, "the initial load", 60*time.Second, func() (bool, string) {
		st, _ := r.n.DBStatus(context.Background())
		return dbReady(st) && loadedFlag(r.n), fmt.Sprintf("%+v", st)
	})
	if st, _ := r.n.DBStatus(context.Background()); st.LoadedRows != patients+codes+3 {
		t.Errorf("load rows %d, want %d", st.LoadedRows, patients+codes+3)
	}

	seen := map[string]int{}
	entries, short := 0, 0
	site := r.n.id.Site
	for from := uint64(1); ; {
		es, err := r.n.txlog.Range(site, from, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			from = e.Seq + 1
			ops := r.n.opener.Open(e)
			if len(ops) == 0 && len(e.Grants) > 0 {
				continue // data keys only
			}
			entries++
			if n := len(e.Marshal()); n > wire.MaxEntryBytes {
				t.Fatalf("entry %d is %d bytes", e.Seq, n)
			}
			if len(ops) < 1000 && ops[0].Table == "patients" {
				short++
			}
			for _, op := range ops {
				seen[op.Table+"/"+op.Key]++
			}
			from = e.Seq + 1
		}
	}
	for i := 1; i <= patients; i++ {
		if n := seen[fmt.Sprint("patients/", i)]; n != 1 {
			t.Fatalf("patient %d is in the log %d times", i, n)
		}
	}
	for i := 1; i <= codes; i++ {
		if n := seen[fmt.Sprintf("codes/C%04d", i)]; n != 1 {
			t.Fatalf("code %d is in the log %d times", i, n)
		}
	}
	if seen["odd/5"] != 2 || seen["odd/6"] != 1 {
		t.Fatalf("odd rows in the log: 5 %d times, 6 %d times", seen["odd/5"], seen["odd/6"])
	}
	if short < 5 {
		t.Fatalf("the large rows went into %d short entries of %d: not cut by size", short, entries)
	}
	ss, err := r.n.state.Stats()
	if err != nil || ss.Records != patients+codes+2 {
		t.Fatalf("the state holds %d records (%v), want %d", ss.Records, err, patients+codes+2)
	}
	if rec, ok, err := r.n.state.Get("odd", "5"); err != nil || !ok || rec.Fields["v"] != "text" {
		t.Fatalf("odd/5 = %+v, %v, %v: want the text row's, written last", rec, ok, err)
	}

	// The state is exactly what applying the logs again gives.
	tf.stop("clinic-a")
	rep, err := Verify(context.Background(), tf.nodes["clinic-a"].data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Rebuilt || rep.Repaired || rep.DigestBefore != rep.DigestAfter || len(rep.Damage) > 0 {
		t.Fatalf("the rebuilt state differs from the loaded one: %+v", rep)
	}
}
