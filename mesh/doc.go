// Package mesh connects a node to its sync family over libp2p: an
// authenticated host (TCP and QUIC, Noise and TLS) that admits family members
// only, a hello exchange that proves each side's certificate and spreads
// certificates and revocations, gossip of entries and heartbeats, the catch-up
// stream protocol, the members-only circuit relay, and LAN discovery.
//
// The mesh moves verified entries and metadata and knows nothing of Pebble,
// the state or the lock: what it needs of the node it asks through the Family
// and Log interfaces, and what it receives it hands to the Handler.
package mesh
