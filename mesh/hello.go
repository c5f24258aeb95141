package mesh

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"

	"github.com/ppsync/ppsync/internal/wire"
)

const (
	helloProto   protocol.ID = "/ppsync/hello/1"
	helloTimeout             = 10 * time.Second
	maxHello                 = 4 << 20
	maxDocs                  = 10000
	// maxStrangerHello bounds the hello read from a peer that is not known
	// as a member: its own certificate fits many times over.
	maxStrangerHello = 64 << 10
	// maxStrangerDocs is how many documents of a non-member's hello are
	// verified at most (only those that name it are looked at).
	maxStrangerDocs = 8
	// maxKnownDocs bounds the hashes of documents already installed.
	maxKnownDocs = 4 * maxDocs
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
	// Small asks for an answer with the answerer's own certificate only: the
	// sender does not know the answerer as a member yet and reads no more
	// than maxStrangerHello from it. It asks again once it does.
	Small bool `codec:"sm,omitempty"`
}

type knownPeer struct {
	ID    string   `codec:"id"`
	Addrs []string `codec:"ad"`
}

// myHello is this node's hello to peer to. A full hello, for a current
// member, carries every certificate and revocation held and the addresses of
// the members this node is connected to. A peer that has not proved a
// membership yet (a bootstrap address or a LAN peer this node dialed), or one
// that asked for a small answer, gets only what it needs to check this node:
// the family, and the certificates that name this node. A banned peer
// (revoked, or a moved site's old machine) gets only what ended its
// membership, so it stops writing: no roster, no address.
func (m *Mesh) myHello(to peer.ID, small bool) hello {
	hb := m.cfg.Heartbeat()
	h := hello{Family: m.cfg.Family.ID(), Instance: m.instance, Version: hb.Version, Protocol: ProtocolVersion, Schema: hb.Schema}
	_, member := m.cfg.Family.Member(to)
	switch {
	case !member && m.cfg.Family.Banned(to):
		h.Docs = m.cfg.Family.DocumentsOf(to)
		return h
	case !member || small:
		h.Docs = m.cfg.Family.DocumentsOf(m.host.ID())
		h.Small = !member
		return h
	}
	h.Docs = m.cfg.Family.Documents()
	for _, a := range m.host.Addrs() {
		h.Addrs = append(h.Addrs, a.String())
	}
	for _, p := range m.connectedMembers() {
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
	// noAnswer: the peer did not answer in time (a relay busy with
	// thousands of reconnecting sites, a slow link), or the connection
	// broke off under the hello, which proves nothing about its
	// membership: it is tried again soon, not after the long wait of a peer
	// that refused.
	noAnswer bool
}

// noHelloAnswer is the outcome of a hello the peer did not answer in time.
var noHelloAnswer = helloResult{reason: "it did not answer the hello in time", noAnswer: true}

// connLostInHello is the outcome of a hello whose stream could not be
// opened on its connection.
func connLostInHello(err error) helloResult {
	return helloResult{reason: "the connection broke off before the hello (" + plainDialError(err) + ")", noAnswer: true}
}

// helloTimedOut reports whether a hello step failed for want of an answer
// in time rather than by the peer's refusal.
func helloTimedOut(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
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

// helloDone reports whether the hello exchange with p has completed on a
// current connection.
func (m *Mesh) helloDone(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peers[p]
	return ps != nil && ps.hello
}

// onConnected registers a new connection: the side that opened it says the
// hello on it, and a connection on which no hello proved a current
// membership within helloTimeout is closed.
func (m *Mesh) onConnected(c network.Conn) {
	out := c.Stat().Direction == network.DirOutbound
	m.trackConn(c, out)
	if out {
		m.goTracked(func() { m.sayHelloOn(c) })
	}
}

func (m *Mesh) onDisconnected(c network.Conn) {
	m.untrackConn(c)
	m.mu.Lock()
	alone := len(m.conns) == 0
	m.mu.Unlock()
	if alone {
		m.sleepSoon()
	}
	p := c.RemotePeer()
	if m.host.Network().Connectedness(p) == network.Connected {
		return // another connection to the peer remains
	}
	m.wakeDialer() // dial it again now, not at the dial loop's next idle tick
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

// sayHelloTo sends p this node's hello again on a connection whose hello
// completed: news of the roster (a member's update, or a banned peer's
// revocation).
func (m *Mesh) sayHelloTo(p peer.ID) {
	for _, c := range m.host.Network().ConnsToPeer(p) {
		if m.connOK(c) {
			m.sayHelloOn(c)
			return
		}
	}
}

// helloLimit is the largest hello read from p: a member's may carry the
// whole roster; a peer not known as a member gets maxStrangerHello, unless
// it is a bootstrap address, which the operator pinned (its answer carries
// the roster a new site joins with).
func (m *Mesh) helloLimit(p peer.ID, member, answer bool) int {
	if member || (answer && m.bootstrapPeer(p)) {
		return maxHello
	}
	return maxStrangerHello
}

// sayHelloOn opens a hello stream on connection c, sends this node's hello
// and reads the peer's answer.
func (m *Mesh) sayHelloOn(c network.Conn) {
	p := c.RemotePeer()
	_, member := m.cfg.Family.Member(p)
	ctx, cancel := context.WithTimeout(m.ctx, helloTimeout)
	defer cancel()
	// failed ends the hello on c without a membership: no answer in time,
	// or the reason given. (A peer that refuses the hello closes the
	// connection, so a connection closed after the hello was sent says
	// nothing either way; one that could not carry it, below, proves
	// nothing about the peer.)
	failed := func(err error, res helloResult) {
		m.helloEnded(c, false)
		if err != nil && helloTimedOut(ctx, err) {
			res = noHelloAnswer
		}
		m.helloOutcome(p, res)
	}
	s, err := m.streamOn(ctx, c, helloProto, "hello")
	switch {
	case err == nil:
	case errors.Is(err, msmux.ErrNotSupported[protocol.ID]{}):
		m.log.Debug("hello refused", "peer", p, "err", err)
		failed(err, helloResult{reason: "it does not speak ppsync's hello protocol"})
		return
	default:
		// A stream that could not be opened (the connection reset or
		// closed, a limit of either side) is not a refusal: a relay
		// closing connections as thousands of sites reconnect left a site
		// waiting 30 s, then longer, before it tried again.
		m.log.Debug("hello failed", "peer", p, "err", err)
		failed(err, connLostInHello(err))
		return
	}
	defer s.Close()
	if err := m.sendHello(s, p, false); err != nil {
		s.Reset()
		failed(nil, helloResult{reason: "the hello exchange broke off"})
		return
	}
	theirs, err := m.readHello(s, m.helloLimit(p, member, true))
	if err != nil {
		s.Reset()
		reason := "the hello exchange broke off"
		if !member {
			// A node refuses to answer a peer it cannot accept: one of another
			// family, or one whose certificate it cannot verify.
			reason = "it refused this node's hello: it belongs to another family, or to none"
		}
		failed(err, helloResult{reason: reason})
		return
	}
	if m.acceptHello(c, theirs, member) && !member {
		// This node asked a peer it did not know for its own certificate
		// only; now that it proved a membership, exchange the full hellos.
		m.goTracked(func() { m.sayHelloOn(c) })
	}
}

// handleHello answers a hello on the connection it came on: one per
// connection from a peer that has not proved a membership on it (a member's
// later hellos carry news of the roster), read within the peer's limit
// before it is decoded.
func (m *Mesh) handleHello(s network.Stream) {
	defer s.Close()
	c := s.Conn()
	p := c.RemotePeer()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	if !m.helloReceived(c) {
		m.count("hello_repeated")
		m.log.Debug("refused a second hello on one connection", "peer", p, "conn", c.ID())
		s.Reset()
		return
	}
	_, member := m.cfg.Family.Member(p)
	theirs, err := m.readHello(s, m.helloLimit(p, member, false))
	if err != nil {
		m.log.Debug("refused a hello", "peer", p, "err", err)
		s.Reset()
		m.helloEnded(c, false)
		return
	}
	// Nothing of the family is told to a peer before it proved a current
	// membership: a stranger learns neither the roster nor any address.
	if !m.acceptHello(c, theirs, member) {
		s.Reset()
		return
	}
	if err := m.sendHello(s, p, theirs.Small); err != nil {
		s.Reset()
	}
}

func (m *Mesh) sendHello(s network.Stream, to peer.ID, small bool) error {
	b, err := wire.Marshal(m.myHello(to, small))
	if err != nil {
		return err
	}
	return writeFrame(s, b)
}

// readHello reads one hello of at most limit bytes; a larger one is refused
// from its length, before it is read or decoded.
func (m *Mesh) readHello(s network.Stream, limit int) (hello, error) {
	var h hello
	b, err := readFrame(bufio.NewReader(s), limit)
	if errors.Is(err, errFrameTooLarge) {
		m.count("hello_too_large")
		return h, fmt.Errorf("mesh: hello from %s: %w", s.Conn().RemotePeer(), err)
	}
	if err == nil {
		err = wire.Unmarshal(b, &h)
	}
	if err == nil && (len(h.Docs) > maxDocs || len(h.Known) > maxDocs) {
		err = errors.New("it lists too much")
	}
	if err != nil {
		m.count("bad_hello")
		return h, fmt.Errorf("mesh: hello from %s: %w", s.Conn().RemotePeer(), err)
	}
	return h, nil
}

// learnDocs installs the certificates and revocations of a hello from p. A
// document already installed is skipped, for everyone, without a signature
// check. Of a peer not known as a member (member false), only a few
// documents that name p itself are looked at: a stranger proves its own
// membership, it does not teach the roster.
func (m *Mesh) learnDocs(p peer.ID, docs [][]byte, member bool) (changed bool) {
	tried := 0
	for _, d := range docs {
		sum := sha256.Sum256(d)
		if m.docKnown(sum) {
			continue
		}
		if !member {
			if subj, ok := m.cfg.Family.Subject(d); !ok || subj != p || tried >= maxStrangerDocs {
				m.count("hello_document_skipped")
				continue
			}
			tried++
		}
		c, err := m.cfg.Family.Learn(d)
		if err != nil {
			m.log.Debug("ignored a certificate from a peer", "peer", p, "err", err)
			continue
		}
		m.rememberDoc(sum)
		changed = changed || c
	}
	return changed
}

// docKnown reports whether a document with this hash is installed.
func (m *Mesh) docKnown(sum [32]byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.knownDocs[sum]
	return ok
}

func (m *Mesh) rememberDoc(sum [32]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.knownDocs) < maxKnownDocs {
		m.knownDocs[sum] = struct{}{}
	}
}

// acceptHello learns the peer's certificates and revocations, then keeps the
// connection only if the peer is a current member of this family; the
// outcome is recorded for connection c before the Handler hears of it.
// member says whether the peer was known as a member before the hello.
func (m *Mesh) acceptHello(c network.Conn, h hello, member bool) bool {
	p := c.RemotePeer()
	if h.Family != m.cfg.Family.ID() {
		m.count("wrong_family")
		m.log.Warn("disconnected a node of another family", "peer", p)
		m.helloEnded(c, false)
		m.host.Network().ClosePeer(p)
		m.helloOutcome(p, helloResult{reason: "it is a node of another family"})
		return false
	}
	if m.learnDocs(p, h.Docs, member) {
		m.DocumentsUpdated()
	}
	mem, ok := m.cfg.Family.Member(p)
	if !ok {
		m.count("not_member")
		m.log.Warn("disconnected a peer that is not a current member", "peer", p)
		m.helloEnded(c, false)
		m.host.Network().ClosePeer(p)
		m.helloOutcome(p, helloResult{reason: "it holds no current certificate of this family"})
		return false
	}
	m.helloEnded(c, true)
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
	if first {
		ps.helloAt = time.Now()
	}
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
		m.wakeUp()
		m.announceMember(p) // the family's gossip opens its stream to it now
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
				m.sayHelloTo(p)
				m.host.Network().ClosePeer(p)
			})
			continue
		}
		if _, ok := m.cfg.Family.Member(p); ok {
			m.goTracked(func() { m.sayHelloTo(p) })
		}
	}
	m.cfg.Handler.DocumentsChanged()
}
