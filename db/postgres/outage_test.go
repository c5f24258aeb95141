//go:build linux

package postgres

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A server that is not there: the error says so plainly and keeps the
// driver's error underneath.
func TestServerNotRunningIsPlain(t *testing.T) {
	dir := t.TempDir() // a socket directory where no server listens
	url := "postgres://clinic@/practice?host=" + filepath.ToSlash(dir) + "&sslmode=disable"
	_, err := Open(context.Background(), url, Options{})
	var down *ServerDownError
	if !errors.As(err, &down) {
		t.Fatalf("Open with no server: %v, want a ServerDownError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "the PostgreSQL server is not running") {
		t.Fatalf("message %q does not say plainly that the server is not running", msg)
	}
	if down.Err == nil || strings.Contains(down.Error(), down.Err.Error()) {
		t.Fatalf("the driver's error should be underneath, not in the message: %q", down.Error())
	}
}

// The server ends ppsync's sessions (as pg_ctl stop -m fast does): the next
// operation fails with a plain message, and the one after it works again on
// a new connection, without reopening the connector.
func TestSessionEndedByServerIsPlainAndRecovers(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE patients (id bigint PRIMARY KEY, name text)`)
	c := open(t, url)
	ctx := context.Background()
	if _, err := c.ApplyCursor(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, p, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ppsync' AND datname = current_database()`)
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The pool may hand out a connection that is still alive (the
		// listener's is another), so the failure may take a few calls; the
		// terminated idle connections fail first.
		_, err = c.ApplyCursor(ctx)
		if err != nil || time.Now().After(deadline) {
			break
		}
		mustExec(t, p, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ppsync' AND datname = current_database()`)
	}
	if err == nil {
		t.Fatal("no operation failed after the server ended ppsync's sessions")
	}
	var down *ServerDownError
	if !errors.As(err, &down) {
		t.Fatalf("after the server ended the session: %v, want a ServerDownError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "the PostgreSQL server is shutting down") && !strings.Contains(msg, "the PostgreSQL server closed the connection") {
		t.Fatalf("message %q does not say plainly what happened", msg)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err = c.ApplyCursor(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the connector did not recover on its own: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
