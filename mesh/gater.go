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
	// Only members reserve (relayACL), and a member's slot is one small
	// record, renewed about hourly: room for a thousand families
	// of several sites, with no smaller limit per address or network, since
	// the systems a vendor hosts for its practices share its data centre's
	// addresses (a limit of 256 an address left sites past it retrying
	// every few seconds, each try checked against every family served).
	rc.MaxReservations = 16384
	rc.MaxReservationsPerIP = rc.MaxReservations
	rc.MaxReservationsPerASN = rc.MaxReservations
	rc.MaxCircuits = 256
	return rc
}
