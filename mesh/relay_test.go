package mesh

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ppsync/ppsync/internal/wire"
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
	// A probe may meet a stream reset while the connection between them
	// changes (identify, or a direct dial replacing the circuit): it is
	// tried again until it is answered, by A.
	waitFor(t, "B probes A", func() bool {
		hb, err := b.m.Probe(ctx, ia.id)
		if err == nil && hb.Site != "a" {
			t.Fatalf("B probed A and heard from %q", hb.Site)
		}
		return err == nil
	})

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

// A family with two relays, both given to the sites as bootstrap addresses;
// the sites listen nowhere, so they reach each other only through a relay.
// Each site connects to both relays and holds a slot on each; when one relay
// goes away for good, its bootstrap entry stops saying connected and the
// sites reach each other through the other relay.
func TestTwoRelaysOneGone(t *testing.T) {
	ir1, ir2, ia, ib := newIdentity(t, "relay-1"), newIdentity(t, "relay-2"), newIdentity(t, "a"), newIdentity(t, "b")
	ir1.relay, ir2.relay = true, true
	fam := func() *fakeFamily { return newFamily(testFamily, ir1, ir2, ia, ib) }
	fast := func(c *Config) { c.HeartbeatInterval, c.RedialInterval = 200*time.Millisecond, 500*time.Millisecond }
	r1 := startNode(t, ir1, fam(), nil, func(c *Config) { c.Relay = true; fast(c) })
	r2 := startNode(t, ir2, fam(), nil, func(c *Config) { c.Relay = true; fast(c) })
	boot := append(r1.m.Addrs(), r2.m.Addrs()...)
	site := func(id identity) *testNode {
		return startNode(t, id, fam(), nil, func(c *Config) { c.Listen, c.Bootstrap = nil, boot; fast(c) })
	}
	a, b := site(ia), site(ib)

	bootState := func(n *testNode, relay peer.ID) string {
		for _, bi := range n.m.Bootstrap() {
			if bi.PeerID == relay {
				return bi.State
			}
		}
		return "absent"
	}
	reserved := func(n *testNode, relay peer.ID) bool {
		n.m.mu.Lock()
		defer n.m.mu.Unlock()
		exp, ok := n.m.reservations[relay]
		return ok && time.Until(exp) > 10*time.Minute
	}
	for _, n := range []*testNode{a, b} {
		waitFor(t, n.site+" connected to both relays, with a slot on each", func() bool {
			return bootState(n, ir1.id) == CandidateConnected && bootState(n, ir2.id) == CandidateConnected &&
				reserved(n, ir1.id) && reserved(n, ir2.id)
		})
	}
	waitFor(t, "a and b connected through a relay", func() bool {
		return connected(a.m.host, ib.id) && a.h.hasEvent(ib.id, true) && b.h.hasEvent(ia.id, true)
	})

	if err := r1.m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		waitFor(t, n.site+" showing relay-1 gone", func() bool { return bootState(n, ir1.id) != CandidateConnected })
	}
	through := func(n *testNode, p, relay peer.ID) bool {
		cs := n.m.host.Network().ConnsToPeer(p)
		for _, c := range cs {
			if !strings.Contains(c.RemoteMultiaddr().String(), "/p2p/"+relay.String()+"/p2p-circuit") {
				return false
			}
		}
		return len(cs) > 0
	}
	waitFor(t, "a and b connected through relay-2 only", func() bool {
		return through(a, ib.id, ir2.id) && through(b, ia.id, ir2.id)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if hb, err := a.m.Probe(ctx, ib.id); err != nil || hb.Site != "b" {
		t.Errorf("a probes b through relay-2: %+v, %v", hb, err)
	}
	if s := bootState(a, ir2.id); s != CandidateConnected {
		t.Errorf("a's bootstrap entry of relay-2 is %s", s)
	}
}

// Members of many families reach the relay from one address: the systems a
// vendor hosts for its practices (online booking, an express system, a
// backup) leave its data centre through one address, as every site of a
// test does from 127.0.0.1. The relay gives each its slot: libp2p's limit of
// slots per address (a guard against a stranger taking them all) has no
// work here, where only members may reserve. 300 members, more than the 256
// slots an address got before.
func TestRelayReservesForManyMembersOnOneAddress(t *testing.T) {
	const members = 300
	ir := newIdentity(t, "r")
	ir.relay = true
	ids := []identity{ir}
	for i := range members {
		ids = append(ids, newIdentity(t, fmt.Sprintf("s%03d", i)))
	}
	r := startNode(t, ir, newFamily(testFamily, ids...), nil, func(c *Config) {
		c.Relay = true
		c.Limits.Conns = 2 * members
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var refused []string
	for _, id := range ids[1:] {
		h := relayClient(t, id)
		wg.Go(func() {
			err := h.Connect(ctx, r.addrInfo())
			if err == nil {
				_, err = client.Reserve(ctx, h, r.addrInfo())
			}
			if err != nil {
				mu.Lock()
				refused = append(refused, fmt.Sprintf("%s: %v", id.site, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(refused) > 0 {
		t.Fatalf("the relay refused %d of %d members a slot, the first: %s", len(refused), members, refused[0])
	}
}

// The relay's ACL remembers in which family it last found a member (so a
// relay serving a thousand families need not look through all of them for
// each slot and circuit), and that memory never lets anyone in: a member
// revoked since, a circuit to a member of another family, and a family
// removed from the relay are refused; a peer that is a member of two
// families reaches members of the second.
func TestRelayACLRemembersNothingThatLetsIn(t *testing.T) {
	ir, ia1, ia2, ib1, ix := newIdentity(t, "r"), newIdentity(t, "a1"), newIdentity(t, "a2"), newIdentity(t, "b1"), newIdentity(t, "x")
	ir.relay = true
	hb, err := NewHost(context.Background(), HostConfig{Key: ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hb.Close() })
	famA := newFamily(familyA, ir, ia1, ia2, ix)
	famB := newFamily(familyB, ir, ib1, ix)
	ra := attachNode(t, hb, ir, famA, nil, nil)
	attachNode(t, hb, ir, famB, nil, nil)
	acl := relayACL{hb: hb}

	for range 2 { // the second time from what the first remembered
		if !acl.AllowReserve(ia1.id, nil) || !acl.AllowConnect(ia1.id, nil, ia2.id) {
			t.Fatal("the relay refuses members of one family")
		}
		if acl.AllowConnect(ia1.id, nil, ib1.id) || acl.AllowConnect(ib1.id, nil, ia1.id) {
			t.Fatal("the relay joins members of two families")
		}
		if !acl.AllowConnect(ix.id, nil, ia1.id) || !acl.AllowConnect(ix.id, nil, ib1.id) {
			t.Fatal("a member of both families cannot reach members of each")
		}
	}
	famA.ban(ia1.id)
	if acl.AllowReserve(ia1.id, nil) || acl.AllowConnect(ia1.id, nil, ia2.id) {
		t.Fatal("a revoked member got a slot or a circuit from what the relay remembered")
	}
	if err := ra.m.Close(); err != nil { // family A leaves the relay
		t.Fatal(err)
	}
	if acl.AllowReserve(ia2.id, nil) || acl.AllowConnect(ix.id, nil, ia2.id) {
		t.Fatal("a member of a family no longer served got a slot or a circuit")
	}
	if !acl.AllowConnect(ix.id, nil, ib1.id) {
		t.Fatal("the family still served refuses its members")
	}
}

// Two sites that reach each other only through the relay's circuit get
// each other's gossip from the relay, which forwards all of the family's
// gossip, and none over the circuit (every message sent that way crossed
// the relay again); the circuit still keeps them connected: probes and
// pings pass, and neither takes the other for silent or its gossip for
// stalled.
func TestCircuitCarriesNoGossip(t *testing.T) {
	ir, ia, ib := newIdentity(t, "relay"), newIdentity(t, "a"), newIdentity(t, "b")
	ir.relay = true
	fam := func() *fakeFamily { return newFamily(testFamily, ir, ia, ib) }
	fast := func(c *Config) {
		c.HeartbeatInterval, c.RedialInterval, c.LivenessTimeout = 200*time.Millisecond, 500*time.Millisecond, 2*time.Second
	}
	r := startNode(t, ir, fam(), nil, func(c *Config) { c.Relay = true; fast(c) })
	site := func(id identity) *testNode {
		return startNode(t, id, fam(), nil, func(c *Config) { c.Listen, c.Bootstrap = nil, r.m.Addrs(); fast(c) })
	}
	a, b := site(ia), site(ib)
	waitFor(t, "a and b connected through the relay", func() bool {
		return connected(a.m.host, ib.id) && a.h.hasEvent(ib.id, true) && b.h.hasEvent(ia.id, true)
	})
	if !a.m.relayedOnly(ib.id) || !b.m.relayedOnly(ia.id) || a.m.relayedOnly(ir.id) {
		t.Fatal("the sites are not connected through the relay's circuit only, or the relay not directly")
	}
	if !a.m.ProbeNeeded(ib.id, time.Hour) {
		t.Error("a member behind a circuit, whose heartbeats come forwarded, is not probed")
	}
	if s := a.m.appScore(ib.id); s >= scorePublishFloor || s <= scoreGraylist {
		t.Errorf("a member behind a circuit scores %v: want below %v (nothing published to it) and above %v (its subscriptions taken)",
			s, scorePublishFloor, scoreGraylist)
	}

	// The relay forwards a topic's messages to a once a is in its mesh of
	// that topic (graft on its gossip heartbeat); what b publishes before
	// is forwarded to no one (a node then fetches it). So b writes until
	// 30 of its entries reached a.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chain := signChain(t, testFamily, ib, 1, wire.Hash{}, 500)
	for i := 0; sitesReceived(a.h)["b"] < 30; i++ {
		if i == len(chain) {
			t.Fatalf("a received %d of b's %d entries", sitesReceived(a.h)["b"], len(chain))
		}
		if err := b.m.Publish(ctx, groupMsg(t, chain[i])); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // a writer's pace
	}
	for _, c := range a.h.entryCalls() {
		if c.gossip && c.from != ir.id {
			t.Fatalf("a received gossip from %s, want every message from the relay", c.from)
		}
	}
	// Past the liveness timeout and the grace for gossip to start: b's
	// heartbeats still reach a (from the relay), and neither site dropped
	// the other.
	seen := len(a.h.heartbeatsFrom(ib.id))
	until := time.Now().Add(a.m.gossipGrace() + time.Second)
	waitFor(t, "the liveness timeout and the grace for gossip passing, b's heartbeats still reaching a", func() bool {
		return time.Now().After(until) && len(a.h.heartbeatsFrom(ib.id)) > seen
	})
	for _, n := range []*testNode{a, b} {
		got := n.m.Rejections()
		if got["member_silent"] != 0 || got["gossip_stalled"] != 0 {
			t.Errorf("%s dropped a member: %v", n.site, got)
		}
	}
	if a.h.hasEvent(ib.id, false) || b.h.hasEvent(ia.id, false) {
		t.Error("the sites lost each other")
	}
}
