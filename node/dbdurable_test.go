package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// TestDatabaseApplyPositionPastState: a practice database whose stored
// apply position is past the node's state (what a crash left when an apply
// wrote changes the log had not yet synced, or a data directory restored
// from an older backup) gets the rows that arrive afterwards: the node
// moves the position back to its state when it starts. Without that, the
// changes that take those cursors would be skipped for good.
func TestDatabaseApplyPositionPastState(t *testing.T) {
	pathA, dA := practiceFile(t)
	pathB, dB := practiceFile(t)
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.addDB("clinic-a", "sqlite:"+pathA)
	tf.addDB("clinic-b", "sqlite:"+pathB)
	tf.start("relay")
	a := tf.start("clinic-a")
	b := tf.start("clinic-b")
	waitDB(t, a, "clinic-a ready", dbReady)
	waitDB(t, b, "clinic-b ready", dbReady)
	count := func() int {
		var n int
		_ = dB.QueryRow(`SELECT count(*) FROM patients`).Scan(&n)
		return n
	}
	sqlExec(t, dA, `INSERT INTO patients(id, name) VALUES (1, 'before')`)
	waitUntil(t, "the first row at clinic-b", 30*time.Second, func() (bool, string) {
		return count() == 1, fmt.Sprint(count(), " rows")
	})

	tf.stop("clinic-b")
	var pos uint64
	if err := dB.QueryRow(`SELECT v FROM _ppsync_meta WHERE k = 'apply_cursor'`).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	sqlExec(t, dB, `UPDATE _ppsync_meta SET v = ? WHERE k = 'apply_cursor'`, fmt.Sprint(pos+1000))
	for i := 2; i <= 11; i++ {
		sqlExec(t, dA, `INSERT INTO patients(id, name) VALUES (?, 'while clinic-b was down')`, i)
	}
	b = tf.start("clinic-b")
	waitUntil(t, "the rows written while clinic-b was down, in its database", 60*time.Second, func() (bool, string) {
		return count() == 11, fmt.Sprint(count(), " rows")
	})
	// And what comes next.
	sqlExec(t, dA, `INSERT INTO patients(id, name) VALUES (12, 'after')`)
	waitUntil(t, "a row written after the restart", 30*time.Second, func() (bool, string) {
		return count() == 12, fmt.Sprint(count(), " rows")
	})
	if cur, err := b.n.dbs.c.ApplyCursor(context.Background()); err != nil || cur >= pos+1000 {
		t.Errorf("apply position %d (%v), want it moved back below %d", cur, err, pos+1000)
	}
}

// TestDatabaseApplyWritesOnlyDurable: an apply hands the connector only the
// changes up to dbsync.durable (what the log had synced when the apply
// began), and the position it returns stops there; the rest is the next
// apply's.
func TestDatabaseApplyWritesOnlyDurable(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("clinic-a", "site")
	r := tf.start("clinic-a")
	for i := range 5 {
		if _, err := r.n.txlog.Write(context.Background(), []wire.Op{{Kind: wire.OpPut, Table: "patients", Key: fmt.Sprint(i), Fields: map[string]any{"n": int64(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	ss, err := r.n.state.Stats()
	if err != nil {
		t.Fatal(err)
	}
	all, _, err := r.n.state.Changes(0, 100)
	if err != nil || len(all) < 5 {
		t.Fatalf("%d changes (%v)", len(all), err)
	}
	cut := all[len(all)-3].Cursor
	d := newDBSync(r.n, nil)
	d.durable = cut
	rows, next, err := d.Changed(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if next != cut || len(rows) != len(all)-2 {
		t.Errorf("Changed up to durable %d of %d: %d rows, next %d; want %d rows, next %d", cut, ss.Cursor, len(rows), next, len(all)-2, cut)
	}
	rows, next, err = d.Changed(cut, 100)
	if err != nil || len(rows) != 0 || next != cut {
		t.Errorf("Changed after durable: %d rows, next %d (%v); want none, next %d", len(rows), next, err, cut)
	}
	d.durable = ss.Cursor
	if rows, next, err = d.Changed(cut, 100); err != nil || len(rows) != 2 || next != ss.Cursor {
		t.Errorf("Changed once durable: %d rows, next %d (%v); want 2, next %d", len(rows), next, err, ss.Cursor)
	}
}
