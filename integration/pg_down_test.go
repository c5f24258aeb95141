//go:build unix

package integration

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A site whose PostgreSQL server is not up yet when `ppsync run` starts
// (the machine is booting, the server restarts) waits for it, says so in
// its log, and starts syncing once the server answers: it neither exits
// nor needs a restart. The server is reached through a forwarder on its own
// port that the test opens late.
func TestPostgresServerDownAtStart(t *testing.T) {
	t.Parallel()
	fwd := newForwarder(t, pgClusterPort(t))
	site := &pgSite{name: "d_clinic"}
	var direct string
	direct, site.db = pgPracticeDB(t, "d_practice")
	site.url = strings.Replace(direct, "127.0.0.1:"+strconv.Itoa(pgClusterPort(t)), fwd.addr, 1)
	sup := newSupport(t, t.TempDir(), "Practice PG down at start")
	site.env = pgEnv(true)
	site.data, site.slot = pgJoin(t, sup, site.name, site.env, "--db", site.url)

	fwd.close() // the server is "down": nothing listens at the node's address
	p := pgLaunch(t, site.data, site.env)
	deadline := time.Now().Add(syncTimeout)
	for !strings.Contains(p.stderr.String(), "waiting for the practice database's server") {
		if p.exited() {
			t.Fatalf("ppsync run exited (code %d) instead of waiting for the server:\n%s", p.code, p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no word of waiting for the server:\n%s", p.stderr.String())
		}
		time.Sleep(pollEvery)
	}
	fwd.open()
	p.waitReady(readyTimeout, 5*time.Millisecond)
	waitDBReady(t, site.data)
	id := insertPatient(t, site.db, "Waited For")
	deadline = time.Now().Add(syncTimeout)
	for {
		r := ppsyncEnv(t, site.env, cmdTimeout, "", "get", "--data", site.data, "patients", strconv.FormatInt(id, 10))
		if r.code == exitOK && strings.Contains(r.stdout, "Waited For") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the row written after the server came up is not in the node's records: %d %s %s", r.code, r.stdout, r.stderr)
		}
		time.Sleep(pollEvery)
	}
	p.stopClean()
}

// forwarder is a TCP port on 127.0.0.1 that forwards to another port while
// open, and refuses connections while closed.
type forwarder struct {
	tb     testing.TB
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
}

func newForwarder(tb testing.TB, targetPort int) *forwarder {
	f := &forwarder{tb: tb, target: "127.0.0.1:" + strconv.Itoa(targetPort)}
	f.open()
	f.addr = f.ln.Addr().String()
	tb.Cleanup(f.close)
	return f
}

func (f *forwarder) open() {
	f.mu.Lock()
	defer f.mu.Unlock()
	addr := "127.0.0.1:0"
	if f.addr != "" {
		addr = f.addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		f.tb.Fatal(err)
	}
	f.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s, err := net.Dial("tcp", f.target)
				if err != nil {
					c.Close()
					return
				}
				go func() { io.Copy(s, c); s.Close() }()
				io.Copy(c, s)
				c.Close()
			}()
		}
	}()
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
}
