package mesh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ppsync/ppsync/internal/wire"
)

// DefaultHeartbeatInterval is how often a node gossips its heartbeat unless
// configured otherwise; a member quiet for half of it is pinged.
const DefaultHeartbeatInterval = 5 * time.Second

// Config configures the mesh.
type Config struct {
	Key       ed25519.PrivateKey // the node's identity (required)
	Listen    []string           // multiaddrs to listen on
	Bootstrap []string           // multiaddrs of members to dial (with /p2p/ID), usually the relay
	Relay     bool               // run the members-only circuit relay (the relay role)
	// Tap, if set, receives a copy of every byte sent and received on the
	// mesh after transport decryption (an audit aid; see tap.go).
	Tap io.Writer
	// Prepare, if set, sees each decoded catch-up batch in the reader
	// goroutine, before it is handed on: work done there (opening sealed
	// entries) overlaps with committing the batch before.
	Prepare func(run []*wire.Signed)
	Family  Family  // membership (required)
	Log     Log     // serves catch-up (required)
	Handler Handler // receives entries and events (required)
	Logger  *slog.Logger
	// MDNS enables LAN discovery. Off in tests (it multicasts on the LAN).
	MDNS bool
	// HeartbeatInterval is how often this node gossips its heartbeat
	// (default DefaultHeartbeatInterval).
	HeartbeatInterval time.Duration
	// Heartbeat returns this node's current heartbeat (required).
	Heartbeat func() Heartbeat
	// RedialInterval is the longest wait between two attempts to reach an
	// unreachable member or bootstrap address (default 3s for a site, 30s for
	// a relay, which mostly waits for sites to dial it). Attempts start at
	// 0.5s apart after a loss and double up to it.
	RedialInterval time.Duration
	// LivenessTimeout is how long a connected member may stay silent (no
	// heartbeat, no message, no answer to a liveness ping) before this node
	// closes its connections to it and reports it gone (default twice the
	// heartbeat interval plus 1s, at least 5s). A cut link that sends no
	// reset is noticed this way, not after TCP's minutes.
	LivenessTimeout time.Duration
	// Now is the clock of the catch-up rate limit (default time.Now).
	Now func() time.Time
	// Limits bound what this family may take of a host shared with other
	// families (none by default).
	Limits Limits
	// DeferListen: New starts the host without listening; Host().Listen
	// opens the ports (a relay, once every family it serves is attached).
	DeferListen bool
	// Lazy: the family's gossip and its loops run only while a member is
	// connected, so a family without one costs no goroutine, connection or
	// stream (a relay serving many families). They start when a member
	// connects and stop SleepAfter (default 1 minute) after the last left.
	Lazy       bool
	SleepAfter time.Duration
}

// Mesh is the node's presence in its family's network.
type Mesh struct {
	cfg  Config
	tap  *tap // nil: no audit copy
	log  *slog.Logger
	hub  *Host   // the libp2p host, perhaps shared with other families
	host famHost // the family's view of it

	// gossip is the family's gossip and the loops that serve its members
	// (dial, liveness, heartbeat) while they run; nil while the family
	// sleeps (Config.Lazy, no member connected). wakeMu orders waking and
	// sleeping; sleepTimer puts it to sleep after the last member left.
	gossip     atomic.Pointer[gossip]
	wakeMu     sync.Mutex
	sleepTimer *time.Timer

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	life    sync.Mutex // guards closing and wg.Add against Close's wg.Wait
	closing bool

	codecs   *codecs
	redial   chan struct{}
	dialWake chan struct{} // wakeDialer
	soon     chan struct{} // HeartbeatSoon's nudges to the heartbeat loop
	instance string        // random per process

	hmu      sync.RWMutex
	handlers map[protocol.ID]network.StreamHandler // by unscoped protocol ("/hello/1")
	subs     []*famSub                             // event subscriptions through the family's view

	mu           sync.Mutex
	peers        map[peer.ID]*peerState
	conns        map[string]*connState // by connection ID: the hello on each
	links        map[peer.ID]links     // by peer: its open connections, direct and through a relay's circuit
	knownDocs    map[[32]byte]struct{} // hashes of documents installed
	serving      map[peer.ID]int       // catch-up sessions being served, per peer
	servingAll   int                   // catch-up sessions being served, to all
	streams      int                   // streams members opened to this node, open now (counted with a Streams limit)
	gossipBucket *bucket               // the gossip rate limit, with a Gossip limit
	limitLogged  map[string]time.Time  // when a limit's refusal was last logged, by kind
	starts       map[peer.ID]*bucket   // catch-up session starts, per peer
	counts       map[string]uint64     // rejections by reason
	bootAIs      []peer.AddrInfo       // bootstrap addresses, parsed
	bootAddrs    []string              // bootstrap addresses, as given
	targets      map[peer.ID]*target
	lan          map[peer.ID]peer.AddrInfo // found on the LAN, not members yet
	waiters      map[peer.ID][]chan helloResult
	reservations map[peer.ID]time.Time // relay -> reservation expiry
	reserving    map[peer.ID]bool
	banned       map[peer.ID]time.Time // revoked or superseded peers that tried to connect, last try
}

type peerState struct {
	instances map[string]bool // process instances seen since it last disconnected fully
	member    Member
	hello     bool      // the hello exchange completed
	lastSeen  time.Time // last heartbeat or hello
	direct    time.Time // last heartbeat it sent this node itself (not forwarded by another)
	heartbeat *Heartbeat
	alive     time.Time // last sign of life on a connection to it
	pinging   bool      // a liveness ping is under way
	lost      time.Time // when it was last disconnected for silence
	helloAt   time.Time // when the hello completed on its current connection
	restarted time.Time // when its connection was last closed for stalled gossip
}

// New starts the mesh of a node that serves one family: it starts a host of
// its own, listens, joins the family's topics and begins dialing members.
// Close stops it and the host.
func New(ctx context.Context, cfg Config) (*Mesh, error) {
	hb, err := NewHost(ctx, HostConfig{Key: cfg.Key, Listen: cfg.Listen, Relay: cfg.Relay, Logger: cfg.Logger, DeferListen: cfg.DeferListen})
	if err != nil {
		return nil, err
	}
	m, err := hb.attach(ctx, cfg, true)
	if err != nil {
		_ = hb.Close()
		return nil, err
	}
	return m, nil
}

// newMesh makes a family's mesh on host hb; start starts it.
func newMesh(ctx context.Context, cfg Config, hb *Host) (*Mesh, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.RedialInterval <= 0 {
		cfg.RedialInterval = 3 * time.Second
		if cfg.Relay {
			cfg.RedialInterval = 30 * time.Second
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LivenessTimeout <= 0 {
		cfg.LivenessTimeout = max(2*cfg.HeartbeatInterval+time.Second, 5*time.Second)
	}
	m := &Mesh{cfg: cfg, log: cfg.Logger, hub: hb, peers: map[peer.ID]*peerState{}, counts: map[string]uint64{}, redial: make(chan struct{}, 1), dialWake: make(chan struct{}, 1), soon: make(chan struct{}, 1),
		targets: map[peer.ID]*target{}, lan: map[peer.ID]peer.AddrInfo{}, waiters: map[peer.ID][]chan helloResult{},
		reservations: map[peer.ID]time.Time{}, reserving: map[peer.ID]bool{}, handlers: map[protocol.ID]network.StreamHandler{},
		conns: map[string]*connState{}, links: map[peer.ID]links{}, knownDocs: map[[32]byte]struct{}{}, serving: map[peer.ID]int{}, starts: map[peer.ID]*bucket{}}
	m.host = famHost{Host: hb.h, m: m}
	if cfg.Tap != nil {
		m.tap = &tap{w: cfg.Tap}
	}
	for _, d := range cfg.Family.Documents() {
		m.knownDocs[sha256.Sum256(d)] = struct{}{}
	}
	var err error
	if m.codecs, err = newCodecs(); err != nil {
		return nil, err
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("mesh: instance ID: %w", err)
	}
	m.instance = hex.EncodeToString(nonce[:])
	m.ctx, m.cancel = context.WithCancel(ctx)

	seen := map[string]bool{}
	for _, a := range cfg.Bootstrap {
		if seen[a] {
			continue
		}
		seen[a] = true
		ai, err := peer.AddrInfoFromString(a)
		if err != nil {
			m.cancel()
			return nil, fmt.Errorf("mesh: bootstrap address %q: %v (it must end in /p2p/PEER_ID)", a, err)
		}
		m.bootAIs, m.bootAddrs = append(m.bootAIs, *ai), append(m.bootAddrs, a)
	}
	return m, nil
}

func (m *Mesh) start() error {
	m.host.SetStreamHandler(helloProto, m.tracked(m.handleHello))
	m.host.SetStreamHandler(catchupProto, m.tracked(m.handleCatchup))
	m.host.SetStreamHandler(frontierProto, m.tracked(m.handleFrontier))
	m.host.SetStreamHandler(forkProofProto, m.tracked(m.handleForkProof))
	m.host.SetStreamHandler(pushProto, m.tracked(m.handlePush))
	m.host.SetStreamHandler(pingProto, m.tracked(m.handlePing))
	if !m.cfg.Lazy {
		if err := m.wake(); err != nil {
			return err
		}
	}
	if m.cfg.MDNS {
		if err := m.startMDNS(); err != nil {
			m.log.Warn("LAN discovery off", "err", err)
		}
	}
	return nil
}

// goTracked runs f on a goroutine that Close waits for; once Close began,
// it runs nothing.
func (m *Mesh) goTracked(f func()) {
	if !m.enter() {
		return
	}
	go func() {
		defer m.wg.Done()
		f()
	}()
}

// tracked wraps a stream handler so that Close waits for it: libp2p runs
// handlers on goroutines of its own, and one still reading the log (serving
// a catch-up) or writing to it (a push) must end before the node closes the
// database under it.
func (m *Mesh) tracked(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		if !m.enter() {
			_ = s.Reset()
			return
		}
		defer m.wg.Done()
		h(s) // tapped by Host.dispatch
	}
}

// enter counts one more goroutine for Close to wait for, unless Close began.
func (m *Mesh) enter() bool {
	m.life.Lock()
	defer m.life.Unlock()
	if m.closing {
		return false
	}
	m.wg.Add(1)
	return true
}

// Close leaves the family's network and waits for every goroutine and
// stream handler.
func (m *Mesh) Close() error {
	m.life.Lock()
	m.closing = true
	m.life.Unlock()
	m.wakeMu.Lock()
	if m.sleepTimer != nil {
		m.sleepTimer.Stop()
	}
	m.wakeMu.Unlock()
	m.cancel()
	m.hub.detach(m)
	var err error
	if m.hub.owner == m {
		err = m.hub.Close()
	}
	m.wg.Wait()
	if g := m.gossip.Load(); g != nil {
		g.wg.Wait()
		g.retire() // the host's other families go on
	}
	return err
}

// Host returns the libp2p host this family's mesh runs on (a relay attaches
// its further families to it).
func (m *Mesh) Host() *Host { return m.hub }

// ID returns this node's peer ID.
func (m *Mesh) ID() peer.ID { return m.host.ID() }

// Addrs returns this node's addresses, each ending in /p2p/ID.
func (m *Mesh) Addrs() []string {
	var out []string
	for _, a := range m.host.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+m.host.ID().String())).String())
	}
	return out
}

// count records a rejection by reason.
func (m *Mesh) count(reason string) {
	m.mu.Lock()
	m.counts[reason]++
	m.mu.Unlock()
}

// bannedTried records that a banned peer (revoked, or a moved site's old
// machine) tried to connect.
func (m *Mesh) bannedTried(p peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.banned == nil {
		m.banned = map[peer.ID]time.Time{}
	}
	if len(m.banned) < 1024 || m.banned[p] != (time.Time{}) {
		m.banned[p] = time.Now()
	}
}

// BannedTries returns, per banned peer that tried to connect (a revoked copy
// of a site, or a moved site's old machine still running), when it last
// tried.
func (m *Mesh) BannedTries() map[peer.ID]time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[peer.ID]time.Time, len(m.banned))
	for p, t := range m.banned {
		out[p] = t
	}
	return out
}

// Rejections returns the count of rejected connections, streams and messages
// by reason.
func (m *Mesh) Rejections() map[string]uint64 {
	m.mu.Lock()
	out := make(map[string]uint64, len(m.counts))
	for k, v := range m.counts {
		out[k] = v
	}
	m.mu.Unlock()
	if m.hub.owner == m {
		for k, v := range m.hub.Rejections() {
			out[k] += v
		}
	}
	return out
}

// setHandler serves (or, with nil, stops serving) an unscoped protocol.
func (m *Mesh) setHandler(p protocol.ID, h network.StreamHandler) {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	if h == nil {
		delete(m.handlers, p)
		return
	}
	m.handlers[p] = h
}

func (m *Mesh) handler(p protocol.ID) network.StreamHandler {
	m.hmu.RLock()
	defer m.hmu.RUnlock()
	return m.handlers[p]
}

func (m *Mesh) addSub(s *famSub) {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	m.subs = append(m.subs, s)
}

func (m *Mesh) dropSub(s *famSub) {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	for i, o := range m.subs {
		if o == s {
			m.subs = append(m.subs[:i], m.subs[i+1:]...)
			return
		}
	}
}

func (m *Mesh) subsSnapshot() []*famSub {
	m.hmu.RLock()
	defer m.hmu.RUnlock()
	return append([]*famSub(nil), m.subs...)
}

// knows reports whether p is a member or a banned peer of this family.
func (m *Mesh) knows(p peer.ID) bool {
	if _, ok := m.cfg.Family.Member(p); ok {
		return true
	}
	return m.cfg.Family.Banned(p)
}

// tracksPeer reports whether this family was told of a connection to p.
func (m *Mesh) tracksPeer(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, st := range m.conns {
		if st.peer == p {
			return true
		}
	}
	return false
}

// wake starts the family's gossip and the loops that serve its members, if
// they are not running.
func (m *Mesh) wake() error {
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	if m.sleepTimer != nil {
		m.sleepTimer.Stop()
		m.sleepTimer = nil
	}
	if m.gossip.Load() != nil || m.ctx.Err() != nil {
		return nil
	}
	g := &gossip{hostHeld: &m.hub.gossipHeld}
	g.ctx, g.cancel = context.WithCancel(m.ctx)
	if err := m.startGossip(g); err != nil {
		g.cancel()
		g.wg.Wait()
		g.retire()
		return err
	}
	m.goAwake(g, m.dialLoop)
	m.goAwake(g, m.livenessLoop)
	m.gossip.Store(g)
	if m.cfg.Lazy {
		m.log.Debug("the family's gossip woke: a member connected", "family", m.cfg.Family.ID())
	}
	return nil
}

// wakeUp wakes a lazy family whose member connected; a failure is logged
// (the next connection tries again).
func (m *Mesh) wakeUp() {
	if !m.cfg.Lazy || m.gossip.Load() != nil {
		return
	}
	if err := m.wake(); err != nil {
		m.log.Warn("the family's gossip did not start", "family", m.cfg.Family.ID(), "err", err)
	}
}

// goAwake runs f(g's context) on a goroutine that Close and sleep wait for.
func (m *Mesh) goAwake(g *gossip, f func(context.Context)) {
	if !m.enter() {
		return
	}
	g.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer g.wg.Done()
		f(g.ctx)
	}()
}

// sleepSoon puts a lazy family to sleep SleepAfter from now, unless a member
// connects meanwhile.
func (m *Mesh) sleepSoon() {
	if !m.cfg.Lazy {
		return
	}
	after := m.cfg.SleepAfter
	if after <= 0 {
		after = time.Minute
	}
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	if m.sleepTimer != nil {
		m.sleepTimer.Stop()
	}
	m.sleepTimer = time.AfterFunc(after, m.sleepIfAlone)
}

// sleepIfAlone stops the family's gossip and loops if no connection of the
// family is open.
func (m *Mesh) sleepIfAlone() {
	m.mu.Lock()
	alone := len(m.conns) == 0
	m.mu.Unlock()
	if !alone {
		return
	}
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	m.sleepTimer = nil
	g := m.gossip.Load()
	if g == nil {
		return
	}
	m.mu.Lock()
	alone = len(m.conns) == 0
	m.mu.Unlock()
	if !alone {
		return
	}
	m.gossip.Store(nil)
	g.cancel()
	g.wg.Wait()
	g.retire()
	// Its gossip streams end with it; a member that connects wakes a new one.
	m.setHandler(gossipKind, nil)
	m.log.Debug("the family's gossip sleeps: no member connected", "family", m.cfg.Family.ID())
}

// Awake reports whether the family's gossip runs (always, unless Lazy).
func (m *Mesh) Awake() bool { return m.gossip.Load() != nil }
