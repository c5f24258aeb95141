package mesh

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

const (
	// dialTimeout bounds one connection attempt (transport, security
	// handshake, muxer).
	dialTimeout = 5 * time.Second
	// dialRetryMin is the first wait after a failed attempt; each further
	// failure doubles it up to Config.RedialInterval.
	dialRetryMin = 500 * time.Millisecond
	// notMemberRetry is how long a candidate that answered but proved no
	// membership (another family's node, a stale address) is left alone
	// before it is tried again; it doubles up to notMemberRetryMax.
	notMemberRetry    = 30 * time.Second
	notMemberRetryMax = 10 * time.Minute
	// maxLANCandidates bounds the peers found on the LAN that are not known
	// members yet.
	maxLANCandidates = 32
)

// Candidate states, as Bootstrap reports them.
const (
	CandidateTrying      = "trying"      // not connected yet, or dialing
	CandidateConnected   = "connected"   // connected and proved a current membership
	CandidateUnreachable = "unreachable" // the last attempt could not connect
	CandidateNotMember   = "not-member"  // it answered but is not a member of this family
)

// target is something the dial loop keeps trying to connect to: a member, a
// bootstrap address or a peer found on the LAN. Guarded by Mesh.mu.
type target struct {
	fails    int
	next     time.Time // no attempt before this
	inflight bool
	state    string // Candidate*
	detail   string // the last error, in plain words
	since    time.Time
}

func (t *target) set(state, detail string) {
	if t.state != state {
		t.since = time.Now()
	}
	t.state, t.detail = state, detail
}

// BootstrapInfo describes one bootstrap address as this node sees it.
type BootstrapInfo struct {
	Addr   string
	PeerID peer.ID
	Site   string // the member's site once it proved its membership
	State  string // Candidate*
	Detail string // why it is unreachable or refused, in plain words
	Since  time.Time
}

// dialLoop keeps this node connected to the family: it dials the bootstrap
// addresses, the peers found on the LAN and every member it is not connected
// to (directly, or through a relay), each on its own backoff, and reserves a
// slot on every relay it is connected to (sites).
func (m *Mesh) dialLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		wait := idleDialTick
		if m.dialRound() && !m.cfg.Relay {
			wait = dialTick
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.dialWake:
		case <-m.redial:
			m.resetBackoff()
		}
	}
}

// dialTick is how often a site's dial loop looks for work while some
// attempt runs or is due soon; idleDialTick while there is none (every
// target connected, or backing off for longer), and always at a relay,
// which mostly waits to be dialed and runs one loop for each family it
// serves. At a quarter of a second, 500 families' loops took 6 % of a
// relay's CPU with 1,500 sites connected, and a site's loop with everything
// connected was most of what a connected site spent on its own (a tenth of
// the CPU of 900 simulated sites). A member lost (wake), Sync Now and a
// member found on the LAN (Redial) start a round at once.
const (
	dialTick     = 250 * time.Millisecond
	idleDialTick = 2 * time.Second
)

// wakeDialer starts a dial round now, without resetting any backoff.
func (m *Mesh) wakeDialer() { nudge(m.dialWake) }

// nudge wakes the goroutine that reads ch, a channel with room for one,
// without waiting: a nudge still pending stands for this one too.
func nudge(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Redial asks the dial loop to try every unconnected member and bootstrap
// address now (Sync Now, a new member, a member just connected).
func (m *Mesh) Redial() { nudge(m.redial) }

// resetBackoff makes every target that failed to connect (not one that
// proved to be no member) due now.
func (m *Mesh) resetBackoff() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for _, t := range m.targets {
		if t.state != CandidateNotMember {
			t.next = now
			t.fails = 0
		}
	}
}

// targetLocked returns p's dial state, creating it.
func (m *Mesh) targetLocked(p peer.ID) *target {
	t := m.targets[p]
	if t == nil {
		t = &target{state: CandidateTrying, since: time.Now()}
		m.targets[p] = t
	}
	return t
}

// claim marks p's attempt as started if one is due and none is running.
// busy reports an attempt at p running (this one or an earlier one) or due
// within idleDialTick: the dial loop then looks again at dialTick.
func (m *Mesh) claim(p peer.ID) (started, busy bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targetLocked(p)
	if t.inflight {
		return false, true
	}
	if now := time.Now(); now.Before(t.next) {
		return false, t.next.Before(now.Add(idleDialTick))
	}
	t.inflight = true
	return true, true
}

// settle records the outcome of an attempt and schedules the next one.
func (m *Mesh) settle(p peer.ID, state, detail string) {
	m.mu.Lock()
	t := m.targetLocked(p)
	t.inflight = false
	prev := t.state
	t.set(state, detail)
	now := time.Now()
	switch state {
	case CandidateConnected:
		t.fails, t.next = 0, now
	case CandidateNotMember:
		t.fails++
		t.next = now.Add(backoff(notMemberRetry, notMemberRetryMax, t.fails))
	default:
		t.fails++
		t.next = now.Add(backoff(dialRetryMin, m.cfg.RedialInterval, t.fails))
	}
	m.mu.Unlock()
	if state == CandidateNotMember && prev != CandidateNotMember {
		m.log.Warn("an address given to this node is not a member of this family", "peer", p, "detail", detail)
	}
}

func backoff(base, limit time.Duration, fails int) time.Duration {
	d := base
	for i := 1; i < fails && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// dialRound starts the attempts that are due. busy reports an attempt
// running or due within idleDialTick.
func (m *Mesh) dialRound() (busy bool) {
	busy = m.dialBootstrap()
	for _, ai := range m.lanCandidates() {
		if m.connected(ai.ID) {
			continue
		}
		started, soon := m.claim(ai.ID)
		busy = busy || soon
		if started {
			m.goTracked(func() { m.dialCandidate(ai) })
		}
	}
	members := m.cfg.Family.Members()
	// The relays this node is connected to, found only when needed: a
	// relay, with every member connected, needs them for nothing.
	var relays []peer.AddrInfo
	found := false
	relaysNow := func() []peer.AddrInfo {
		if !found {
			relays, found = m.relays(members), true
		}
		return relays
	}
	if !m.cfg.Relay {
		for _, r := range relaysNow() {
			m.reserve(r)
		}
	}
	for _, mem := range members {
		p := mem.PeerID
		if p == m.host.ID() {
			continue
		}
		if m.connected(p) {
			m.markConnected(p)
			continue
		}
		started, soon := m.claim(p)
		busy = busy || soon
		if started {
			rs := relaysNow()
			m.goTracked(func() { m.dialMember(p, rs) })
		}
	}
	return busy
}

// dialBootstrap dials the bootstrap addresses that are due. busy reports an
// attempt at one running or due within idleDialTick.
func (m *Mesh) dialBootstrap() (busy bool) {
	for _, ai := range m.bootAIs {
		if ai.ID == m.host.ID() {
			continue
		}
		if m.connected(ai.ID) {
			m.markConnected(ai.ID)
			continue
		}
		started, soon := m.claim(ai.ID)
		busy = busy || soon
		if started {
			m.goTracked(func() { m.dialCandidate(ai) })
		}
	}
	return busy
}

// markConnected records that p is connected (by whoever dialed), so the
// next loss starts from the shortest backoff. A target already recorded so
// is left alone without asking the roster: every dial round calls this for
// every connected member.
func (m *Mesh) markConnected(p peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.targets[p]; t != nil && !t.inflight && (t.state != CandidateConnected || t.fails != 0) {
		if _, ok := m.cfg.Family.Member(p); ok {
			t.set(CandidateConnected, "")
			t.fails = 0
		}
	}
}

// reserve keeps a slot on relay r (one attempt at a time), so members can
// reach this node through it.
func (m *Mesh) reserve(r peer.AddrInfo) {
	m.mu.Lock()
	exp, ok := m.reservations[r.ID]
	busy := m.reserving[r.ID]
	if busy || (ok && time.Until(exp) > 10*time.Minute) {
		m.mu.Unlock()
		return
	}
	m.reserving[r.ID] = true
	m.mu.Unlock()
	m.goTracked(func() {
		ctx, cancel := context.WithTimeout(m.ctx, dialTimeout)
		rsv, err := client.Reserve(ctx, m.host, r)
		cancel()
		m.mu.Lock()
		delete(m.reserving, r.ID)
		if err == nil {
			m.reservations[r.ID] = rsv.Expiration
		} else {
			// Try again after a while, not on every tick.
			m.reservations[r.ID] = time.Now().Add(-10*time.Minute + m.cfg.RedialInterval)
		}
		m.mu.Unlock()
		if err != nil {
			m.log.Debug("relay reservation failed", "relay", r.ID, "err", err)
			return
		}
		m.log.Debug("relay slot reserved", "relay", r.ID, "until", rsv.Expiration)
	})
}

// dialMember connects to member p: at the addresses known for it, else
// through each relay this node is connected to.
func (m *Mesh) dialMember(p peer.ID, relays []peer.AddrInfo) {
	var lastErr error
	if addrs := m.host.Peerstore().Addrs(p); len(addrs) > 0 {
		if lastErr = m.connect(peer.AddrInfo{ID: p, Addrs: addrs}); lastErr == nil {
			m.settle(p, CandidateConnected, "")
			return
		}
	}
	for _, r := range relays {
		if r.ID == p {
			continue
		}
		var circ []ma.Multiaddr
		for _, a := range r.Addrs {
			c, err := ma.NewMultiaddr(a.String() + "/p2p/" + r.ID.String() + "/p2p-circuit")
			if err == nil {
				circ = append(circ, c)
			}
		}
		if len(circ) == 0 {
			continue
		}
		if lastErr = m.connect(peer.AddrInfo{ID: p, Addrs: circ}); lastErr == nil {
			m.settle(p, CandidateConnected, "")
			return
		}
	}
	detail := "no address known yet"
	if lastErr != nil {
		detail = plainDialError(lastErr)
	}
	m.settle(p, CandidateUnreachable, detail)
}

// dialCandidate connects to a bootstrap address or a peer found on the LAN
// and waits for the hello exchange. The peer ID is pinned by the address and
// proved by the secure channel, so the dial is safe; until its hello proves a
// current membership the peer is on probation like an inbound stranger: it is
// sent this node's own certificate only, served nothing but the hello, and
// disconnected after helloTimeout.
func (m *Mesh) dialCandidate(ai peer.AddrInfo) {
	if len(ai.Addrs) > 0 {
		m.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
	}
	wait := m.helloWaiter(ai.ID)
	if err := m.connect(ai); err != nil {
		m.dropWaiter(ai.ID, wait)
		m.settle(ai.ID, CandidateUnreachable, plainDialError(err))
		return
	}
	if _, ok := m.cfg.Family.Member(ai.ID); ok && m.helloDone(ai.ID) {
		m.dropWaiter(ai.ID, wait)
		m.settle(ai.ID, CandidateConnected, "")
		return
	}
	t := time.NewTimer(helloTimeout + time.Second)
	defer t.Stop()
	var res helloResult
	select {
	case <-m.ctx.Done():
		m.dropWaiter(ai.ID, wait)
		return
	case <-t.C:
		m.dropWaiter(ai.ID, wait)
		res = helloResult{reason: "it did not complete the hello exchange in time", noAnswer: true}
	case res = <-wait:
	}
	if res.ok {
		m.settle(ai.ID, CandidateConnected, "")
		return
	}
	if res.noAnswer {
		m.settle(ai.ID, CandidateUnreachable, res.reason)
	} else {
		m.settle(ai.ID, CandidateNotMember, res.reason)
	}
	if _, ok := m.cfg.Family.Member(ai.ID); !ok {
		m.host.Network().ClosePeer(ai.ID)
	}
}

// plainDialError turns a libp2p dial error into a few plain words.
func plainDialError(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "connection refused"):
		return "connection refused: nothing listens at that address"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "timeout") || strings.Contains(s, "deadline"):
		return "no answer (timed out): the machine is off, the address is wrong, or a firewall drops the traffic"
	case strings.Contains(s, "peer id mismatch") || strings.Contains(s, "unexpected peer"):
		return "another node answers at that address (its peer ID differs from the one in the address)"
	case strings.Contains(s, "no route to host") || strings.Contains(s, "network is unreachable"):
		return "no route to that address: check this machine's network connection"
	case errors.Is(err, swarm.ErrNoAddresses) || errors.Is(err, swarm.ErrNoGoodAddresses):
		return "no usable address is known for it"
	}
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

// relays returns the relays among members that this node is connected to,
// with their addresses.
func (m *Mesh) relays(members []Member) []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, mem := range members {
		if !mem.Relay || mem.PeerID == m.host.ID() || !m.connected(mem.PeerID) {
			continue
		}
		var addrs []ma.Multiaddr
		for _, c := range m.host.Network().ConnsToPeer(mem.PeerID) {
			if !isRelayed(c) {
				addrs = append(addrs, c.RemoteMultiaddr())
			}
		}
		if len(addrs) == 0 {
			continue
		}
		out = append(out, peer.AddrInfo{ID: mem.PeerID, Addrs: addrs})
	}
	return out
}

// connect dials ai. The mesh paces its own attempts, so libp2p's dial
// backoff (up to 5 minutes after repeated failures) is cleared first: a link
// that comes back is used within a dial round, not minutes later.
func (m *Mesh) connect(ai peer.AddrInfo) error {
	if sw, ok := m.hub.h.Network().(*swarm.Swarm); ok {
		sw.Backoff().Clear(ai.ID)
	}
	ctx, cancel := context.WithTimeout(m.ctx, dialTimeout)
	defer cancel()
	if err := m.host.Connect(ctx, ai); err != nil {
		m.log.Debug("dial failed", "peer", ai.ID, "err", err)
		return err
	}
	return nil
}

// connectedMembers returns the family's other members this node is
// connected to: from the family's roster, not from every peer of the host
// (a relay serving a thousand families holds thousands of connections).
func (m *Mesh) connectedMembers() []peer.ID {
	var out []peer.ID
	for _, mem := range m.cfg.Family.Members() {
		if mem.PeerID != m.host.ID() && m.connected(mem.PeerID) {
			out = append(out, mem.PeerID)
		}
	}
	return out
}

func (m *Mesh) connected(p peer.ID) bool {
	c := m.host.Network().Connectedness(p)
	return c == network.Connected || c == network.Limited
}

func isRelayed(c network.Conn) bool {
	_, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// Bootstrap reports each bootstrap address: connected, unreachable (and
// why), not a member of this family, or still trying.
func (m *Mesh) Bootstrap() []BootstrapInfo {
	out := make([]BootstrapInfo, 0, len(m.bootAIs))
	for i, ai := range m.bootAIs {
		bi := BootstrapInfo{Addr: m.bootAddrs[i], PeerID: ai.ID, State: CandidateTrying}
		if ai.ID == m.host.ID() {
			bi.State, bi.Detail = CandidateConnected, "this node's own address"
			out = append(out, bi)
			continue
		}
		mem, member := m.cfg.Family.Member(ai.ID)
		m.mu.Lock()
		if t := m.targets[ai.ID]; t != nil {
			bi.State, bi.Detail, bi.Since = t.state, t.detail, t.since
		}
		hello := m.peers[ai.ID] != nil && m.peers[ai.ID].hello
		m.mu.Unlock()
		if member && hello && m.connected(ai.ID) {
			bi.State, bi.Detail, bi.Site = CandidateConnected, "", mem.Site
		} else if bi.State == CandidateConnected {
			bi.State = CandidateTrying
		}
		out = append(out, bi)
	}
	return out
}

// PeerInfo describes one member as this node sees it.
type PeerInfo struct {
	Member    Member
	Connected bool
	Via       string // "direct", "relay" or "" when not connected
	LastSeen  time.Time
	Heartbeat *Heartbeat
	// Lost is set when this node closed its connections to the member
	// because it stopped answering (missed heartbeats and pings).
	Lost time.Time
	// Unreachable says why the last attempt to connect failed, if it did.
	Unreachable string
}

// Peers lists every current member but this node, by site.
func (m *Mesh) Peers() []PeerInfo {
	var out []PeerInfo
	for _, mem := range m.cfg.Family.Members() {
		if mem.PeerID == m.host.ID() {
			continue
		}
		pi := PeerInfo{Member: mem}
		m.mu.Lock()
		if ps := m.peers[mem.PeerID]; ps != nil {
			pi.LastSeen, pi.Heartbeat, pi.Lost = ps.lastSeen, ps.heartbeat, ps.lost
			pi.Connected = ps.hello
		}
		if t := m.targets[mem.PeerID]; t != nil && t.state == CandidateUnreachable {
			pi.Unreachable = t.detail
		}
		m.mu.Unlock()
		pi.Connected = pi.Connected && m.connected(mem.PeerID)
		if pi.Connected {
			pi.Via = "relay"
			for _, c := range m.host.Network().ConnsToPeer(mem.PeerID) {
				if !isRelayed(c) {
					pi.Via = "direct"
					break
				}
			}
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Member.Site < out[j].Member.Site })
	return out
}

// startMDNS announces this node on the LAN and dials the nodes of this family
// found there: known members directly, others on probation (they prove their
// membership in the hello exchange, so two sites that never reached the relay
// still find each other in one building).
func (m *Mesh) startMDNS() error {
	svc := mdns.NewMdnsService(m.host, mdnsService(m.cfg.Family.ID()), mdnsNotifee{m: m})
	if err := svc.Start(); err != nil {
		return err
	}
	m.goTracked(func() {
		<-m.ctx.Done()
		svc.Close()
	})
	return nil
}

func mdnsService(familyID string) string {
	if len(familyID) > 12 {
		familyID = familyID[:12]
	}
	return "_ppsync-" + familyID + "._udp"
}

type mdnsNotifee struct{ m *Mesh }

func (n mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	m := n.m
	if ai.ID == m.host.ID() || m.cfg.Family.Banned(ai.ID) {
		return
	}
	m.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
	if _, ok := m.cfg.Family.Member(ai.ID); !ok {
		m.mu.Lock()
		if _, known := m.lan[ai.ID]; !known && len(m.lan) >= maxLANCandidates {
			m.mu.Unlock()
			m.count("lan_candidates_full")
			return
		}
		m.lan[ai.ID] = ai
		m.mu.Unlock()
	}
	m.log.Debug("found a node on the LAN", "peer", ai.ID)
	m.Redial()
}

// lanCandidates returns the peers found on the LAN that are not members yet.
func (m *Mesh) lanCandidates() []peer.AddrInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []peer.AddrInfo
	for id, ai := range m.lan {
		if _, ok := m.cfg.Family.Member(id); ok || m.cfg.Family.Banned(id) {
			delete(m.lan, id)
			continue
		}
		out = append(out, ai)
	}
	return out
}

// bootstrapPeer reports whether p is the peer of a bootstrap address.
func (m *Mesh) bootstrapPeer(p peer.ID) bool {
	for _, ai := range m.bootAIs {
		if ai.ID == p {
			return true
		}
	}
	return false
}

// candidate reports whether p may be dialed although it is not a known
// member: a bootstrap address's peer or a peer found on the LAN.
func (m *Mesh) candidate(p peer.ID) bool {
	if m.bootstrapPeer(p) {
		return true
	}
	m.mu.Lock()
	_, ok := m.lan[p]
	m.mu.Unlock()
	return ok
}
