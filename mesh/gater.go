package mesh

import (
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// gater keeps the host to the family. Outbound, it dials members and the
// candidates this node was given: the peer IDs pinned by its bootstrap
// addresses and the peers of this family's LAN service (the secure channel
// proves the peer ID, so the dial reaches exactly that peer). Inbound, a
// current member is admitted; a banned peer (revoked, or a moved site's old
// machine) is refused either way; any other authenticated peer, and a
// candidate this node dialed, is on probation: it must prove a valid
// certificate in the hello exchange within helloTimeout or it is
// disconnected. Nothing but the hello protocol serves a peer that is not a
// current member, so a stranger never receives or delivers family data.
type gater struct{ m *Mesh }

func (g *gater) InterceptPeerDial(p peer.ID) bool {
	if g.m.cfg.Family.Banned(p) {
		g.m.count("dial_banned")
		return false
	}
	if _, ok := g.m.cfg.Family.Member(p); ok || g.m.candidate(p) {
		return true
	}
	g.m.count("dial_non_member")
	return false
}

func (g *gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.InterceptPeerDial(p) }

func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool { return true } // the peer ID is not known yet

func (g *gater) InterceptSecured(dir network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	if g.m.cfg.Family.Banned(p) {
		g.m.count("banned_peer")
		if dir == network.DirInbound {
			g.m.bannedTried(p)
		}
		return false
	}
	if _, ok := g.m.cfg.Family.Member(p); ok {
		return true
	}
	if dir == network.DirOutbound && !g.m.candidate(p) {
		g.m.count("dial_non_member")
		return false
	}
	return true // probation: see connProbation and acceptHello
}

func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// relayACL lets only current members reserve a slot and only members reach
// members through the relay.
type relayACL struct{ m *Mesh }

func (a relayACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	_, ok := a.m.cfg.Family.Member(p)
	if !ok {
		a.m.count("relay_reserve_non_member")
	}
	return ok
}

func (a relayACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dst peer.ID) bool {
	_, s := a.m.cfg.Family.Member(src)
	_, d := a.m.cfg.Family.Member(dst)
	if !s || !d {
		a.m.count("relay_connect_non_member")
	}
	return s && d
}

// relayResources lifts the relay's per-connection limits (a limited relayed
// connection is ignored by gossip) and raises its reservation limits.
func relayResources() relayv2.Resources {
	rc := relayv2.DefaultResources()
	rc.Limit = nil
	rc.MaxReservations = 4096
	rc.MaxReservationsPerIP = 256
	rc.MaxReservationsPerASN = 4096
	rc.MaxCircuits = 256
	return rc
}
