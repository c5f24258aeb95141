package mesh

import (
	"bufio"
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ppsync/ppsync/internal/wire"
)

const frontierProto protocol.ID = "/ppsync/frontier/1"

// handleFrontier answers a member with this node's durable frontier: how
// Sync Now checks, precisely and at once, what each member holds.
func (m *Mesh) handleFrontier(s network.Stream) {
	if _, ok := m.admit(s, "frontier"); !ok {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := wire.Marshal(m.cfg.Heartbeat())
	if err != nil {
		s.Reset()
		return
	}
	if err := writeFrame(s, b); err != nil {
		s.Reset()
	}
}

// FrontierOf asks member p for its durable frontier.
func (m *Mesh) FrontierOf(ctx context.Context, p peer.ID) (map[string]uint64, error) {
	hb, err := m.Probe(ctx, p)
	return hb.Frontier, err
}

// ProbeNeeded reports whether a probe of member p could tell this node
// anything its gossip did not within the last span: not when p is connected
// over one direct connection only and its own heartbeat came over it within
// span. A probe asks the same process over the same connection for the same
// heartbeat. Two connections under one peer ID (a cloned twin) are always
// probed: a stream goes over either, and the twin that gossip does not
// reach shows that way; so is a member reached through a relay's circuit,
// whose heartbeats come forwarded by the relay. A relay probed every member
// of every family every 5 s, and every member probed it: with 900 sites
// connected that was a sixth of the relay's CPU.
func (m *Mesh) ProbeNeeded(p peer.ID, span time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peers[p]
	return ps == nil || m.links[p] != (links{direct: 1}) || time.Since(ps.direct) > span
}

// Probe asks member p, over a stream of this node's own, for what its
// heartbeat says now: frontier, head hashes, version. A node reaches its peers
// this way even when gossip cannot reach it (a cloned twin sharing a peer ID).
func (m *Mesh) Probe(ctx context.Context, p peer.ID) (Heartbeat, error) {
	var hb Heartbeat
	s, err := m.openStream(ctx, p, frontierProto, "frontier")
	if err != nil {
		return hb, fmt.Errorf("mesh: ask %s for its frontier: %w", p, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	b, err := readFrame(bufio.NewReader(s), maxHeartbeat)
	if err != nil {
		return hb, fmt.Errorf("mesh: frontier of %s: %w", p, err)
	}
	if err := wire.Unmarshal(b, &hb); err != nil {
		return hb, fmt.Errorf("mesh: frontier of %s: %w", p, err)
	}
	// An answer is a sign of life: a member reached only through a
	// relay's circuit sends no gossip over it, and a node probes each
	// member every heartbeat interval, so it needs no ping besides.
	m.touch(p)
	return hb, nil
}
