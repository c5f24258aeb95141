package mesh

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/ppsync/ppsync/internal/wire"
)

func TestNewRequiresConfig(t *testing.T) {
	a := newIdentity(t, "a")
	fam := newFamily(testFamily, a)
	full := Config{Key: a.key, Family: fam, Log: newLog(), Handler: &fakeHandler{}, Heartbeat: func() Heartbeat { return Heartbeat{} }}
	for name, mut := range map[string]func(*Config){
		"no key":       func(c *Config) { c.Key = nil },
		"no family":    func(c *Config) { c.Family = nil },
		"no log":       func(c *Config) { c.Log = nil },
		"no handler":   func(c *Config) { c.Handler = nil },
		"no heartbeat": func(c *Config) { c.Heartbeat = nil },
		"bad key":      func(c *Config) { c.Key = ed25519.PrivateKey{1, 2, 3} },
		"bad boot":     func(c *Config) { c.Bootstrap = []string{"/ip4/127.0.0.1/tcp/1"} }, // no /p2p/ID
	} {
		cfg := full
		mut(&cfg)
		if m, err := New(context.Background(), cfg); err == nil {
			m.Close()
			t.Errorf("%s: New accepted the config", name)
		}
	}
}

// Two members: B dials A through its bootstrap address. Both hear the other
// connect, heartbeats carry each one's site and frontier, the peer list shows
// the other, and closing A tells B.
func TestMembersConnectHeartbeatAndDisconnect(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 3)...)
	fast := func(c *Config) { c.HeartbeatInterval = 50 * time.Millisecond }
	a := startNode(t, ia, newFamily(testFamily, ia, ib), logA, fast)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, func(c *Config) {
		fast(c)
		c.Bootstrap = a.m.Addrs()
	})
	for _, addr := range a.m.Addrs() {
		if want := "/p2p/" + a.id.String(); len(addr) < len(want) || addr[len(addr)-len(want):] != want {
			t.Errorf("address %q does not end in %s", addr, want)
		}
	}

	waitFor(t, "both see the other connect", func() bool { return a.h.hasEvent(ib.id, true) && b.h.hasEvent(ia.id, true) })

	waitFor(t, "B hears A's heartbeat", func() bool { return len(b.h.heartbeatsFrom(ia.id)) > 0 })
	hb := b.h.heartbeatsFrom(ia.id)[0]
	if hb.Site != "a" || hb.Frontier["a"] != 3 || len(hb.Frontier) != 1 {
		t.Errorf("A's heartbeat at B: site %q frontier %v, want site a frontier {a:3}", hb.Site, hb.Frontier)
	}
	if want := logA.heads()["a"]; string(hb.Heads["a"]) != string(want) {
		t.Errorf("A's heartbeat head %x, want %x", hb.Heads["a"], want)
	}
	if len(hb.Addrs) == 0 {
		t.Error("A's heartbeat carries no address")
	}
	waitFor(t, "A hears B's heartbeat", func() bool { return len(a.h.heartbeatsFrom(ib.id)) > 0 })
	if hb := a.h.heartbeatsFrom(ib.id)[0]; hb.Site != "b" || len(hb.Frontier) != 0 {
		t.Errorf("B's heartbeat at A: site %q frontier %v, want site b and an empty frontier", hb.Site, hb.Frontier)
	}
	waitFor(t, "heartbeats keep coming", func() bool { return len(b.h.heartbeatsFrom(ia.id)) >= 3 })

	peers := b.m.Peers()
	if len(peers) != 1 || peers[0].Member.PeerID != ia.id || peers[0].Member.Site != "a" {
		t.Fatalf("B's peers: %+v, want A only", peers)
	}
	if p := peers[0]; !p.Connected || p.Via != "direct" || p.Heartbeat == nil || p.Heartbeat.Site != "a" || p.LastSeen.IsZero() {
		t.Errorf("B's view of A: connected %v via %q heartbeat %v last seen %v", p.Connected, p.Via, p.Heartbeat, p.LastSeen)
	}

	if err := a.m.Close(); err != nil {
		t.Fatalf("close A: %v", err)
	}
	waitFor(t, "B sees A disconnect", func() bool { return b.h.hasEvent(ia.id, false) })
	if ev := b.h.events(); !slices.Equal(ev, []peerEvent{{ia.id, true}, {ia.id, false}}) {
		t.Errorf("B's peer events %v, want one connect then one disconnect of A", ev)
	}
	if p := b.m.Peers()[0]; p.Connected || p.Via != "" {
		t.Errorf("B's view of A after it closed: connected %v via %q", p.Connected, p.Via)
	}
	for _, h := range []*fakeHandler{a.h, b.h} {
		if n := len(h.entryCalls()) + len(h.duplicateCalls()) + len(h.forkCalls()); n != 0 {
			t.Errorf("%d unexpected entry, duplicate or fork calls", n)
		}
	}
}

// plainHost starts a libp2p host that is no mesh: what a stranger on the
// network runs.
func plainHost(t *testing.T) (host.Host, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, h.ID()
}

// A stranger (a plain host with a fresh key) connects on probation but no
// ppsync protocol serves it: every stream is refused and counted, its hello is
// refused and the connection cut, nothing reaches the Handler, and a member
// will not dial it.
func TestStrangerIsRefusedEverywhere(t *testing.T) {
	ia := newIdentity(t, "a")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 5)...)
	a := startNode(t, ia, newFamily(testFamily, ia), logA, nil)
	out, outID := plainHost(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.m.host.Connect(ctx, peer.AddrInfo{ID: outID, Addrs: out.Addrs()}); err == nil {
		t.Error("a member dialed a stranger")
	}
	waitCount(t, a.m, "dial_non_member", 1)

	if err := out.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatalf("stranger dials A: %v", err)
	}
	req, err := wire.Marshal(&catchupRequest{Family: testFamily})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proto  protocol.ID
		reason string
	}{
		{catchupProto, "catchup_non_member"},
		{frontierProto, "frontier_non_member"},
		{pushProto, "push_non_member"},
		{forkProofProto, "forkproof_non_member"},
	} {
		s, err := out.NewStream(ctx, a.id, scopedProto(testFamily, tc.proto))
		if err == nil {
			_ = s.SetDeadline(time.Now().Add(10 * time.Second))
			_ = writeFrame(s, req)
			_ = s.CloseWrite()
			if b, err := readFrame(bufio.NewReader(s), maxFrame); err == nil {
				t.Errorf("%s served a stranger %d bytes", tc.proto, len(b))
			}
			s.Close()
		}
		waitCount(t, a.m, tc.reason, 1)
	}

	// Its hello, even naming the right family, is refused and it is cut off.
	s, err := out.NewStream(ctx, a.id, scopedProto(testFamily, helloProto))
	if err != nil {
		t.Fatalf("open hello stream: %v", err)
	}
	b, err := wire.Marshal(hello{Family: testFamily, Instance: "stranger", Protocol: ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeFrame(s, b); err != nil {
		t.Fatalf("send hello: %v", err)
	}
	if theirs, err := readFrame(bufio.NewReader(s), maxHello); err == nil {
		t.Errorf("A answered a stranger's hello with %d bytes", len(theirs))
	}
	waitCount(t, a.m, "not_member", 1)
	waitFor(t, "A cuts the stranger off", func() bool { return !connected(a.m.host, outID) })

	if !a.h.silent() {
		t.Errorf("the handler was called for a stranger: %s", a.h.summary())
	}
	if len(a.m.Peers()) != 0 {
		t.Errorf("A lists peers %+v", a.m.Peers())
	}
}

// A node whose key the family does not list runs a real mesh: its hello is
// refused, its fetch and probe fail, and A's handler hears nothing.
func TestNonMemberMeshCannotSync(t *testing.T) {
	ia, ix := newIdentity(t, "a"), newIdentity(t, "x")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 5)...)
	a := startNode(t, ia, newFamily(testFamily, ia), logA, nil)
	x := startNode(t, ix, newFamily(testFamily, ia, ix), nil, nil) // X believes it belongs

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = x.m.host.Connect(ctx, a.addrInfo()) // admitted on probation, then refused in the hello
	waitCount(t, a.m, "not_member", 1)
	waitFor(t, "A cuts X off", func() bool { return !connected(a.m.host, ix.id) })

	// Each attempt redials A, whose refusal of X's hello cuts the connection:
	// X's own mesh sends no request on a connection whose hello did not
	// complete, and A would refuse one (TestStrangerIsRefusedEverywhere). No
	// attempt may succeed.
	for range 3 {
		if st, err := x.m.Fetch(ctx, ia.id, nil, nil, nil); err == nil || st.Entries != 0 {
			t.Fatalf("X fetched from A: %+v, %v", st, err)
		}
		if hb, err := x.m.Probe(ctx, ia.id); err == nil {
			t.Fatalf("X probed A: %+v", hb)
		}
	}

	if !a.h.silent() {
		t.Errorf("A's handler was called for a non-member: %s", a.h.summary())
	}
	if len(x.h.entryCalls()) != 0 {
		t.Errorf("X received entries: %+v", x.h.entryCalls())
	}
	if x.h.hasEvent(ia.id, true) {
		t.Error("X completed a hello with A")
	}
}

// A banned peer is refused at the handshake, inbound and outbound, even
// while the roster still lists it.
func TestBannedPeerCannotConnect(t *testing.T) {
	ia, iy := newIdentity(t, "a"), newIdentity(t, "y")
	famA := newFamily(testFamily, ia, iy)
	famA.mu.Lock()
	famA.banned[iy.id] = true // listed and banned: banned wins
	famA.mu.Unlock()
	a := startNode(t, ia, famA, nil, nil)
	y := startNode(t, iy, newFamily(testFamily, ia, iy), nil, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = y.m.host.Connect(ctx, a.addrInfo()) // may return nil: the dialer's handshake completes first
	waitCount(t, a.m, "banned_peer", 1)
	if hb, err := y.m.Probe(ctx, ia.id); err == nil {
		t.Errorf("a banned peer probed A: %+v", hb)
	}
	before := a.m.Rejections()["banned_peer"]
	if err := a.m.host.Connect(ctx, y.addrInfo()); err == nil {
		t.Error("A dialed a banned peer")
	}
	waitCount(t, a.m, "banned_peer", before+1)
	waitFor(t, "no connection between A and the banned peer", func() bool { return !connected(a.m.host, iy.id) })
	if !a.h.silent() {
		t.Errorf("A's handler was called for a banned peer: %s", a.h.summary())
	}
	if y.h.hasEvent(ia.id, true) {
		t.Error("the banned peer completed a hello with A")
	}
}

// Membership spreads in the hello: a newcomer's certificate admits it, and a
// revocation applied with DocumentsUpdated cuts it off and keeps it out.
func TestHelloAdmitsNewcomerAndRevocationCutsItOff(t *testing.T) {
	ia, ix := newIdentity(t, "a"), newIdentity(t, "x")
	famA := newFamily(testFamily, ia)
	famA.learnable["certificate of x"] = Member{Site: "x", PeerID: ix.id, Epoch: 1}
	a := startNode(t, ia, famA, nil, nil)
	famX := newFamily(testFamily, ia, ix)
	famX.docs = [][]byte{[]byte("certificate of x")}
	x := startNode(t, ix, famX, nil, nil)

	connect(t, x, a)
	if a.h.docsChanged() == 0 {
		t.Error("A learned a certificate but its handler was not told")
	}
	if _, ok := famA.Member(ix.id); !ok {
		t.Fatal("A did not learn X's certificate")
	}

	famA.ban(ix.id)
	a.m.DocumentsUpdated()
	waitCount(t, a.m, "membership_ended", 1)
	waitFor(t, "both see the revoked member go", func() bool { return a.h.hasEvent(ix.id, false) && x.h.hasEvent(ia.id, false) })
	waitFor(t, "A is not connected to X", func() bool { return !connected(a.m.host, ix.id) })
	if a.h.docsChanged() < 2 {
		t.Errorf("DocumentsUpdated did not tell the handler (%d calls)", a.h.docsChanged())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := x.m.Probe(ctx, ia.id); err == nil {
		t.Error("a revoked member probed A")
	}
	waitCount(t, a.m, "banned_peer", 1)
}

// Two processes with one identity connected at once are reported as a
// duplicate.
func TestDuplicateIdentityReported(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	b1 := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b1, a)
	if len(a.h.duplicateCalls()) != 0 {
		t.Fatal("one process reported as a duplicate")
	}
	b2 := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil) // a cloned machine
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b2.m.host.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatalf("clone dials A: %v", err)
	}
	waitFor(t, "A reports the duplicate", func() bool { return slices.Contains(a.h.duplicateCalls(), ib.id) })
	waitCount(t, a.m, "duplicate_identity", 1)
}
