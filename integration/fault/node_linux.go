//go:build linux

package fault

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

// Timeouts of node processes.
const (
	readyTimeout = 60 * time.Second // `ppsync run` until runtime.json names it and the API answers
	stopTimeout  = 30 * time.Second // SIGTERM until the process exits
	killTimeout  = 10 * time.Second // SIGKILL until the process is reaped
	cliTimeout   = 2 * time.Minute  // one CLI command
)

// Node is one ppsync node of the harness: its data directory, its network
// identity (namespace, port) and, while it runs, its process.
type Node struct {
	h       *Harness
	Name    string // the harness's name for it: its site ID, or a clone's or intruder's own name
	Site    string // site ID (the relay's is "relay")
	Role    string // "site" or "relay"
	Data    string // data directory
	Port    int    // libp2p listen port on 127.0.0.1 (in its namespace when isolated)
	Listen  string // when set, the --listen address instead of 127.0.0.1:Port (like /ip4/0.0.0.0/tcp/PORT)
	PeerID  string
	Family  string   // family ID
	Boot    []string // --bootstrap addresses besides family.json's: only where a scenario needs them
	DB      string   // the practice database bound by init (--db URL), or ""
	ns      *nsWorker
	fwd     *apiForwarder // isolated mode: the test's way to the API
	logPath string

	mu      sync.Mutex
	env     map[string]string // extra environment (PPSYNC_CLOCK_OFFSET)
	proc    *proc
	client  *api.Client
	base    string // the API's base URL as the test process reaches it
	key     string // the API key
	frozen  bool
	starts  int
	onReady func(*Node) // called after every start (the harness's durability check)
}

// proc is one `ppsync run` process.
type proc struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed once reaped
	code     int           // exit code; -1 for a signal
	expected bool          // the harness ended it (guarded by Node.mu)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// SetEnv sets (or, with "", removes) an environment variable of the node's
// next start, like PPSYNC_CLOCK_OFFSET.
func (n *Node) SetEnv(key, value string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if value == "" {
		delete(n.env, key)
		return
	}
	n.env[key] = value
}

func (n *Node) environ() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PPSYNC_") {
			out = append(out, kv)
		}
	}
	out = append(out, "PPSYNC_MACHINE_ID="+MachineID)
	for k, v := range n.env {
		out = append(out, k+"="+v)
	}
	return out
}

// ListenAddr is the node's libp2p address with its peer ID.
func (n *Node) ListenAddr() string {
	return "/ip4/127.0.0.1/tcp/" + strconv.Itoa(n.Port) + "/p2p/" + n.PeerID
}

// Running reports whether the node's process runs (frozen counts).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil && !n.proc.exited()
}

// Frozen reports whether the node is stopped with SIGSTOP.
func (n *Node) Frozen() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.frozen
}

// Client returns the API client of the running node, or nil.
func (n *Node) Client() *api.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil || n.proc.exited() {
		return nil
	}
	return n.client
}

// Start runs `ppsync run` and waits until it is ready: runtime.json names
// this process and the API answers.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.proc != nil && !n.proc.exited() {
		n.mu.Unlock()
		return nil
	}
	n.starts++
	starts := n.starts
	n.mu.Unlock()

	listen := n.Listen
	if listen == "" {
		listen = "/ip4/127.0.0.1/tcp/" + strconv.Itoa(n.Port)
	}
	args := []string{"run", "--data", n.Data, "--listen", listen,
		"--api", "127.0.0.1:0", "--headless", "--log-level", logLevel()}
	for _, b := range n.Boot {
		args = append(args, "--bootstrap", b)
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	env := n.environ()
	fmt.Fprintf(logf, "=== start %d at %s: ppsync %s (env %s)\n", starts, time.Now().Format(time.RFC3339Nano), strings.Join(args, " "), strings.Join(extraEnv(env), " "))
	cmd := exec.Command(n.h.bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := n.ns.start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("fault: start %s: %w", n.Name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	n.mu.Lock()
	n.proc, n.frozen = p, false
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -2
		}
		n.mu.Lock()
		expected := p.expected
		n.mu.Unlock()
		close(p.done)
		if !expected {
			n.h.Violate("crash", "%s exited by itself (exit code %d) — a crash or a refusal to run:\n%s", n.Name, p.code, n.LogTail(30))
		}
	}()
	if err := n.waitReady(ctx, p); err != nil {
		return err
	}
	n.mu.Lock()
	ready := n.onReady
	n.onReady = nil
	n.mu.Unlock()
	if ready != nil {
		ready(n)
	}
	return nil
}

func extraEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "PPSYNC_") {
			out = append(out, kv)
		}
	}
	return out
}

// waitReady polls runtime.json (a stale one left by a killed process names
// another PID) and then the API.
func (n *Node) waitReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var rt api.Runtime
	for {
		if b, err := os.ReadFile(filepath.Join(n.Data, node.RuntimeFile)); err == nil && json.Unmarshal(b, &rt) == nil && rt.PID == p.cmd.Process.Pid {
			break
		}
		if p.exited() {
			return fmt.Errorf("fault: %s exited (code %d) before it was ready:\n%s", n.Name, p.code, n.LogTail(20))
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("fault: %s did not write runtime.json within %s:\n%s", n.Name, readyTimeout, n.LogTail(20))
		}
	}
	key, err := os.ReadFile(filepath.Join(n.Data, node.APIKeyFile))
	if err != nil {
		return err
	}
	base := rt.API
	if n.fwd != nil {
		u, err := url.Parse(rt.API)
		if err != nil {
			return fmt.Errorf("fault: %s: runtime.json api %q: %w", n.Name, rt.API, err)
		}
		n.fwd.setTarget(u.Host)
		base = n.fwd.url()
	}
	c, err := api.NewClientFor(base, strings.TrimSpace(string(key)))
	if err != nil {
		return err
	}
	for {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Status(sctx)
		scancel()
		if err == nil {
			break
		}
		if p.exited() {
			return fmt.Errorf("fault: %s exited (code %d) before its API answered:\n%s", n.Name, p.code, n.LogTail(20))
		}
		if perr := pause(ctx, 20*time.Millisecond); perr != nil {
			return fmt.Errorf("fault: %s: the API does not answer: %v", n.Name, err)
		}
	}
	n.mu.Lock()
	if n.client != nil {
		n.client.Close()
	}
	n.client, n.base, n.key = c, base, strings.TrimSpace(string(key))
	n.mu.Unlock()
	return nil
}

// signal sends sig to the running process, marking the exit as expected for
// SIGKILL and SIGTERM.
func (n *Node) signal(sig syscall.Signal) (*proc, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.proc
	if p == nil || p.exited() {
		return nil, nil
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		p.expected = true
	}
	switch sig {
	case syscall.SIGSTOP:
		n.frozen = true
	case syscall.SIGCONT:
		n.frozen = false
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) && !p.exited() {
		return p, fmt.Errorf("fault: signal %v to %s: %w", sig, n.Name, err)
	}
	return p, nil
}

// Kill ends the node with SIGKILL (kill -9) and waits until it is reaped.
func (n *Node) Kill() error {
	p, err := n.signal(syscall.SIGKILL)
	if p == nil || err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(killTimeout):
		return fmt.Errorf("fault: %s was not reaped %s after SIGKILL", n.Name, killTimeout)
	}
}

// Stop ends the node with SIGTERM (continuing it first if it is frozen) and
// returns its exit code; after stopTimeout it is killed and that is an error.
func (n *Node) Stop() (int, error) {
	if n.Frozen() {
		if _, err := n.signal(syscall.SIGCONT); err != nil {
			return 0, err
		}
	}
	p, err := n.signal(syscall.SIGTERM)
	if p == nil || err != nil {
		return 0, err
	}
	select {
	case <-p.done:
		return p.code, nil
	case <-time.After(stopTimeout):
		_ = n.Kill()
		return -1, fmt.Errorf("fault: %s did not stop within %s of SIGTERM (killed):\n%s", n.Name, stopTimeout, n.LogTail(20))
	}
}

// Freeze stops the process with SIGSTOP; Thaw continues it.
func (n *Node) Freeze() error { _, err := n.signal(syscall.SIGSTOP); return err }

// Thaw continues a frozen process with SIGCONT.
func (n *Node) Thaw() error {
	if !n.Frozen() {
		return nil
	}
	_, err := n.signal(syscall.SIGCONT)
	return err
}

// CLI runs a ppsync command for this node inside its namespace (commands that
// talk to the running node must) and returns stdout, stderr and the exit code.
func (n *Node) CLI(ctx context.Context, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.Command(n.h.bin, args...)
	cmd.Env = n.environ()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = n.ns.run(ctx, cmd)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode(), nil
	}
	return o.String(), e.String(), 0, err
}

// Status returns the node's GET /v1/status.
func (n *Node) Status(ctx context.Context) (api.Status, error) {
	c := n.Client()
	if c == nil {
		return api.Status{}, fmt.Errorf("fault: %s is not running", n.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Status(ctx)
}

// Metric returns the sum of a Prometheus counter or gauge of the node's
// GET /metrics whose labels contain every label=value given (like
// `reason="wrong_family"`).
func (n *Node) Metric(ctx context.Context, name string, labels ...string) (float64, error) {
	if n.Client() == nil {
		return 0, fmt.Errorf("fault: %s is not running", n.Name)
	}
	n.mu.Lock()
	base, key := n.base, n.key
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("fault: %s: GET /metrics answered %s", n.Name, resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// LogTail returns the last lines of the node's log (all its starts).
func (n *Node) LogTail(lines int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return "    " + strings.Join(ls, "\n    ")
}

// pause waits d or until ctx ends (then it returns ctx's error). It paces
// polling loops; it never stands in for waiting on a condition.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// logLevel is the nodes' log level: info, or debug with PPSYNC_FAULT_DEBUG set.
func logLevel() string {
	if os.Getenv("PPSYNC_FAULT_DEBUG") != "" {
		return "debug"
	}
	return "info"
}
