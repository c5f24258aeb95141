package mesh

import (
	"context"
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

// famBus is the family's view of the host's event bus: events about a peer
// reach the family's subscribers only for the family's members, and the
// family announces a peer that became a member after it was identified.
type famBus struct {
	event.Bus
	m *Mesh
}

func (b famBus) Subscribe(evtTypes any, opts ...event.SubscriptionOpt) (event.Subscription, error) {
	sub, err := b.Bus.Subscribe(evtTypes, opts...)
	if err != nil {
		return nil, err
	}
	fs := &famSub{Subscription: sub, m: b.m, out: make(chan any, 64), done: make(chan struct{})}
	b.m.addSub(fs)
	go fs.run() // ends when the subscriber closes it
	return fs, nil
}

// famSub passes on the events of the family's members.
type famSub struct {
	event.Subscription
	m    *Mesh
	out  chan any
	done chan struct{}
	once sync.Once
}

func (s *famSub) Out() <-chan any { return s.out }

func (s *famSub) Close() error {
	s.once.Do(func() { close(s.done) })
	s.m.dropSub(s)
	return s.Subscription.Close()
}

func (s *famSub) run() {
	in := s.Subscription.Out()
	for {
		select {
		case <-s.done:
			return
		case ev, ok := <-in:
			if !ok {
				return
			}
			if s.keep(ev) {
				s.send(ev)
			}
		}
	}
}

func (s *famSub) send(ev any) {
	select {
	case s.out <- ev:
	case <-s.done:
	}
}

func (s *famSub) keep(ev any) bool {
	var p peer.ID
	switch e := ev.(type) {
	case event.EvtPeerIdentificationCompleted:
		p = e.Peer
	case event.EvtPeerProtocolsUpdated:
		p = e.Peer
	case event.EvtPeerConnectednessChanged:
		p = e.Peer
	default:
		return true
	}
	_, ok := s.m.cfg.Family.Member(p)
	return ok
}

// announceMember tells the family's subscribers (its pubsub) that p, now a
// proven member, is there: it may have been identified before it proved its
// membership, when its events were held back.
func (m *Mesh) announceMember(p peer.ID) {
	ev := event.EvtPeerIdentificationCompleted{Peer: p, Protocols: []protocol.ID{protoBase}}
	for _, s := range m.subsSnapshot() {
		if s.m.cfg.Family.ID() == m.cfg.Family.ID() {
			s.send(ev)
		}
	}
}
