//go:build unix

package integration

// Helpers that drive the real ppsync binary through the command-line
// contract (README.md, docs/api.md): TestMain builds it once, run executes
// one command with a timeout, startNode runs `ppsync run` in the background.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Exit codes of the command-line contract.
const (
	exitOK         = 0
	exitError      = 1
	exitUsage      = 2
	exitNotRunning = 3
	exitRefused    = 4
	exitLocked     = 5
)

const (
	e2eMachine = "e2e-machine-1"
	e2eVersion = "e2e-test"
	e2eSite    = "clinic-a"

	cmdTimeout   = 2 * time.Minute  // one short command (import of 2,000 lines, verify)
	readyTimeout = 60 * time.Second // `ppsync run` until runtime.json
	stopTimeout  = 30 * time.Second // SIGTERM until the process exits
)

// ppsyncBin is the binary TestMain built.
var ppsyncBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ppsync-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := buildPpsync(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: build ppsync:", err)
		return 1
	}
	ppsyncBin = bin
	return m.Run()
}

// buildPpsync builds ./cmd/ppsync of this module into dir, as `make build`
// does (without cgo: Pebble then keeps its caches in the Go heap, as in the
// binary users run).
func buildPpsync(dir string) (string, error) {
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first on PATH
	if err != nil {
		return "", err
	}
	root, err := moduleRoot(goTool)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ppsync")
	cmd := exec.Command(goTool, "build", "-ldflags", "-X main.version="+e2eVersion, "-o", bin, "./cmd/ppsync")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as `make build` builds it: pure Go
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of this module's go.mod: `go env GOMOD`, or
// the nearest go.mod above the working directory.
func moduleRoot(goTool string) (string, error) {
	if out, err := exec.Command(goTool, "env", "GOMOD").Output(); err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", wd)
		}
	}
}

// env is the environment of every ppsync invocation: a stable machine ID.
func env(machine string) []string {
	return append(os.Environ(), "PPSYNC_MACHINE_ID="+machine)
}

// result is what one ppsync command did.
type result struct {
	args   []string
	code   int
	stdout string
	stderr string
}

func (r result) String() string {
	return fmt.Sprintf("`ppsync %s` exited %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, clip(r.stdout), clip(r.stderr))
}

func clip(s string) string {
	if len(s) > 2000 {
		return s[:1000] + " … " + s[len(s)-1000:]
	}
	return s
}

// want fails tb unless the command exited with code; on an error exit it also
// checks the contract's "one plain-language line on stderr" (and, per
// docs/api.md, nothing on stdout) and that stderr contains every substring.
func (r result) want(tb testing.TB, code int, substrings ...string) result {
	tb.Helper()
	if r.code != code {
		tb.Fatalf("want exit %d: %s", code, r)
	}
	if code != exitOK {
		checkOneErrorLine(tb, r)
	}
	for _, s := range substrings {
		if !strings.Contains(r.stderr, s) {
			tb.Fatalf("stderr does not contain %q: %s", s, r)
		}
	}
	return r
}

// checkOneErrorLine: exactly one non-empty line on stderr, nothing on stdout.
func checkOneErrorLine(tb testing.TB, r result) {
	tb.Helper()
	if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.HasSuffix(r.stderr, "\n") || strings.TrimSpace(r.stderr) == "" {
		tb.Errorf("an error must print exactly one line on stderr (got %d): %s", n, r)
	}
	// verify and db check print their report on stdout and then fail.
	report := len(r.args) > 0 && (r.args[0] == "verify" || (r.args[0] == "db" && len(r.args) > 1 && r.args[1] == "check"))
	if r.stdout != "" && !report {
		tb.Errorf("an error must print nothing on stdout: %s", r)
	}
}

// ppsync runs one command with the default machine ID and timeout.
func ppsync(tb testing.TB, args ...string) result {
	tb.Helper()
	return ppsyncEnv(tb, env(e2eMachine), cmdTimeout, "", args...)
}

// ppsyncEnv runs one command with env, a timeout and stdin.
func ppsyncEnv(tb testing.TB, environ []string, timeout time.Duration, stdin string, args ...string) result {
	tb.Helper()
	r, err := runPpsync(environ, timeout, stdin, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// runPpsync runs one command; it is safe to call from any goroutine.
func runPpsync(environ []string, timeout time.Duration, stdin string, args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ppsyncBin, args...)
	cmd.Env = environ
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		return r, fmt.Errorf("`ppsync %s` did not finish within %s (killed)\nstderr: %s", strings.Join(args, " "), timeout, clip(r.stderr))
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		return r, fmt.Errorf("`ppsync %s`: %v", strings.Join(args, " "), err)
	}
	return r, nil
}

// site is one family with one node set up through the command line.
type site struct {
	dir  string // the test's directory
	auth string // the family's directory (authority.key, family.json)
	data string // the node's data directory
	cert string // its certificate
}

// setupSite creates a family and one site node (clinic-a), admitted and
// installed, with LAN discovery off so nothing leaves 127.0.0.1.
func setupSite(tb testing.TB) *site {
	tb.Helper()
	dir := tb.TempDir()
	s := &site{dir: dir, auth: filepath.Join(dir, "A"), data: filepath.Join(dir, "D"), cert: filepath.Join(dir, "cert.json")}
	ppsync(tb, "family", "create", "--dir", s.auth, "--name", "Test").want(tb, exitOK)
	initNode(tb, s.data, s.familyFile(), e2eSite)
	ppsync(tb, "family", "admit", "--dir", s.auth, "--request", filepath.Join(s.data, "join-request.json"), "--out", s.cert).want(tb, exitOK)
	ppsync(tb, "install", "--data", s.data, s.cert).want(tb, exitOK)
	return s
}

func (s *site) familyFile() string { return filepath.Join(s.auth, "family.json") }

// initNode runs `ppsync init` (with extra flags such as --role relay) and
// turns LAN discovery off in ppsync.toml.
func initNode(tb testing.TB, data, familyFile, siteID string, extra ...string) result {
	tb.Helper()
	r := ppsync(tb, append([]string{"init", "--data", data, "--family", familyFile, "--site", siteID}, extra...)...).want(tb, exitOK)
	path := filepath.Join(data, "ppsync.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Contains(b, []byte("lan_discovery = true")) {
		tb.Fatalf("%s has no `lan_discovery = true` to turn off:\n%s", path, b)
	}
	if err := os.WriteFile(path, bytes.ReplaceAll(b, []byte("lan_discovery = true"), []byte("lan_discovery = false")), 0o644); err != nil {
		tb.Fatal(err)
	}
	return r
}

// runArgs is the command line of a node on data with free loopback ports.
func runArgs(data string) []string {
	return []string{"run", "--data", data, "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--headless"}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a `ppsync run` running in the background.
type proc struct {
	tb      testing.TB
	data    string
	cmd     *exec.Cmd
	stderr  *syncBuffer
	started time.Time
	done    chan struct{} // closed when the process has exited
	code    int           // exit code (-1: killed by a signal); valid after done
}

// runtimeFile is DATA/runtime.json.
type runtimeFile struct {
	PID    int      `json:"pid"`
	API    string   `json:"api"`
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// launch starts `ppsync run` on data, with extra flags such as
// --bootstrap ADDR, and returns at once.
func launch(tb testing.TB, data, machine string, extra ...string) *proc {
	tb.Helper()
	return launchEnv(tb, data, env(machine), extra...)
}

// launchEnv is launch with the environment environ.
func launchEnv(tb testing.TB, data string, environ []string, extra ...string) *proc {
	tb.Helper()
	p := &proc{tb: tb, data: data, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(ppsyncBin, append(runArgs(data), extra...)...)
	p.cmd.Env = environ
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -2
		}
		close(p.done)
	}()
	tb.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// startNode starts `ppsync run` on data (with extra flags such as
// --bootstrap ADDR) and waits until it is ready.
func startNode(tb testing.TB, data string, extra ...string) *proc {
	tb.Helper()
	p := launch(tb, data, e2eMachine, extra...)
	p.waitReady(readyTimeout, time.Millisecond*5)
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// readRuntime reads DATA/runtime.json; ok is false while it is missing or
// half-written.
func readRuntime(data string) (runtimeFile, bool) {
	var rt runtimeFile
	b, err := os.ReadFile(filepath.Join(data, "runtime.json"))
	if err != nil || json.Unmarshal(b, &rt) != nil {
		return rt, false
	}
	return rt, true
}

// waitReady polls until DATA/runtime.json names this process (a stale file
// left by a killed node names another PID), and returns how long after the
// launch that was.
func (p *proc) waitReady(timeout, every time.Duration) time.Duration {
	p.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if rt, ok := readRuntime(p.data); ok && rt.PID == p.cmd.Process.Pid {
			return time.Since(p.started)
		}
		if p.exited() {
			p.tb.Fatalf("ppsync run exited %d before it was ready:\n%s", p.code, clip(p.stderr.String()))
		}
		if time.Now().After(deadline) {
			p.tb.Fatalf("ppsync run did not write runtime.json within %s:\n%s", timeout, clip(p.stderr.String()))
		}
		time.Sleep(every)
	}
}

// runtime returns DATA/runtime.json of the running node.
func (p *proc) runtime() runtimeFile {
	p.tb.Helper()
	rt, ok := readRuntime(p.data)
	if !ok {
		p.tb.Fatalf("no readable runtime.json in %s", p.data)
	}
	return rt
}

// loopbackAddr is the node's 127.0.0.1 address from runtime.json, ending in
// /p2p/PEER_ID: what `family bootstrap --add` and `run --bootstrap` take.
func (p *proc) loopbackAddr() string {
	p.tb.Helper()
	rt := p.runtime()
	for _, a := range rt.Addrs {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/") && strings.Contains(a, "/p2p/") {
			return a
		}
	}
	p.tb.Fatalf("runtime.json of %s lists no 127.0.0.1 address with /p2p/: %v", p.data, rt.Addrs)
	return ""
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.tb.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		p.tb.Fatalf("ppsync run did not exit within %s (killed):\n%s", timeout, clip(p.stderr.String()))
		return -1
	}
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop() int {
	p.tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		p.tb.Fatal(err)
	}
	return p.wait(stopTimeout)
}

// stopClean stops the node with SIGTERM and checks the clean stop: exit 0
// and runtime.json removed.
func (p *proc) stopClean() {
	p.tb.Helper()
	if code := p.stop(); code != exitOK {
		p.tb.Fatalf("ppsync run exited %d after SIGTERM, want 0:\n%s", code, clip(p.stderr.String()))
	}
	if _, err := os.Stat(filepath.Join(p.data, "runtime.json")); !errors.Is(err, os.ErrNotExist) {
		p.tb.Fatalf("runtime.json is still there after a clean stop (%v)", err)
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill() {
	p.tb.Helper()
	if err := p.cmd.Process.Kill(); err != nil && !p.exited() {
		p.tb.Fatal(err)
	}
	p.wait(stopTimeout)
}

// ack is what `ppsync put` printed, with the key it wrote.
type ack struct {
	Site string `json:"site"`
	Seq  uint64 `json:"seq"`
	key  string
}

// putLoad runs `ppsync put` in loops on several goroutines and records
// every acknowledged transaction (exit 0 with {"site","seq"} on stdout).
type putLoad struct {
	mu       sync.Mutex
	acks     []ack
	failures map[int]int // exit code -> count (not acknowledged)
	lastErr  string
	stop     chan struct{}
	wg       sync.WaitGroup
	err      error // a malformed acknowledgement or a runner failure
}

// startPutLoad starts workers goroutines putting table/key records into data;
// keys are prefix-wWORKER-N so each is written once.
func startPutLoad(data, table, prefix string, workers int) *putLoad {
	l := &putLoad{failures: map[int]int{}, stop: make(chan struct{})}
	environ := env(e2eMachine)
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				key := fmt.Sprintf("%s-w%d-%06d", prefix, w, i)
				r, err := runPpsync(environ, 30*time.Second, "", "put", "--data", data, table, key, fmt.Sprintf(`{"worker":%d,"i":%d,"note":"load test"}`, w, i))
				l.record(r, err, key)
				if r.code != exitOK {
					time.Sleep(2 * time.Millisecond) // the node is going away: do not spin
				}
			}
		}()
	}
	return l
}

func (l *putLoad) record(r result, err error, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.err = errors.Join(l.err, err)
		return
	}
	if r.code != exitOK {
		l.failures[r.code]++
		l.lastErr = r.stderr
		if strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") || r.stdout != "" {
			l.err = errors.Join(l.err, fmt.Errorf("a failed put must print one line on stderr and nothing on stdout: %s", r))
		}
		return
	}
	var a ack
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.Site == "" || a.Seq == 0 || strings.Count(r.stdout, "\n") != 1 {
		l.err = errors.Join(l.err, fmt.Errorf("put acknowledged with a malformed line: %s", r))
		return
	}
	a.key = key
	l.acks = append(l.acks, a)
}

// count is the number of acknowledged transactions so far.
func (l *putLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// waitAcks waits until at least n transactions are acknowledged.
func (l *putLoad) waitAcks(tb testing.TB, n int, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for l.count() < n {
		if time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			tb.Fatalf("only %d puts acknowledged within %s (failures by exit code %v, last stderr %q)", len(l.acks), timeout, l.failures, l.lastErr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finish stops the workers, waits for them and returns every ack.
func (l *putLoad) finish(tb testing.TB) []ack {
	tb.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.err != nil {
		tb.Fatal(l.err)
	}
	return l.acks
}

// logEntry is one line of `ppsync log --json`.
type logEntry struct {
	Site string `json:"site"`
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Prev string `json:"prev"`
	Ops  []struct {
		Op     string         `json:"op"`
		Table  string         `json:"table"`
		Key    string         `json:"key"`
		Fields map[string]any `json:"fields"`
	} `json:"ops"`
}

// siteLog returns clinic-a's log entries through `ppsync log --json`.
func siteLog(tb testing.TB, data string) []logEntry {
	tb.Helper()
	r := ppsync(tb, "log", "--data", data, "--site", e2eSite, "--json", "--limit", "100000").want(tb, exitOK)
	var out []logEntry
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e logEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			tb.Fatalf("log --json printed a line that is not an entry (%v): %q", err, sc.Text())
		}
		out = append(out, e)
	}
	return out
}

// status is the part of `ppsync status --json` the tests read.
type status struct {
	Site     string            `json:"site"`
	FamilyID string            `json:"family_id"`
	Role     string            `json:"role"`
	PeerID   string            `json:"peer_id"`
	Version  string            `json:"version"`
	Online   *bool             `json:"online"`
	Frontier map[string]uint64 `json:"frontier"`
	Peers    *int              `json:"peers"`
	Pending  *uint64           `json:"pending"`
	Forks    []any             `json:"forks"`
	LastSync *string           `json:"last_sync"`
	Mismatch *bool             `json:"version_mismatch"`

	OfflineReason string            `json:"offline_reason"`
	Bootstrap     []bootstrapStatus `json:"bootstrap"`
	Held          int               `json:"held"`
}

// bootstrapStatus is one entry of status's `bootstrap` array: how the node
// fares with one bootstrap address.
type bootstrapStatus struct {
	Addr   string `json:"addr"`
	PeerID string `json:"peer_id"`
	State  string `json:"state"` // connected | not-member | unreachable | trying
	Detail string `json:"detail"`
}

func nodeStatus(tb testing.TB, data string) status {
	tb.Helper()
	r := ppsync(tb, "status", "--data", data, "--json").want(tb, exitOK)
	var st status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		tb.Fatalf("status --json: %v: %s", err, r)
	}
	return st
}

// checkAcked checks that every acknowledged put is in clinic-a's log at its
// seq, writing its key, and that the log is gap-free and hash-chained; it
// returns the number of entries in the log.
func checkAcked(tb testing.TB, data string, acks []ack) int {
	tb.Helper()
	entries := siteLog(tb, data)
	st := nodeStatus(tb, data)
	bySeq := make(map[uint64]logEntry, len(entries))
	for i, e := range entries {
		if e.Site != e2eSite {
			tb.Fatalf("log --site %s printed an entry of site %q", e2eSite, e.Site)
		}
		if e.Seq != uint64(i)+1 {
			tb.Fatalf("log entry %d has seq %d: the log must hold seq 1..N without gaps", i, e.Seq)
		}
		if i > 0 && e.Prev != entries[i-1].Hash {
			tb.Fatalf("entry %d names prev %.12s, but entry %d has hash %.12s", e.Seq, e.Prev, e.Seq-1, entries[i-1].Hash)
		}
		bySeq[e.Seq] = e
	}
	if got := st.Frontier[e2eSite]; got != uint64(len(entries)) {
		tb.Fatalf("status frontier of %s is %d, but the log holds %d entries", e2eSite, got, len(entries))
	}
	seen := map[uint64]string{}
	for _, a := range acks {
		if a.Site != e2eSite {
			tb.Fatalf("put acknowledged site %q, want %q", a.Site, e2eSite)
		}
		if k, dup := seen[a.Seq]; dup {
			tb.Fatalf("seq %d acknowledged twice (keys %s and %s)", a.Seq, k, a.key)
		}
		seen[a.Seq] = a.key
		e, ok := bySeq[a.Seq]
		if !ok {
			tb.Fatalf("LOST: put of %s was acknowledged as seq %d, but the log ends at seq %d", a.key, a.Seq, len(entries))
		}
		if len(e.Ops) != 1 || e.Ops[0].Key != a.key {
			tb.Fatalf("seq %d was acknowledged for key %s, but the log entry writes %+v", a.Seq, a.key, e.Ops)
		}
	}
	return len(entries)
}
