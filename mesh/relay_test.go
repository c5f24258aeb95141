package mesh

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

// The relay's ACL, called directly: members only, on both ends.
func TestRelayACL(t *testing.T) {
	ir, ia, ib, ix := newIdentity(t, "r"), newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "x")
	ir.relay = true
	r := startNode(t, ir, newFamily(testFamily, ir, ia, ib), nil, func(c *Config) { c.Relay = true })
	acl := relayACL{hb: r.m.hub}
	if !acl.AllowReserve(ia.id, nil) || !acl.AllowConnect(ia.id, nil, ib.id) {
		t.Error("the relay refuses members")
	}
	if acl.AllowReserve(ix.id, nil) {
		t.Error("a stranger may reserve a slot")
	}
	if acl.AllowConnect(ix.id, nil, ia.id) || acl.AllowConnect(ia.id, nil, ix.id) {
		t.Error("the relay connects a member and a stranger")
	}
	if got := r.m.Rejections(); got["relay_reserve_non_member"] != 1 || got["relay_connect_non_member"] != 2 {
		t.Errorf("rejections %v, want 1 reservation and 2 connections refused", got)
	}
	if rc := relayResources(); rc.Limit != nil {
		t.Errorf("relayed connections are limited (%+v): gossip would ignore them", rc.Limit)
	}
}

// Through a real relay: a member site reserves a slot (its dial loop does it
// once it meets the relay), another member reaches it through the circuit,
// and a stranger can neither reserve a slot nor reach a member.
func TestRelayServesMembersOnly(t *testing.T) {
	ir, ia, ib := newIdentity(t, "r"), newIdentity(t, "a"), newIdentity(t, "b")
	ir.relay = true
	fam := func() *fakeFamily { return newFamily(testFamily, ir, ia, ib) }
	r := startNode(t, ir, fam(), nil, func(c *Config) { c.Relay = true })
	a := startNode(t, ia, fam(), nil, func(c *Config) { c.Bootstrap = r.m.Addrs() })
	b := startNode(t, ib, fam(), nil, func(c *Config) { c.Listen = nil }) // reachable through the relay only
	if len(b.m.host.Addrs()) != 0 {
		t.Fatalf("B listens on %v", b.m.host.Addrs())
	}
	var circ []ma.Multiaddr
	for _, addr := range r.m.host.Addrs() {
		circ = append(circ, addr.Encapsulate(ma.StringCast("/p2p/"+ir.id.String()+"/p2p-circuit")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// B reaches A through the relay once A holds a reservation.
	waitFor(t, "B reaches A through the relay", func() bool {
		_ = b.m.host.Connect(ctx, peer.AddrInfo{ID: ia.id, Addrs: circ})
		return a.h.hasEvent(ib.id, true) && b.h.hasEvent(ia.id, true)
	})
	if got := r.m.Rejections(); got["relay_connect_non_member"] != 0 || got["relay_reserve_non_member"] != 0 {
		t.Errorf("the relay refused members: %v", got)
	}
	if hb, err := b.m.Probe(ctx, ia.id); err != nil || hb.Site != "a" {
		t.Errorf("B probes A through the relay: %+v, %v", hb, err)
	}

	out, _ := plainHost(t)
	if err := out.Connect(ctx, r.addrInfo()); err != nil {
		t.Fatalf("stranger dials the relay: %v", err)
	}
	waitFor(t, "the relay refuses the stranger a slot", func() bool {
		if _, err := client.Reserve(ctx, out, r.addrInfo()); err == nil {
			t.Fatal("the relay gave a stranger a slot")
		}
		return r.m.Rejections()["relay_reserve_non_member"] > 0
	})
	waitFor(t, "the relay refuses to connect the stranger to A", func() bool {
		if err := out.Connect(ctx, peer.AddrInfo{ID: ia.id, Addrs: circ}); err == nil && connected(out, ia.id) {
			t.Fatal("a stranger reached A through the relay")
		}
		return r.m.Rejections()["relay_connect_non_member"] > 0
	})
	if a.h.hasEvent(out.ID(), true) {
		t.Error("A completed a hello with the stranger")
	}
}
