package mesh

import (
	"bufio"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ppsync/ppsync/internal/wire"
)

const maxHeartbeat = 256 << 10

// gossipSeenTTL is how long gossip remembers a message it has seen (to drop
// it when it comes round again) and scores its deliveries. Pubsub's default,
// two minutes, kept an ID for each of the 1,000,000 entries of a fast import
// and never gave the map's memory back. A message goes round a family's
// small mesh within seconds, and an entry seen twice is a no-op anyway.
const gossipSeenTTL = 20 * time.Second

func (m *Mesh) topicName(kind string) string {
	return fmt.Sprintf("/ppsync/%s/%s/1", m.cfg.Family.ID(), kind)
}

// gossip is the family's gossip while it runs: its pubsub, its topics, and
// the goroutines that read them, ended together by cancel.
type gossip struct {
	ctx           context.Context
	cancel        context.CancelFunc
	wg            sync.WaitGroup
	ps            *pubsub.PubSub
	ent, hbt, fkt *pubsub.Topic
	// held counts the bytes of the members' group messages accepted and not
	// yet taken by the handler: queued for delivery, decoded, waiting to be
	// stored. Past gossipHeldBytes a message is ignored (catch-up brings its
	// entries), so that a node that stores slower than its members write
	// holds a bounded amount of gossip instead of queues of decoded entries.
	held atomic.Int64
	// hostHeld is the same count for every family on this gossip's host (a
	// relay's families share it), bounded by hostGossipHeldBytes; nil: no
	// bound beyond the family's. hostMu orders this gossip's changes of both
	// counts, so that retire gives back exactly what the host counts of it.
	hostHeld *atomic.Int64
	hostMu   sync.Mutex
	retired  bool // guarded by hostMu: this gossip ended and counts on the host no more

	// unsent holds this node's group messages published while no member it
	// gossips with directly had joined the groups topic (see Publish), to be
	// sent when one joins; guarded by unsentMu.
	unsentMu    sync.Mutex
	unsent      []unsentMsg
	unsentBytes int
}

type unsentMsg struct {
	at   time.Time
	data []byte
}

// Own group messages published with no direct gossip peer are held for
// unsentFor, up to unsentBytes in all: past either, catch-up brings them.
const (
	unsentFor   = 10 * time.Second
	unsentBytes = 1 << 20
)

// holdUnsent keeps msg until a member joins; past the bound it drops everything
// held (catch-up brings it), so what is sent later never skips a message.
func (g *gossip) holdUnsent(msg []byte) {
	g.unsentMu.Lock()
	defer g.unsentMu.Unlock()
	if g.unsentBytes+len(msg) > unsentBytes {
		g.unsent, g.unsentBytes = nil, 0
		return
	}
	g.unsent = append(g.unsent, unsentMsg{at: time.Now(), data: msg})
	g.unsentBytes += len(msg)
}

// takeUnsent returns the held messages younger than unsentFor, in order,
// and forgets them all.
func (g *gossip) takeUnsent() [][]byte {
	g.unsentMu.Lock()
	defer g.unsentMu.Unlock()
	var out [][]byte
	for _, u := range g.unsent {
		if time.Since(u.at) < unsentFor {
			out = append(out, u.data)
		}
	}
	g.unsent, g.unsentBytes = nil, 0
	return out
}

// gossipHeldBytes bounds gossip.held: about two thirds of a second of a
// member writing at the gossip budget's rate (6 MiB a second). Decoded, the
// entries take about three times their encoded bytes.
const gossipHeldBytes = 4 << 20

// hostGossipHeldBytes bounds the gossip held by all the families of one host
// together: at a relay serving a thousand families, each family's bound alone
// would let 4 GiB of gossip (12 GiB decoded) build up while many of them burst
// at once. Sixteen families' worth; past it a family's message is ignored
// like one past its own bound, and catch-up brings its entries. One family
// alone never reaches it, so a family's flood takes at most a sixteenth of it.
const hostGossipHeldBytes = 16 * gossipHeldBytes

// hold counts n more bytes of gossip held, unless that would pass
// gossipHeldBytes, or hostGossipHeldBytes for the host, while some are held
// already (one message always fits). It says which bound refused: "" when
// none did, "family" or "host". An ended gossip takes nothing more.
func (g *gossip) hold(n int) (refused string) {
	if g.hostHeld != nil {
		g.hostMu.Lock()
		defer g.hostMu.Unlock()
		if g.retired {
			return "family"
		}
	}
	if now := g.held.Add(int64(n)); now > gossipHeldBytes && now > int64(n) {
		g.held.Add(-int64(n))
		return "family"
	}
	if g.hostHeld != nil {
		if now := g.hostHeld.Add(int64(n)); now > hostGossipHeldBytes && now > int64(n) {
			g.hostHeld.Add(-int64(n))
			g.held.Add(-int64(n))
			return "host"
		}
	}
	return ""
}

// release counts n bytes of gossip no longer held.
func (g *gossip) release(n int) {
	if g.hostHeld == nil {
		g.held.Add(-int64(n))
		return
	}
	g.hostMu.Lock()
	defer g.hostMu.Unlock()
	g.held.Add(-int64(n))
	if !g.retired {
		g.hostHeld.Add(-int64(n))
	}
}

// retire gives back to the host what this gossip, ended, still counts as
// held (messages that were in pubsub's queues or on their way to the handler
// when it stopped are dropped without a release); later releases change the
// family's count only.
func (g *gossip) retire() {
	if g.hostHeld == nil {
		return
	}
	g.hostMu.Lock()
	defer g.hostMu.Unlock()
	if !g.retired {
		g.retired = true
		g.hostHeld.Add(-g.held.Load())
	}
}

// startGossip joins the family's topics: groups (the own entries of each
// commit group, published once as one message), heartbeats and fork proofs,
// and starts reading them.
func (m *Mesh) startGossip(g *gossip) error {
	isMember := func(p peer.ID) bool { _, ok := m.cfg.Family.Member(p); return ok }
	// Gossip goes to members this node reaches directly, not to those it
	// reaches only through a relay's circuit (see relayedOnly).
	gossipWith := func(p peer.ID) bool { return isMember(p) && !m.relayedOnly(p) }
	ps, err := pubsub.NewGossipSub(g.ctx, m.host,
		// No pubsub signatures: every group ends at an entry that carries its
		// site's signature, and
		// heartbeats are signed by their node (signedHeartbeat), so signing and
		// verifying each message again would only double the CPU per entry.
		// Every hop is a member: the gater, the peer filter and the validators
		// check the forwarding peer.
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithMessageIdFn(func(msg *pb.Message) string {
			sum := sha256.Sum256(msg.Data)
			return string(sum[:16])
		}),
		pubsub.WithFloodPublish(true),
		pubsub.WithSeenMessagesTTL(gossipSeenTTL),
		// Queues of messages, each entry up to 512 KiB: a message past them is
		// dropped, and catch-up delivers the entry.
		pubsub.WithPeerOutboundQueueSize(1024),
		pubsub.WithValidateQueueSize(1024),
		pubsub.WithValidateWorkers(1),
		pubsub.WithMaxMessageSize(wire.MaxEntryBytes+64<<10),
		pubsub.WithPeerFilter(func(p peer.ID, _ string) bool { return gossipWith(p) }),
		// The family's own gossip protocol ("/ppsync/f/<family>/meshsub/1.2.0"):
		// at a relay each family runs its own pubsub on the shared host.
		pubsub.WithGossipSubProtocols([]protocol.ID{m.host.scoped(gossipKind)}, gossipFeatures),
		// A ppsync peer lists only protoBase in identify (no family's ID);
		// the family's view of the host tells its pubsub of members only.
		pubsub.WithProtocolMatchFn(func(own protocol.ID) func(protocol.ID) bool {
			return func(p protocol.ID) bool { return p == own || p == protoBase }
		}),
		pubsub.WithRawTracer(graftTracer{m, g}),
		pubsub.WithPeerScore(scoreParams(m.topicName("groups"), m.topicName("heartbeat"), m.appScore), scoreThresholds()),
	)
	if err != nil {
		return fmt.Errorf("mesh: start gossip: %w", err)
	}
	g.ps = ps
	validate := func(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		return m.validateGroup(g, from, msg)
	}
	if err := ps.RegisterTopicValidator(m.topicName("groups"), validate, pubsub.WithValidatorInline(true)); err != nil {
		return fmt.Errorf("mesh: entry validator: %w", err)
	}
	if err := ps.RegisterTopicValidator(m.topicName("heartbeat"), m.validateHeartbeat, pubsub.WithValidatorInline(true)); err != nil {
		return fmt.Errorf("mesh: heartbeat validator: %w", err)
	}
	if g.ent, err = ps.Join(m.topicName("groups")); err != nil {
		return fmt.Errorf("mesh: join entries topic: %w", err)
	}
	if g.hbt, err = ps.Join(m.topicName("heartbeat")); err != nil {
		return fmt.Errorf("mesh: join heartbeat topic: %w", err)
	}
	if err := ps.RegisterTopicValidator(m.topicName("forks"), m.validateForkProof); err != nil {
		return fmt.Errorf("mesh: fork validator: %w", err)
	}
	if g.fkt, err = ps.Join(m.topicName("forks")); err != nil {
		return fmt.Errorf("mesh: join forks topic: %w", err)
	}
	fs, err := g.fkt.Subscribe(pubsub.WithBufferSize(64))
	if err != nil {
		return fmt.Errorf("mesh: subscribe forks: %w", err)
	}
	m.goAwake(g, func(ctx context.Context) { m.readForkProofs(ctx, fs) })
	es, err := g.ent.Subscribe(pubsub.WithBufferSize(1024))
	if err != nil {
		return fmt.Errorf("mesh: subscribe entries: %w", err)
	}
	hs, err := g.hbt.Subscribe(pubsub.WithBufferSize(1024))
	if err != nil {
		return fmt.Errorf("mesh: subscribe heartbeats: %w", err)
	}
	entries := make(chan gossiped, maxGossipBatch)
	m.goAwake(g, func(ctx context.Context) { m.readEntries(ctx, g, es, entries) })
	m.goAwake(g, func(context.Context) { m.ingestEntries(g, entries) })
	m.goAwake(g, func(ctx context.Context) { m.readHeartbeats(ctx, hs) })
	m.goAwake(g, m.heartbeatLoop)
	joins, err := g.hbt.EventHandler()
	if err != nil {
		return fmt.Errorf("mesh: watch the heartbeat topic: %w", err)
	}
	entJoins, err := g.ent.EventHandler()
	if err != nil {
		joins.Cancel()
		return fmt.Errorf("mesh: watch the groups topic: %w", err)
	}
	m.goAwake(g, func(ctx context.Context) { m.publishUnsent(ctx, g, entJoins) })
	m.goAwake(g, func(ctx context.Context) { m.heartbeatOnJoin(ctx, g, joins) })
	return nil
}

// graftTracer hears of gossipsub's mesh changes. A member grafted into the
// mesh of the groups topic is one this node forwards entries to from now on;
// whatever came before (such as a site's write just after a relay
// restarted, received before the relay's mesh formed and forwarded to no
// one) it fetches once this node's heartbeat shows it: so the heartbeat goes
// out soon instead of at its next interval.
type graftTracer struct {
	m *Mesh
	g *gossip
}

func (t graftTracer) Graft(p peer.ID, topic string) {
	if topic == t.m.topicName("groups") {
		t.m.HeartbeatSoon()
	}
}
func (graftTracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (graftTracer) OnClosedOutboundStream(peer.ID)                       {}
func (graftTracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (graftTracer) Join(string)                                          {}
func (graftTracer) Leave(string)                                         {}
func (graftTracer) Prune(peer.ID, string)                                {}
func (graftTracer) ValidateMessage(*pubsub.Message)                      {}
func (graftTracer) DeliverMessage(*pubsub.Message)                       {}
func (graftTracer) RejectMessage(*pubsub.Message, string)                {}
func (graftTracer) DuplicateMessage(*pubsub.Message)                     {}
func (graftTracer) ThrottlePeer(peer.ID)                                 {}
func (graftTracer) RecvRPC(*pubsub.RPC)                                  {}
func (graftTracer) SendRPC(*pubsub.RPC, peer.ID)                         {}
func (graftTracer) DropRPC(*pubsub.RPC, peer.ID)                         {}

// UndeliverableMessage: pubsub dropped an accepted message because the
// subscription's queue was full; a member's group message held no longer.
func (t graftTracer) UndeliverableMessage(msg *pubsub.Message) {
	if msg.GetTopic() == t.m.topicName("groups") && msg.ReceivedFrom != t.m.host.ID() {
		if _, ok := msg.ValidatorData.([]*wire.Signed); ok {
			msg.ValidatorData = nil
			t.g.release(len(msg.Data))
		}
	}
}

// heartbeatOnJoin publishes this node's heartbeat as soon as a member joins
// the family's gossip (it connected, or a relay woke or restarted): its
// frontier tells the member at once what to fetch, such as entries written
// between the connection and the gossip joining, which gossip could not
// carry, instead of at the next periodic heartbeat.
func (m *Mesh) heartbeatOnJoin(ctx context.Context, g *gossip, joins *pubsub.TopicEventHandler) {
	m.onJoin(ctx, joins, g.hbt, nil, m.PublishHeartbeat)
}

// onJoin calls then each time a member joins topic t (joins: its events),
// once pubsub can send the member a message (awaitListed), unless skip
// (if not nil) says to pass the member by. It returns when ctx ends.
func (m *Mesh) onJoin(ctx context.Context, joins *pubsub.TopicEventHandler, t *pubsub.Topic, skip func(peer.ID) bool, then func()) {
	defer joins.Cancel()
	for {
		ev, err := joins.NextPeerEvent(ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin && (skip == nil || !skip(ev.Peer)) && m.awaitListed(ctx, t, ev.Peer) {
			then()
		}
	}
}

// listedWait bounds how long a message for a member that just joined a
// topic waits for pubsub to be able to send it one.
const listedWait = 2 * time.Second

// awaitListed waits until topic t lists member p, at most listedWait and
// while p stays connected, and reports whether it does. Pubsub announces a
// member's joining as soon as the member's subscription arrives on the
// member's own stream, and that can come before pubsub has set up its
// queue to the member: a message published in between goes to every other
// peer but not to it (the member's heartbeat on joining was lost so, 1 time
// in about 50 on a loaded machine). A topic lists only the peers that have
// both.
func (m *Mesh) awaitListed(ctx context.Context, t *pubsub.Topic, p peer.ID) bool {
	deadline := time.Now().Add(listedWait)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		if slices.Contains(t.ListPeers(), p) {
			return true
		}
		// Pubsub lists only a peer it is connected to without limits.
		if time.Now().After(deadline) || m.host.Network().Connectedness(p) != network.Connected {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// gossipKind is the unscoped rest of the family's gossip protocol.
const gossipKind = protocol.ID("/meshsub/1.2.0")

// gossipFeatures gives the family's gossip protocol gossipsub 1.2's features.
func gossipFeatures(feat pubsub.GossipSubFeature, p protocol.ID) bool {
	if _, rest, ok := splitProto(p); ok {
		p = rest
	}
	return pubsub.GossipSubDefaultFeatures(feat, p)
}

// Scores a member is given by this node's own judgement (pubsub's
// application-specific score): a stranger is below every threshold, and a
// member reached only through a relay's circuit below the publish threshold
// but above the graylist: nothing is published or forwarded to it, and
// what it sends (its subscriptions) is still taken.
const (
	scoreStranger     = -1000
	scoreRelayedOnly  = -250
	scoreGossipFloor  = -100
	scorePublishFloor = -200
	scoreGraylist     = -300
)

// appScore is pubsub's application-specific score of peer p.
func (m *Mesh) appScore(p peer.ID) float64 {
	if _, ok := m.cfg.Family.Member(p); !ok {
		return scoreStranger
	}
	if m.relayedOnly(p) {
		return scoreRelayedOnly
	}
	return 0
}

// relayedOnly reports whether every connection to p runs through a relay's
// circuit. Such a member gets no gossip from this node: the relay whose
// circuit joins them is a member of the family too (a relay lets only the
// members of a family it serves reserve and meet), connected to both, and
// forwards every message of the family's gossip to each. Sent over the
// circuit as well, each message crossed the relay about five times where
// once carries it: a site's heartbeat went to the relay and over the
// circuits to each other site, and each of them forwarded it again over
// theirs. With 900 sites connected that traffic was a fifth of the relay's
// CPU and of the sites'.
// A circuit still carries everything else: hellos, probes, catch-up, fork
// proofs, liveness pings.
//
// pubsub asks for a peer's score many times a second, so the connections
// are counted as they open and close (trackConn), not listed here.
func (m *Mesh) relayedOnly(p peer.ID) bool {
	m.mu.Lock()
	l := m.links[p]
	m.mu.Unlock()
	return l.relayed > 0 && l.direct == 0
}

func scoreParams(entries, heartbeat string, appScore func(peer.ID) float64) *pubsub.PeerScoreParams {
	topic := func() *pubsub.TopicScoreParams {
		return &pubsub.TopicScoreParams{
			SkipAtomicValidation:           true,
			TopicWeight:                    1,
			TimeInMeshQuantum:              time.Second, // divides; must not be zero even with weight 0
			TimeInMeshCap:                  1,
			InvalidMessageDeliveriesWeight: -100,
			InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(time.Hour),
		}
	}
	return &pubsub.PeerScoreParams{
		SkipAtomicValidation: true,
		Topics:               map[string]*pubsub.TopicScoreParams{entries: topic(), heartbeat: topic()},
		AppSpecificScore:     appScore,
		AppSpecificWeight:    1,
		SeenMsgTTL:           gossipSeenTTL,
		DecayInterval:        time.Second,
		DecayToZero:          0.01,
	}
}

func scoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{GossipThreshold: scoreGossipFloor, PublishThreshold: scorePublishFloor, GraylistThreshold: scoreGraylist}
}

// groupMessage is what the groups topic carries: the envelopes of one run of
// a site's consecutive entries that ends at a signed entry (a commit group,
// or the part of one that fits a message).
type groupMessage struct {
	Entries [][]byte `codec:"en"`
}

// maxGossipMessage bounds a gossiped message (pubsub's own limit is a little
// larger), maxGossipEntries the entries it carries.
const (
	maxGossipMessage = wire.MaxEntryBytes
	maxGossipEntries = 4 * wire.MaxGroupEntries
)

// GossipMessage is one encoded message of the groups topic.
type GossipMessage struct {
	Data    []byte
	Entries int // how many entries it carries
}

// GroupMessages encodes a committed run of own entries (one commit group,
// or groups that follow each other) as gossip messages: whole groups, as
// many as fit maxGossipMessage each, so that every message is a run ending
// at a signed entry. A group too large for one message is left out (and
// the message before it ends there): catch-up delivers it. Unsigned
// entries after the run's last signed one are left out too.
func GroupMessages(run []*wire.Signed) []GossipMessage {
	var out []GossipMessage
	var msg [][]byte
	size := 0
	flush := func() {
		if len(msg) == 0 {
			return
		}
		if b, err := wire.Marshal(&groupMessage{Entries: msg}); err == nil {
			out = append(out, GossipMessage{Data: b, Entries: len(msg)})
		}
		msg, size = nil, 0
	}
	start := 0
	for i, s := range run {
		if !s.IsSigned() {
			continue
		}
		grp := make([][]byte, 0, i+1-start)
		n := 0
		for _, e := range run[start : i+1] {
			env := e.Marshal()
			grp = append(grp, env)
			n += len(env) + 8
		}
		start = i + 1
		switch {
		case n+64 > maxGossipMessage || len(grp) > maxGossipEntries:
			flush()
		case size+n+64 > maxGossipMessage || len(msg)+len(grp) > maxGossipEntries:
			flush()
			msg, size = grp, n
		default:
			msg, size = append(msg, grp...), size+n
		}
	}
	flush()
	return out
}

// validateGroup accepts a message of the groups topic only from a member, of
// this family, well formed, within the limits, and a run of one site's
// entries that chains and ends at an entry signed by its site's key of its
// epoch: one signature checked per message.
func (m *Mesh) validateGroup(g *gossip, from peer.ID, msg *pubsub.Message) (res pubsub.ValidationResult) {
	m.tap.write(msg.Data) // what this node received (forwarded on as is)
	if from == m.host.ID() {
		return pubsub.ValidationAccept // our own, checked when committed
	}
	if _, ok := m.cfg.Family.Member(from); !ok {
		m.count("gossip_from_non_member")
		return pubsub.ValidationReject
	}
	m.touch(from)
	if !m.takeGossip() {
		return pubsub.ValidationIgnore // over the family's rate: catch-up brings it later
	}
	switch g.hold(len(msg.Data)) {
	case "family":
		m.count("gossip_receiver_busy")
		return pubsub.ValidationIgnore // this node stores slower than gossip comes: catch-up brings it later
	case "host":
		m.count("gossip_host_busy")
		return pubsub.ValidationIgnore // the host's families together hold their bound: catch-up brings it later
	}
	defer func() {
		if res != pubsub.ValidationAccept {
			g.release(len(msg.Data))
		}
	}()
	run, err := m.decodeGroup(msg.Data)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			m.count("gossip_oversized")
		} else {
			m.count("gossip_malformed")
		}
		return pubsub.ValidationReject
	}
	if run[0].Family != m.cfg.Family.ID() {
		m.count("gossip_wrong_family")
		return pubsub.ValidationReject
	}
	if err := wire.CheckChain(run); err != nil {
		m.count("gossip_bad_chain")
		return pubsub.ValidationReject
	}
	if _, err := m.cfg.Family.SiteKey(run[len(run)-1].Site, run[len(run)-1].Epoch); err != nil {
		// Not delivered, but not held against the forwarder either: right
		// after a site moves, its new certificate can reach this node after
		// its first entries do, and a rejection would have gossip's scoring
		// ignore an honest member for minutes. Catch-up brings the entries
		// once the certificate is known.
		m.count("gossip_unknown_signer")
		return pubsub.ValidationIgnore
	}
	if err := wire.VerifyRun(run, m.cfg.Family.SiteKey); err != nil {
		m.count("gossip_bad_signature")
		return pubsub.ValidationReject
	}
	msg.ValidatorData = run
	return pubsub.ValidationAccept
}

// decodeGroup decodes a groups-topic message into its run of entries.
func (m *Mesh) decodeGroup(data []byte) ([]*wire.Signed, error) {
	if len(data) > maxGossipMessage+1024 {
		return nil, fmt.Errorf("%w: gossip message of %d bytes", wire.ErrTooLarge, len(data))
	}
	var gm groupMessage
	if err := wire.Unmarshal(data, &gm); err != nil {
		return nil, err
	}
	if len(gm.Entries) == 0 || len(gm.Entries) > maxGossipEntries {
		return nil, fmt.Errorf("%w: gossip message of %d entries", wire.ErrMalformed, len(gm.Entries))
	}
	run := make([]*wire.Signed, len(gm.Entries))
	for i, env := range gm.Entries {
		s, err := wire.DecodeEnvelope(env)
		if err != nil {
			return nil, err
		}
		run[i] = s
	}
	return run, nil
}

// signedHeartbeat is a heartbeat signed by the node that sent it, so a
// forwarding member cannot speak for another.
type signedHeartbeat struct {
	Body []byte `codec:"b"` // wire.Marshal(Heartbeat)
	Peer string `codec:"p"`
	Sig  []byte `codec:"s"` // Ed25519 over heartbeatDomain + Body
}

const heartbeatDomain = "ppsync heartbeat v1\n"

type verifiedHeartbeat struct {
	from peer.ID
	hb   Heartbeat
}

func (m *Mesh) validateHeartbeat(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	m.tap.write(msg.Data) // what this node received (forwarded on as is)
	if from == m.host.ID() {
		return pubsub.ValidationAccept
	}
	if _, ok := m.cfg.Family.Member(from); !ok {
		m.count("heartbeat_non_member")
		return pubsub.ValidationReject
	}
	m.touch(from)
	if !m.takeGossip() {
		return pubsub.ValidationIgnore
	}
	if len(msg.Data) > maxHeartbeat {
		m.count("heartbeat_oversized")
		return pubsub.ValidationReject
	}
	var sh signedHeartbeat
	if err := wire.Unmarshal(msg.Data, &sh); err != nil {
		m.count("heartbeat_malformed")
		return pubsub.ValidationReject
	}
	author, err := peer.Decode(sh.Peer)
	if err != nil {
		m.count("heartbeat_malformed")
		return pubsub.ValidationReject
	}
	if _, ok := m.cfg.Family.Member(author); !ok {
		// Not held against the forwarder: it took the heartbeat from a
		// member this node has not learned of yet (a site that joined a
		// moment ago, whose certificate comes in the forwarder's next
		// hello) or one whose revocation it has not learned of. A rejection
		// would have gossip's scoring graylist an honest relay for an hour
		// after two of them: nothing more from it, nothing to it.
		m.count("heartbeat_unknown_author")
		return pubsub.ValidationIgnore
	}
	pub, err := author.ExtractPublicKey()
	if err != nil {
		m.count("heartbeat_malformed")
		return pubsub.ValidationReject
	}
	if ok, err := pub.Verify(append([]byte(heartbeatDomain), sh.Body...), sh.Sig); err != nil || !ok {
		m.count("heartbeat_bad_signature")
		return pubsub.ValidationReject
	}
	var hb Heartbeat
	if err := wire.Unmarshal(sh.Body, &hb); err != nil {
		m.count("heartbeat_malformed")
		return pubsub.ValidationReject
	}
	msg.ValidatorData = verifiedHeartbeat{from: author, hb: hb}
	return pubsub.ValidationAccept
}

// readEntries hands the gossiped runs, as they come, to ingestEntries.
func (m *Mesh) readEntries(ctx context.Context, g *gossip, sub *pubsub.Subscription, out chan<- gossiped) {
	defer sub.Cancel()
	defer close(out)
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == m.host.ID() {
			continue
		}
		run, ok := msg.ValidatorData.([]*wire.Signed)
		if !ok {
			continue
		}
		// Pubsub keeps the message for a few heartbeats (its message cache,
		// to answer members that ask for it): without its decoded entries.
		msg.ValidatorData = nil
		select {
		case out <- gossiped{run: run, from: msg.ReceivedFrom, size: len(msg.Data)}:
		case <-ctx.Done():
			g.release(len(msg.Data))
			return
		}
	}
}

// gossiped is one run received by gossip (a message of the groups topic),
// its chain and signature checked.
type gossiped struct {
	run  []*wire.Signed
	from peer.ID
	size int // the message's bytes, held (gossip.held) until stored
}

// maxGossipBatch bounds how many waiting gossiped messages one delivery
// takes.
const maxGossipBatch = 1000

// ingestEntries delivers gossiped runs to the handler. Whatever has piled up
// while the last delivery was being stored goes in one go, runs that follow
// each other joined, so that a node receiving thousands of entries a second
// stores them in a few commits instead of one commit (and one disk sync)
// each.
func (m *Mesh) ingestEntries(gs *gossip, in <-chan gossiped) {
	for g := range in {
		batch := []gossiped{g}
	more:
		for len(batch) < maxGossipBatch {
			select {
			case g, ok := <-in:
				if !ok {
					break more
				}
				batch = append(batch, g)
			default:
				break more
			}
		}
		size := 0
		for _, b := range batch {
			size += b.size
		}
		for _, run := range gossipRuns(batch) {
			if _, err := m.cfg.Handler.Entries(m.ctx, run.from, run.run, true); err != nil {
				m.log.Debug("gossiped entries not appended", "first", run.run[0].ID(), "entries", len(run.run), "err", err)
			}
		}
		gs.release(size)
	}
}

// gossipRuns sorts a batch of gossiped runs by site and first seq and joins
// a run to the one before it when it starts right after it and links to it.
// Each run ends at a signed entry, so a joined one does too. A second copy
// of a run is dropped; a run that overlaps another or does not link to it (a
// fork, which the log must see) goes on its own.
func gossipRuns(batch []gossiped) []gossiped {
	slices.SortStableFunc(batch, func(a, b gossiped) int {
		if c := strings.Compare(a.run[0].Site, b.run[0].Site); c != 0 {
			return c
		}
		return cmp.Compare(a.run[0].Seq, b.run[0].Seq)
	})
	var runs, extra []gossiped
	for _, g := range batch {
		n := len(runs)
		if n == 0 {
			runs = append(runs, g)
			continue
		}
		last := runs[n-1].run
		end, first := last[len(last)-1], g.run[0]
		switch {
		case first.Site != end.Site:
			runs = append(runs, g)
		case first.Seq == end.Seq+1 && first.Prev == end.Hash:
			runs[n-1].run = append(slices.Clip(last), g.run...)
		case sameRun(last, g.run):
		case first.Seq > end.Seq+1:
			runs = append(runs, g)
		default:
			extra = append(extra, g)
		}
	}
	return append(runs, extra...)
}

// sameRun reports whether run b is part of run a (the same entries again).
func sameRun(a, b []*wire.Signed) bool {
	i := int(b[0].Seq) - int(a[0].Seq)
	if i < 0 || i+len(b) > len(a) {
		return false
	}
	return a[i+len(b)-1].Hash == b[len(b)-1].Hash
}

func (m *Mesh) readHeartbeats(ctx context.Context, sub *pubsub.Subscription) {
	defer sub.Cancel()
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		vh, ok := msg.ValidatorData.(verifiedHeartbeat)
		if !ok || vh.from == m.host.ID() {
			continue
		}
		hb, from := vh.hb, vh.from
		m.mu.Lock()
		if ps := m.peers[from]; ps != nil {
			ps.lastSeen = time.Now()
			if msg.ReceivedFrom == from {
				ps.direct = ps.lastSeen
			}
			hbc := hb
			ps.heartbeat = &hbc
		}
		m.mu.Unlock()
		m.addAddrs(from, hb.Addrs)
		m.cfg.Handler.Heartbeat(from, hb)
	}
}

func (m *Mesh) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		m.PublishHeartbeat()
		last := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.soon:
			// At most one early heartbeat per heartbeatSoonGap: nudges that
			// come meanwhile are one.
			if d := heartbeatSoonGap - time.Since(last); d > 0 {
				w := time.NewTimer(d)
				select {
				case <-ctx.Done():
					w.Stop()
					return
				case <-w.C:
				}
			}
		}
	}
}

// heartbeatSoonGap is the least time between two heartbeats HeartbeatSoon
// brings forward.
const heartbeatSoonGap = 250 * time.Millisecond

// HeartbeatSoon gossips this node's heartbeat early (within
// heartbeatSoonGap of the last one): the log holds entries its members may
// lack that gossip did not bring them, such as a site's write that a relay
// fetched by catch-up after gossip missed it. Members then fetch them now
// instead of at the next periodic heartbeat.
func (m *Mesh) HeartbeatSoon() { nudge(m.soon) }

// PublishHeartbeat gossips this node's heartbeat now (nothing while the
// family's gossip sleeps: no member is connected to hear it).
func (m *Mesh) PublishHeartbeat() {
	g := m.gossip.Load()
	if g == nil {
		return
	}
	hb := m.cfg.Heartbeat()
	hb.Addrs = nil
	for _, a := range m.host.Addrs() {
		hb.Addrs = append(hb.Addrs, a.String())
	}
	body, err := wire.Marshal(&hb)
	if err != nil {
		m.log.Error("encode heartbeat", "err", err)
		return
	}
	sh := signedHeartbeat{Body: body, Peer: m.host.ID().String(),
		Sig: ed25519.Sign(m.cfg.Key, append([]byte(heartbeatDomain), body...))}
	b, err := wire.Marshal(&sh)
	if err != nil {
		m.log.Error("encode heartbeat", "err", err)
		return
	}
	m.tap.write(b)
	if err := g.hbt.Publish(g.ctx, b); err != nil && g.ctx.Err() == nil {
		m.log.Debug("publish heartbeat", "err", err)
	}
}

// GossipPeers counts the members this node's gossip of entries reaches now
// (those joined to the family's groups topic): 0 while asleep.
func (m *Mesh) GossipPeers() int {
	g := m.gossip.Load()
	if g == nil {
		return 0
	}
	return len(g.ent.ListPeers())
}

// Publish gossips one message of committed own entries (see GroupMessages)
// once. Gossip is best effort: catch-up delivers whatever it drops.
func (m *Mesh) Publish(ctx context.Context, msg []byte) error {
	g := m.gossip.Load()
	if g == nil {
		return nil // asleep: no member is connected; catch-up delivers it
	}
	if !m.gossipsDirectly(g) {
		// Nobody it would go to: no member joined, or only members behind
		// a relay's circuit, which get gossip from the relay (relayedOnly).
		// A site writing just as its relay came back (reconnected, its
		// gossip not joined yet) sent its write to no one, and the other
		// sites got it seconds later by catch-up. It is held and sent when
		// a member joins (publishUnsent); a message held too long is left to
		// catch-up.
		g.holdUnsent(msg)
		if m.gossipsDirectly(g) {
			// A member was listed since the look above, and publishUnsent
			// may have sent what was held before this message was.
			m.sendUnsent(ctx, g)
		}
		return nil
	}
	return m.publishGroup(ctx, g, msg)
}

// gossipsDirectly reports whether a member this node gossips with directly
// (not only through a relay's circuit) has joined the groups topic.
func (m *Mesh) gossipsDirectly(g *gossip) bool {
	return slices.ContainsFunc(g.ent.ListPeers(), func(p peer.ID) bool { return !m.relayedOnly(p) })
}

// sendUnsent publishes the held group messages.
func (m *Mesh) sendUnsent(ctx context.Context, g *gossip) {
	for _, msg := range g.takeUnsent() {
		if err := m.publishGroup(ctx, g, msg); err != nil && ctx.Err() == nil {
			m.log.Debug("publish held gossip", "err", err)
		}
	}
}

func (m *Mesh) publishGroup(ctx context.Context, g *gossip, msg []byte) error {
	m.tap.write(msg)
	if err := g.ent.Publish(ctx, msg); err != nil {
		return fmt.Errorf("mesh: publish: %w", err)
	}
	return nil
}

// publishUnsent sends the held group messages once a member this node
// gossips with directly joins the groups topic.
func (m *Mesh) publishUnsent(ctx context.Context, g *gossip, joins *pubsub.TopicEventHandler) {
	m.onJoin(ctx, joins, g.ent, m.relayedOnly, func() { m.sendUnsent(ctx, g) })
}

// forkProof is what the forks topic and the fork-proof stream carry: two
// runs of one site's envelopes that cannot both belong to its chain, each
// from an entry at the fork to the signed entry that ends its commit group.
// A and B are the runs' first entries, RA and RB the rest (empty when the
// first is signed itself).
type forkProof struct {
	A  []byte   `codec:"a"`
	B  []byte   `codec:"b"`
	RA [][]byte `codec:"ra,omitempty"`
	RB [][]byte `codec:"rb,omitempty"`
}

// maxForkProof bounds a fork proof: two runs of at most a commit group's
// bytes each, and an entry more.
const maxForkProof = 2*(wire.MaxGroupBytes+wire.MaxEntryBytes) + 64<<10

func encodeForkProof(a, b []*wire.Signed) ([]byte, error) {
	if len(a) == 0 || len(b) == 0 {
		return nil, errors.New("mesh: a fork proof needs two runs")
	}
	fp := forkProof{A: a[0].Marshal(), B: b[0].Marshal()}
	for _, s := range a[1:] {
		fp.RA = append(fp.RA, s.Marshal())
	}
	for _, s := range b[1:] {
		fp.RB = append(fp.RB, s.Marshal())
	}
	return wire.Marshal(&fp)
}

func (m *Mesh) validateForkProof(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	m.tap.write(msg.Data) // what this node received (forwarded on as is)
	if from == m.host.ID() {
		return pubsub.ValidationAccept
	}
	if _, ok := m.cfg.Family.Member(from); !ok {
		m.count("forkproof_non_member")
		return pubsub.ValidationReject
	}
	if len(msg.Data) > maxForkProof {
		m.count("forkproof_oversized")
		return pubsub.ValidationReject
	}
	a, b, err := m.decodeForkProof(msg.Data)
	if err != nil {
		m.count("forkproof_malformed")
		return pubsub.ValidationReject
	}
	msg.ValidatorData = [2][]*wire.Signed{a, b}
	return pubsub.ValidationAccept
}

func (m *Mesh) readForkProofs(ctx context.Context, sub *pubsub.Subscription) {
	defer sub.Cancel()
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == m.host.ID() {
			continue
		}
		if p, ok := msg.ValidatorData.([2][]*wire.Signed); ok {
			m.cfg.Handler.ForkProof(msg.ReceivedFrom, p[0], p[1])
		}
	}
}

// PublishForkProof spreads the proof of a fork so every member shows it: it
// gossips it (when it fits a gossip message), and pushes it over a stream
// on every connection to a member. A cloned twin shares its peer ID with the
// original, so libp2p would pick one of their two connections for a stream
// to that ID, and gossip holds one stream per peer ID: only a stream on each
// connection itself reaches both copies.
func (m *Mesh) PublishForkProof(ctx context.Context, a, b []*wire.Signed) error {
	data, err := encodeForkProof(a, b)
	if err != nil {
		return err
	}
	for _, c := range m.host.Network().Conns() {
		if _, ok := m.cfg.Family.Member(c.RemotePeer()); !ok {
			continue
		}
		m.goTracked(func() {
			ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
			defer cancel()
			if !m.waitHello(ctx, c, true) {
				return
			}
			s, err := m.streamOn(ctx, c, forkProofProto, "fork-proof")
			if err != nil {
				return
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(10 * time.Second))
			if err := writeFrame(s, data); err != nil {
				s.Reset()
			}
		})
	}
	g := m.gossip.Load()
	if g == nil || len(data) > maxGossipMessage {
		return nil // asleep (no member is connected), or too large: the streams and catch-up carry it
	}
	m.tap.write(data)
	if err := g.fkt.Publish(ctx, data); err != nil {
		return fmt.Errorf("mesh: publish fork proof: %w", err)
	}
	return nil
}

const forkProofProto protocol.ID = "/ppsync/forkproof/1"

// handleForkProof takes a fork proof pushed by a member.
func (m *Mesh) handleForkProof(s network.Stream) {
	from := s.Conn().RemotePeer()
	if _, ok := m.admit(s, "forkproof"); !ok {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := readFrame(bufio.NewReader(s), maxForkProof)
	if err != nil {
		m.count("forkproof_malformed")
		s.Reset()
		return
	}
	pa, pb, err := m.decodeForkProof(b)
	if err != nil {
		m.count("forkproof_malformed")
		return
	}
	m.cfg.Handler.ForkProof(from, pa, pb)
}

// decodeForkProof decodes a fork proof's two runs of this family. The log
// checks that they really prove a fork.
func (m *Mesh) decodeForkProof(data []byte) ([]*wire.Signed, []*wire.Signed, error) {
	var fp forkProof
	if err := wire.Unmarshal(data, &fp); err != nil {
		return nil, nil, err
	}
	a, err := m.decodeProofRun(append([][]byte{fp.A}, fp.RA...))
	if err != nil {
		return nil, nil, err
	}
	b, err := m.decodeProofRun(append([][]byte{fp.B}, fp.RB...))
	if err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

// decodeProofRun decodes one branch of a fork proof: envelopes of this
// family, at most a commit group's worth.
func (m *Mesh) decodeProofRun(envs [][]byte) ([]*wire.Signed, error) {
	if len(envs) > wire.MaxGroupEntries+1 {
		return nil, fmt.Errorf("mesh: a fork proof's branch of %d entries", len(envs))
	}
	run := make([]*wire.Signed, len(envs))
	for i, env := range envs {
		s, err := wire.DecodeEnvelope(env)
		if err != nil {
			return nil, err
		}
		if s.Family != m.cfg.Family.ID() {
			return nil, fmt.Errorf("mesh: fork proof of another family")
		}
		run[i] = s
	}
	return run, nil
}
