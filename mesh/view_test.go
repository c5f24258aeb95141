package mesh

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
)

// Families start their gossip (each gossipsub subscribes to peer events,
// several types at once) while the host's bus carries event after event
// about a member: every subscription is made and every family hears of its
// member. On libp2p's bus itself this deadlocked: an identification filled
// the channel of a subscription still being made, whose maker waited for
// the bus's lock, held by a second subscriber waiting for the event type's
// lock, held by the blocked identification (a relay's restart at 1,000
// families; see famBus).
func TestFamiliesSubscribeWhileTheHostIdentifies(t *testing.T) {
	ir, im := newIdentity(t, "relay"), newIdentity(t, "member")
	ir.relay = true
	hb, err := NewHost(context.Background(), HostConfig{Key: ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hb.Close() })
	const families = 40
	var fams []*testNode
	for i := range families {
		fams = append(fams, attachNode(t, hb, ir, newFamily(fmt.Sprintf("%032x", i+1), ir, im), nil, func(c *Config) { c.Lazy = true }))
	}
	// Peer events, as a flood of connections makes them (protocol updates:
	// an identification would need a real connection).
	em, err := hb.h.EventBus().Emitter(new(event.EvtPeerProtocolsUpdated))
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	stop := make(chan struct{})
	flooding := sync.WaitGroup{}
	for range 4 {
		flooding.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = em.Emit(event.EvtPeerProtocolsUpdated{Peer: im.id})
			}
		})
	}
	// Each family subscribes as gossipsub does, twice, with two types each,
	// and reads its subscription until it hears of its member.
	var wg sync.WaitGroup
	heard := make(chan int, 2*families)
	for i, f := range fams {
		for _, second := range []any{new(event.EvtPeerIdentificationCompleted), new(event.EvtPeerConnectednessChanged)} {
			wg.Go(func() {
				sub, err := f.m.host.EventBus().Subscribe([]any{new(event.EvtPeerProtocolsUpdated), second})
				if err != nil {
					t.Error(err)
					return
				}
				defer sub.Close()
				for ev := range sub.Out() {
					if e, ok := ev.(event.EvtPeerProtocolsUpdated); ok && e.Peer == im.id {
						heard <- i
						return
					}
				}
			})
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		close(stop)
		t.Fatalf("%d of %d subscriptions heard of their member within 30s: the host's events stalled", len(heard), 2*families)
	}
	close(stop)
	flooding.Wait()
	if len(heard) != 2*families {
		t.Errorf("%d of %d subscriptions heard of their member", len(heard), 2*families)
	}
	// A stranger's events reach no family.
	sub, err := fams[0].m.host.EventBus().Subscribe(new(event.EvtPeerProtocolsUpdated))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	stranger := newIdentity(t, "stranger")
	if err := em.Emit(event.EvtPeerProtocolsUpdated{Peer: stranger.id}); err != nil {
		t.Fatal(err)
	}
	if err := em.Emit(event.EvtPeerProtocolsUpdated{Peer: im.id}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-sub.Out():
		if ev.(event.EvtPeerProtocolsUpdated).Peer != im.id {
			t.Errorf("a family heard of a stranger: %v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the member's event did not arrive")
	}
	// Anything but peer events is refused, plainly.
	if _, err := fams[0].m.host.EventBus().Subscribe(new(event.EvtLocalAddressesUpdated)); err == nil {
		t.Error("a family subscribed to an event the host does not hand on")
	}
}
