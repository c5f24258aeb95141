package mesh

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// famHost is one family's view of the shared host: what the family's mesh
// and its pubsub use as their host.Host. Its stream protocols are scoped to
// the family (see protoBase); its network lists only the peers the family
// knows; its event bus tells of members only, so the family's gossip never
// opens a stream (which would name the family) to a peer of another family
// or to a stranger; and closing it closes nothing shared.
type famHost struct {
	host.Host
	m *Mesh
}

func (v famHost) scoped(p protocol.ID) protocol.ID { return scopedProto(v.m.cfg.Family.ID(), p) }

// unscoped returns the rest of p that the dispatcher routes on ("/hello/1").
func (v famHost) unscoped(p protocol.ID) protocol.ID {
	_, rest, _ := splitProto(v.scoped(p))
	return rest
}

// SetStreamHandler serves a family protocol through the host's dispatcher;
// any other protocol is the host's own.
func (v famHost) SetStreamHandler(p protocol.ID, h network.StreamHandler) {
	if rest := v.unscoped(p); rest != "" {
		v.m.setHandler(rest, h)
		return
	}
	v.Host.SetStreamHandler(p, h)
}

func (v famHost) SetStreamHandlerMatch(p protocol.ID, match func(protocol.ID) bool, h network.StreamHandler) {
	if rest := v.unscoped(p); rest != "" {
		v.m.setHandler(rest, h)
		return
	}
	v.Host.SetStreamHandlerMatch(p, match, h)
}

func (v famHost) RemoveStreamHandler(p protocol.ID) {
	if rest := v.unscoped(p); rest != "" {
		v.m.setHandler(rest, nil)
		return
	}
	v.Host.RemoveStreamHandler(p)
}

func (v famHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	scoped := make([]protocol.ID, len(pids))
	for i, id := range pids {
		scoped[i] = v.scoped(id)
	}
	s, err := v.Host.NewStream(ctx, p, scoped...)
	if err != nil {
		return nil, err
	}
	return v.m.tapped(s), nil
}

// Close closes nothing: the host is shared; Mesh.Close detaches the family.
func (v famHost) Close() error { return nil }

func (v famHost) Network() network.Network { return famNet{Network: v.Host.Network(), m: v.m} }

func (v famHost) EventBus() event.Bus { return famBus{Bus: v.Host.EventBus(), m: v.m} }

// famNet is the family's view of the network.
type famNet struct {
	network.Network
	m *Mesh
}

// Peers lists the connected peers this family knows (members, banned peers,
// and peers on a connection it was told of).
func (n famNet) Peers() []peer.ID {
	var out []peer.ID
	for _, p := range n.Network.Peers() {
		if n.m.knows(p) || n.m.tracksPeer(p) {
			out = append(out, p)
		}
	}
	return out
}

// ClosePeer closes the connections to p unless p is a member of another
// family this host serves (a relay serving several families): refusing p
// here must not cut it off there.
func (n famNet) ClosePeer(p peer.ID) error {
	for _, o := range n.m.hub.snapshot() {
		if o == n.m {
			continue
		}
		if _, ok := o.cfg.Family.Member(p); ok {
			return nil
		}
	}
	return n.Network.ClosePeer(p)
}

// famBus is the family's view of the host's event bus: it carries only the
// events about a peer that a family's gossip listens for (identified,
// protocols updated, connectedness), and only for the family's members; and
// the family announces a peer that became a member after it was identified.
//
// A family's subscription never reaches libp2p's bus: the host subscribes
// once for all families and hands each event on (peerEventsLoop). libp2p's
// bus delivers an event to every subscriber while it holds the event type's
// lock, and a subscription to several types registers its channel with one
// type before it takes the next type's lock; with hundreds of families
// starting their gossip while hundreds of connections are identified (a
// relay's restart), an identification filled the channel of a subscription
// still being made, and the bus deadlocked: identify, and with it every new
// stream, stopped for good (the 1,000-family benchmark's restart, 2026-12-04).
type famBus struct {
	event.Bus
	m *Mesh
}

// peerEventTypes are the events the host hands on to its families.
var peerEventTypes = []any{
	new(event.EvtPeerIdentificationCompleted),
	new(event.EvtPeerProtocolsUpdated),
	new(event.EvtPeerConnectednessChanged),
}

func (b famBus) Subscribe(evtTypes any, _ ...event.SubscriptionOpt) (event.Subscription, error) {
	types, ok := evtTypes.([]any)
	if !ok {
		types = []any{evtTypes}
	}
	fs := &famSub{m: b.m, types: map[reflect.Type]bool{}, out: make(chan any, 64), done: make(chan struct{})}
	for _, t := range types {
		if !slices.ContainsFunc(peerEventTypes, func(k any) bool { return reflect.TypeOf(k) == reflect.TypeOf(t) }) {
			return nil, fmt.Errorf("mesh: a family's event bus carries only peer events, not %T", t)
		}
		fs.types[reflect.TypeOf(t).Elem()] = true
	}
	b.m.addSub(fs)
	return fs, nil
}

// famSub is a family's subscription to peer events.
type famSub struct {
	m     *Mesh
	types map[reflect.Type]bool
	out   chan any
	done  chan struct{}
	once  sync.Once
}

func (s *famSub) Out() <-chan any { return s.out }

func (s *famSub) Name() string { return "ppsync family " + s.m.cfg.Family.ID() }

func (s *famSub) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.m.dropSub(s)
	})
	return nil
}

// wants reports whether the subscriber asked for events of ev's type.
func (s *famSub) wants(ev any) bool { return s.types[reflect.TypeOf(ev)] }

// send hands ev on, unless the subscriber closed its subscription. Its
// readers (gossipsub's peer watchers) never stop reading while open.
func (s *famSub) send(ev any) {
	select {
	case s.out <- ev:
	case <-s.done:
	}
}

// eventPeer returns the peer a peer event is about.
func eventPeer(ev any) (peer.ID, bool) {
	switch e := ev.(type) {
	case event.EvtPeerIdentificationCompleted:
		return e.Peer, true
	case event.EvtPeerProtocolsUpdated:
		return e.Peer, true
	case event.EvtPeerConnectednessChanged:
		return e.Peer, true
	}
	return "", false
}

// announceMember tells the family's subscribers (its pubsub) that p, now a
// proven member, is there: it may have been identified before it proved its
// membership, when its events were held back.
func (m *Mesh) announceMember(p peer.ID) {
	ev := event.EvtPeerIdentificationCompleted{Peer: p, Protocols: []protocol.ID{protoBase}}
	for _, s := range m.subsSnapshot() {
		if s.wants(ev) {
			s.send(ev)
		}
	}
}
