package mesh

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/ppsync/ppsync/internal/wire"
)

// rawHost starts a libp2p host that is no mesh, with key: a stolen node key
// in a program of the thief's own.
func rawHost(t *testing.T, key ed25519.PrivateKey) host.Host {
	t.Helper()
	priv, err := crypto.UnmarshalEd25519PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableMetrics(), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// rawHello runs a hello exchange from h to n as any program could: it sends
// mine and returns n's answer.
func rawHello(t *testing.T, h host.Host, n *testNode, mine hello) (hello, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, n.id, scopedProto(n.m.cfg.Family.ID(), helloProto))
	if err != nil {
		return hello{}, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := wire.Marshal(mine)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(s, b); err != nil {
		return hello{}, err
	}
	var theirs hello
	fb, err := readFrame(bufio.NewReader(s), maxHello)
	if err == nil {
		err = wire.Unmarshal(fb, &theirs)
	}
	return theirs, err
}

// tryServe opens a stream of proto from h to n, sends req and returns what
// came back.
func tryServe(ctx context.Context, h host.Host, n *testNode, proto protocol.ID, req []byte) ([]byte, error) {
	s, err := h.NewStream(ctx, n.id, scopedProto(n.m.cfg.Family.ID(), proto))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if req != nil {
		_ = writeFrame(s, req)
	}
	_ = s.CloseWrite()
	return readFrame(bufio.NewReader(s), maxFrame)
}

// A stolen node key used from a program of the thief's own, without the
// hello: every stream that serves data is refused (nothing of the log, the
// frontier or a ping comes back), each refusal is counted, the handler hears
// nothing, and the connection is closed once the hello is overdue.
func TestStolenKeyWithoutHelloGetsNothing(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 5)...)
	a := startNode(t, ia, newFamily(testFamily, ia, ib), logA, nil)
	thief := rawHost(t, ib.key)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A closing the connection is seen as it happens: A's dial loop then
	// dials "B" again at once, and the thief answers.
	closed := make(chan struct{})
	var once sync.Once
	a.m.host.Network().Notify(&network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() == ib.id {
			once.Do(func() { close(closed) })
		}
	}})
	if err := thief.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatalf("the stolen key connects: %v", err)
	}
	req, err := wire.Marshal(&catchupRequest{Family: testFamily})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proto  protocol.ID
		req    []byte
		reason string
	}{
		{catchupProto, req, "catchup_before_hello"},
		{frontierProto, nil, "frontier_before_hello"},
		{pushProto, nil, "push_before_hello"},
		{forkProofProto, nil, "forkproof_before_hello"},
		{pingProto, []byte("12345678"), "ping_before_hello"},
	} {
		if b, err := tryServe(ctx, thief, a, tc.proto, tc.req); err == nil {
			t.Errorf("%s served a stream before the hello: %d bytes", tc.proto, len(b))
		}
		waitCount(t, a.m, tc.reason, 1)
	}
	// After helloTimeout from the connection: longer than waitFor waits
	// from here (it timed out a few milliseconds before the count came).
	waitWithin(t, helloTimeout+5*time.Second, `a "no_hello" rejection`, func() bool { return a.m.Rejections()["no_hello"] >= 1 })
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("A did not close the connection without a hello")
	}
	if !a.h.silent() {
		t.Errorf("the handler was called for a connection without a hello: %s", a.h.summary())
	}
}

// The hello is per connection: a thief that said the hello on its own
// connection is a second copy of the site, and is reported as one while the
// real node is connected; what it fetches then is fetched over the
// connection its hello proved.
func TestStolenKeyWithHelloIsReportedAsClone(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	thief := rawHost(t, ib.key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := thief.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}
	if _, err := rawHello(t, thief, a, hello{Family: testFamily, Instance: "thief", Protocol: ProtocolVersion}); err != nil {
		t.Fatalf("the thief's hello: %v", err)
	}
	waitFor(t, "A reports two copies of B", func() bool { return slices.Contains(a.h.duplicateCalls(), ib.id) })
}

// A stranger's hello is read within a small limit: one that announces more
// is refused from its length, before A waits for or decodes its body.
func TestOversizedHelloFromStrangerRefusedBeforeDecoding(t *testing.T) {
	ia := newIdentity(t, "a")
	a := startNode(t, ia, newFamily(testFamily, ia), nil, nil)
	stranger, _ := plainHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stranger.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}
	s, err := stranger.NewStream(ctx, a.id, scopedProto(testFamily, helloProto))
	if err != nil {
		t.Fatal(err)
	}
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], maxStrangerHello+1)
	if _, err := s.Write(append(hdr[:n], "only the start"...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Error("A answered an oversized hello")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("A took %v to refuse: it waited for the body", d)
	}
	waitCount(t, a.m, "hello_too_large", 1)
}

// Of a stranger's hello, only the certificates that name the stranger are
// verified (here: none), and a second hello on one connection is refused.
func TestStrangerHelloVerifiesOnlyItsOwnCertificates(t *testing.T) {
	ia, ix, io := newIdentity(t, "a"), newIdentity(t, "x"), newIdentity(t, "other")
	famA := newFamily(testFamily, ia)
	famA.learnable["certificate of other"] = Member{Site: "other", PeerID: io.id, Epoch: 1}
	a := startNode(t, ia, famA, nil, nil)
	x := rawHost(t, ix.key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}

	// A first hello that stays unfinished, then a second one on the same
	// connection: refused.
	first, err := x.NewStream(ctx, a.id, scopedProto(testFamily, helloProto))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write([]byte{0x10}); err != nil { // a length, no body yet
		t.Fatal(err)
	}
	// The second hello must come after A began reading the first (stream
	// handlers run concurrently).
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.m.mu.Lock()
		began := false
		for _, st := range a.m.conns { // A's connection IDs are its own
			began = began || st.received >= 1
		}
		a.m.mu.Unlock()
		if began {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("A never began reading the first hello")
		}
		time.Sleep(5 * time.Millisecond)
	}
	docs := [][]byte{[]byte("certificate of other")}
	for range 100 {
		docs = append(docs, []byte("a document that names no one"))
	}
	if _, err := rawHello(t, x, a, hello{Family: testFamily, Instance: "x", Docs: docs}); err == nil {
		t.Error("A answered a second hello on one connection")
	}
	waitCount(t, a.m, "hello_repeated", 1)
	first.Reset()

	// On a new connection, the hello is read but no document is verified:
	// none names the stranger.
	x.Network().ClosePeer(a.id)
	waitFor(t, "the old connection is gone", func() bool { return !connected(x, a.id) })
	if err := x.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}
	if _, err := rawHello(t, x, a, hello{Family: testFamily, Instance: "x", Docs: docs}); err == nil {
		t.Error("A answered a stranger's hello")
	}
	waitCount(t, a.m, "not_member", 1)
	famA.mu.Lock()
	learned := len(famA.learned)
	famA.mu.Unlock()
	if learned != 0 {
		t.Errorf("A verified %d documents of a stranger that name someone else", learned)
	}
	if _, ok := famA.Member(io.id); ok {
		t.Error("a stranger taught A a membership")
	}
}

// A document already installed is not verified again when a member's hello
// carries it.
func TestKnownDocumentsAreNotVerifiedAgain(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	famA := newFamily(testFamily, ia, ib)
	famA.docs = [][]byte{[]byte("certificate of a"), []byte("certificate of b")}
	a := startNode(t, ia, famA, nil, nil)
	famB := newFamily(testFamily, ia, ib)
	famB.docs = [][]byte{[]byte("certificate of a"), []byte("certificate of b"), []byte("news")}
	b := startNode(t, ib, famB, nil, nil)
	connect(t, b, a)
	waitFor(t, "A looks at the news", func() bool {
		famA.mu.Lock()
		defer famA.mu.Unlock()
		return slices.ContainsFunc(famA.learned, func(d []byte) bool { return string(d) == "news" })
	})
	famA.mu.Lock()
	defer famA.mu.Unlock()
	for _, d := range famA.learned {
		if string(d) != "news" {
			t.Errorf("A verified %q again, a document it holds", d)
		}
	}
}

// A revoked peer still connected when the revocation arrives is told of it,
// and of nothing else: its hello carries the revocation only, no roster
// document, no address of this node or of any member.
func TestRevokedPeerGetsOnlyItsRevocation(t *testing.T) {
	ia, ib, iy := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "y")
	famA := newFamily(testFamily, ia, ib, iy)
	famA.docs = [][]byte{[]byte("certificate of a"), []byte("certificate of b"), []byte("certificate of y")}
	famA.own = map[peer.ID][][]byte{ia.id: {[]byte("certificate of a")}}
	a := startNode(t, ia, famA, nil, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib, iy), nil, nil)
	connect(t, b, a)

	y := rawHost(t, iy.key)
	got := make(chan hello, 4)
	y.SetStreamHandler(scopedProto(testFamily, helloProto), func(s network.Stream) {
		defer s.Close()
		fb, err := readFrame(bufio.NewReader(s), maxHello)
		var h hello
		if err == nil && wire.Unmarshal(fb, &h) == nil {
			got <- h
		}
		s.Reset()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := y.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}
	full, err := rawHello(t, y, a, hello{Family: testFamily, Instance: "y", Protocol: ProtocolVersion})
	if err != nil {
		t.Fatalf("Y's hello as a member: %v", err)
	}
	if len(full.Docs) != 3 || len(full.Addrs) == 0 || len(full.Known) == 0 {
		t.Fatalf("a member's answer carries %d documents, %d addresses, %d members: want the full hello", len(full.Docs), len(full.Addrs), len(full.Known))
	}

	famA.ban(iy.id)
	famA.mu.Lock()
	famA.own[iy.id] = [][]byte{[]byte("revocation of y")}
	famA.docs = append(famA.docs, []byte("revocation of y"))
	famA.mu.Unlock()
	a.m.DocumentsUpdated()
	select {
	case h := <-got:
		if len(h.Docs) != 1 || string(h.Docs[0]) != "revocation of y" {
			t.Errorf("the revoked peer was sent documents %q, want its revocation only", h.Docs)
		}
		if len(h.Addrs) != 0 || len(h.Known) != 0 {
			t.Errorf("the revoked peer was sent addresses %v and members %v", h.Addrs, h.Known)
		}
	case <-ctx.Done():
		t.Fatal("A did not tell the revoked peer")
	}
	waitFor(t, "A cuts the revoked peer off", func() bool { return !connected(a.m.host, iy.id) })
}

// A catch-up request that names a site many times, and sites this node does
// not hold, streams the log once.
func TestCatchupRepeatedSiteStreamsOnce(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 5)...)
	a, b := servingPair(t, ia, ib, logA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sites := []string{"a", "nowhere"}
	for range 1000 {
		sites = append(sites, "a")
	}
	st, err := b.m.Fetch(ctx, ia.id, nil, nil, sites)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 5 {
		t.Errorf("%d entries received, want the 5 of site a once", st.Entries)
	}
	checkRuns(t, b.h.entryCalls(), a, []string{"a"}, map[string][2]uint64{"a": {1, 5}})
}

// A peer gets two catch-up sessions at once; a third is refused with an
// error that says why.
func TestThirdConcurrentCatchupRefused(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	logA.add(signChain(t, testFamily, ia, 1, wire.Hash{}, 10)...)
	stall := stallLog{fakeLog: logA, stallAt: 1, release: make(chan struct{}), reading: new(atomic.Int32)}
	var once sync.Once
	release := func() { once.Do(func() { close(stall.release) }) }
	t.Cleanup(release)
	a := startNode(t, ia, newFamily(testFamily, ia, ib), logA, func(c *Config) { c.Log = stall })
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
			errs <- err
		}()
	}
	waitFor(t, "two sessions wait on A's log", func() bool { return stall.reading.Load() == 2 })
	_, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "already serves 2 catch-up sessions") {
		t.Errorf("a third session: %v, want a refusal that says two are running", err)
	}
	waitCount(t, a.m, "catchup_busy", 1)
	release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("a session of the first two failed: %v", err)
		}
	}
	if _, err := b.m.Fetch(ctx, ia.id, nil, nil, nil); err != nil {
		t.Errorf("a session after the first two ended: %v", err)
	}
}

// testClock is a clock a test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// A peer may start startBurst catch-up sessions at once and then startRate
// a second: beyond that, sessions are refused until time has passed.
func TestCatchupStartsAreRateLimited(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	clock := &testClock{now: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, func(c *Config) { c.Now = clock.Now })
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range startBurst {
		if _, err := b.m.Fetch(ctx, ia.id, nil, nil, nil); err != nil {
			t.Fatalf("session %d of the burst: %v", i+1, err)
		}
	}
	_, err := b.m.Fetch(ctx, ia.id, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "too often") {
		t.Errorf("a session beyond the burst: %v, want a refusal for starting too often", err)
	}
	waitCount(t, a.m, "catchup_rate_limited", 1)
	clock.add(time.Second)
	for i := range int(startRate) {
		if _, err := b.m.Fetch(ctx, ia.id, nil, nil, nil); err != nil {
			t.Errorf("session %d a second later: %v", i+1, err)
		}
	}
	if _, err := b.m.Fetch(ctx, ia.id, nil, nil, nil); err == nil {
		t.Error("more sessions than the rate allows were served")
	}
}

// A probe is skipped only where it could tell nothing new: a member
// connected over one direct connection whose own heartbeat came over it
// lately. A second connection under its peer ID (a cloned twin, or a
// stolen key) makes it needed again, as does a heartbeat gone stale.
func TestProbeNeededOnlyWhereGossipCannotTell(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	fast := func(c *Config) { c.HeartbeatInterval = 200 * time.Millisecond }
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, fast)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, fast)
	if !a.m.ProbeNeeded(ib.id, time.Hour) {
		t.Fatal("a member not connected needs no probe")
	}
	connect(t, b, a)
	const span = 2 * time.Second
	waitFor(t, "b's own heartbeat reaching a over their one connection", func() bool { return !a.m.ProbeNeeded(ib.id, span) })
	if !a.m.ProbeNeeded(ib.id, 0) {
		t.Error("a heartbeat older than the span still makes the probe needless")
	}

	twin := rawHost(t, ib.key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := twin.Connect(ctx, a.addrInfo()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a second connection under b's peer ID", func() bool { return len(a.m.host.Network().ConnsToPeer(ib.id)) == 2 })
	if !a.m.ProbeNeeded(ib.id, span) {
		t.Error("b with two connections (a twin) is not probed")
	}
	if err := twin.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one connection again, and no probe needed", func() bool { return !a.m.ProbeNeeded(ib.id, span) })
}
