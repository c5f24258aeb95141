package mesh

import (
	"context"
	"crypto/rand"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// pingProto is the liveness ping between members: 8 random bytes, echoed.
const pingProto protocol.ID = "/ppsync/alive/1"

// A link that is cut without a reset (a pulled cable, a router that drops
// everything, a frozen machine) keeps its TCP connection "connected" for
// minutes. So every member must show signs of life on its connection: any
// gossip it forwards (heartbeats every HeartbeatInterval, entries) counts,
// as does its answer to a probe (a member reached only through a relay's
// circuit forwards no gossip: see relayedOnly), and when it has been quiet
// for a little longer than a heartbeat interval this node pings it over a
// stream of its own. A member silent for
// LivenessTimeout has its connections closed and is reported gone; the dial
// loop then tries it again at once and every few seconds, so a link that
// comes back is used within seconds.

// Gossip can stall on a live connection too: libp2p's pubsub gives a peer
// up for as long as their connection lasts once its stream to the peer was
// reset a few times in a row (a relay detaching families as it stops, a
// family waking under load), and then sends it nothing while pings still
// pass. A member connected for gossipGrace whose subscriptions never
// reached this node has its connection closed and made anew: on a new
// connection both pubsubs start afresh.

// gossipGrace is how long a member's gossip may take to reach this node
// after their hello.
func (m *Mesh) gossipGrace() time.Duration { return max(m.cfg.LivenessTimeout, 5*time.Second) }

// touch records a sign of life from p on a connection to it.
func (m *Mesh) touch(p peer.ID) {
	m.mu.Lock()
	if ps := m.peers[p]; ps != nil {
		ps.alive = time.Now()
	}
	m.mu.Unlock()
}

// livenessTick is how often silent members are looked for.
func (m *Mesh) livenessTick() time.Duration {
	return min(max(m.cfg.LivenessTimeout/20, 50*time.Millisecond), 500*time.Millisecond)
}

// pingAfter is how long a member may be quiet before it is pinged: a little
// more than a heartbeat interval, so that a member whose heartbeats arrive
// is not pinged at all, and at most three fifths of the liveness timeout, so
// that a ping has time to come back. At half a heartbeat interval (before
// 2026-12-07) every member was pinged by every peer between any two of its
// heartbeats, as many stream openings as heartbeats.
func (m *Mesh) pingAfter() time.Duration {
	return min(max(m.cfg.HeartbeatInterval*6/5, 250*time.Millisecond), m.cfg.LivenessTimeout*3/5)
}

func (m *Mesh) livenessLoop(ctx context.Context) {
	t := time.NewTicker(m.livenessTick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.checkLiveness(time.Now())
	}
}

// checkLiveness pings the members that have been quiet and disconnects the
// ones that have been silent too long. A member whose ping is still out
// when the liveness timeout passes is given until the ping's own deadline
// (half the timeout after it was sent): a busy peer's late answer still
// proves the link, and a dead link is closed at most a tenth of the timeout
// later (at 11.5 s rather than 11 s by default: a ping after 6 s, its answer
// due 5.5 s later).
func (m *Mesh) checkLiveness(now time.Time) {
	var ping, lost []peer.ID
	m.mu.Lock()
	for p, ps := range m.peers {
		if !ps.hello {
			continue
		}
		quiet := now.Sub(ps.alive)
		switch {
		case ps.pinging:
			// wait for the ping's answer or its deadline
		case quiet > m.cfg.LivenessTimeout:
			ps.lost = now
			ps.alive = now // one disconnect per silence
			lost = append(lost, p)
		case quiet > m.pingAfter():
			ps.pinging = true
			ping = append(ping, p)
		}
	}
	m.mu.Unlock()
	for _, p := range m.stalledGossip(now) {
		m.count("gossip_stalled")
		m.log.Warn("a connected member's gossip does not reach this node: reconnecting it",
			"peer", p, "after", m.gossipGrace().String())
		m.goTracked(func() {
			_ = m.hub.h.Network().ClosePeer(p)
			m.Redial()
		})
	}
	for _, p := range lost {
		if !m.connected(p) {
			continue
		}
		m.count("member_silent")
		m.log.Warn("lost contact with a member: no heartbeat or answer, closing its connections",
			"peer", p, "silent_for", m.cfg.LivenessTimeout.String())
		m.goTracked(func() {
			_ = m.hub.h.Network().ClosePeer(p) // silent for every family it is in
			m.Redial()
		})
	}
	for _, p := range ping {
		m.goTracked(func() {
			ok := m.ping(p)
			m.mu.Lock()
			if ps := m.peers[p]; ps != nil {
				ps.pinging = false
				if ok {
					ps.alive = time.Now()
				}
			}
			m.mu.Unlock()
		})
	}
}

// stalledGossip returns the connected members whose hello completed more
// than gossipGrace ago and whose subscription to the family's heartbeats
// never reached this node's gossip, at most once per gossipGrace each.
func (m *Mesh) stalledGossip(now time.Time) []peer.ID {
	g := m.gossip.Load()
	if g == nil {
		return nil // asleep: no member is connected
	}
	grace := m.gossipGrace()
	var due []peer.ID
	m.mu.Lock()
	for p, ps := range m.peers {
		if ps.hello && now.Sub(ps.helloAt) > grace && now.Sub(ps.restarted) > grace {
			due = append(due, p)
		}
	}
	m.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	joined := g.hbt.ListPeers()
	if g.ctx.Err() != nil {
		return nil // stopping: the list is empty, not the gossip stalled
	}
	// Gossip runs on direct connections only (not over a relay's circuit).
	due = slices.DeleteFunc(due, func(p peer.ID) bool {
		return slices.Contains(joined, p) || m.host.Network().Connectedness(p) != network.Connected
	})
	var stalled []peer.ID
	m.mu.Lock()
	for _, p := range due {
		if ps := m.peers[p]; ps != nil && ps.hello {
			ps.restarted = now
			stalled = append(stalled, p)
		}
	}
	m.mu.Unlock()
	return stalled
}

// ping asks p to echo 8 random bytes within the liveness timeout.
func (m *Mesh) ping(p peer.ID) bool {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.LivenessTimeout/2)
	defer cancel()
	s, err := m.openStream(ctx, p, pingProto, "alive")
	if err != nil {
		return false
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	var out, in [8]byte
	_, _ = rand.Read(out[:])
	if _, err := s.Write(out[:]); err != nil {
		s.Reset()
		return false
	}
	if _, err := io.ReadFull(s, in[:]); err != nil || in != out {
		s.Reset()
		return false
	}
	return true
}

// handlePing echoes a member's liveness ping.
func (m *Mesh) handlePing(s network.Stream) {
	p := s.Conn().RemotePeer()
	if _, ok := m.admit(s, "ping"); !ok {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	var b [8]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(b[:]); err != nil {
		s.Reset()
		return
	}
	m.touch(p)
}
