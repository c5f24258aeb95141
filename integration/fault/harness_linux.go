//go:build linux

package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// MachineID is PPSYNC_MACHINE_ID of every process the harness runs: all
// nodes share one machine fingerprint, like cloned test machines.
const MachineID = "fault-machine"

// RelayName is the relay's site ID.
const RelayName = "relay"

// firstPort is the first libp2p port of the isolated mode. Each namespace has
// ports of its own, so fixed numbers (below the ephemeral range, where the
// API's 127.0.0.1:0 lands) never collide with anything else on the machine.
const firstPort = 21000

// BuildBinary builds ./cmd/ppsync of this module (found with `go env GOMOD`)
// into dir, without the race detector so that the nodes run at full speed.
func BuildBinary(dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("fault: no go tool on PATH: %w", err)
	}
	out, err := exec.Command(goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("fault: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("fault: not inside the ppsync module (go env GOMOD is empty)")
	}
	bin := filepath.Join(dir, "ppsync")
	cmd := exec.Command(goTool, "build", "-ldflags", "-X main.version=fault-test", "-o", bin, "./cmd/ppsync")
	cmd.Dir = filepath.Dir(gomod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("fault: go build ./cmd/ppsync: %v\n%s", err, b)
	}
	return bin, nil
}

// Options configure a harness.
type Options struct {
	Bin   string // the ppsync binary (BuildBinary)
	Dir   string // working directory, removed by the caller
	Sites int    // 3 to 5 sites besides the relay
	// Relays is how many relays the family has (default 1). The first is
	// named RelayName, the others "relay-2", ...; each is set up as the
	// README says a relay is added, and family.json names every one of them
	// before the sites are set up.
	Relays int
	Seed   uint64               // drives the load's content
	Logf   func(string, ...any) // progress lines (t.Logf)
	// Shared forces every node onto the test's own loopback (no partitions).
	Shared bool
	// Cleanup, when set, registers the harness's Close (t.Cleanup): every
	// process is killed even if the caller never returns normally.
	Cleanup func(func())
	// SiteDB, when set, gives each site (by its name, like "clinic-1") the
	// practice database its `ppsync init` binds with --db (a URL like
	// sqlite:/abs/path.db, which must exist); "" leaves a site without one.
	SiteDB func(name string) string
}

// Violation is a broken invariant or an unexpected event.
type Violation struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

func (v Violation) String() string { return v.Kind + ": " + v.Detail }

// Harness runs one family of real ppsync nodes.
type Harness struct {
	bin      string
	dir      string
	logf     func(string, ...any)
	Net      *Net
	Auth     string // the family's authority directory
	FamilyID string
	Relay    *Node   // the first relay
	Relays   []*Node // every relay, the first included
	Sites    []*Node
	Ledger   *Ledger
	seed     uint64
	shared   *nsWorker // processes of the shared mode start here

	mu         sync.Mutex
	nodes      []*Node // every node, extras included
	nextPort   int
	violations []Violation
	faults     map[string]int
	closed     bool
}

// New creates a family in opts.Dir through the command line, the way the
// README's "Setting up a real family" does: `family create`; the relay set up
// first (`init --role relay`, `family admit`, `install` of its own
// certificate); `family bootstrap --add` with the relay's address, as the
// sites will dial it; then each site (`init`, which copies family.json and so
// the bootstrap, `admit`, `install` of its own certificate). No node holds
// another member's certificate: the sites find the relay through family.json
// and learn the family in the hello exchange. LAN discovery is turned off in
// each ppsync.toml. Nothing runs yet: see StartAll.
func New(ctx context.Context, opts Options) (h *Harness, err error) {
	if opts.Sites < 1 {
		opts.Sites = 3
	}
	h, err = newHarness(opts)
	if err != nil {
		return h, err
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	h.Auth = filepath.Join(h.dir, "authority")
	if h.FamilyID, err = h.CreateFamily(ctx, h.Auth, "Fault Family"); err != nil {
		return h, err
	}
	if h.Relay, err = h.AddNode(ctx, h.Auth, RelayName, RelayName, "relay"); err != nil {
		return h, err
	}
	// In isolated mode this is the address of the relay's proxy in every
	// other namespace (same port), so it is valid at every site.
	if err := h.AddBootstrap(ctx, h.Auth, h.Relay.ListenAddr()); err != nil {
		return h, err
	}
	h.Relays = []*Node{h.Relay}
	// More relays are added the same way: each one's init copies the
	// family.json that names the relays before it (which it dials), and its
	// address is added for the sites.
	for i := 2; i <= opts.Relays; i++ {
		name := fmt.Sprintf("%s-%d", RelayName, i)
		r, err := h.AddNode(ctx, h.Auth, name, name, "relay")
		if err != nil {
			return h, err
		}
		if err := h.AddBootstrap(ctx, h.Auth, r.ListenAddr()); err != nil {
			return h, err
		}
		h.Relays = append(h.Relays, r)
	}
	for i := 1; i <= opts.Sites; i++ {
		name := fmt.Sprintf("clinic-%d", i)
		var nopts []NodeOption
		if opts.SiteDB != nil {
			if url := opts.SiteDB(name); url != "" {
				nopts = append(nopts, WithDB(url))
			}
		}
		s, err := h.AddNode(ctx, h.Auth, name, name, "site", nopts...)
		if err != nil {
			return h, err
		}
		h.Sites = append(h.Sites, s)
	}
	return h, nil
}

// newHarness returns a harness without a family: its directories, its
// network (isolated when the process may create namespaces) and the shared
// worker.
func newHarness(opts Options) (h *Harness, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	isolated := !opts.Shared
	if isolated {
		if ierr := CanIsolate(); ierr != nil {
			opts.Logf("fault: no network namespaces (%v): nodes share the loopback; partitions are skipped", ierr)
			isolated = false
		}
	}
	h = &Harness{bin: opts.Bin, dir: opts.Dir, logf: opts.Logf, Net: newNet(isolated, opts.Logf), seed: opts.Seed,
		Ledger: newLedger(), faults: map[string]int{}, nextPort: firstPort}
	if opts.Cleanup != nil {
		opts.Cleanup(h.Close)
	}
	if h.shared, err = newWorker(false); err != nil {
		h.Close()
		return h, err
	}
	for _, d := range []string{"logs", "certs", "nodes"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			h.Close()
			return h, err
		}
	}
	return h, nil
}

// CLI runs an offline ppsync command (family administration, init, install,
// verify) in the test's namespace.
func (h *Harness) CLI(ctx context.Context, args ...string) (stdout string, err error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PPSYNC_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PPSYNC_MACHINE_ID="+MachineID)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("fault: `ppsync %s`: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

// CreateFamily runs `ppsync family create` and returns the family ID.
func (h *Harness) CreateFamily(ctx context.Context, dir, name string) (string, error) {
	out, err := h.CLI(ctx, "family", "create", "--dir", dir, "--name", name, "--json")
	if err != nil {
		return "", err
	}
	var r struct {
		FamilyID string `json:"family_id"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.FamilyID == "" {
		return "", fmt.Errorf("fault: family create printed %q", out)
	}
	return r.FamilyID, nil
}

// NodeOption changes how setupNode sets up a node.
type NodeOption func(*nodeSetup)

// nodeSetup is what NodeOptions change.
type nodeSetup struct {
	db string // --db of `ppsync init`
}

// WithDB binds a site to a practice database: its `ppsync init` gets
// --db url (like sqlite:/abs/path.db; the database must exist), as the
// docs/operations.md's "The practice database" says. The running node then captures
// every change committed there and writes the other sites' changes back.
func WithDB(url string) NodeOption { return func(s *nodeSetup) { s.db = url } }

// AddNode sets up one node of the family whose authority is in auth (see
// setupNode) and gives it a port and a network namespace; it does not run
// yet. name is the harness's name for the node (its data directory's), site
// its site ID. The node holds its own certificate only; it finds the family
// through the bootstrap of auth's family.json, as copied by its init.
func (h *Harness) AddNode(ctx context.Context, auth, name, site, role string, opts ...NodeOption) (*Node, error) {
	n, err := h.setupNode(ctx, auth, name, site, role, opts...)
	if err != nil {
		return nil, err
	}
	if err := h.attach(n); err != nil {
		return nil, err
	}
	return n, nil
}

// setupNode runs, for one node, what a site and support do by hand: `ppsync
// init` (role site or relay) with auth's family.json, `family admit` of its
// join request, `install` of its certificate (and of no other); LAN discovery
// off; with WithDB, init binds the practice database too. The node has no
// port or namespace yet.
func (h *Harness) setupNode(ctx context.Context, auth, name, site, role string, opts ...NodeOption) (*Node, error) {
	var o nodeSetup
	for _, f := range opts {
		f(&o)
	}
	data := filepath.Join(h.dir, "nodes", name)
	args := []string{"init", "--data", data, "--family", filepath.Join(auth, "family.json"), "--site", site, "--role", role}
	if o.db != "" {
		args = append(args, "--db", o.db)
	}
	out, err := h.CLI(ctx, append(args, "--json")...)
	if err != nil {
		return nil, err
	}
	var ir struct {
		PeerID string `json:"peer_id"`
	}
	if err := json.Unmarshal([]byte(out), &ir); err != nil || ir.PeerID == "" {
		return nil, fmt.Errorf("fault: init printed %q", out)
	}
	cert := filepath.Join(h.dir, "certs", name+".cert")
	if _, err := h.CLI(ctx, "family", "admit", "--dir", auth, "--request", filepath.Join(data, "join-request.json"), "--out", cert); err != nil {
		return nil, err
	}
	if _, err := h.CLI(ctx, "install", "--data", data, cert); err != nil {
		return nil, err
	}
	if err := SetConfig(data, "lan_discovery", "false"); err != nil {
		return nil, err
	}
	famID, err := readFamilyID(auth)
	if err != nil {
		return nil, err
	}
	return &Node{h: h, Name: name, Site: site, Role: role, Data: data, PeerID: ir.PeerID, Family: famID, DB: o.db,
		logPath: filepath.Join(h.dir, "logs", name+".log"), env: map[string]string{}}, nil
}

// AddBootstrap runs `ppsync family bootstrap --dir auth --add addr`: nodes
// initialized afterwards find addr in their copy of family.json.
func (h *Harness) AddBootstrap(ctx context.Context, auth, addr string) error {
	_, err := h.CLI(ctx, "family", "bootstrap", "--dir", auth, "--add", addr)
	return err
}

// attach gives a set-up node its port, namespace and API forwarder, and puts
// it on the harness's network (behind the proxies when isolated).
func (h *Harness) attach(n *Node) error {
	if h.Net.Isolated() {
		ns, err := newWorker(true)
		if err != nil {
			return err
		}
		if err := h.attachIn(n, ns); err != nil {
			ns.close()
			return err
		}
	} else {
		var err error
		if n.Port, err = freePort(); err != nil {
			return err
		}
		n.ns = h.shared
		h.mu.Lock()
		h.nodes = append(h.nodes, n)
		h.mu.Unlock()
	}
	return h.Net.add(n.Name, n.Port, n.ns)
}

// attachIn gives a set-up node a port of its own and runs it in the
// namespace of ns (the harness closes ns with the node), with an API
// forwarder; it does not put it on the harness's network (no proxies).
func (h *Harness) attachIn(n *Node, ns *nsWorker) error {
	h.mu.Lock()
	n.Port = h.nextPort
	h.nextPort++
	h.mu.Unlock()
	fwd, err := newAPIForwarder(ns)
	if err != nil {
		return err
	}
	n.ns, n.fwd = ns, fwd
	h.mu.Lock()
	h.nodes = append(h.nodes, n)
	h.mu.Unlock()
	return nil
}

// CloneNode copies the data directory of a stopped node into a new node named
// name (a second copy of the same site: same keys, same certificate, same
// family.json and so the same bootstrap, same machine ID), with a port and
// namespace of its own.
func (h *Harness) CloneNode(src *Node, name string) (*Node, error) {
	if src.Running() {
		return nil, fmt.Errorf("fault: stop %s before copying its data directory", src.Name)
	}
	data := filepath.Join(h.dir, "nodes", name)
	if err := copyDir(src.Data, data); err != nil {
		return nil, err
	}
	n := &Node{h: h, Name: name, Site: src.Site, Role: src.Role, Data: data, PeerID: src.PeerID, Family: src.Family, DB: src.DB,
		Boot: append([]string(nil), src.Boot...), logPath: filepath.Join(h.dir, "logs", name+".log"), env: map[string]string{}}
	if err := h.attach(n); err != nil {
		return nil, err
	}
	return n, nil
}

// Nodes returns the relays and the sites (not extra nodes).
func (h *Harness) Nodes() []*Node {
	relays := h.Relays
	if len(relays) == 0 {
		relays = []*Node{h.Relay}
	}
	return append(append([]*Node(nil), relays...), h.Sites...)
}

// Site returns the site node with that name.
func (h *Harness) Site(name string) *Node {
	for _, s := range h.Sites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// StartAll starts the relays, one after the other, then every site at once.
func (h *Harness) StartAll(ctx context.Context) error {
	relays := h.Relays
	if len(relays) == 0 {
		relays = []*Node{h.Relay}
	}
	for _, r := range relays {
		if err := r.Start(ctx); err != nil {
			return err
		}
	}
	return h.each(h.Sites, func(n *Node) error { return n.Start(ctx) })
}

// each runs f for every node concurrently and joins the errors.
func (h *Harness) each(nodes []*Node, f func(*Node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Violate records a broken invariant.
func (h *Harness) Violate(kind, format string, a ...any) {
	v := Violation{Kind: kind, Detail: fmt.Sprintf(format, a...)}
	h.mu.Lock()
	closed := h.closed
	if !closed {
		h.violations = append(h.violations, v)
	}
	h.mu.Unlock()
	if !closed {
		h.logf("VIOLATION %s", v)
	}
}

// Violations returns what was recorded so far.
func (h *Harness) Violations() []Violation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Violation(nil), h.violations...)
}

// countFault records one injected fault of a kind.
func (h *Harness) countFault(kind string) {
	h.mu.Lock()
	h.faults[kind]++
	h.mu.Unlock()
}

// Faults returns the injected faults by kind.
func (h *Harness) Faults() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.faults))
	for k, v := range h.faults {
		out[k] = v
	}
	return out
}

// Logf prints a progress line.
func (h *Harness) Logf(format string, a ...any) { h.logf(format, a...) }

// DumpLogs prints the tail of every node's log.
func (h *Harness) DumpLogs(lines int) {
	h.mu.Lock()
	nodes := append([]*Node(nil), h.nodes...)
	h.mu.Unlock()
	for _, n := range nodes {
		h.logf("--- %s log (last %d lines; full log %s):\n%s", n.Name, lines, n.logPath, n.LogTail(lines))
	}
}

// release ends a scenario: on an error it prints the nodes' logs, and it
// closes the harness.
func (h *Harness) release(err *error) {
	if *err != nil && !errors.Is(*err, ErrSkip) {
		h.DumpLogs(40)
	}
	h.Close()
}

// Close kills every process the harness started and stops its proxies and
// namespaces. It is safe to call more than once.
func (h *Harness) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	nodes := append([]*Node(nil), h.nodes...)
	h.mu.Unlock()
	for _, n := range nodes {
		_ = n.Kill()
		n.mu.Lock()
		if n.client != nil {
			n.client.Close()
		}
		n.mu.Unlock()
	}
	h.Net.close()
	for _, n := range nodes {
		if n.fwd != nil {
			n.fwd.close()
		}
		if n.ns != nil && n.ns != h.shared {
			n.ns.close()
		}
	}
	if h.shared != nil {
		h.shared.close()
	}
}

// SetConfig sets one setting of DATA/ppsync.toml (which init writes with
// every setting present) to value, a TOML value as written (`false`, `"30s"`),
// for the node's next start.
func SetConfig(data, key, value string) error {
	path := filepath.Join(data, "ppsync.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for i, l := range lines {
		k, _, ok := strings.Cut(l, "=")
		if ok && strings.TrimSpace(k) == key && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			lines[i], found = key+" = "+value, true
		}
	}
	if !found {
		return fmt.Errorf("fault: %s has no %s line to replace", path, key)
	}
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644)
}

func readFamilyID(auth string) (string, error) {
	b, err := os.ReadFile(filepath.Join(auth, "family.json"))
	if err != nil {
		return "", err
	}
	var f struct {
		FamilyID string `json:"family_id"`
	}
	if err := json.Unmarshal(b, &f); err != nil || f.FamilyID == "" {
		return "", fmt.Errorf("fault: %s/family.json has no family_id", auth)
	}
	return f.FamilyID, nil
}

// freePort returns a TCP port free on 127.0.0.1 now (shared mode).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// copyDir copies a directory tree, keeping file modes (but not runtime.json,
// which only a running node writes).
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		if rel == "runtime.json" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
}

// waitFor polls cond every `every` until it returns true or the deadline
// passes; the error says what was awaited and cond's last complaint.
func waitFor(ctx context.Context, timeout, every time.Duration, what string, cond func() (bool, string)) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		ok, why := cond()
		if ok {
			return time.Since(start), nil
		}
		last = why
		if err := pause(ctx, every); err != nil {
			return time.Since(start), fmt.Errorf("fault: %s: not within %s (%s)", what, timeout, last)
		}
	}
}
