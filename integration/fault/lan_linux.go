//go:build linux

package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// lanAddrs are the addresses of the two ends of the LAN-discovery scenario's
// veth pair, each in its own namespace (nowhere else).
var lanAddrs = [2]string{"10.231.0.1/24", "10.231.0.2/24"}

// lanIfs are the names of the two ends.
var lanIfs = [2]string{"lan0", "lan1"}

// lanTimeout bounds the wait for the two sites to find each other.
const lanTimeout = 30 * time.Second

// lan is two network namespaces joined by a veth pair: a local network of
// two machines with no way out — each namespace has its loopback and its end
// of the pair, no other interface and no route elsewhere. It goes away with
// the namespaces.
type lan struct {
	ns     [2]*nsWorker
	handed [2]bool // given to a node, which closes it
}

// newLAN creates the namespaces and the veth pair with iproute2's ip: the
// pair is made in the first namespace with its peer end moved straight into
// the second (named by an open file of that namespace), so it never exists
// in the test's namespace; each end gets its address and is set up with
// multicast on.
func newLAN(ctx context.Context, ipTool string) (l *lan, err error) {
	l = &lan{}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	for i := range l.ns {
		if l.ns[i], err = newWorker(true); err != nil {
			return l, err
		}
	}
	var nsFile *os.File
	var oerr error
	if err := l.ns[1].do(func() { nsFile, oerr = os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid())) }); err != nil {
		return l, err
	}
	if oerr != nil {
		return l, fmt.Errorf("fault: open the second namespace: %w", oerr)
	}
	defer nsFile.Close()
	ip := func(w *nsWorker, files []*os.File, args ...string) error {
		cctx, cancel := context.WithTimeout(ctx, cliTimeout)
		defer cancel()
		cmd := exec.Command(ipTool, args...)
		cmd.ExtraFiles = files
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := w.run(cctx, cmd); err != nil {
			return fmt.Errorf("fault: `ip %s`: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	// ExtraFiles[0] is the child's fd 3.
	if err := ip(l.ns[0], []*os.File{nsFile}, "link", "add", lanIfs[0], "type", "veth", "peer", "name", lanIfs[1], "netns", "/proc/self/fd/3"); err != nil {
		return l, err
	}
	for i := range l.ns {
		if err := ip(l.ns[i], nil, "addr", "add", lanAddrs[i], "dev", lanIfs[i]); err != nil {
			return l, err
		}
		if err := ip(l.ns[i], nil, "link", "set", "dev", lanIfs[i], "multicast", "on", "up"); err != nil {
			return l, err
		}
	}
	return l, nil
}

// attach runs node n in namespace i (the harness then closes it with the
// node).
func (l *lan) attach(h *Harness, n *Node, i int) error {
	if err := h.attachIn(n, l.ns[i]); err != nil {
		return err
	}
	l.handed[i] = true
	return nil
}

// close ends the namespaces no node took.
func (l *lan) close() {
	for i, w := range l.ns {
		if w != nil && !l.handed[i] {
			w.close()
		}
	}
}

// interfaces lists the interfaces of namespace i with their flags and
// addresses.
func (l *lan) interfaces(i int) ([]net.Interface, map[string][]string, error) {
	var ifs []net.Interface
	addrs := map[string][]string{}
	var err error
	if werr := l.ns[i].do(func() {
		if ifs, err = net.Interfaces(); err != nil {
			return
		}
		for _, f := range ifs {
			as, aerr := f.Addrs()
			if aerr != nil {
				err = aerr
				return
			}
			for _, a := range as {
				addrs[f.Name] = append(addrs[f.Name], a.String())
			}
		}
	}); werr != nil {
		return nil, nil, werr
	}
	return ifs, addrs, err
}

// ready checks that namespace i has exactly its loopback and its end of the
// pair, both up, the end with multicast, its address and a carrier; it
// returns a description of the namespace.
func (l *lan) ready(i int) (bool, string) {
	ifs, addrs, err := l.interfaces(i)
	if err != nil {
		return false, err.Error()
	}
	var names []string
	for _, f := range ifs {
		names = append(names, f.Name)
	}
	slices.Sort(names)
	want := []string{lanIfs[i], "lo"}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		return false, fmt.Sprintf("namespace %d has the interfaces %v, want exactly %v", i+1, names, want)
	}
	var desc []string
	for _, f := range ifs {
		need := net.FlagUp
		if f.Name != "lo" {
			need |= net.FlagMulticast | net.FlagRunning
			if !slices.Contains(addrs[f.Name], lanAddrs[i]) {
				return false, fmt.Sprintf("%s has the addresses %v, not %s", f.Name, addrs[f.Name], lanAddrs[i])
			}
		}
		if f.Flags&need != need {
			return false, fmt.Sprintf("%s is %v, want %v", f.Name, f.Flags, need)
		}
		desc = append(desc, fmt.Sprintf("%s %v (%s)", f.Name, addrs[f.Name], f.Flags))
	}
	return true, strings.Join(desc, "; ")
}

// LANDiscovery: two sites of one family that hold only their own
// certificate, whose relay is never reachable (family.json's bootstrap names
// the relay at a port where nothing listens), with `lan_discovery = true`,
// each in a network namespace of its own joined to the other's by a veth pair
// (10.231.0.1/24 and 10.231.0.2/24, nothing else reachable), listening on
// /ip4/0.0.0.0. They must find each other by mDNS, prove their membership in
// the hello exchange, and sync: a write at each reaches the other, and both
// end with the same digest. No proxy of the harness stands between them.
// It needs root (namespaces) and iproute2's ip.
func LANDiscovery(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "lan-discovery", Seed: seed}
	if err := CanIsolate(); err != nil {
		return res, fmt.Errorf("%w: the sites cannot get network namespaces of their own (%v), so there is no LAN to put them on", ErrSkip, err)
	}
	ipTool, lerr := exec.LookPath("ip")
	if lerr != nil {
		return res, fmt.Errorf("%w: no `ip` command (iproute2) to make the veth pair between the two namespaces: %v", ErrSkip, lerr)
	}
	h, err := newHarness(env.options(seed, 2))
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	h.Auth = filepath.Join(h.dir, "authority")
	if h.FamilyID, err = h.CreateFamily(ctx, h.Auth, "LAN Family"); err != nil {
		return res, err
	}
	// The relay is set up (so that its address is a real member's) but never
	// runs, and nothing listens at its port in the sites' namespaces.
	relay, err := h.setupNode(ctx, h.Auth, RelayName, RelayName, "relay")
	if err != nil {
		return res, err
	}
	unreachable := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", firstPort-1, relay.PeerID)
	if err := h.AddBootstrap(ctx, h.Auth, unreachable); err != nil {
		return res, err
	}
	l, err := newLAN(ctx, ipTool)
	if err != nil {
		return res, err
	}
	defer l.close()
	for i := range l.ns {
		name := fmt.Sprintf("clinic-%d", i+1)
		s, err := h.setupNode(ctx, h.Auth, name, name, "site")
		if err != nil {
			return res, err
		}
		if err := SetConfig(s.Data, "lan_discovery", "true"); err != nil {
			return res, err
		}
		if err := l.attach(h, s, i); err != nil {
			return res, err
		}
		s.Listen = fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", s.Port)
		h.Sites = append(h.Sites, s)
	}
	for i := range l.ns {
		var desc string
		if _, err := waitFor(ctx, 10*time.Second, 50*time.Millisecond, fmt.Sprintf("namespace %d ready", i+1), func() (bool, string) {
			ok, d := l.ready(i)
			desc = d
			return ok, d
		}); err != nil {
			return res, err
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s's namespace has only: %s", h.Sites[i].Name, desc))
	}
	h.countFault("lan-only")
	t0 := time.Now()
	if err := h.each(h.Sites, func(n *Node) error { return n.Start(ctx) }); err != nil {
		return res, err
	}
	found := true
	for i, s := range h.Sites {
		other := h.Sites[1-i]
		_, err := waitFor(ctx, lanTimeout, statusEvery, s.Name+" finding "+other.Name+" on the LAN", func() (bool, string) {
			st, err := s.Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			if st.Peers != 1 {
				return false, statusJSON(st)
			}
			rows, err := s.Peers(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, r := range rows {
				if r.Site == other.Site && r.Connected {
					return true, ""
				}
			}
			return false, fmt.Sprintf("peers --json %+v", rows)
		})
		if err != nil {
			h.Violate("lan", "%v", err)
			found = false
			continue
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s found %s by mDNS and connected at most %s after both were started", s.Name, other.Name, time.Since(t0).Round(time.Millisecond)))
		if raw, err := rawStatus(ctx, s); err == nil {
			res.Notes = append(res.Notes, fmt.Sprintf("%s status --json: %s", s.Name, raw))
		}
	}
	digest := ""
	if found {
		rng := rand.New(rand.NewPCG(seed, 0x1a4))
		for i, s := range h.Sites {
			other := h.Sites[1-i]
			ws, err := h.Send(ctx, s, h.NewWrites(s, 1, rng, 0, 0), 10*time.Second)
			if err != nil {
				return res, err
			}
			took, err := waitFor(ctx, lanTimeout, 50*time.Millisecond, s.Name+"'s write reaching "+other.Name+" over the LAN", func() (bool, string) {
				return h.hasWrite(ctx, other, ws[0])
			})
			if err != nil {
				h.Violate("liveness", "%v", err)
			} else {
				res.Notes = append(res.Notes, fmt.Sprintf("a write at %s reached %s in %s", s.Name, other.Name, took.Round(time.Millisecond)))
			}
		}
		took, d, err := h.Converge(ctx, h.Sites, ConvergeTimeout, CheckOptions{})
		res.Converge = took
		if err != nil {
			h.Violate("liveness", "%v", err)
		} else {
			digest = d
			res.Notes = append(res.Notes, fmt.Sprintf("both sites hold digest %.16s", d))
		}
		h.CheckState(ctx, h.Sites, CheckOptions{})
	}
	res.Notes = append(res.Notes, fmt.Sprintf("the LAN phase took %s", time.Since(t0).Round(time.Millisecond)))
	h.StopAndVerify(ctx, h.Sites, digest)
	h.finish(&res)
	return res, ctx.Err()
}

// rawStatus runs `ppsync status --json` for n and returns its online,
// offline_reason, peers and bootstrap fields as JSON.
func rawStatus(ctx context.Context, n *Node) (string, error) {
	out, errOut, code, err := n.CLI(ctx, "status", "--data", n.Data, "--json")
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("`ppsync status --json` exited %d: %s", code, strings.TrimSpace(errOut))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return "", err
	}
	keep := map[string]any{}
	for _, k := range []string{"online", "offline_reason", "peers", "bootstrap"} {
		if v, ok := m[k]; ok {
			keep[k] = v
		}
	}
	b, err := json.Marshal(keep)
	return string(b), err
}
