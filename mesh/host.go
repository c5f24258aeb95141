package mesh

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// protoBase is the one stream protocol a ppsync host registers with libp2p.
// Every stream of a family is opened as protoBase/<family ID>/<kind>/<version>
// (its hello, catch-up, gossip ...), so one host serves any number of
// families and routes each stream to its own family's mesh, and identify,
// which lists a host's protocols to every peer, names no family.
const protoBase protocol.ID = "/ppsync/f"

// scopedProto returns family's stream protocol for p: "/ppsync/hello/1"
// becomes "/ppsync/f/<family>/hello/1", gossipsub's "/meshsub/1.2.0"
// becomes "/ppsync/f/<family>/meshsub/1.2.0". An ID already scoped is
// returned as it is.
// Any other protocol (libp2p's circuit relay, identify) is returned as it
// is: those are the host's, not a family's.
func scopedProto(family string, p protocol.ID) protocol.ID {
	s := string(p)
	switch {
	case strings.HasPrefix(s, string(protoBase)+"/"):
		return p
	case strings.HasPrefix(s, "/ppsync/"):
		return protocol.ID(string(protoBase) + "/" + family + strings.TrimPrefix(s, "/ppsync"))
	case strings.HasPrefix(s, "/meshsub/"):
		return protocol.ID(string(protoBase) + "/" + family + s)
	}
	return p
}

// splitProto returns the family and the unscoped rest of a scoped protocol
// ID ("/hello/1").
func splitProto(p protocol.ID) (family string, rest protocol.ID, ok bool) {
	s, found := strings.CutPrefix(string(p), string(protoBase)+"/")
	if !found {
		return "", "", false
	}
	family, r, found := strings.Cut(s, "/")
	if !found || family == "" {
		return "", "", false
	}
	return family, protocol.ID("/" + r), true
}

// HostConfig configures the libp2p host that one family's mesh, or at a
// relay many families' meshes, share.
type HostConfig struct {
	Key    ed25519.PrivateKey // the node's identity (required)
	Listen []string           // multiaddrs to listen on; none: dial out only
	Relay  bool               // run the members-only circuit relay (the relay role)
	Logger *slog.Logger
	// DeferListen starts the host without listening: Listen opens the
	// ports once every family is attached (a relay that restarts must not
	// answer a member's hello before its family is back: the member would
	// take the relay for a stranger and wait before it tries again).
	DeferListen bool
}

// Host is one libp2p host: one identity, one set of listening ports, one
// connection manager and, at a relay, one circuit relay service, shared by
// every family attached to it. It keeps the families apart: a connection is
// admitted if some family admits its peer; a stream goes to the family its
// protocol names, and only from a member of that family (or, for the hello,
// from a peer proving it is one); each family's gossip runs on its own
// pubsub that sees only that family's members; a circuit joins two members
// of one family only. A peer learns of no family it is not a member of.
type Host struct {
	cfg HostConfig
	log *slog.Logger
	h   host.Host

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	life   sync.Mutex // guards closing and wg.Add against Close's wg.Wait
	// closing is set once Close began.
	closing bool

	mu     sync.Mutex
	fams   map[string]*Mesh    // attached families, by family ID
	told   map[string][]*Mesh  // connection ID -> the families told of it
	counts map[string]uint64   // rejections no family claims, by reason
	owner  *Mesh               // the family that owns this host (mesh.New), or nil
	conns  map[string]struct{} // open connection IDs, for probation

	// hints: for a peer, the families a look through every family last
	// found it a member of (see memberOf).
	hintMu sync.Mutex
	hints  map[peer.ID][]*Mesh

	listening atomic.Bool // Listen ran (DeferListen)
	// gossipHeld: the bytes of gossip that every attached family together
	// holds accepted and not yet stored (gossip.hostHeld).
	gossipHeld atomic.Int64
}

// NewHost starts a libp2p host with no family attached yet.
func NewHost(ctx context.Context, cfg HostConfig) (*Host, error) {
	if cfg.Key == nil {
		return nil, errors.New("mesh: the host needs the node's key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	priv, err := crypto.UnmarshalEd25519PrivateKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("mesh: node key: %w", err)
	}
	hb := &Host{cfg: cfg, log: cfg.Logger, fams: map[string]*Mesh{}, told: map[string][]*Mesh{}, hints: map[peer.ID][]*Mesh{},
		counts: map[string]uint64{}, conns: map[string]struct{}{}}
	hb.ctx, hb.cancel = context.WithCancel(ctx)
	// A site has a handful of members; a relay serving a thousand families
	// of a few sites each holds thousands of member connections, which the
	// manager must not trim (each family's own limit bounds its share).
	low, high := 64, 256
	if cfg.Relay {
		low, high = 8192, 16384
	}
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		hb.cancel()
		return nil, fmt.Errorf("mesh: connection manager: %w", err)
	}
	listen := libp2p.ListenAddrStrings(cfg.Listen...)
	if len(cfg.Listen) == 0 || cfg.DeferListen {
		// Dial out only (and be reached through the relay). Without this,
		// libp2p would listen on every interface by default.
		listen = libp2p.NoListenAddrs
	}
	opts := []libp2p.Option{
		libp2p.Identity(priv),
		listen,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.ConnectionGater(hostGater{hb}),
		libp2p.ConnectionManager(cm),
		libp2p.DisableMetrics(),
		libp2p.UserAgent("ppsync"),
		libp2p.EnableRelay(),
	}
	if cfg.Relay {
		rm, err := relayResourceManager()
		if err != nil {
			hb.cancel()
			return nil, err
		}
		opts = append(opts,
			libp2p.ResourceManager(rm),
			libp2p.ForceReachabilityPublic(),
			libp2p.EnableRelayService(relayv2.WithResources(relayResources()), relayv2.WithACL(relayACL{hb})),
		)
	} else {
		rm, err := siteResourceManager()
		if err != nil {
			hb.cancel()
			return nil, err
		}
		opts = append(opts, libp2p.ResourceManager(rm), libp2p.ForceReachabilityPrivate(), libp2p.EnableHolePunching())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		hb.cancel()
		return nil, fmt.Errorf("mesh: start libp2p host: %w", err)
	}
	hb.h = h
	// One subscription for every family (see famBus), made before any family
	// attaches and with room for 1,024 events, so that it cannot fill while
	// it is being made.
	sub, err := h.EventBus().Subscribe(peerEventTypes, eventbus.BufSize(1024), eventbus.Name("ppsync families"))
	if err != nil {
		_ = h.Close()
		hb.cancel()
		return nil, fmt.Errorf("mesh: watch peer events: %w", err)
	}
	hb.goTracked(func() { hb.peerEventsLoop(sub) })
	h.SetStreamHandlerMatch(protoBase, func(p protocol.ID) bool {
		_, _, ok := splitProto(p)
		return ok
	}, hb.dispatch)
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF:    func(_ network.Network, c network.Conn) { hb.onConnected(c) },
		DisconnectedF: func(_ network.Network, c network.Conn) { hb.onDisconnected(c) },
	})
	hb.goTracked(hb.sleepersLoop)
	return hb, nil
}

// sleepersLoop dials, for every family whose gossip sleeps (Config.Lazy,
// no member connected), the bootstrap addresses it is not connected to (a
// relay's other relays), each on its own backoff: one goroutine for all
// sleeping families, instead of a dial loop each. A member reached wakes its
// family.
func (hb *Host) sleepersLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-hb.ctx.Done():
			return
		case <-t.C:
		}
		for _, m := range hb.snapshot() {
			if m.cfg.Lazy && !m.Awake() {
				m.dialBootstrap()
			}
		}
	}
}

// peerEventsLoop hands each event about a peer on to the subscribers
// (gossip) of every family the peer is a member of.
func (hb *Host) peerEventsLoop(sub event.Subscription) {
	defer sub.Close()
	for {
		var ev any
		select {
		case <-hb.ctx.Done():
			return
		case ev = <-sub.Out():
		}
		p, ok := eventPeer(ev)
		if !ok {
			continue
		}
		for _, m := range hb.snapshot() {
			subs := m.subsSnapshot()
			if len(subs) == 0 {
				continue // asleep: no gossip listens
			}
			if _, member := m.cfg.Family.Member(p); !member {
				continue
			}
			for _, s := range subs {
				if s.wants(ev) {
					s.send(ev)
				}
			}
		}
	}
}

// ID returns the node's peer ID.
func (hb *Host) ID() peer.ID { return hb.h.ID() }

// Listening reports whether the host listens on its addresses (those of a
// host started with DeferListen only once Listen ran).
func (hb *Host) Listening() bool { return !hb.cfg.DeferListen || hb.listening.Load() }

// Listen opens the host's listening addresses of a host started with
// DeferListen (once; a host that listens already is left as it is).
func (hb *Host) Listen() error {
	if !hb.cfg.DeferListen || !hb.listening.CompareAndSwap(false, true) {
		return nil
	}
	var addrs []ma.Multiaddr
	for _, a := range hb.cfg.Listen {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return fmt.Errorf("mesh: listen address %q: %w", a, err)
		}
		addrs = append(addrs, m)
	}
	// The host's addresses follow its listeners a moment later: wait for
	// them, so that what the node writes in runtime.json is complete.
	sub, err := hb.h.EventBus().Subscribe(new(event.EvtLocalAddressesUpdated))
	if err != nil {
		return fmt.Errorf("mesh: watch the listen addresses: %w", err)
	}
	defer sub.Close()
	if err := hb.h.Network().Listen(addrs...); err != nil {
		return fmt.Errorf("mesh: listen on %v: %w", hb.cfg.Listen, err)
	}
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	for len(hb.h.Addrs()) == 0 {
		select {
		case <-sub.Out():
		case <-t.C:
			return fmt.Errorf("mesh: listening on %v, but the host lists no address", hb.cfg.Listen)
		case <-hb.ctx.Done():
			return hb.ctx.Err()
		}
	}
	return nil
}

// StopListening closes the host's listeners, keeping its connections: a
// relay stopping calls it before it detaches its families one by one, so
// that a member cut off early finds the port closed (and tries again soon)
// instead of a host that no longer knows its family (which it would take
// for a stranger's and try again only much later).
func (hb *Host) StopListening() {
	sw, ok := hb.h.Network().(interface{ ListenClose(...ma.Multiaddr) })
	if !ok {
		return
	}
	sw.ListenClose(hb.h.Network().ListenAddresses()...)
}

// CloseConnections closes every connection at once. A relay stopping calls
// it after StopListening, before it detaches its families: its members then
// see it gone in one moment, instead of their gossip streams reset family
// by family on a connection still open, which libp2p's pubsub retries only
// a few times before it gives the peer up, on the next connection too (the
// members of the families detached last did not gossip with the restarted
// relay).
func (hb *Host) CloseConnections() {
	for _, c := range hb.h.Network().Conns() {
		_ = c.Close()
	}
}

// Addrs returns the host's addresses, each ending in /p2p/ID.
func (hb *Host) Addrs() []string {
	var out []string
	for _, a := range hb.h.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+hb.h.ID().String())).String())
	}
	return out
}

// Families returns the IDs of the attached families.
func (hb *Host) Families() []string {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	out := make([]string, 0, len(hb.fams))
	for id := range hb.fams {
		out = append(out, id)
	}
	return out
}

// Connections returns the number of open connections and of streams on them.
func (hb *Host) Connections() (conns, streams int) {
	for _, c := range hb.h.Network().Conns() {
		conns++
		streams += len(c.GetStreams())
	}
	return conns, streams
}

// Rejections returns the connections refused that no family claimed, by
// reason (a stranger that never said a hello, a banned peer).
func (hb *Host) Rejections() map[string]uint64 {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	out := make(map[string]uint64, len(hb.counts))
	for k, v := range hb.counts {
		out[k] = v
	}
	return out
}

func (hb *Host) count(reason string) {
	hb.mu.Lock()
	hb.counts[reason]++
	hb.mu.Unlock()
}

// Close detaches every family (each stops as its Close does) and stops the
// host.
func (hb *Host) Close() error {
	hb.life.Lock()
	hb.closing = true
	hb.life.Unlock()
	for _, m := range hb.snapshot() {
		if m != hb.owner {
			_ = m.Close()
		}
	}
	hb.cancel()
	err := hb.h.Close()
	hb.wg.Wait()
	return err
}

func (hb *Host) goTracked(f func()) {
	hb.life.Lock()
	defer hb.life.Unlock()
	if hb.closing {
		return
	}
	hb.wg.Add(1)
	go func() {
		defer hb.wg.Done()
		f()
	}()
}

// snapshot returns the attached families.
func (hb *Host) snapshot() []*Mesh {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	out := make([]*Mesh, 0, len(hb.fams))
	for _, m := range hb.fams {
		out = append(out, m)
	}
	return out
}

// family returns the attached family with this ID, or nil.
func (hb *Host) family(id string) *Mesh {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return hb.fams[id]
}

// Attach joins a family's network on this host: cfg's Key, Listen and Relay
// are the host's and are ignored. The family's Close detaches it.
func (hb *Host) Attach(ctx context.Context, cfg Config) (*Mesh, error) {
	return hb.attach(ctx, cfg, false)
}

func (hb *Host) attach(ctx context.Context, cfg Config, owned bool) (*Mesh, error) {
	if cfg.Family == nil || cfg.Log == nil || cfg.Handler == nil || cfg.Heartbeat == nil {
		return nil, errors.New("mesh: config needs a family, log, handler and heartbeat")
	}
	id := cfg.Family.ID()
	if id == "" || strings.ContainsAny(id, "/ \n") {
		return nil, fmt.Errorf("mesh: family ID %q is not usable in a protocol name", id)
	}
	cfg.Key, cfg.Listen, cfg.Relay = hb.cfg.Key, hb.cfg.Listen, hb.cfg.Relay
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	m, err := newMesh(ctx, cfg, hb)
	if err != nil {
		return nil, err
	}
	hb.mu.Lock()
	if hb.fams[id] != nil {
		hb.mu.Unlock()
		m.cancel()
		return nil, fmt.Errorf("mesh: family %s is already served by this host", id)
	}
	hb.fams[id] = m
	if owned {
		hb.owner = m
	}
	hb.mu.Unlock()
	if err := m.start(); err != nil {
		_ = m.Close()
		return nil, err
	}
	// Tell the family of the connections already open to its members (a
	// relay that serves another family already, or a family added while
	// running).
	for _, c := range hb.h.Network().Conns() {
		if hb.relevantTo(m, c.RemotePeer(), c.Stat().Direction) {
			hb.tell(m, c)
		}
	}
	return m, nil
}

// detach removes a family: its streams are refused from now on, and the
// connections to peers no other family knows are closed.
func (hb *Host) detach(m *Mesh) {
	hb.mu.Lock()
	if hb.fams[m.cfg.Family.ID()] == m {
		delete(hb.fams, m.cfg.Family.ID())
	}
	for id, ms := range hb.told {
		hb.told[id] = without(ms, m)
	}
	hb.hintMu.Lock()
	for p, ms := range hb.hints {
		if ms = without(ms, m); len(ms) == 0 {
			delete(hb.hints, p)
		} else {
			hb.hints[p] = ms
		}
	}
	hb.hintMu.Unlock()
	rest := make([]*Mesh, 0, len(hb.fams))
	for _, o := range hb.fams {
		rest = append(rest, o)
	}
	owned := hb.owner == m
	hb.mu.Unlock()
	if owned {
		return // the host closes with it
	}
	for _, p := range hb.h.Network().Peers() {
		if !m.knows(p) {
			continue
		}
		keep := false
		for _, o := range rest {
			if o.knows(p) {
				keep = true
				break
			}
		}
		if !keep {
			_ = hb.h.Network().ClosePeer(p)
		}
	}
}

func without(ms []*Mesh, m *Mesh) []*Mesh {
	out := ms[:0:0]
	for _, o := range ms {
		if o != m {
			out = append(out, o)
		}
	}
	return out
}

// relevantTo reports whether family m takes part in a connection to p: p is
// a member or a banned peer of m's family, or m dialed it as a candidate (a
// bootstrap address, a LAN peer). A stranger that dialed this host belongs
// to no family until its hello names one.
func (hb *Host) relevantTo(m *Mesh, p peer.ID, dir network.Direction) bool {
	if m.knows(p) {
		return true
	}
	return dir == network.DirOutbound && m.candidate(p)
}

// tell hands connection c to family m once: m tracks its hello and hears
// when it closes.
func (hb *Host) tell(m *Mesh, c network.Conn) {
	hb.mu.Lock()
	if _, open := hb.conns[c.ID()]; !open {
		hb.mu.Unlock()
		return // closed meanwhile
	}
	for _, o := range hb.told[c.ID()] {
		if o == m {
			hb.mu.Unlock()
			return
		}
	}
	hb.told[c.ID()] = append(hb.told[c.ID()], m)
	hb.mu.Unlock()
	if _, member := m.cfg.Family.Member(c.RemotePeer()); member {
		m.wakeUp()
	}
	m.onConnected(c)
}

// toldOf returns the families told of connection c.
func (hb *Host) toldOf(c network.Conn) []*Mesh {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return append([]*Mesh(nil), hb.told[c.ID()]...)
}

// onConnected hands a new connection to the families it concerns and puts
// it on probation: a connection on which no family's hello proved a current
// membership within helloTimeout is closed. It runs in libp2p's Connected
// notification, before the connection accepts any stream.
func (hb *Host) onConnected(c network.Conn) {
	hb.mu.Lock()
	hb.conns[c.ID()] = struct{}{}
	hb.mu.Unlock()
	dir := c.Stat().Direction
	for _, m := range hb.snapshot() {
		if hb.relevantTo(m, c.RemotePeer(), dir) {
			hb.tell(m, c)
		}
	}
	hb.goTracked(func() { hb.probation(c) })
}

func (hb *Host) onDisconnected(c network.Conn) {
	hb.mu.Lock()
	delete(hb.conns, c.ID())
	ms := hb.told[c.ID()]
	delete(hb.told, c.ID())
	hb.mu.Unlock()
	for _, m := range ms {
		m.onDisconnected(c)
	}
}

// probation closes c if no family's hello proved a current membership on it
// within helloTimeout: a stranger, or a member's key used without a hello.
func (hb *Host) probation(c network.Conn) {
	t := time.NewTimer(helloTimeout)
	defer t.Stop()
	select {
	case <-hb.ctx.Done():
		return
	case <-t.C:
	}
	if c.IsClosed() {
		return
	}
	ms := hb.toldOf(c)
	for _, m := range ms {
		if m.connOK(c) {
			return
		}
	}
	if len(ms) == 0 {
		hb.mu.Lock()
		owner := hb.owner
		hb.mu.Unlock()
		if owner != nil {
			ms = []*Mesh{owner} // one family: it is that family's stranger
		} else {
			hb.count("no_certificate")
			hb.log.Warn("disconnected a peer that proved no membership of any family served here", "peer", c.RemotePeer())
		}
	}
	for _, m := range ms {
		m.probationFailed(c)
	}
	_ = c.Close()
}

// dispatch hands a stream to the family its protocol names. Only the hello
// is served to a peer that is not a member of that family yet; every other
// stream of a non-member is reset. A hello for a family not served here is
// read and refused as a served family refuses a stranger's, so a peer
// cannot tell a family it does not belong to from one that is not here.
func (hb *Host) dispatch(s network.Stream) {
	fam, rest, ok := splitProto(s.Protocol())
	var m *Mesh
	if ok {
		m = hb.family(fam)
	}
	if m == nil {
		hb.refuseUnknown(s, rest)
		return
	}
	if rest == gossipKind {
		hb.tell(m, s.Conn()) // its hello, on this connection, is what memberOn waits for
		if !m.memberOn(s.Conn(), true) {
			m.count(streamKind(rest) + "_non_member")
			_ = s.Reset()
			return
		}
		// A member's gossip stream can come before its hello here woke a
		// sleeping family: wake it now rather than reset the stream, which
		// gossipsub retries only a few times before it gives the peer up
		// for as long as the connection lasts.
		m.wakeUp()
	}
	h := m.handler(rest)
	if h == nil {
		m.count(streamKind(rest) + "_unknown_protocol")
		_ = s.Reset()
		return
	}
	if rest != helloKind && rest != gossipKind && !m.memberOn(s.Conn(), false) {
		m.count(streamKind(rest) + "_non_member")
		_ = s.Reset()
		return
	}
	if !m.enterStream() {
		_ = s.Reset()
		return
	}
	defer m.leaveStream()
	hb.tell(m, s.Conn())
	h(m.tapped(s))
}

// memberOn reports whether the peer of c is a member of m's family. A peer
// not known as one yet, on a connection whose hello is under way (this node
// dialed it and waits for its answer, which carries its certificate), is
// waited for: its first stream can come a moment before that answer. A
// gossip stream (expect) also waits for a hello not begun yet: a gossipsub
// that opens its stream as soon as the connection is identified, before its
// node's hello, would otherwise never gossip with this node (it does not
// try again); a stranger's waits until probation closes the connection.
func (m *Mesh) memberOn(c network.Conn, expect bool) bool {
	if _, ok := m.cfg.Family.Member(c.RemotePeer()); ok {
		return true
	}
	if !m.waitHello(m.ctx, c, expect) {
		return false
	}
	_, ok := m.cfg.Family.Member(c.RemotePeer())
	return ok
}

// refuseUnknown refuses a stream for a family this host does not serve.
func (hb *Host) refuseUnknown(s network.Stream, rest protocol.ID) {
	hb.mu.Lock()
	owner := hb.owner
	hb.mu.Unlock()
	if owner != nil {
		owner.count("wrong_family")
	} else {
		hb.count("stream_unknown_family")
	}
	if rest != helloKind {
		_ = s.Reset()
		return
	}
	hb.goTracked(func() {
		_ = s.SetDeadline(time.Now().Add(helloTimeout))
		_, _ = readFrame(bufio.NewReader(s), maxStrangerHello)
		_ = s.Reset()
		c := s.Conn()
		if len(hb.toldOf(c)) == 0 {
			hb.log.Warn("disconnected a node of a family not served here", "peer", c.RemotePeer())
			_ = c.Close()
		}
	})
}

// streamKind names a stream's protocol in counts: "/catchup/1" is "catchup".
func streamKind(rest protocol.ID) string {
	k, _, _ := strings.Cut(strings.TrimPrefix(string(rest), "/"), "/")
	return k
}

// helloKind is the unscoped rest of the hello protocol's ID.
const helloKind protocol.ID = "/hello/1"

// hostGater keeps the host to its families: a peer is admitted if some
// family admits it (see gater for one family's rules).
type hostGater struct{ hb *Host }

func (g hostGater) InterceptPeerDial(p peer.ID) bool {
	ms := g.hb.snapshot()
	for _, m := range ms {
		if m.cfg.Family.Banned(p) {
			continue
		}
		if _, ok := m.cfg.Family.Member(p); ok || m.candidate(p) {
			return true
		}
	}
	for _, m := range ms {
		if m.cfg.Family.Banned(p) {
			m.count("dial_banned")
		} else {
			m.count("dial_non_member")
		}
	}
	return false
}

func (g hostGater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.InterceptPeerDial(p) }

func (g hostGater) InterceptAccept(network.ConnMultiaddrs) bool { return true } // the peer ID is not known yet

func (g hostGater) InterceptSecured(dir network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	ms := g.hb.snapshot()
	var bannedBy []*Mesh
	for _, m := range ms {
		if m.cfg.Family.Banned(p) { // listed and banned: banned wins
			bannedBy = append(bannedBy, m)
			continue
		}
		if _, ok := m.cfg.Family.Member(p); ok && !m.overConns() {
			return true
		}
	}
	if len(bannedBy) > 0 {
		for _, m := range bannedBy {
			m.count("banned_peer")
			if dir == network.DirInbound {
				m.bannedTried(p)
			}
		}
		return false
	}
	if dir == network.DirOutbound {
		for _, m := range ms {
			if m.candidate(p) {
				return true
			}
		}
		for _, m := range ms {
			m.count("dial_non_member")
		}
		return false
	}
	return true // probation: see Host.probation and acceptHello
}

func (g hostGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// relayACL lets only members of a family served here reserve a slot, and
// joins two peers only if they are members of one family.
type relayACL struct{ hb *Host }

func (a relayACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	if a.hb.memberOf(p, nil) {
		return true
	}
	a.hb.count("relay_reserve_non_member")
	return false
}

func (a relayACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dst peer.ID) bool {
	if a.hb.memberOf(src, func(m *Mesh) bool { _, ok := m.cfg.Family.Member(dst); return ok }) {
		return true
	}
	a.hb.count("relay_connect_non_member")
	return false
}

// memberOf reports whether p is a current member of a family served here
// for which also (if not nil) holds. It looks first at the families where
// it last found p a member, then at every family: a relay serving a
// thousand families checks each member's slot and each circuit between two
// members, and looking through every family each time was most of its CPU
// while thousands of sites connected. A hint is only where to look first:
// each use checks that the family is still attached and p still its member,
// so a revoked member, or a family removed, is never let in by one.
func (hb *Host) memberOf(p peer.ID, also func(*Mesh) bool) bool {
	is := func(m *Mesh) bool {
		_, ok := m.cfg.Family.Member(p)
		return ok && (also == nil || also(m))
	}
	hb.hintMu.Lock()
	hinted := hb.hints[p] // never changed in place
	hb.hintMu.Unlock()
	for _, m := range hinted {
		if hb.family(m.cfg.Family.ID()) == m && is(m) {
			return true
		}
	}
	for _, m := range hb.snapshot() {
		if is(m) {
			hb.hintMu.Lock()
			next := append([]*Mesh{m}, without(hb.hints[p], m)...)
			hb.hints[p] = next[:min(len(next), maxHints)]
			hb.hintMu.Unlock()
			return true
		}
	}
	return false
}

// maxHints bounds the families remembered for one peer (see memberOf).
const maxHints = 4

// relayResourceManager is libp2p's resource manager with its defaults per
// peer, but room for a relay's thousands of members, their connections and
// their streams. libp2p's defaults are sized for one application's peers and
// scaled to the machine: on this 24 GiB machine they admit about 256 inbound
// connections in all and 1,265 inbound streams of any one protocol (every
// member keeps a gossip stream to its relay), and they count against an
// eighth of the machine's memory (a sixth of that for any one protocol) the
// whole initial window yamux charges each stream when it opens (256 KiB),
// used or not. A relay serving 1,000 families of three sites, all connected,
// held 800 MB yet refused members past about 2,450 sites
// (TestRelayResourceManagerAdmitsThousandsOfMembers). What a relay holds is
// bounded by its soft memory limit and each family's own limits on
// connections, streams and the gossip it holds (Limits), not by that count.
func relayResourceManager() (network.ResourceManager, error) {
	scaled := defaultLimits()
	many := rcmgr.ResourceLimits{
		Conns: 32768, ConnsInbound: 16384, ConnsOutbound: 16384,
		Streams: 262144, StreamsInbound: 131072, StreamsOutbound: 131072,
		Memory: rcmgr.Unlimited64,
	}
	transient := rcmgr.ResourceLimits{
		Conns: 4096, ConnsInbound: 2048, ConnsOutbound: 2048,
		Streams: 8192, StreamsInbound: 4096, StreamsOutbound: 4096,
		Memory: rcmgr.Unlimited64,
	}
	// Every protocol and service (gossip, the family protocols, identify,
	// the circuit relay) as the system: thousands of members hold the same
	// protocol's streams at once.
	shared := rcmgr.ResourceLimits{
		Streams: 262144, StreamsInbound: 131072, StreamsOutbound: 131072,
		Memory: rcmgr.Unlimited64,
	}
	cfg := rcmgr.PartialLimitConfig{System: many, Transient: transient,
		ProtocolDefault: shared, ServiceDefault: shared,
		Protocol: map[protocol.ID]rcmgr.ResourceLimits{}, Service: map[string]rcmgr.ResourceLimits{}}
	base := scaled.ToPartialLimitConfig()
	for id := range base.Protocol {
		cfg.Protocol[id] = shared
	}
	for name := range base.Service {
		cfg.Service[name] = shared
	}
	return resourceManager(cfg.Build(scaled))
}

// siteResourceManager is libp2p's default resource manager: its limits
// scaled to the machine.
func siteResourceManager() (network.ResourceManager, error) {
	return resourceManager(defaultLimits())
}

// defaultLimits are libp2p's default limits, with its services', scaled to
// the machine.
func defaultLimits() rcmgr.ConcreteLimitConfig {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	return limits.AutoScale()
}

// resourceManager is libp2p's resource manager with limits, without its
// Prometheus statistics. libp2p keeps those unless told not to, whatever
// libp2p.DisableMetrics says, and then passes every stream and connection
// opened or closed, and every memory reservation, through a trace into
// statistics of the process's own, which nothing here reads: 12 % of a
// relay's CPU serving 900 connected sites (a profile of
// BenchmarkRelayFamilies).
func resourceManager(limits rcmgr.ConcreteLimitConfig) (network.ResourceManager, error) {
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, fmt.Errorf("mesh: resource manager: %w", err)
	}
	return rm, nil
}
