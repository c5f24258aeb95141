//go:build unix

package integration

// End-to-end tests of the real binary through the command-line contract:
// the machine lock and database binding, one-line errors, clean and
// crash stops under write load, and import.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runOnce runs `ppsync run` on data expecting it to refuse to start.
func runOnce(tb testing.TB, data, machine string) result {
	tb.Helper()
	return ppsyncEnv(tb, env(machine), readyTimeout, "", runArgs(data)...)
}

func TestLock(t *testing.T) {
	t.Parallel()
	t.Run("second node on the same data directory", func(t *testing.T) {
		t.Parallel()
		s := setupSite(t)
		p := startNode(t, s.data)
		pid := p.runtime().PID
		r := runOnce(t, s.data, e2eMachine).want(t, exitLocked, "PID "+strconv.Itoa(pid))
		t.Logf("exit 5: %s", strings.TrimSpace(r.stderr))
		// The first node is unharmed and still serves.
		ppsync(t, "status", "--data", s.data).want(t, exitOK)
		// A node process must also keep commands that need the lock away.
		ppsync(t, "verify", "--data", s.data).want(t, exitLocked)
		p.stopClean()
	})
	t.Run("another machine", func(t *testing.T) {
		t.Parallel()
		s := setupSite(t)
		r := runOnce(t, s.data, "e2e-machine-2").want(t, exitRefused, "another machine")
		t.Logf("exit 4: %s", strings.TrimSpace(r.stderr))
		// On its own machine it still runs.
		startNode(t, s.data).stopClean()
	})
	t.Run("another database", func(t *testing.T) {
		t.Parallel()
		s := setupSite(t)
		p := startNode(t, s.data)
		ppsync(t, "put", "--data", s.data, "t", "k", `{"a":1}`).want(t, exitOK)
		p.stopClean()
		if err := os.RemoveAll(filepath.Join(s.data, "db")); err != nil {
			t.Fatal(err)
		}
		r := runOnce(t, s.data, e2eMachine).want(t, exitRefused, "database")
		t.Logf("exit 4: %s", strings.TrimSpace(r.stderr))
		// Refused again on the next try: the new store did not adopt the binding.
		runOnce(t, s.data, e2eMachine).want(t, exitRefused, "database")
	})
	t.Run("revoked", func(t *testing.T) {
		t.Parallel()
		s := setupSite(t)
		startNode(t, s.data).stopClean()
		rev := filepath.Join(s.dir, "rev.json")
		ppsync(t, "family", "revoke", "--dir", s.auth, "--site", e2eSite, "--out", rev).want(t, exitOK)
		ppsync(t, "install", "--data", s.data, rev).want(t, exitOK)
		r := runOnce(t, s.data, e2eMachine).want(t, exitRefused, "revoked")
		t.Logf("exit 4: %s", strings.TrimSpace(r.stderr))
	})
	t.Run("superseded", func(t *testing.T) {
		t.Parallel()
		s := setupSite(t)
		startNode(t, s.data).stopClean()
		d2 := filepath.Join(s.dir, "D2")
		initNode(t, d2, s.familyFile(), e2eSite)
		cert2 := filepath.Join(s.dir, "cert2.json")
		ppsync(t, "family", "move", "--dir", s.auth, "--request", filepath.Join(d2, "join-request.json"), "--out", cert2).want(t, exitOK)
		ppsync(t, "install", "--data", s.data, cert2).want(t, exitOK)
		r := runOnce(t, s.data, e2eMachine).want(t, exitRefused, "moved")
		t.Logf("exit 4: %s", strings.TrimSpace(r.stderr))
		// The new place runs with the new certificate.
		ppsync(t, "install", "--data", d2, cert2).want(t, exitOK)
		p2 := startNode(t, d2)
		if st := nodeStatus(t, d2); st.Site != e2eSite {
			t.Errorf("the moved node's status names site %q", st.Site)
		}
		p2.stopClean()
	})
}

// TestErrorsOneLine: every error exits with the contract's code and prints
// one line on stderr and nothing on stdout (want checks both).
func TestErrorsOneLine(t *testing.T) {
	t.Parallel()
	s := setupSite(t)
	missing := filepath.Join(s.dir, "nowhere")

	// No node runs yet.
	ppsync(t, "status", "--data", s.data).want(t, exitNotRunning, "not running")
	ppsync(t, "status", "--data", s.data, "--json").want(t, exitNotRunning)
	ppsync(t, "status", "--data", missing).want(t, exitNotRunning)
	ppsync(t, "put", "--data", s.data, "t", "k", `{"a":1}`).want(t, exitNotRunning)
	ppsync(t, "get", "--data", s.data, "t", "k").want(t, exitNotRunning)
	ppsync(t, "digest", "--data", s.data).want(t, exitNotRunning)

	// Usage errors.
	ppsync(t, "no-such-command").want(t, exitUsage)
	ppsync(t, "put", "--data", s.data, "t", "k").want(t, exitUsage)
	ppsync(t, "put", "--data", s.data, "--no-such-flag", "t", "k", "{}").want(t, exitUsage)
	ppsync(t, "family").want(t, exitUsage)

	// Setup errors.
	ppsync(t, "init", "--data", s.data, "--family", s.familyFile(), "--site", e2eSite).want(t, exitError)
	ppsync(t, "init", "--data", filepath.Join(s.dir, "bad"), "--family", s.familyFile(), "--site", "Bad Site!").want(t, exitError)
	ppsync(t, "family", "admit", "--dir", s.auth, "--request", filepath.Join(s.data, "join-request.json"), "--out", filepath.Join(s.dir, "again.json")).want(t, exitError)
	ppsync(t, "install", "--data", s.data, filepath.Join(s.dir, "no-such-file.json")).want(t, exitError)

	p := startNode(t, s.data)
	ppsync(t, "put", "--data", s.data, "t", "k", `{bad`).want(t, exitError)
	ppsync(t, "put", "--data", s.data, "t", "k", `[1,2]`).want(t, exitError)
	ppsync(t, "get", "--data", s.data, "t", "missing").want(t, exitError)
	ppsync(t, "import", "--data", s.data, filepath.Join(s.dir, "no-such-file.jsonl")).want(t, exitError)
	ppsync(t, "verify", "--data", s.data).want(t, exitLocked)
	ppsync(t, "set", "--data", s.data, "sync-interval", "soon").want(t, exitUsage)

	// Nothing above wrote anything.
	if st := nodeStatus(t, s.data); st.Frontier[e2eSite] != 0 {
		t.Errorf("frontier after refused writes: %v", st.Frontier)
	}
	p.stopClean()
	ppsync(t, "status", "--data", s.data).want(t, exitNotRunning, "not running")
}

// TestStatusJSON checks the fields the contract requires of status --json.
func TestStatusJSON(t *testing.T) {
	t.Parallel()
	s := setupSite(t)
	p := startNode(t, s.data)
	r := ppsync(t, "put", "--data", s.data, "patients", "p1", `{"name":"Ada","n":9007199254740993}`).want(t, exitOK)
	if r.stdout != `{"site":"clinic-a","seq":1}`+"\n" {
		t.Errorf("put printed %q", r.stdout)
	}
	r = ppsync(t, "get", "--data", s.data, "patients", "p1").want(t, exitOK)
	if r.stdout != `{"n":9007199254740993,"name":"Ada"}`+"\n" {
		t.Errorf("get printed %q", r.stdout)
	}
	raw := ppsync(t, "status", "--data", s.data, "--json").want(t, exitOK).stdout
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"site", "role", "peer_id", "version", "online", "frontier", "peers", "pending", "version_mismatch", "forks", "last_sync"} {
		if _, ok := m[f]; !ok {
			t.Errorf("status --json has no %q: %s", f, raw)
		}
	}
	st := nodeStatus(t, s.data)
	if st.Site != e2eSite || st.Role != "site" || st.Version != e2eVersion || st.PeerID != p.runtime().PeerID || st.Frontier[e2eSite] != 1 {
		t.Errorf("status --json: %s", raw)
	}
	if r := ppsync(t, "version"); r.code != exitOK || strings.SplitN(r.stdout, "\n", 2)[0] != e2eVersion {
		t.Errorf("version: %s", r)
	}
	p.stopClean()
}

// TestCleanStopUnderLoad: SIGTERM while `ppsync put` runs in loops stops
// the node cleanly, and everything acknowledged is there after a restart.
func TestCleanStopUnderLoad(t *testing.T) {
	t.Parallel()
	s := setupSite(t)
	p := startNode(t, s.data)
	load := startPutLoad(s.data, "load", "clean", 4)
	load.waitAcks(t, 200, 60*time.Second)
	p.stopClean()
	acks := load.finish(t)
	t.Logf("%d puts acknowledged; not acknowledged (by exit code) %v", len(acks), load.failures)
	for code := range load.failures {
		if code != exitNotRunning && code != exitError {
			t.Errorf("a put during shutdown exited %d (want 1 or 3): %s", code, load.lastErr)
		}
	}

	p = startNode(t, s.data)
	entries := checkAcked(t, s.data, acks)
	if entries != len(acks) {
		// Allowed (a writer may miss its answer), but a clean stop answers
		// every request it committed: worth a look.
		t.Logf("the log holds %d entries for %d acknowledged puts", entries, len(acks))
	}
	if keys := len(strings.Split(strings.TrimSpace(ppsync(t, "list", "--data", s.data, "load").want(t, exitOK).stdout), "\n")); keys != entries {
		t.Errorf("list shows %d records, but the log holds %d puts of distinct keys", keys, entries)
	}
	p.stopClean()
	ppsync(t, "verify", "--data", s.data).want(t, exitOK)
}

// TestKillUnderLoad: SIGKILL while `ppsync put` runs in loops, three times:
// the next run starts (the OS released the lock; it overwrites the stale
// runtime.json), nothing acknowledged is lost, verify finds no damage.
func TestKillUnderLoad(t *testing.T) {
	t.Parallel()
	s := setupSite(t)
	var all []ack
	for round := 1; round <= 3; round++ {
		p := startNode(t, s.data)
		if round > 1 {
			checkAcked(t, s.data, all)
		}
		load := startPutLoad(s.data, "load", fmt.Sprintf("kill%d", round), 4)
		load.waitAcks(t, 200, 60*time.Second)
		stale := p.runtime()
		p.kill()
		acks := load.finish(t)
		all = append(all, acks...)
		t.Logf("round %d: %d puts acknowledged; not acknowledged (by exit code) %v", round, len(acks), load.failures)

		// The stale runtime.json names a dead process: commands say the node
		// is not running, and the next run takes over.
		if rt, ok := readRuntime(s.data); !ok || rt.PID != stale.PID {
			t.Fatalf("after kill -9 runtime.json is %+v (ok %v), want the stale file of PID %d", rt, ok, stale.PID)
		}
		ppsync(t, "status", "--data", s.data).want(t, exitNotRunning)
		p = startNode(t, s.data)
		if rt := p.runtime(); rt.PID == stale.PID || rt.API == "" {
			t.Fatalf("runtime.json was not rewritten by the new run: %+v", rt)
		}
		checkAcked(t, s.data, all)
		ppsync(t, "put", "--data", s.data, "after", fmt.Sprintf("r%d", round), `{"ok":true}`).want(t, exitOK)
		p.stopClean()
		r := ppsync(t, "verify", "--data", s.data).want(t, exitOK)
		if round == 1 {
			t.Logf("verify:\n%s", r.stdout)
		}
	}
}

// importLines writes n import lines for table (keys k000001…), with line
// bad (1-based; 0: none) replaced by a malformed one.
func importFile(tb testing.TB, dir, table string, n, bad int) string {
	tb.Helper()
	path := filepath.Join(dir, fmt.Sprintf("%s-%d-%d.jsonl", table, n, bad))
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := 1; i <= n; i++ {
		if i == bad {
			fmt.Fprintf(w, `{"ops":[{"op":"put","table":%q,"key":"k%06d","fields":{"n":%d}]}`+"\n", table, i, i) // a brace short
			continue
		}
		fmt.Fprintf(w, `{"ops":[{"op":"put","table":%q,"key":"k%06d","fields":{"n":%d,"name":"Patient %d"}}]}`+"\n", table, i, i, i)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// listKeys returns the keys `ppsync list` prints for table, checking each
// record's fields against its key.
func listKeys(tb testing.TB, data, table string) []string {
	tb.Helper()
	r := ppsync(tb, "list", "--data", data, table).want(tb, exitOK)
	var keys []string
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var rec struct {
			Key    string         `json:"key"`
			Fields map[string]any `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			tb.Fatalf("list printed %q: %v", sc.Text(), err)
		}
		n, err := strconv.Atoi(strings.TrimPrefix(rec.Key, "k"))
		if err != nil || rec.Fields["n"] != float64(n) || rec.Fields["name"] != fmt.Sprintf("Patient %d", n) {
			tb.Fatalf("list printed %q", sc.Text())
		}
		keys = append(keys, rec.Key)
	}
	return keys
}

func TestImport(t *testing.T) {
	t.Parallel()
	s := setupSite(t)
	p := startNode(t, s.data)

	r := ppsync(t, "import", "--data", s.data, importFile(t, s.dir, "good", 2000, 0)).want(t, exitOK)
	if r.stdout != `{"transactions":2000,"last_seq":2000}`+"\n" {
		t.Errorf("import printed %q, want {\"transactions\":2000,\"last_seq\":2000}", r.stdout)
	}
	keys := listKeys(t, s.data, "good")
	if len(keys) != 2000 || keys[0] != "k000001" || keys[1999] != "k002000" {
		t.Fatalf("list shows %d records after importing 2000", len(keys))
	}

	seq := uint64(2000)
	for _, bad := range []int{1001, 1234, 1} {
		table := fmt.Sprintf("bad%d", bad)
		r = ppsync(t, "import", "--data", s.data, importFile(t, s.dir, table, 2000, bad)).want(t, exitError, fmt.Sprintf("line %d", bad))
		t.Logf("bad line %d: %s", bad, strings.TrimSpace(r.stderr))
		keys = listKeys(t, s.data, table)
		if len(keys) != bad-1 {
			t.Fatalf("after a malformed line %d, %d transactions are present, want exactly the %d before it", bad, len(keys), bad-1)
		}
		if bad > 1 && keys[len(keys)-1] != fmt.Sprintf("k%06d", bad-1) {
			t.Fatalf("the last record imported before line %d is %s", bad, keys[len(keys)-1])
		}
		said := fmt.Sprintf(" %d transaction", bad-1)
		if bad == 1 {
			said = "nothing was imported"
		}
		if !strings.Contains(r.stderr, said) {
			t.Errorf("stderr does not say that %d transactions were imported: %s", bad-1, r.stderr)
		}
		seq += uint64(bad - 1)
		if st := nodeStatus(t, s.data); st.Frontier[e2eSite] != seq {
			t.Fatalf("frontier %d after the failed import, want %d", st.Frontier[e2eSite], seq)
		}
	}

	// stdin, and a file of nothing but blank lines.
	r = ppsyncEnv(t, env(e2eMachine), cmdTimeout, "\n"+`{"ops":[{"op":"delete","table":"good","key":"k000001"}]}`+"\n\n", "import", "--data", s.data, "-").want(t, exitOK)
	if want := fmt.Sprintf(`{"transactions":1,"last_seq":%d}`+"\n", seq+1); r.stdout != want {
		t.Errorf("import - printed %q, want %q", r.stdout, want)
	}
	r = ppsyncEnv(t, env(e2eMachine), cmdTimeout, "\n\n", "import", "--data", s.data, "-").want(t, exitOK)
	if r.stdout != `{"transactions":0,"last_seq":0}`+"\n" {
		t.Errorf("import of blank lines printed %q", r.stdout)
	}
	ppsync(t, "get", "--data", s.data, "good", "k000001").want(t, exitError)
	p.stopClean()
	ppsync(t, "verify", "--data", s.data).want(t, exitOK)
}
