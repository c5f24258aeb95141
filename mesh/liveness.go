package mesh

import (
	"context"
	"crypto/rand"
	"io"
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
// and when it has been quiet for half a heartbeat interval this node pings it
// over a stream of its own. A member silent for LivenessTimeout has its
// connections closed and is reported gone; the dial loop then tries it again
// at once and every few seconds, so a link that comes back is used within
// seconds.

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

func (m *Mesh) pingAfter() time.Duration {
	return min(max(m.cfg.HeartbeatInterval/2, 250*time.Millisecond), m.cfg.LivenessTimeout/3)
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
// ones that have been silent too long.
func (m *Mesh) checkLiveness(now time.Time) {
	var ping, lost []peer.ID
	m.mu.Lock()
	for p, ps := range m.peers {
		if !ps.hello {
			continue
		}
		quiet := now.Sub(ps.alive)
		switch {
		case quiet > m.cfg.LivenessTimeout:
			ps.lost = now
			ps.alive = now // one disconnect per silence
			lost = append(lost, p)
		case quiet > m.pingAfter() && !ps.pinging:
			ps.pinging = true
			ping = append(ping, p)
		}
	}
	m.mu.Unlock()
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
