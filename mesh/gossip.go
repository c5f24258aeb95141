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
}

// startGossip joins the family's topics: entries (each committed entry,
// published once), heartbeats and fork proofs, and starts reading them.
func (m *Mesh) startGossip(g *gossip) error {
	isMember := func(p peer.ID) bool { _, ok := m.cfg.Family.Member(p); return ok }
	ps, err := pubsub.NewGossipSub(g.ctx, m.host,
		// No pubsub signatures: every entry carries its site's signature and
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
		pubsub.WithMaxMessageSize(wire.MaxEntryBytes+64<<10),
		pubsub.WithPeerFilter(func(p peer.ID, _ string) bool { return isMember(p) }),
		// The family's own gossip protocol ("/ppsync/f/<family>/meshsub/1.2.0"):
		// at a relay each family runs its own pubsub on the shared host.
		pubsub.WithGossipSubProtocols([]protocol.ID{m.host.scoped(gossipKind)}, gossipFeatures),
		// A ppsync peer lists only protoBase in identify (no family's ID);
		// the family's view of the host tells its pubsub of members only.
		pubsub.WithProtocolMatchFn(func(own protocol.ID) func(protocol.ID) bool {
			return func(p protocol.ID) bool { return p == own || p == protoBase }
		}),
		pubsub.WithPeerScore(scoreParams(m.topicName("entries"), m.topicName("heartbeat"), isMember), scoreThresholds()),
	)
	if err != nil {
		return fmt.Errorf("mesh: start gossip: %w", err)
	}
	g.ps = ps
	if err := ps.RegisterTopicValidator(m.topicName("entries"), m.validateEntry); err != nil {
		return fmt.Errorf("mesh: entry validator: %w", err)
	}
	if err := ps.RegisterTopicValidator(m.topicName("heartbeat"), m.validateHeartbeat, pubsub.WithValidatorInline(true)); err != nil {
		return fmt.Errorf("mesh: heartbeat validator: %w", err)
	}
	if g.ent, err = ps.Join(m.topicName("entries")); err != nil {
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
	m.goAwake(g, func(ctx context.Context) { m.readEntries(ctx, es, entries) })
	m.goAwake(g, func(context.Context) { m.ingestEntries(entries) })
	m.goAwake(g, func(ctx context.Context) { m.readHeartbeats(ctx, hs) })
	m.goAwake(g, m.heartbeatLoop)
	joins, err := g.hbt.EventHandler()
	if err != nil {
		return fmt.Errorf("mesh: watch the heartbeat topic: %w", err)
	}
	m.goAwake(g, func(ctx context.Context) { m.heartbeatOnJoin(ctx, joins) })
	return nil
}

// heartbeatOnJoin publishes this node's heartbeat as soon as a member joins
// the family's gossip (it connected, or a relay woke or restarted): its
// frontier tells the member at once what to fetch, such as entries written
// between the connection and the gossip joining, which gossip could not
// carry, instead of at the next periodic heartbeat.
func (m *Mesh) heartbeatOnJoin(ctx context.Context, joins *pubsub.TopicEventHandler) {
	defer joins.Cancel()
	for {
		ev, err := joins.NextPeerEvent(ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin {
			m.PublishHeartbeat()
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

func scoreParams(entries, heartbeat string, isMember func(peer.ID) bool) *pubsub.PeerScoreParams {
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
		AppSpecificScore: func(p peer.ID) float64 {
			if isMember(p) {
				return 0
			}
			return -1000
		},
		AppSpecificWeight: 1,
		SeenMsgTTL:        gossipSeenTTL,
		DecayInterval:     time.Second,
		DecayToZero:       0.01,
	}
}

func scoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{GossipThreshold: -100, PublishThreshold: -200, GraylistThreshold: -300}
}

// validateEntry accepts an entry only from a member, of this family, well
// formed, within the limits and signed by its site's key of its epoch.
func (m *Mesh) validateEntry(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
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
	s, err := wire.DecodeEnvelope(msg.Data)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			m.count("gossip_oversized")
		} else {
			m.count("gossip_malformed")
		}
		return pubsub.ValidationReject
	}
	if s.Family != m.cfg.Family.ID() {
		m.count("gossip_wrong_family")
		return pubsub.ValidationReject
	}
	key, err := m.cfg.Family.SiteKey(s.Site, s.Epoch)
	if err != nil {
		// Not delivered, but not held against the forwarder either: right
		// after a site moves, its new certificate can reach this node after
		// its first entries do, and a rejection would have gossip's scoring
		// ignore an honest member for minutes. Catch-up brings the entries
		// once the certificate is known.
		m.count("gossip_unknown_signer")
		return pubsub.ValidationIgnore
	}
	if err := s.Verify(key); err != nil {
		m.count("gossip_bad_signature")
		return pubsub.ValidationReject
	}
	msg.ValidatorData = s
	return pubsub.ValidationAccept
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
		m.count("heartbeat_non_member")
		return pubsub.ValidationReject
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

// readEntries hands the gossiped entries, as they come, to ingestEntries.
func (m *Mesh) readEntries(ctx context.Context, sub *pubsub.Subscription, out chan<- gossiped) {
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
		s, ok := msg.ValidatorData.(*wire.Signed)
		if !ok {
			continue
		}
		select {
		case out <- gossiped{s: s, from: msg.ReceivedFrom}:
		case <-ctx.Done():
			return
		}
	}
}

// gossiped is one entry received by gossip, its signature checked.
type gossiped struct {
	s    *wire.Signed
	from peer.ID
}

// maxGossipBatch bounds how many waiting gossiped entries one delivery takes.
const maxGossipBatch = 1000

// ingestEntries delivers gossiped entries to the handler. Whatever has
// piled up while the last delivery was being stored goes in one go, sorted
// into contiguous runs per site, so that a node receiving thousands of
// entries a second stores them in a few commits instead of one commit (and
// one disk sync) each.
func (m *Mesh) ingestEntries(in <-chan gossiped) {
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
		for _, run := range gossipRuns(batch) {
			ss := make([]*wire.Signed, len(run))
			for i, g := range run {
				ss[i] = g.s
			}
			if _, err := m.cfg.Handler.Entries(m.ctx, run[0].from, ss, true); err != nil {
				m.log.Debug("gossiped entries not appended", "first", ss[0].ID(), "entries", len(ss), "err", err)
			}
		}
	}
}

// gossipRuns sorts a batch into runs of one site's consecutive entries, in
// site and seq order. A second copy of an entry is dropped; a different entry
// for a (site, seq) already in the batch (a fork, which the log must see)
// goes alone in a run of its own after the others.
func gossipRuns(batch []gossiped) [][]gossiped {
	slices.SortStableFunc(batch, func(a, b gossiped) int {
		if c := strings.Compare(a.s.Site, b.s.Site); c != 0 {
			return c
		}
		return cmp.Compare(a.s.Seq, b.s.Seq)
	})
	var runs, extra [][]gossiped
	for i, g := range batch {
		if i > 0 && g.s.Site == batch[i-1].s.Site && g.s.Seq == batch[i-1].s.Seq {
			if g.s.Hash != batch[i-1].s.Hash {
				extra = append(extra, []gossiped{g})
			}
			continue
		}
		if n := len(runs); n > 0 {
			last := runs[n-1][len(runs[n-1])-1]
			if last.s.Site == g.s.Site && last.s.Seq+1 == g.s.Seq {
				runs[n-1] = append(runs[n-1], g)
				continue
			}
		}
		runs = append(runs, []gossiped{g})
	}
	return append(runs, extra...)
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
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

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

// Publish gossips one committed entry (its envelope) once. Gossip is best
// effort: catch-up delivers whatever it drops.
func (m *Mesh) Publish(ctx context.Context, env []byte) error {
	g := m.gossip.Load()
	if g == nil {
		return nil // asleep: no member is connected; catch-up delivers it
	}
	if len(g.ent.ListPeers()) == 0 {
		// Nobody to send it to: catch-up brings it to peers that come. Pubsub
		// would still keep it (its message cache and seen map) for a while.
		return nil
	}
	m.tap.write(env)
	if err := g.ent.Publish(ctx, env); err != nil {
		return fmt.Errorf("mesh: publish: %w", err)
	}
	return nil
}

// forkProof is what the forks topic carries: two envelopes of one site that
// cannot both belong to its chain.
type forkProof struct {
	A []byte `codec:"a"`
	B []byte `codec:"b"`
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
	if len(msg.Data) > 2*wire.MaxEntryBytes+1024 {
		m.count("forkproof_oversized")
		return pubsub.ValidationReject
	}
	a, b, err := m.decodeForkProof(msg.Data)
	if err != nil {
		m.count("forkproof_malformed")
		return pubsub.ValidationReject
	}
	msg.ValidatorData = [2]*wire.Signed{a, b}
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
		if p, ok := msg.ValidatorData.([2]*wire.Signed); ok {
			m.cfg.Handler.ForkProof(msg.ReceivedFrom, p[0], p[1])
		}
	}
}

// PublishForkProof spreads the proof of a fork so every member shows it: it
// gossips it, and pushes it over a stream of this node's own to every member
// it is connected to (a cloned twin that shares a peer ID may hold the
// gossip stream to a member; this node's own streams still reach it).
func (m *Mesh) PublishForkProof(ctx context.Context, a, b *wire.Signed) error {
	data, err := wire.Marshal(&forkProof{A: a.Marshal(), B: b.Marshal()})
	if err != nil {
		return err
	}
	for _, p := range m.host.Network().Peers() {
		if _, ok := m.cfg.Family.Member(p); !ok {
			continue
		}
		m.goTracked(func() {
			ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
			defer cancel()
			s, err := m.openStream(ctx, p, forkProofProto, "fork-proof")
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
	if g == nil {
		return nil // asleep: no member is connected
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
	b, err := readFrame(bufio.NewReader(s), 2*wire.MaxEntryBytes+1024)
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

// decodeForkProof decodes a fork proof's two envelopes of this family. The
// log checks that they really prove a fork.
func (m *Mesh) decodeForkProof(data []byte) (*wire.Signed, *wire.Signed, error) {
	var fp forkProof
	if err := wire.Unmarshal(data, &fp); err != nil {
		return nil, nil, err
	}
	a, err := wire.DecodeEnvelope(fp.A)
	if err != nil {
		return nil, nil, err
	}
	b, err := wire.DecodeEnvelope(fp.B)
	if err != nil {
		return nil, nil, err
	}
	if a.Family != m.cfg.Family.ID() || b.Family != m.cfg.Family.ID() {
		return nil, nil, fmt.Errorf("mesh: fork proof of another family")
	}
	return a, b, nil
}
