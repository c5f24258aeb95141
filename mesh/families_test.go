package mesh

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ppsync/ppsync/internal/wire"
)

// One relay host serving two families keeps them strictly apart.

const (
	familyA = "aaaaaaaa00000000aaaaaaaa00000000"
	familyB = "bbbbbbbb11111111bbbbbbbb11111111"
)

// syncBuffer is a tap that tests read while the mesh writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// twoFamilies is a relay host serving families A (sites a1, a2) and B (site
// b1), each family with its own roster documents and log at the relay.
type twoFamilies struct {
	hb             *Host
	ir, ia1, ia2   identity
	ib1, ib2       identity // ib2: a member of B that runs no node (a raw host in tests)
	ra, rb         *testNode
	a1, b1         *testNode
	tapA1, tapB1   *syncBuffer
	entriesA       []*wire.Signed // a1's entries, held by the relay for A
	entriesB       []*wire.Signed // b1's entries, held by the relay for B
	docsA, docsB   [][]byte
	famAOf, famBOf func(...identity) *fakeFamily
}

func startTwoFamilies(t *testing.T) *twoFamilies {
	t.Helper()
	x := &twoFamilies{ir: newIdentity(t, "relay"), ia1: newIdentity(t, "a1"), ia2: newIdentity(t, "a2"),
		ib1: newIdentity(t, "b1"), ib2: newIdentity(t, "b2"), tapA1: &syncBuffer{}, tapB1: &syncBuffer{}}
	x.ir.relay = true
	x.docsA = [][]byte{[]byte("A-doc: certificate of the relay"), []byte("A-doc: certificate of a1"), []byte("A-doc: certificate of a2")}
	x.docsB = [][]byte{[]byte("B-doc: certificate of the relay"), []byte("B-doc: certificate of b1")}
	x.famAOf = func(ids ...identity) *fakeFamily {
		f := newFamily(familyA, ids...)
		f.docs = x.docsA
		return f
	}
	x.famBOf = func(ids ...identity) *fakeFamily {
		f := newFamily(familyB, ids...)
		f.docs = x.docsB
		return f
	}
	hb, err := NewHost(context.Background(), HostConfig{Key: x.ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hb.Close() })
	x.hb = hb
	fast := func(c *Config) { c.HeartbeatInterval = 200 * time.Millisecond }
	logA, logB := newLog(), newLog()
	x.entriesA = signChain(t, familyA, x.ia1, 1, wire.Hash{}, 5)
	x.entriesB = signChain(t, familyB, x.ib1, 1, wire.Hash{}, 3)
	logA.add(x.entriesA...)
	logB.add(x.entriesB...)
	x.ra = attachNode(t, hb, x.ir, x.famAOf(x.ir, x.ia1, x.ia2), logA, fast)
	x.rb = attachNode(t, hb, x.ir, x.famBOf(x.ir, x.ib1, x.ib2), logB, fast)
	x.a1 = startNode(t, x.ia1, x.famAOf(x.ir, x.ia1, x.ia2), nil, func(c *Config) {
		fast(c)
		c.Bootstrap = hb.Addrs()
		c.Tap = x.tapA1
	})
	x.b1 = startNode(t, x.ib1, x.famBOf(x.ir, x.ib1, x.ib2), nil, func(c *Config) {
		fast(c)
		c.Bootstrap = hb.Addrs()
		c.Tap = x.tapB1
	})
	waitFor(t, "a1 and b1 connected to the relay, each in its own family", func() bool {
		return x.a1.h.hasEvent(x.ir.id, true) && x.ra.h.hasEvent(x.ia1.id, true) &&
			x.b1.h.hasEvent(x.ir.id, true) && x.rb.h.hasEvent(x.ib1.id, true)
	})
	waitGossip(t, x.a1, x.ra)
	waitGossip(t, x.b1, x.rb)
	return x
}

// entriesFrom returns the sites of the entries a handler received.
func sitesReceived(h *fakeHandler) map[string]int {
	out := map[string]int{}
	for _, c := range h.entryCalls() {
		for _, e := range c.run {
			out[e.Site]++
		}
	}
	return out
}

// A member of family B can neither read family A through the shared relay
// (catch-up, gossip, a stream opened on purpose), nor reserve or reach A's
// sites through it, nor learn that A exists: nothing it receives names A.
func TestHostKeepsFamiliesApart(t *testing.T) {
	x := startTwoFamilies(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Catch-up from the relay gives each family its own log only.
	if _, err := x.b1.m.Fetch(ctx, x.ir.id, nil, nil, nil); err != nil {
		t.Fatalf("b1 catches up from the relay: %v", err)
	}
	if _, err := x.a1.m.Fetch(ctx, x.ir.id, nil, nil, nil); err != nil {
		t.Fatalf("a1 catches up from the relay: %v", err)
	}
	if got := sitesReceived(x.b1.h); got["b1"] != 3 || len(got) != 1 {
		t.Errorf("b1 received %v from the relay, want b1's 3 entries only", got)
	}
	if got := sitesReceived(x.a1.h); got["a1"] != 5 || len(got) != 1 {
		t.Errorf("a1 received %v from the relay, want a1's 5 entries only", got)
	}

	// Gossip stays in its family.
	next := signChain(t, familyB, x.ib1, 4, x.entriesB[2].Hash, 1)[0]
	if err := x.b1.m.Publish(ctx, groupMsg(t, next)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the relay's family B receives b1's gossip", func() bool { return sitesReceived(x.rb.h)["b1"] >= 1 })
	nextA := signChain(t, familyA, x.ia1, 6, x.entriesA[4].Hash, 1)[0]
	if err := x.a1.m.Publish(ctx, groupMsg(t, nextA)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the relay's family A receives a1's gossip", func() bool { return sitesReceived(x.ra.h)["a1"] >= 1 })
	if got := sitesReceived(x.ra.h); got["b1"] != 0 {
		t.Errorf("family A at the relay received B's entries: %v", got)
	}
	if got := sitesReceived(x.rb.h); got["a1"] != 0 {
		t.Errorf("family B at the relay received A's entries: %v", got)
	}

	// A stream opened on purpose to A's catch-up, from B's member, is refused.
	before := x.ra.m.Rejections()["catchup_non_member"]
	if b, err := tryServe(ctx, x.b1.m.hub.h, x.ra, scopedProto(familyA, catchupProto), mustMarshal(t, &catchupRequest{Family: familyA})); err == nil {
		t.Errorf("A's catch-up served B's member %d bytes", len(b))
	}
	waitCount(t, x.ra.m, "catchup_non_member", before+1)

	// B's member cannot reach A's site through the relay's circuit, while
	// A's own member can.
	a2 := startNode(t, x.ia2, x.famAOf(x.ir, x.ia1, x.ia2), nil, func(c *Config) {
		c.Listen = nil // reachable through the relay only
		c.Bootstrap = x.hb.Addrs()
	})
	waitFor(t, "a2 holds a slot on the relay", func() bool {
		a2.m.mu.Lock()
		defer a2.m.mu.Unlock()
		return time.Until(a2.m.reservations[x.ir.id]) > time.Minute
	})
	var circ []ma.Multiaddr
	for _, addr := range x.hb.h.Addrs() {
		circ = append(circ, addr.Encapsulate(ma.StringCast("/p2p/"+x.ir.id.String()+"/p2p-circuit")))
	}
	waitFor(t, "a1 reaches a2 through the relay", func() bool {
		_ = x.a1.m.host.Connect(ctx, peer.AddrInfo{ID: x.ia2.id, Addrs: circ})
		return a2.h.hasEvent(x.ia1.id, true)
	})
	thief := relayClient(t, x.ib2)
	relayAddr := peer.AddrInfo{ID: x.ir.id, Addrs: x.hb.h.Addrs()}
	if err := thief.Connect(ctx, relayAddr); err != nil {
		t.Fatalf("B's member connects to the relay: %v", err)
	}
	if _, err := client.Reserve(ctx, thief, relayAddr); err != nil {
		t.Errorf("the relay refuses B's member a slot: %v", err)
	}
	if err := thief.Connect(ctx, peer.AddrInfo{ID: x.ia2.id, Addrs: circ}); err == nil {
		t.Error("B's member reached A's site through the relay")
	}
	if got := x.hb.Rejections()["relay_connect_non_member"]; got < 1 {
		t.Errorf("the relay counted %d refused circuits, want at least 1", got)
	}

	// Nothing b1 sent or received on the mesh, nothing it learned, and
	// nothing the relay's identify told it names family A.
	tap := x.tapB1.Bytes()
	if len(tap) == 0 {
		t.Fatal("b1's tap saw nothing")
	}
	if !bytes.Contains(tap, []byte(familyB)) {
		t.Error("b1's tap does not show its own family: it does not see the gossip streams")
	}
	for _, secret := range [][]byte{[]byte(familyA), []byte("A-doc")} {
		if bytes.Contains(tap, secret) {
			t.Errorf("b1 was told %q", secret)
		}
	}
	x.b1.fam.mu.Lock()
	learned := x.b1.fam.learned
	x.b1.fam.mu.Unlock()
	for _, d := range learned {
		if bytes.HasPrefix(d, []byte("A-doc")) {
			t.Errorf("b1 learned family A's document %q", d)
		}
	}
	// What the relay's identify lists, as any peer sees it.
	probe := rawHost(t, newIdentity(t, "probe").key)
	if err := probe.Connect(ctx, relayAddr); err != nil {
		t.Fatal(err)
	}
	var protos []protocol.ID
	waitFor(t, "the probe identified the relay", func() bool {
		protos, _ = probe.Peerstore().GetProtocols(x.ir.id)
		return slices.Contains(protos, protoBase)
	})
	for _, p := range protos {
		if strings.Contains(string(p), familyA) || strings.Contains(string(p), familyB) {
			t.Errorf("the relay's identify names a family: %s", p)
		}
	}
	if bytes.Contains(x.tapA1.Bytes(), []byte(familyB)) {
		t.Error("a1 was told family B's ID")
	}
}

// A stranger cannot tell a family the relay does not serve from one it
// serves but the stranger is not a member of: its hello is refused alike.
func TestHostRefusesUnknownFamilyLikeAStranger(t *testing.T) {
	x := startTwoFamilies(t)
	ix := newIdentity(t, "x")
	h := rawHost(t, ix.key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, fam := range []string{familyA, "cccccccc22222222cccccccc22222222"} {
		if err := h.Connect(ctx, peer.AddrInfo{ID: x.ir.id, Addrs: x.hb.h.Addrs()}); err != nil {
			t.Fatalf("connect: %v", err)
		}
		s, err := h.NewStream(ctx, x.ir.id, scopedProto(fam, helloProto))
		if err != nil {
			t.Fatalf("%s: the hello stream is not even opened: %v", fam, err)
		}
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		b := mustMarshal(t, hello{Family: fam, Instance: "x"})
		if err := writeFrame(s, b); err != nil {
			t.Fatalf("%s: send hello: %v", fam, err)
		}
		if _, err := readFrame(bufio.NewReader(s), maxHello); err == nil {
			t.Errorf("%s: a stranger got an answer to its hello", fam)
		}
		_ = s.Close()
		waitFor(t, "the relay disconnects the stranger", func() bool { return !connected(h, x.ir.id) })
	}
}

// Removing a family from the relay cuts its sites off and leaves the other
// family syncing.
func TestHostDetachedFamilyIsCutOff(t *testing.T) {
	x := startTwoFamilies(t)
	if err := x.ra.m.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a1 loses the relay", func() bool { return x.a1.h.hasEvent(x.ir.id, false) })
	if got := x.hb.Families(); len(got) != 1 || got[0] != familyB {
		t.Errorf("families after removal: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next := signChain(t, familyB, x.ib1, 4, x.entriesB[2].Hash, 1)[0]
	if err := x.b1.m.Publish(ctx, groupMsg(t, next)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "family B still gossips through the relay", func() bool { return sitesReceived(x.rb.h)["b1"] >= 1 })
	if x.b1.h.hasEvent(x.ir.id, false) {
		t.Error("b1 lost the relay when family A was removed")
	}
}

// relayClient is a bare libp2p host with ident's key that can dial through
// a circuit relay, as any program could.
func relayClient(t *testing.T, ident identity) host.Host {
	t.Helper()
	priv, err := crypto.UnmarshalEd25519PrivateKey(ident.key)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(), libp2p.EnableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// relayOfTwoFamilies starts relay ir's host serving families famA and famB
// (each configured by opt, which may be nil) and a site of each, a1 and b1,
// whose gossip with the relay runs.
func relayOfTwoFamilies(t *testing.T, ir, ia1, ib1 identity, famA, famB *fakeFamily, opt func(*Config)) (hb *Host, ra, rb, a1, b1 *testNode) {
	t.Helper()
	hb, err := NewHost(context.Background(), HostConfig{Key: ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hb.Close() })
	ra = attachNode(t, hb, ir, famA, nil, opt)
	rb = attachNode(t, hb, ir, famB, nil, opt)
	a1 = startNode(t, ia1, newFamily(famA.ID(), ir, ia1), nil, func(c *Config) { c.Bootstrap = hb.Addrs() })
	b1 = startNode(t, ib1, newFamily(famB.ID(), ir, ib1), nil, func(c *Config) { c.Bootstrap = hb.Addrs() })
	waitGossip(t, a1, ra)
	waitGossip(t, b1, rb)
	return hb, ra, rb, a1, b1
}

// One family's flood meets its own limits at a shared relay; the other
// family keeps its whole share.
func TestFamilyLimitsKeepOtherFamiliesServed(t *testing.T) {
	ir, ia1, ia2, ib1 := newIdentity(t, "relay"), newIdentity(t, "a1"), newIdentity(t, "a2"), newIdentity(t, "b1")
	ir.relay = true
	limited := func(c *Config) { c.Limits = Limits{Gossip: 20, Catchups: 1, Streams: 4} }
	hb, ra, rb, a1, b1 := relayOfTwoFamilies(t, ir, ia1, ib1, newFamily(familyA, ir, ia1, ia2), newFamily(familyB, ir, ib1), limited)
	if _, err := hb.Attach(context.Background(), Config{Family: newFamily("c"+familyA[1:], ir), Log: newLog(), Handler: &fakeHandler{},
		Heartbeat: func() Heartbeat { return Heartbeat{} }, Limits: Limits{Gossip: -1}}); err == nil {
		t.Error("a negative limit was taken")
	}

	// A floods 300 entries at once: the relay takes its burst (40) and
	// refuses the rest as over the family's gossip limit.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, e := range signChain(t, familyA, ia1, 1, wire.Hash{}, 300) {
		if err := a1.m.Publish(ctx, groupMsg(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the relay refuses A's flood over its limit", func() bool { return ra.m.Rejections()["limit_gossip"] > 0 })
	// B's 30 entries, sent after, all arrive: B's share is its own.
	for _, e := range signChain(t, familyB, ib1, 1, wire.Hash{}, 30) {
		if err := b1.m.Publish(ctx, groupMsg(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all of B's entries reach the relay", func() bool { return sitesReceived(rb.h)["b1"] == 30 })

	if got := sitesReceived(ra.h)["a1"]; got >= 300 || got == 0 {
		t.Errorf("the relay took %d of A's 300 flooded entries, want some but not all", got)
	}
	if got := rb.m.Rejections()["limit_gossip"]; got != 0 {
		t.Errorf("B was refused %d messages at its limit", got)
	}

	// Catch-up sessions: A's one session in flight keeps A's second waiting;
	// B's is served at once.
	if why := ra.m.startServing(ia1.id); why != "" {
		t.Fatalf("the first session of A refused: %s", why)
	}
	if why := ra.m.startServing(ia1.id); !strings.Contains(why, "limit of 1 catch-up") {
		t.Errorf("A's second session: %q, want refused at the family's limit", why)
	}
	if why := rb.m.startServing(ib1.id); why != "" {
		t.Errorf("B's session refused while A is at its limit: %s", why)
	}
	ra.m.stopServing(ia1.id)
	rb.m.stopServing(ib1.id)
	if why := ra.m.startServing(ia1.id); why != "" {
		t.Errorf("A's session after the first ended: %s", why)
	}
	ra.m.stopServing(ia1.id)

	// Streams: a member holding its family's streams open (catch-up streams
	// that never send their request) gets no more.
	thief := rawHost(t, ia2.key)
	if err := thief.Connect(ctx, peer.AddrInfo{ID: ir.id, Addrs: hb.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	if _, err := rawHello(t, thief, ra, hello{Family: familyA, Instance: "thief", Protocol: ProtocolVersion}); err != nil {
		t.Fatalf("a2's hello: %v (%v)", err, ra.m.Rejections())
	}
	before := ra.m.Rejections()["limit_streams"]
	for range 8 {
		s, err := thief.NewStream(ctx, ir.id, scopedProto(familyA, catchupProto))
		if err != nil {
			continue
		}
		_, _ = s.Write([]byte{100}) // the stream reaches the relay; its 100-byte request never comes
		defer s.Reset()
	}
	waitCount(t, ra.m, "limit_streams", before+1)
	if _, err := b1.m.Probe(ctx, ir.id); err != nil {
		t.Errorf("B's member cannot open a stream while A is at its limit: %v", err)
	}
}

// The host's bound on held gossip: while the relay's families together hold
// hostGossipHeldBytes (set here as sixteen families storing a burst at once
// would), a family's gossip is ignored even though it holds nothing itself,
// counted as gossip_host_busy (the node's catch-up brings what was ignored);
// once they stored theirs it is taken again.
func TestHostBoundsHeldGossip(t *testing.T) {
	ir, ia1, ib1 := newIdentity(t, "relay"), newIdentity(t, "a1"), newIdentity(t, "b1")
	ir.relay = true
	hb, ra, rb, a1, b1 := relayOfTwoFamilies(t, ir, ia1, ib1, newFamily(familyA, ir, ia1), newFamily(familyB, ir, ib1), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	hb.gossipHeld.Add(hostGossipHeldBytes)
	chain := signChain(t, familyB, ib1, 1, wire.Hash{}, 10)
	if err := b1.m.Publish(ctx, groupMsg(t, chain[0])); err != nil {
		t.Fatal(err)
	}
	waitCount(t, rb.m, "gossip_host_busy", 1)
	if got := sitesReceived(rb.h)["b1"]; got != 0 {
		t.Errorf("the relay took %d of B's entries while the host's gossip was full", got)
	}
	if got := ra.m.Rejections()["gossip_host_busy"]; got != 0 {
		t.Errorf("A counted %d of B's messages as its own", got)
	}
	hb.gossipHeld.Add(-hostGossipHeldBytes)
	for _, e := range chain[1:] {
		if err := b1.m.Publish(ctx, groupMsg(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "B's later entries reach the relay after the host's gossip was stored", func() bool { return sitesReceived(rb.h)["b1"] == 9 })
	if held := hb.gossipHeld.Load(); held != 0 {
		t.Errorf("the host counts %d bytes of gossip held after the relay took it all", held)
	}
	// A's gossip is taken as well: the bound is the host's, not B's.
	if err := a1.m.Publish(ctx, groupMsg(t, signChain(t, familyA, ia1, 1, wire.Hash{}, 1)[0])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's entry reaches the relay", func() bool { return sitesReceived(ra.h)["a1"] == 1 })
}

// A lazy family costs no goroutine until a member connects; its gossip
// wakes for the member and sleeps again after the last one left.
func TestLazyFamilySleepsWithoutMembers(t *testing.T) {
	ir := newIdentity(t, "relay")
	ir.relay = true
	hb, err := NewHost(context.Background(), HostConfig{Key: ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hb.Close() })
	lazy := func(c *Config) {
		c.Lazy, c.SleepAfter, c.HeartbeatInterval = true, 300*time.Millisecond, 200*time.Millisecond
	}
	settled := func() int {
		// Goroutines of closed connections end a moment later: take the
		// lowest of a few looks.
		low := runtime.NumGoroutine()
		for range 5 {
			time.Sleep(20 * time.Millisecond)
			low = min(low, runtime.NumGoroutine())
		}
		return low
	}
	before := settled()
	const n = 40
	sites := make([]identity, n)
	fams := make([]*testNode, n)
	for i := range n {
		sites[i] = newIdentity(t, "site")
		fams[i] = attachNode(t, hb, ir, newFamily(fmt.Sprintf("%064x", i+1), ir, sites[i]), nil, lazy)
	}
	attached := settled()
	if grew := attached - before; grew >= n {
		t.Errorf("%d lazy families without members started %d goroutines", n, grew)
	}
	for _, f := range fams {
		if f.m.Awake() {
			t.Fatal("a family without members is awake")
		}
	}
	fam := fmt.Sprintf("%064x", 8)
	for round := 1; round <= 2; round++ {
		site := startNode(t, sites[7], newFamily(fam, ir, sites[7]), nil, func(c *Config) { c.Bootstrap = hb.Addrs() })
		waitGossip(t, site, fams[7])
		e := signChain(t, fam, sites[7], 1, wire.Hash{}, round)[round-1]
		if err := site.m.Publish(context.Background(), groupMsg(t, e)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the relay's woken family receives the site's gossip", func() bool { return sitesReceived(fams[7].h)["site"] >= round })
		for i, f := range fams {
			if i != 7 && f.m.Awake() {
				t.Fatalf("family %d woke for another family's member", i)
			}
		}
		_ = site.m.Close()
		waitFor(t, "the family sleeps after its last member left", func() bool { return !fams[7].m.Awake() })
		if held := hb.gossipHeld.Load(); held != 0 {
			t.Errorf("the host counts %d bytes of gossip held after the only awake family slept", held)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for settled() > attached+5 {
		if time.Now().After(deadline) {
			t.Fatalf("after the family slept %d goroutines run, %d before it woke", runtime.NumGoroutine(), attached)
		}
	}
}

// A relay that stops listening keeps the connections it has, and a member
// dialling it finds the port closed rather than a host that would take it
// for a stranger (and have it wait long before it tries again).
func TestHostStopListeningKeepsConnections(t *testing.T) {
	x := startTwoFamilies(t)
	addrs := x.hb.Addrs()
	if len(addrs) == 0 {
		t.Fatal("the relay lists no address")
	}
	x.hb.StopListening()
	if got := x.hb.h.Network().ListenAddresses(); len(got) != 0 {
		t.Errorf("still listening on %v", got)
	}
	c := relayClient(t, newIdentity(t, "late"))
	ai, err := peer.AddrInfoFromString(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Connect(ctx, *ai); err == nil {
		t.Error("a new connection reached a relay that stopped listening")
	}
	if n := sitesReceived(x.rb.h)["b1"]; n != 0 {
		t.Fatalf("the relay had %d gossiped entries of b1 before any was published", n)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	next := signChain(t, familyB, x.ib1, 4, x.entriesB[2].Hash, 1)[0]
	if err := x.b1.m.Publish(ctx2, groupMsg(t, next)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "family B still gossips through the relay", func() bool { return sitesReceived(x.rb.h)["b1"] >= 1 })
}

// A relay that closes its connections (as it stops) is seen gone at once by
// the members of every family it serves.
func TestHostCloseConnections(t *testing.T) {
	x := startTwoFamilies(t)
	waitFor(t, "a1 and b1 connected to the relay", func() bool {
		return connected(x.a1.m.hub.h, x.ir.id) && connected(x.b1.m.hub.h, x.ir.id)
	})
	x.hb.StopListening()
	x.hb.CloseConnections()
	waitFor(t, "a1 and b1 see the relay gone", func() bool {
		return x.a1.h.hasEvent(x.ir.id, false) && x.b1.h.hasEvent(x.ir.id, false)
	})
	if c, _ := x.hb.Connections(); c != 0 {
		t.Errorf("the relay keeps %d connections", c)
	}
}
