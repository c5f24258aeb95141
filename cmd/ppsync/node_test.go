package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitError},
		{usageErrorf("put", "x"), exitUsage},
		{fmt.Errorf("open: %w", api.ErrNotRunning), exitNotRunning},
		{&notRunningError{data: "d"}, exitNotRunning},
		{fmt.Errorf("open: %w", node.ErrRefused), exitRefused},
		{fmt.Errorf("open: %w", lock.ErrWrongAccount), exitRefused},
		{fmt.Errorf("open: %w", node.ErrLocked), exitLocked},
		{&exitCodeError{code: 7}, 7},
	} {
		if got := exitCode(tc.err); got != tc.code {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
}

// TestWithRealNode sets up a family and a node through the command line,
// runs the node in-process and drives it with the data commands.
func TestWithRealNode(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	tmp := t.TempDir()
	auth, data := filepath.Join(tmp, "auth"), filepath.Join(tmp, "data")
	env := map[string]string{"PPSYNC_MACHINE_ID": "cmd-test-machine"}
	ppsync(t, "", env, "family", "create", "--dir", auth, "--name", "Test").want(t, exitOK)
	ppsync(t, "", env, "init", "--data", data, "--family", filepath.Join(auth, "family.json"), "--site", "clinic-a").want(t, exitOK)
	cert := filepath.Join(tmp, "a.cert")
	ppsync(t, "", env, "family", "admit", "--dir", auth, "--request", filepath.Join(data, "join-request.json"), "--out", cert).want(t, exitOK)
	r := ppsync(t, "", env, "install", "--data", data, cert, "--json")
	r.want(t, exitOK)
	var in api.InstallResult
	if err := json.Unmarshal([]byte(r.stdout), &in); err != nil || !in.Changed || in.Running {
		t.Fatalf("offline install printed %q (%v)", r.stdout, err)
	}

	// Run the node; cancelling ctx stands in for SIGINT.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runErr bytes.Buffer
	c := &cli{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &runErr,
		getenv: func(k string) string { return env[k] }, now: time.Now,
		notify: func(context.Context) (context.Context, context.CancelFunc) { return ctx, func() {} }}
	done := make(chan int, 1)
	go func() {
		done <- c.main([]string{"run", "--data", data, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--headless", "--log-level", "warn"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(data, "runtime.json")); err == nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("run exited %d before it was ready: %s", code, runErr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not write runtime.json")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	// A second node on the same data directory: exit 5.
	ppsync(t, "", env, "run", "--data", data, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0").want(t, exitLocked, "already running")
	ppsync(t, "", env, "verify", "--data", data).want(t, exitLocked)

	// Writes may wait briefly while the node decides it is caught up.
	for i := 0; ; i++ {
		r = ppsync(t, "", env, "put", "--data", data, "patients", "p1", `{"name":"Ada","n":9007199254740993}`)
		if r.code == exitOK || i == 100 || !strings.Contains(r.stderr, "catching up") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.want(t, exitOK)
	if r.stdout != `{"site":"clinic-a","seq":1}`+"\n" {
		t.Errorf("put printed %q", r.stdout)
	}
	r = ppsync(t, "", env, "get", "--data", data, "patients", "p1")
	r.want(t, exitOK)
	if r.stdout != `{"n":9007199254740993,"name":"Ada"}`+"\n" {
		t.Errorf("get printed %q", r.stdout)
	}
	// A bad operation gets the same message from the node's API as from
	// import's own check.
	cl, err := api.NewClient(data)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, c := range badImportOps {
		var tx api.TxRequest
		dec := json.NewDecoder(strings.NewReader(`{"ops":` + c.ops + `}`))
		dec.UseNumber()
		if err := dec.Decode(&tx); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Transact(context.Background(), tx); err == nil || err.Error() != c.msg {
			t.Errorf("the node refused %.60s with %v, want %q", c.ops, err, c.msg)
		}
	}
	r = ppsync(t, importLines(2500), env, "import", "--data", data, "-")
	r.want(t, exitOK)
	if r.stdout != `{"transactions":2500,"last_seq":2501}`+"\n" {
		t.Errorf("import printed %q", r.stdout)
	}
	r = ppsync(t, "", env, "list", "--data", data, "t")
	r.want(t, exitOK)
	if n := strings.Count(r.stdout, "\n"); n != 2500 {
		t.Errorf("list printed %d lines, want 2500", n)
	}
	r = ppsync(t, "", env, "status", "--data", data, "--json")
	r.want(t, exitOK)
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Site != "clinic-a" || st.Frontier["clinic-a"] != 2501 {
		t.Errorf("status --json printed %q (%v)", r.stdout, err)
	}
	digest := ppsync(t, "", env, "digest", "--data", data)
	digest.want(t, exitOK)
	ppsync(t, "", env, "set", "--data", data, "sync-interval", "1m").want(t, exitOK)
	ppsync(t, "", env, "log", "--data", data, "--limit", "3").want(t, exitOK)
	ppsync(t, "", env, "conflicts", "--data", data).want(t, exitOK)

	// Stop it: run exits 0, and the commands then say it is not running.
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("run exited %d: %s", code, runErr.String())
	}
	stopped = true
	ppsync(t, "", env, "status", "--data", data).want(t, exitNotRunning)

	// Verify (node stopped) finds no damage and the same digest.
	r = ppsync(t, "", env, "verify", "--data", data, "--json")
	r.want(t, exitOK)
	var rep node.VerifyReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Damage) != 0 || rep.DigestAfter != strings.TrimSpace(digest.stdout) {
		t.Errorf("verify printed %q (%v); digest was %q", r.stdout, err, digest.stdout)
	}

	// Another machine: refused, exit 4.
	other := map[string]string{"PPSYNC_MACHINE_ID": "another-machine"}
	ppsync(t, "", other, "run", "--data", data, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0").want(t, exitRefused, "another machine")
}
