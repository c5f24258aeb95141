package mesh

import (
	"context"
	"crypto/ed25519"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// Member is a current member of the family.
type Member struct {
	Site   string
	Relay  bool
	PeerID peer.ID
	Epoch  uint64
}

// Family is what the mesh needs to know about membership. The node satisfies
// it from its roster.
type Family interface {
	// ID is the family ID.
	ID() string
	// Member reports whether p is a current member.
	Member(p peer.ID) (Member, bool)
	// Members lists the current members.
	Members() []Member
	// Banned reports a peer ID that must never connect: revoked, or the old
	// machine of a site that moved.
	Banned(p peer.ID) bool
	// SiteKey returns the key that signs a site's entries of an epoch.
	SiteKey(site string, epoch uint64) (ed25519.PublicKey, error)
	// Documents returns every certificate and revocation held, as file bytes.
	Documents() [][]byte
	// DocumentsOf returns the certificates held that name peer p, as file
	// bytes: what a node shows a peer before that peer proved a membership.
	DocumentsOf(p peer.ID) [][]byte
	// Learn installs a certificate or revocation received from a peer.
	Learn(doc []byte) (changed bool, err error)
	// Subject returns the peer ID a certificate names, read without checking
	// its signature (false for a revocation or anything unreadable): the
	// mesh verifies only the certificates a stranger shows for itself.
	Subject(doc []byte) (peer.ID, bool)
}

// Log is what the mesh needs of the transaction log to serve catch-up.
type Log interface {
	// Frontier returns site -> highest contiguous durable seq.
	Frontier() map[string]uint64
	// RawRange calls fn with each stored envelope of site from..to, in order.
	RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (stop bool, err error)) error
	// ForkProofs returns, for every fork known, the two runs of envelopes that
	// prove it: each from an entry at the fork to its commit group's signed
	// end.
	ForkProofs() [][2][][]byte
}

// Handler receives what the mesh brings in. Calls may come from several
// goroutines at once.
type Handler interface {
	// Entries takes a contiguous run of one site's entries, from gossip (one
	// commit group, or several that chain) or catch-up (a batch), after the
	// mesh checked their format and family. Its last entry is signed. It
	// returns how many were new.
	Entries(ctx context.Context, from peer.ID, run []*wire.Signed, gossip bool) (appended int, err error)
	// Heartbeat reports a member's heartbeat.
	Heartbeat(from peer.ID, hb Heartbeat)
	// PeerChanged reports a member connecting or disconnecting.
	PeerChanged(p peer.ID, connected bool)
	// DocumentsChanged reports that a certificate or revocation was learned.
	DocumentsChanged()
	// ForkProof reports two runs a member says prove a site's fork: each
	// from an entry at the fork to the signed entry that ends its commit
	// group (the log checks them).
	ForkProof(from peer.ID, a, b []*wire.Signed)
	// Duplicate reports two processes connected at once with one member's
	// identity (a copied data directory or a cloned machine).
	Duplicate(p peer.ID)
}

// Heartbeat is what every member gossips periodically about itself.
type Heartbeat struct {
	Site     string            `codec:"si"`
	Role     string            `codec:"ro"`
	Version  string            `codec:"ve"` // software version
	Protocol uint32            `codec:"pr"` // sync protocol version
	Schema   uint32            `codec:"sc"` // newest entry schema it applies
	Frontier map[string]uint64 `codec:"fr"`
	Heads    map[string][]byte `codec:"hd,omitempty"` // site -> hash of the entry at Frontier[site]
	Wall     time.Time         `codec:"wa"`           // its wall clock when sent
	Status   string            `codec:"st"`           // "ok", "forked", "catching-up", ...
	Addrs    []string          `codec:"ad,omitempty"`
	Want     []string          `codec:"wk,omitempty"` // data keys it waits for (IDs): a holder gives them at once
}

// ProtocolVersion is the version of the sync protocol this build speaks.
// 2: every stream of a family is opened as /ppsync/f/<family ID>/<kind>
// (see protoBase), so one host serves many families; a node of version 1
// cannot reach a node of version 2, so a family upgrades all its nodes.
// 3: one signature per commit group: entries inside a group travel
// unsigned, catch-up batches end at signed entries, gossip carries a group
// per message on the "groups" topic and fork proofs carry runs. A node of
// version 2 refuses unsigned entries (malformed), so it cannot catch up
// from a node of version 3: a family upgrades all its nodes together.
const ProtocolVersion = 3
