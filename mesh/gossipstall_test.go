package mesh

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/ppsync/ppsync/internal/wire"
)

// A member's gossipsub gives a peer up for as long as their connection
// lasts once its stream to it was reset a few times in a row (libp2p's
// pubsub: four attempts, then never again): the two stay connected, answer
// pings, and B's heartbeats and entries never reach A by gossip. The side
// that misses the other's subscriptions closes the connection, B redials,
// and gossip runs again on the new connection.
func TestStalledGossipIsRestarted(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	fast := func(c *Config) { c.HeartbeatInterval = 100 * time.Millisecond }
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, fast)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, func(c *Config) {
		fast(c)
		c.Bootstrap = a.m.Addrs()
	})
	waitGossip(t, a, b)

	// A refuses B's gossip streams for a while, as a relay that is
	// detaching the family does, and resets the one it has.
	serve := a.m.handler(gossipKind)
	a.m.setHandler(gossipKind, func(s network.Stream) { _ = s.Reset() })
	resetGossip := func() {
		for _, c := range a.m.hub.h.Network().ConnsToPeer(ib.id) {
			for _, s := range c.GetStreams() {
				if _, rest, _ := splitProto(s.Protocol()); rest == gossipKind && s.Stat().Direction == network.DirInbound {
					_ = s.Reset()
				}
			}
		}
	}
	resetGossip()
	g := b.m.gossip.Load()
	waitFor(t, "B's gossipsub gives A up", func() bool {
		resetGossip()
		return !slices.Contains(g.ps.ListPeers(""), ia.id) && connected(b.m.hub.h, ia.id)
	})
	a.m.setHandler(gossipKind, serve)

	// Still connected, B's gossip to A dead: one of them notices (A misses
	// B's subscriptions; B, having given A up, misses A's), reconnects, and
	// B's next entry reaches A by gossip.
	waitFor(t, "the stalled gossip noticed", func() bool {
		return a.m.Rejections()["gossip_stalled"]+b.m.Rejections()["gossip_stalled"] > 0
	})
	waitGossip(t, a, b)
	e := signChain(t, testFamily, ib, 1, wire.Hash{}, 1)[0]
	if err := b.m.Publish(context.Background(), groupMsg(t, e)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitFor(t, "B's entry reaches A by gossip", func() bool {
		for _, c := range a.h.entryCalls() {
			if c.gossip && c.from == ib.id && len(c.run) == 1 && c.run[0].Hash == e.Hash {
				return true
			}
		}
		return false
	})
}
