//go:build linux

package fault

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrNotIsolated: the nodes share one network stack, so links cannot be cut.
var ErrNotIsolated = errors.New("fault: nodes are not in network namespaces of their own (needs root on Linux); links cannot be cut")

// proxyDialTimeout bounds the proxy's dial of the node behind it.
const proxyDialTimeout = 3 * time.Second

// flow is the direction of bytes from one node to another.
type flow struct{ from, to string }

// Net is the fault-injecting network between the nodes. In isolated mode each
// node has a namespace of its own, and for every pair (dialer, target) a
// listener in the dialer's namespace at the target's port forwards to the
// target; every byte between nodes passes through it.
//
// A blocked flow stalls: bytes from one node to the other are held (not read
// further, like a link that drops every packet), and so is the end of a
// stream (a FIN or a reset crosses the link only once it is open again). New
// connections between the two are refused while either direction is blocked,
// except under a Stall, which holds them unanswered until it ends. Blocks are
// counted, so overlapping faults heal independently. Cut also resets the
// connections that exist.
type Net struct {
	isolated bool
	logf     func(string, ...any)

	mu       sync.Mutex
	nodes    map[string]*netNode
	blocked  map[flow]int
	stalled  map[flow]int  // pairs (both orders) under Stall: new connections wait instead of being refused
	changed  chan struct{} // closed and replaced on every change of blocked
	conns    map[*pconn]struct{}
	closed   bool
	refused  uint64
	accepted uint64
	capture  func(from, to string, b []byte) // sees every byte between two nodes (Capture)
	wg       sync.WaitGroup
}

type netNode struct {
	name string
	port int
	ns   *nsWorker
	lns  []net.Listener // listeners in other namespaces that forward to this node, and this node's to others
}

// pconn is one proxied connection from dialer to target.
type pconn struct {
	dialer, target string
	client, server net.Conn
	once           sync.Once
	closed         chan struct{}
}

func (c *pconn) close() {
	c.once.Do(func() {
		close(c.closed)
		c.client.Close()
		c.server.Close()
	})
}

func newNet(isolated bool, logf func(string, ...any)) *Net {
	return &Net{isolated: isolated, logf: logf, nodes: map[string]*netNode{}, blocked: map[flow]int{}, stalled: map[flow]int{},
		changed: make(chan struct{}), conns: map[*pconn]struct{}{}}
}

// Isolated reports whether links can be cut.
func (n *Net) Isolated() bool { return n.isolated }

// Capture sets a function that sees every byte passing between two nodes
// (isolated networks only: elsewhere nodes talk without the proxy).
func (n *Net) Capture(f func(from, to string, b []byte)) {
	n.mu.Lock()
	n.capture = f
	n.mu.Unlock()
}

// add registers a node listening on 127.0.0.1:port in ns and, when isolated,
// opens the forwarders between it and every node already there.
func (n *Net) add(name string, port int, ns *nsWorker) error {
	n.mu.Lock()
	if _, ok := n.nodes[name]; ok {
		n.mu.Unlock()
		return fmt.Errorf("fault: node %q is already on the network", name)
	}
	nn := &netNode{name: name, port: port, ns: ns}
	others := make([]*netNode, 0, len(n.nodes))
	for _, o := range n.nodes {
		others = append(others, o)
	}
	n.nodes[name] = nn
	n.mu.Unlock()
	if !n.isolated {
		return nil
	}
	for _, o := range others {
		if err := n.forward(o, nn); err != nil { // o's namespace -> nn
			return err
		}
		if err := n.forward(nn, o); err != nil { // nn's namespace -> o
			return err
		}
	}
	return nil
}

// forward listens in dialer's namespace at target's port and forwards every
// connection to target.
func (n *Net) forward(dialer, target *netNode) error {
	addr := "127.0.0.1:" + strconv.Itoa(target.port)
	ln, err := dialer.ns.listen(addr)
	if err != nil {
		return fmt.Errorf("fault: proxy for %s in %s's namespace at %s: %w", target.name, dialer.name, addr, err)
	}
	n.mu.Lock()
	dialer.lns = append(dialer.lns, ln)
	n.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.serve(c, dialer.name, target, addr)
			}()
		}
	}()
	return nil
}

func (n *Net) serve(client net.Conn, dialer string, target *netNode, addr string) {
	if !n.admit(dialer, target.name) {
		client.Close()
		return
	}
	server, err := target.ns.dial(addr, proxyDialTimeout)
	if err != nil {
		client.Close()
		return
	}
	c := &pconn{dialer: dialer, target: target.name, client: client, server: server, closed: make(chan struct{})}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		c.close()
		return
	}
	n.conns[c] = struct{}{}
	n.accepted++
	n.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); n.pump(c, server, client, dialer, target.name) }()
	go func() { defer wg.Done(); n.pump(c, client, server, target.name, dialer) }()
	wg.Wait()
	c.close()
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
}

// admit decides whether a new connection from dialer to target may go
// through now: not while either direction between them is blocked. Under a
// Stall it waits (the dialer sees a connection that never answers) until the
// pair is open again; otherwise a blocked pair refuses at once.
func (n *Net) admit(dialer, target string) bool {
	for {
		n.mu.Lock()
		blocked := n.blocked[flow{dialer, target}] > 0 || n.blocked[flow{target, dialer}] > 0
		hold := blocked && n.stalled[flow{dialer, target}] > 0
		closed, ch := n.closed, n.changed
		if closed || (blocked && !hold) {
			n.refused++
		}
		n.mu.Unlock()
		switch {
		case closed || (blocked && !hold):
			return false
		case !blocked:
			return true
		}
		<-ch
	}
}

// pump copies src to dst (bytes flowing from -> to), holding them while that
// flow is blocked. An orderly end of src half-closes dst; an error closes both.
// Either end crosses only while the flow is open, like the bytes before it.
func (n *Net) pump(c *pconn, dst, src net.Conn, from, to string) {
	buf := make([]byte, 32<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if !n.waitOpen(c, flow{from, to}) {
				return
			}
			n.mu.Lock()
			capture := n.capture
			n.mu.Unlock()
			if capture != nil {
				capture(from, to, buf[:k])
			}
			if _, werr := dst.Write(buf[:k]); werr != nil {
				// dst's node closed or reset: the news goes back the other way.
				if n.waitOpen(c, flow{to, from}) {
					c.close()
				}
				return
			}
		}
		if err != nil && !n.waitOpen(c, flow{from, to}) {
			return
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
		if err != nil {
			c.close()
			return
		}
	}
}

// waitOpen waits until f is not blocked; false when the connection closed.
func (n *Net) waitOpen(c *pconn, f flow) bool {
	for {
		n.mu.Lock()
		b, ch := n.blocked[f] > 0, n.changed
		n.mu.Unlock()
		if !b {
			return true
		}
		select {
		case <-ch:
		case <-c.closed:
			return false
		}
	}
}

func (n *Net) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// Block stalls the bytes from one node to another (a one-way partition).
func (n *Net) Block(from, to string) error {
	if !n.isolated {
		return ErrNotIsolated
	}
	n.mu.Lock()
	n.blocked[flow{from, to}]++
	n.notifyLocked()
	n.mu.Unlock()
	return nil
}

// Unblock undoes one Block.
func (n *Net) Unblock(from, to string) {
	n.mu.Lock()
	if n.blocked[flow{from, to}] > 0 {
		n.blocked[flow{from, to}]--
	}
	if n.blocked[flow{from, to}] == 0 {
		delete(n.blocked, flow{from, to})
	}
	n.notifyLocked()
	n.mu.Unlock()
}

// Cut blocks both directions between a and b and resets their connections.
func (n *Net) Cut(a, b string) error {
	if err := n.Block(a, b); err != nil {
		return err
	}
	if err := n.Block(b, a); err != nil {
		return err
	}
	n.Reset(a, b)
	return nil
}

// Mend undoes one Cut.
func (n *Net) Mend(a, b string) {
	n.Unblock(a, b)
	n.Unblock(b, a)
}

// Stall blocks both directions between a and b without resetting anything:
// packets simply stop, as when a cable is pulled or a firewall starts
// dropping. The connections that exist stay open with their bytes (and their
// ends) held, and new connections between the two are held unanswered, not
// refused, until the stall ends. Unstall undoes it.
func (n *Net) Stall(a, b string) error {
	if !n.isolated {
		return ErrNotIsolated
	}
	n.mu.Lock()
	n.blocked[flow{a, b}]++
	n.blocked[flow{b, a}]++
	n.stalled[flow{a, b}]++
	n.stalled[flow{b, a}]++
	n.notifyLocked()
	n.mu.Unlock()
	return nil
}

// Unstall undoes one Stall.
func (n *Net) Unstall(a, b string) {
	n.mu.Lock()
	for _, f := range []flow{{a, b}, {b, a}} {
		for _, m := range []map[flow]int{n.blocked, n.stalled} {
			if m[f] > 0 {
				m[f]--
			}
			if m[f] == 0 {
				delete(m, f)
			}
		}
	}
	n.notifyLocked()
	n.mu.Unlock()
}

// Reset closes every connection between a and b.
func (n *Net) Reset(a, b string) {
	n.mu.Lock()
	var rs []*pconn
	for c := range n.conns {
		if (c.dialer == a && c.target == b) || (c.dialer == b && c.target == a) {
			rs = append(rs, c)
		}
	}
	n.mu.Unlock()
	for _, c := range rs {
		c.close()
	}
}

// HealAll removes every block and stall.
func (n *Net) HealAll() {
	n.mu.Lock()
	clear(n.blocked)
	clear(n.stalled)
	n.notifyLocked()
	n.mu.Unlock()
}

// Blocked lists the blocked flows ("a->b").
func (n *Net) Blocked() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for f := range n.blocked {
		out = append(out, f.from+"->"+f.to)
	}
	return out
}

// Stats returns how many connections the proxies accepted and refused.
func (n *Net) Stats() (accepted, refused uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.accepted, n.refused
}

// close stops every listener and connection.
func (n *Net) close() {
	n.mu.Lock()
	n.closed = true
	var lns []net.Listener
	for _, nn := range n.nodes {
		lns = append(lns, nn.lns...)
	}
	var cs []*pconn
	for c := range n.conns {
		cs = append(cs, c)
	}
	clear(n.blocked)
	clear(n.stalled)
	n.notifyLocked()
	n.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range cs {
		c.close()
	}
	n.wg.Wait()
}

// apiForwarder gives the test process a fixed address for a node's API, which
// listens inside the node's namespace on a port that changes with every start.
type apiForwarder struct {
	ln     net.Listener
	ns     *nsWorker
	mu     sync.Mutex
	target string // host:port in the node's namespace; "" while none runs
	closed bool
	wg     sync.WaitGroup
	conns  map[net.Conn]struct{}
}

func newAPIForwarder(ns *nsWorker) (*apiForwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &apiForwarder{ln: ln, ns: ns, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.loop()
	return f, nil
}

func (f *apiForwarder) url() string { return "http://" + f.ln.Addr().String() }

func (f *apiForwarder) setTarget(hostport string) {
	f.mu.Lock()
	f.target = hostport
	f.mu.Unlock()
}

func (f *apiForwarder) loop() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.serve(c)
		}()
	}
}

func (f *apiForwarder) serve(c net.Conn) {
	f.mu.Lock()
	target := f.target
	f.mu.Unlock()
	if target == "" {
		c.Close()
		return
	}
	s, err := f.ns.dial(target, proxyDialTimeout)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	f.conns[c], f.conns[s] = struct{}{}, struct{}{}
	f.mu.Unlock()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go cp(s, c)
	go cp(c, s)
	<-done
	<-done
	f.mu.Lock()
	delete(f.conns, c)
	delete(f.conns, s)
	f.mu.Unlock()
}

func (f *apiForwarder) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
