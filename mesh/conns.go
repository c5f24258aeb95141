package mesh

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// Every connection proves a current membership with its own hello before
// anything of the family is served over it: a stolen node key that opens a
// catch-up stream on a fresh connection gets nothing, and the hello it must
// send first is where a second running copy of a site shows (its instance
// differs). The dialer of a connection says the hello on that very
// connection; the other side answers on it.

// connState is what this node knows of the hello on one connection. Guarded
// by Mesh.mu.
type connState struct {
	peer     peer.ID       // the remote peer
	relayed  bool          // it runs through a relay's circuit
	started  bool          // a hello exchange began on it (said or received)
	received int           // hellos received on it
	ok       bool          // a hello on it proved a current membership
	ended    bool          // done is closed
	done     chan struct{} // closed when the first hello on it ended, or the connection did
}

// trackConn registers a new connection. It runs in libp2p's Connected
// notification, before the connection accepts any stream.
func (m *Mesh) trackConn(c network.Conn, saying bool) {
	relayed := isRelayed(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, known := m.conns[c.ID()]; !known {
		m.links[c.RemotePeer()] = m.links[c.RemotePeer()].add(relayed, 1)
	}
	m.conns[c.ID()] = &connState{peer: c.RemotePeer(), relayed: relayed, started: saying, done: make(chan struct{})}
}

// untrackConn forgets a closed connection and wakes whoever waits on it.
func (m *Mesh) untrackConn(c network.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.conns[c.ID()]; st != nil {
		st.end()
		delete(m.conns, c.ID())
		if l := m.links[st.peer].add(st.relayed, -1); l == (links{}) {
			delete(m.links, st.peer)
		} else {
			m.links[st.peer] = l
		}
	}
}

// links counts a peer's open connections.
type links struct{ direct, relayed int }

func (l links) add(relayed bool, n int) links {
	if relayed {
		l.relayed += n
	} else {
		l.direct += n
	}
	return l
}

func (st *connState) end() {
	if !st.ended {
		st.ended = true
		close(st.done)
	}
}

// helloEnded records the outcome of a hello on c.
func (m *Mesh) helloEnded(c network.Conn, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.conns[c.ID()]; st != nil {
		st.ok = st.ok || ok
		st.end()
	}
}

// helloReceived records a hello arriving on c. It returns false for a hello
// that must be refused: one more on a connection whose hello has not proved
// a membership (a stranger gets one try per connection). A member whose
// hello succeeded may send more: they carry news of the roster.
func (m *Mesh) helloReceived(c network.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.conns[c.ID()]
	if st == nil {
		return false // closed meanwhile
	}
	st.received++
	st.started = true
	return st.received == 1 || st.ok
}

// connOK reports whether a hello proved a current membership on c.
func (m *Mesh) connOK(c network.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.conns[c.ID()]
	return st != nil && st.ok
}

// waitHello waits until the hello on c has ended, at most helloTimeout, and
// reports whether it proved a membership. With expect false, a connection on
// which no hello has begun is answered at once: a peer that speaks before
// its hello is not waited for.
func (m *Mesh) waitHello(ctx context.Context, c network.Conn, expect bool) bool {
	m.mu.Lock()
	st := m.conns[c.ID()]
	m.mu.Unlock()
	if st == nil {
		return false
	}
	m.mu.Lock()
	ok, started := st.ok, st.started
	m.mu.Unlock()
	if ok {
		return true
	}
	if !started && !expect {
		return false
	}
	t := time.NewTimer(helloTimeout)
	defer t.Stop()
	select {
	case <-st.done:
	case <-t.C:
	case <-ctx.Done():
	case <-m.ctx.Done():
	}
	return m.connOK(c)
}

// admit decides whether a stream of kind ("catchup", "frontier", ...) is
// served: its peer must be a current member, and the hello on the stream's
// own connection must have proved it. A refused stream is reset and counted.
func (m *Mesh) admit(s network.Stream, kind string) (Member, bool) {
	p := s.Conn().RemotePeer()
	mem, ok := m.cfg.Family.Member(p)
	if !ok {
		m.count(kind + "_non_member")
		s.Reset()
		return mem, false
	}
	if !m.waitHello(m.ctx, s.Conn(), false) {
		m.count(kind + "_before_hello")
		m.log.Debug("refused a stream opened before the hello on its connection", "peer", p, "site", mem.Site, "stream", kind, "conn", s.Conn().ID())
		s.Reset()
		return mem, false
	}
	if _, ok := m.cfg.Family.Member(p); !ok { // its membership ended meanwhile
		m.count(kind + "_non_member")
		s.Reset()
		return mem, false
	}
	return mem, true
}

// openStream opens a stream of proto to member p for what (words for an
// error), once the hello on the connection it uses has proved p's
// membership: the other side serves nothing before that.
func (m *Mesh) openStream(ctx context.Context, p peer.ID, proto protocol.ID, what string) (network.Stream, error) {
	s, err := m.host.NewStream(network.WithAllowLimitedConn(ctx, what), p, proto)
	if err != nil {
		return nil, err
	}
	if !m.waitHello(ctx, s.Conn(), true) {
		s.Reset()
		return nil, fmt.Errorf("mesh: %s with %s: the hello on its connection did not complete", what, p)
	}
	return s, nil // tapped by the family's view
}

// streamOn opens a stream of the family's protocol proto on connection c
// itself, not on whichever connection to the peer libp2p prefers; what names
// it for a limited (relayed) connection. The protocol is negotiated within
// the stream's deadline of helloTimeout, which the caller may change.
func (m *Mesh) streamOn(ctx context.Context, c network.Conn, proto protocol.ID, what string) (network.Stream, error) {
	proto = m.host.scoped(proto)
	s, err := c.NewStream(network.WithAllowLimitedConn(ctx, what))
	if err != nil {
		return nil, err
	}
	if err := s.SetProtocol(proto); err != nil {
		s.Reset()
		return nil, err
	}
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	if err := msmux.SelectProtoOrFail(proto, s); err != nil {
		s.Reset()
		return nil, err
	}
	return m.tapped(s), nil
}

// probationFailed records that no hello proved a current membership on c
// within helloTimeout (the host closes it): a stranger, or a member's key
// used without a hello.
func (m *Mesh) probationFailed(c network.Conn) {
	p := c.RemotePeer()
	// A dial waiting for this hello hears that no answer came, before the
	// connection is closed under it (which would read as a refusal).
	m.helloOutcome(p, noHelloAnswer)
	if _, ok := m.cfg.Family.Member(p); !ok {
		m.count("no_certificate")
		m.log.Warn("disconnected a peer that is not a member of the family", "peer", p)
	} else {
		m.count("no_hello")
		m.log.Warn("closed a connection on which no hello came in time", "peer", p, "conn", c.ID())
	}
}
