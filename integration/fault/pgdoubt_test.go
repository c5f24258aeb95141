//go:build linux

package fault

import (
	"context"
	"testing"
	"time"
)

// TestPGDoubtAfterImmediateStop: why a PostgreSQL writer's commit without
// an answer is looked up by its mark, not its transaction ID. A transaction
// that wrote but never got its commit into the WAL is cut off by
// pg_ctl stop -m immediate; after the restart its transaction ID is handed
// to the next transaction, which commits, so pg_xact_status reports the ID
// committed. The mark says it did not commit.
func TestPGDoubtAfterImmediateStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := startPGServer(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	if err := srv.createDB(ctx, "doubt"); err != nil {
		t.Fatal(err)
	}
	c, err := srv.connect(ctx, pgRoleName, "doubt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, pgSchema); err != nil {
		t.Fatal(err)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO harness.commits (n) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	// Cut off before its commit, as a COMMIT whose record never reached
	// the WAL is.
	if err := srv.stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	if err := srv.start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err = srv.connect(ctx, pgRoleName, "doubt")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var next string
	if err := c.QueryRow(ctx, `INSERT INTO rooms (label) VALUES ('after the crash') RETURNING pg_current_xact_id()::text`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	var st *string
	if err := c.QueryRow(ctx, `SELECT pg_xact_status($1::xid8)`, xid).Scan(&st); err != nil {
		t.Fatal(err)
	}
	status := "<nil>"
	if st != nil {
		status = *st
	}
	t.Logf("the cut-off transaction had ID %s; the first one after the restart got %s; pg_xact_status(%s) = %s", xid, next, xid, status)
	committed, err := markCommitted(ctx, c, 1)
	if err != nil {
		t.Fatal(err)
	}
	if committed {
		t.Fatal("the mark of a transaction that never committed is there")
	}
	// The mark of a transaction that did commit is found.
	if _, err := c.Exec(ctx, `INSERT INTO harness.commits (n) VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	if committed, err := markCommitted(ctx, c, 2); err != nil || !committed {
		t.Fatalf("a committed mark: %v, %v", committed, err)
	}
}
