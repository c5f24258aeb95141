//go:build linux

package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/ppsync/ppsync/db"
)

// Rows of one table are written by one statement per set of columns: rows
// with different columns present keep their own (an update of some columns
// leaves the others), and many rows keep their exact values.
func TestApplyGroupsRowsByColumns(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE patients (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(8,2), seen timestamptz, tags text[])`)
	mustExec(t, p, `INSERT INTO patients VALUES (1, 'old one', 1.50, NULL, '{a}'), (2, 'old two', 2.50, NULL, NULL)`)
	c := open(t, url)
	n := newNode()
	// Rows 1 and 2 change only their name (the other columns stay); the
	// new rows come whole, some with NULLs.
	n.remote("patients", "1", map[string]any{"id": int64(1), "name": "one"})
	for i := 3; i <= 1200; i++ {
		f := map[string]any{"id": int64(i), "name": fmt.Sprintf("Ñame \"%d\"", i), "balance": fmt.Sprintf("%d.%02d", i, i%100),
			"seen": "2026-01-02T03:04:05.123456Z", "tags": fmt.Sprintf(`{x,"y %d"}`, i)}
		if i%10 == 0 {
			f["balance"], f["tags"] = nil, nil
		}
		n.remote("patients", fmt.Sprint(i), f)
	}
	n.remote("patients", "2", map[string]any{"id": int64(2), "name": "two"})
	res := apply(t, c, n)
	if res.Rows != 1200 || len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res.Rows)
	}
	if got := count(t, p, `SELECT count(*) FROM patients WHERE id <= 2 AND name IN ('one', 'two') AND balance IN (1.50, 2.50)`); got != 2 {
		t.Fatal("the rows updated by name lost their other columns")
	}
	if got := count(t, p, `SELECT count(*) FROM patients WHERE id = 1 AND tags = '{a}'`); got != 1 {
		t.Fatal("row 1's array changed")
	}
	if got := count(t, p, `SELECT count(*) FROM patients WHERE id = 777 AND name = 'Ñame "777"' AND balance = 777.77
		AND seen = '2026-01-02 03:04:05.123456+00' AND tags = '{x,"y 777"}'`); got != 1 {
		t.Fatal("row 777 does not hold its values")
	}
	if got := count(t, p, `SELECT count(*) FROM patients WHERE id % 10 = 0 AND id > 2 AND balance IS NULL AND tags IS NULL`); got != 120 {
		t.Fatalf("%d rows with NULLs, want 120", got)
	}
	if got := count(t, p, `SELECT count(*) FROM `+changeTable); got != 0 {
		t.Fatalf("the apply was captured: %d change rows", got)
	}
}

// Two keys the key column's type reads as one value (char(3) pads "a" and
// "a "): one upsert of both would meet the row twice, so the rows are
// written one at a time instead, nothing refused, in both apply and repair.
func TestApplyTwoKeysOneRow(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE codes (k char(3) PRIMARY KEY, v int)`)
	c := open(t, url)
	n := newNode()
	n.remote("codes", "a", map[string]any{"k": "a", "v": int64(1)})
	n.remote("codes", "a ", map[string]any{"k": "a ", "v": int64(2)})
	n.remote("codes", "b", map[string]any{"k": "b", "v": int64(3)})
	res := apply(t, c, n)
	if res.Rows != 3 || len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT count(*) FROM codes`); got != 2 {
		t.Fatalf("%d rows, want 2", got)
	}
	if got := count(t, p, `SELECT v FROM codes WHERE k = 'a'`); got != 2 {
		t.Fatalf("row a holds %d, want the later row's 2", got)
	}
	if err := c.Write(context.Background(), []db.Row{
		{Table: "codes", Key: "c", Fields: map[string]any{"k": "c", "v": int64(4)}},
		{Table: "codes", Key: "c ", Fields: map[string]any{"k": "c ", "v": int64(5)}},
	}); err != nil {
		t.Fatal(err)
	}
	if got := count(t, p, `SELECT v FROM codes WHERE k = 'c'`); got != 5 {
		t.Fatalf("row c holds %d after the repair, want 5", got)
	}
}
