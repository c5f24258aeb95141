package mesh

import (
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
)

// Admission, for each family (Host's hostGater admits a peer that some
// family admits). Outbound, a node dials members and the candidates it was
// given: the peer IDs pinned by its bootstrap addresses and the peers of its
// family's LAN service (the secure channel proves the peer ID, so the dial
// reaches exactly that peer). Inbound, a current member is admitted; a
// banned peer (revoked, or a moved site's old machine) is refused either
// way; any other authenticated peer, and a candidate this node dialed, is on
// probation: it must prove a valid certificate in the hello exchange within
// helloTimeout or it is disconnected (Host.probation). Nothing but the hello
// protocol serves a peer that is not a current member, so a stranger never
// receives or delivers family data.

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
