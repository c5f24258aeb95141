package mesh

import (
	"bufio"
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ppsync/ppsync/internal/wire"
)

const (
	helloProto   protocol.ID = "/ppsync/hello/1"
	helloTimeout             = 10 * time.Second
	maxHello                 = 4 << 20
	maxDocs                  = 10000
)

// hello is what two nodes exchange on every new connection: who they are and
// every certificate and revocation they hold, so membership spreads.
type hello struct {
	Family   string      `codec:"fa"`
	Instance string      `codec:"in"` // random per process: two at once with one identity are two copies
	Version  string      `codec:"ve"`
	Protocol uint32      `codec:"pr"`
	Schema   uint32      `codec:"sc"`
	Docs     [][]byte    `codec:"do"`
	Addrs    []string    `codec:"ad"` // the sender's own addresses
	Known    []knownPeer `codec:"kn"` // members the sender is connected to, with addresses
}

type knownPeer struct {
	ID    string   `codec:"id"`
	Addrs []string `codec:"ad"`
}

// myHello is this node's hello. A full hello, for a current member, carries
// every certificate and revocation held and the addresses of the members this
// node is connected to. A peer that has not proved a membership yet (a
// bootstrap address or a LAN peer this node dialed) gets only what it needs to
// check this node: the family, and the certificates that name this node; a
// banned peer also gets the revocation or newer certificate that ended it.
func (m *Mesh) myHello(full bool, to peer.ID) hello {
	hb := m.cfg.Heartbeat()
	h := hello{Family: m.cfg.Family.ID(), Instance: m.instance, Version: hb.Version, Protocol: ProtocolVersion, Schema: hb.Schema}
	if !full {
		// A banned peer (revoked, or a moved site's old machine) also gets
		// what ended its membership, so it stops writing, and nothing else.
		h.Docs = append(m.cfg.Family.DocumentsOf(m.host.ID()), m.cfg.Family.DocumentsOf(to)...)
		return h
	}
	h.Docs = m.cfg.Family.Documents()
	for _, a := range m.host.Addrs() {
		h.Addrs = append(h.Addrs, a.String())
	}
	for _, p := range m.host.Network().Peers() {
		if _, ok := m.cfg.Family.Member(p); !ok {
			continue
		}
		k := knownPeer{ID: p.String()}
		for _, a := range m.host.Peerstore().Addrs(p) {
			k.Addrs = append(k.Addrs, a.String())
		}
		h.Known = append(h.Known, k)
	}
	return h
}

// helloResult is the outcome of a hello exchange with a peer.
type helloResult struct {
	ok     bool
	reason string // why the peer was not accepted, in plain words
}

// helloWaiter registers for the outcome of the next hello exchange with p.
func (m *Mesh) helloWaiter(p peer.ID) chan helloResult {
	ch := make(chan helloResult, 1)
	m.mu.Lock()
	m.waiters[p] = append(m.waiters[p], ch)
	m.mu.Unlock()
	return ch
}

func (m *Mesh) dropWaiter(p peer.ID, ch chan helloResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ws := m.waiters[p]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(m.waiters, p)
	} else {
		m.waiters[p] = ws
	}
}

// helloOutcome hands the outcome of a hello exchange with p to its waiters.
func (m *Mesh) helloOutcome(p peer.ID, r helloResult) {
	m.mu.Lock()
	ws := m.waiters[p]
	delete(m.waiters, p)
	m.mu.Unlock()
	for _, w := range ws {
		w <- r
	}
}

// helloDone reports whether the hello exchange with p has completed on its
// current connection.
func (m *Mesh) helloDone(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peers[p]
	return ps != nil && ps.hello
}

// onConnected starts the hello exchange on connections this node opened, and
// puts inbound connections from peers that are not members yet on probation.
func (m *Mesh) onConnected(c network.Conn) {
	p := c.RemotePeer()
	if c.Stat().Direction == network.DirOutbound {
		m.goTracked(func() { m.sayHello(p) })
	}
	if _, ok := m.cfg.Family.Member(p); !ok {
		m.goTracked(func() { m.probation(p) })
	}
}

func (m *Mesh) onDisconnected(c network.Conn) {
	p := c.RemotePeer()
	if m.host.Network().Connectedness(p) == network.Connected {
		return // another connection to the peer remains
	}
	m.mu.Lock()
	ps, ok := m.peers[p]
	if ok {
		ps.hello = false
		ps.instances = nil // every process of it is gone
	}
	m.mu.Unlock()
	if ok {
		m.cfg.Handler.PeerChanged(p, false)
	}
}

// probation disconnects a peer that has not proved a current membership
// within helloTimeout.
func (m *Mesh) probation(p peer.ID) {
	t := time.NewTimer(helloTimeout)
	defer t.Stop()
	select {
	case <-m.ctx.Done():
		return
	case <-t.C:
	}
	if _, ok := m.cfg.Family.Member(p); ok {
		return
	}
	if m.host.Network().Connectedness(p) == network.Connected {
		m.count("no_certificate")
		m.log.Warn("disconnected a peer that is not a member of the family", "peer", p)
		m.host.Network().ClosePeer(p)
	}
}

// sayHello opens a hello stream to p, sends this node's hello and reads p's.
func (m *Mesh) sayHello(p peer.ID) {
	_, member := m.cfg.Family.Member(p)
	ctx, cancel := context.WithTimeout(m.ctx, helloTimeout)
	defer cancel()
	s, err := m.host.NewStream(network.WithAllowLimitedConn(ctx, "hello"), p, helloProto)
	if err != nil {
		m.log.Debug("hello failed", "peer", p, "err", err)
		m.helloOutcome(p, helloResult{reason: "it does not speak ppsync's hello protocol (" + plainDialError(err) + ")"})
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	if err := m.sendHello(s, p, member); err != nil {
		s.Reset()
		m.helloOutcome(p, helloResult{reason: "the hello exchange broke off"})
		return
	}
	theirs, err := readHello(s)
	if err != nil {
		m.count("bad_hello")
		s.Reset()
		reason := "the hello exchange broke off"
		if !member {
			// A node refuses to answer a peer it cannot accept: one of another
			// family, or one whose certificate it cannot verify.
			reason = "it refused this node's hello: it belongs to another family, or to none"
		}
		m.helloOutcome(p, helloResult{reason: reason})
		return
	}
	m.acceptHello(p, theirs)
}

func (m *Mesh) handleHello(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	theirs, err := readHello(s)
	if err != nil {
		m.count("bad_hello")
		s.Reset()
		return
	}
	// Nothing of the family is told to a peer before it proved a current
	// membership: a stranger learns neither the roster nor any address.
	if !m.acceptHello(s.Conn().RemotePeer(), theirs) {
		s.Reset()
		return
	}
	if err := m.sendHello(s, s.Conn().RemotePeer(), true); err != nil {
		s.Reset()
	}
}

func (m *Mesh) sendHello(s network.Stream, to peer.ID, full bool) error {
	b, err := wire.Marshal(m.myHello(full, to))
	if err != nil {
		return err
	}
	return writeFrame(s, b)
}

func readHello(s network.Stream) (hello, error) {
	var h hello
	b, err := readFrame(bufio.NewReader(s), maxHello)
	if err != nil {
		return h, err
	}
	if err := wire.Unmarshal(b, &h); err != nil {
		return h, err
	}
	if len(h.Docs) > maxDocs || len(h.Known) > maxDocs {
		return h, fmt.Errorf("mesh: hello lists too much")
	}
	return h, nil
}

// acceptHello learns the peer's certificates and revocations, then keeps the
// connection only if the peer is a current member of this family.
func (m *Mesh) acceptHello(p peer.ID, h hello) bool {
	if h.Family != m.cfg.Family.ID() {
		m.count("wrong_family")
		m.log.Warn("disconnected a node of another family", "peer", p)
		m.host.Network().ClosePeer(p)
		m.helloOutcome(p, helloResult{reason: "it is a node of another family"})
		return false
	}
	changed := false
	for _, d := range h.Docs {
		c, err := m.cfg.Family.Learn(d)
		if err != nil {
			m.log.Debug("ignored a certificate from a peer", "peer", p, "err", err)
			continue
		}
		changed = changed || c
	}
	if changed {
		m.DocumentsUpdated()
	}
	mem, ok := m.cfg.Family.Member(p)
	if !ok {
		m.count("not_member")
		m.log.Warn("disconnected a peer that is not a current member", "peer", p)
		m.host.Network().ClosePeer(p)
		m.helloOutcome(p, helloResult{reason: "it holds no current certificate of this family"})
		return false
	}
	m.addAddrs(p, h.Addrs)
	for _, k := range h.Known {
		id, err := peer.Decode(k.ID)
		if err != nil || id == m.host.ID() {
			continue
		}
		if _, ok := m.cfg.Family.Member(id); ok {
			m.addAddrs(id, k.Addrs)
		}
	}
	m.mu.Lock()
	ps := m.peers[p]
	if ps == nil {
		ps = &peerState{}
		m.peers[p] = ps
	}
	first := !ps.hello
	ps.member, ps.hello, ps.lastSeen, ps.alive = mem, true, time.Now(), time.Now()
	restarted := false
	if !ps.instances[h.Instance] && len(ps.instances) > 0 && len(m.host.Network().ConnsToPeer(p)) <= 1 {
		// A new process on the only connection: the member restarted before
		// its old connection was noticed gone. Not a twin; start afresh.
		ps.instances, restarted = nil, true
	}
	if ps.instances == nil {
		ps.instances = map[string]bool{}
	}
	ps.instances[h.Instance] = true
	twins := len(ps.instances) > 1
	m.mu.Unlock()
	if restarted {
		m.cfg.Handler.PeerChanged(p, true) // a catch-up with the new process
	}
	if twins {
		// Two processes with one identity, both connected: a copied data
		// directory or a cloned machine.
		m.count("duplicate_identity")
		m.log.Error("two copies of one node are running at once", "site", mem.Site, "peer", p)
		m.cfg.Handler.Duplicate(p)
	}
	m.helloOutcome(p, helloResult{ok: true})
	if first {
		m.log.Info("member connected", "site", mem.Site, "peer", p, "version", h.Version)
		m.cfg.Handler.PeerChanged(p, true)
		if mem.Relay && !m.cfg.Relay {
			m.Redial() // reserve a slot now that the relay knows this node
		}
	}
	return true
}

func (m *Mesh) addAddrs(p peer.ID, addrs []string) {
	for _, a := range addrs {
		if ad, err := ma.NewMultiaddr(a); err == nil {
			m.host.Peerstore().AddAddr(p, ad, peerstore.RecentlyConnectedAddrTTL)
		}
	}
}

// DocumentsUpdated applies a change of membership: peers that are no longer
// members are disconnected, and every connected member hears the news.
func (m *Mesh) DocumentsUpdated() {
	for _, p := range m.host.Network().Peers() {
		if _, ok := m.cfg.Family.Member(p); !ok && m.cfg.Family.Banned(p) {
			m.count("membership_ended")
			m.goTracked(func() {
				// Tell it first (the revocation or the move reaches it, so it
				// stops accepting writes that could never sync), then cut it off.
				m.sayHello(p)
				m.host.Network().ClosePeer(p)
			})
			continue
		}
		if _, ok := m.cfg.Family.Member(p); ok {
			m.goTracked(func() { m.sayHello(p) })
		}
	}
	m.cfg.Handler.DocumentsChanged()
}
