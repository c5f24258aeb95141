package mesh

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// Fakes of Family, Log and Handler, and helpers that start real meshes on
// 127.0.0.1. Every mesh listens on loopback TCP only and has MDNS off.

const testFamily = "f00dfeed"

// identity is one member: its node key (peer ID) and its site key.
type identity struct {
	site    string
	key     ed25519.PrivateKey
	id      peer.ID
	siteKey ed25519.PrivateKey
	relay   bool // the family's relay
}

func newIdentity(t testing.TB, site string) identity {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, siteKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return identity{site: site, key: key, id: peerIDOf(t, key), siteKey: siteKey}
}

func peerIDOf(t testing.TB, key ed25519.PrivateKey) peer.ID {
	t.Helper()
	pk, err := crypto.UnmarshalEd25519PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fakeFamily is one node's view of the roster. It is safe for concurrent use
// (the gater calls it from libp2p's goroutines).
type fakeFamily struct {
	id string

	mu        sync.Mutex
	members   map[peer.ID]Member
	banned    map[peer.ID]bool
	siteKeys  map[string]ed25519.PublicKey
	docs      [][]byte
	own       map[peer.ID][][]byte // documents that name a peer (DocumentsOf)
	learnable map[string]Member    // a document that, once learned, admits this member
	learned   [][]byte
}

func newFamily(id string, members ...identity) *fakeFamily {
	f := &fakeFamily{id: id, members: map[peer.ID]Member{}, banned: map[peer.ID]bool{},
		siteKeys: map[string]ed25519.PublicKey{}, learnable: map[string]Member{}}
	for _, m := range members {
		f.add(m)
	}
	return f
}

func (f *fakeFamily) add(m identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members[m.id] = Member{Site: m.site, Relay: m.relay, PeerID: m.id, Epoch: 1}
	f.siteKeys[m.site] = m.siteKey.Public().(ed25519.PublicKey)
}

// ban revokes p: it is no longer a member and must never connect.
func (f *fakeFamily) ban(p peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.members, p)
	f.banned[p] = true
}

func (f *fakeFamily) ID() string { return f.id }

func (f *fakeFamily) Member(p peer.ID) (Member, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.members[p]
	return m, ok
}

func (f *fakeFamily) Members() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Collect(maps.Values(f.members))
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Site, b.Site) })
	return out
}

func (f *fakeFamily) Banned(p peer.ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.banned[p]
}

func (f *fakeFamily) SiteKey(site string, epoch uint64) (ed25519.PublicKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.siteKeys[site]
	if !ok || epoch != 1 {
		return nil, fmt.Errorf("fake family: no key for site %q epoch %d", site, epoch)
	}
	return k, nil
}

func (f *fakeFamily) Documents() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.docs)
}

func (f *fakeFamily) DocumentsOf(p peer.ID) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.own[p])
}

// Subject names the member a learnable document admits.
func (f *fakeFamily) Subject(doc []byte) (peer.ID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.learnable[string(doc)]
	return m.PeerID, ok
}

func (f *fakeFamily) Learn(doc []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.learned = append(f.learned, slices.Clone(doc))
	m, ok := f.learnable[string(doc)]
	if !ok {
		return false, errors.New("fake family: unknown document")
	}
	if _, known := f.members[m.PeerID]; known {
		return false, nil
	}
	f.members[m.PeerID] = m
	return true, nil
}

// fakeLog holds envelopes in memory: site -> envelopes of seq 1, 2, 3, ...
type fakeLog struct {
	mu     sync.Mutex
	envs   map[string][][]byte
	proofs [][2][][]byte
}

func newLog() *fakeLog { return &fakeLog{envs: map[string][][]byte{}} }

func (l *fakeLog) add(entries ...*wire.Signed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range entries {
		l.envs[e.Site] = append(l.envs[e.Site], e.Marshal())
	}
}

// addRaw stores env as the next envelope of site, whatever it holds (a fault
// hook: a log that serves entries that are not what they claim).
func (l *fakeLog) addRaw(site string, env []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.envs[site] = append(l.envs[site], env)
}

func (l *fakeLog) Frontier() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(l.envs))
	for s, e := range l.envs {
		out[s] = uint64(len(e))
	}
	return out
}

// heads returns site -> hash of its last entry, as a heartbeat carries them.
func (l *fakeLog) heads() map[string][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]byte, len(l.envs))
	for s, e := range l.envs {
		if d, err := wire.DecodeEnvelope(e[len(e)-1]); err == nil {
			out[s] = d.Hash[:]
		}
	}
	return out
}

func (l *fakeLog) RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (bool, error)) error {
	l.mu.Lock()
	envs := l.envs[site]
	l.mu.Unlock()
	if from == 0 {
		from = 1
	}
	for seq := from; seq <= to && seq <= uint64(len(envs)); seq++ {
		stop, err := fn(seq, envs[seq-1])
		if err != nil || stop {
			return err
		}
	}
	return nil
}

func (l *fakeLog) ForkProofs() [][2][][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.proofs)
}

// fakeHandler records every call. Entries reports the whole run as new,
// unless the refuse hook says otherwise.
type fakeHandler struct {
	mu         sync.Mutex
	entries    []entriesCall
	heartbeats []heartbeatCall
	peerEvents []peerEvent
	docs       int
	forks      []forkCall
	duplicates []peer.ID
	refuse     func(run []*wire.Signed) error // fault hook
}

type entriesCall struct {
	from   peer.ID
	run    []*wire.Signed
	gossip bool
}

type heartbeatCall struct {
	from peer.ID
	hb   Heartbeat
}

type peerEvent struct {
	p         peer.ID
	connected bool
}

type forkCall struct {
	from   peer.ID
	a, b   *wire.Signed   // the runs' first entries
	ra, rb []*wire.Signed // the runs
}

func (h *fakeHandler) Entries(_ context.Context, from peer.ID, run []*wire.Signed, gossip bool) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries = append(h.entries, entriesCall{from: from, run: slices.Clone(run), gossip: gossip})
	if h.refuse != nil {
		if err := h.refuse(run); err != nil {
			return 0, err
		}
	}
	return len(run), nil
}

func (h *fakeHandler) Heartbeat(from peer.ID, hb Heartbeat) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.heartbeats = append(h.heartbeats, heartbeatCall{from: from, hb: hb})
}

func (h *fakeHandler) PeerChanged(p peer.ID, connected bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.peerEvents = append(h.peerEvents, peerEvent{p: p, connected: connected})
}

func (h *fakeHandler) DocumentsChanged() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.docs++
}

func (h *fakeHandler) ForkProof(from peer.ID, a, b []*wire.Signed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forks = append(h.forks, forkCall{from: from, a: a[0], b: b[0], ra: a, rb: b})
}

func (h *fakeHandler) Duplicate(p peer.ID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.duplicates = append(h.duplicates, p)
}

func (h *fakeHandler) entryCalls() []entriesCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.entries)
}

func (h *fakeHandler) heartbeatsFrom(p peer.ID) []Heartbeat {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Heartbeat
	for _, c := range h.heartbeats {
		if c.from == p {
			out = append(out, c.hb)
		}
	}
	return out
}

func (h *fakeHandler) events() []peerEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.peerEvents)
}

func (h *fakeHandler) forkCalls() []forkCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.forks)
}

func (h *fakeHandler) duplicateCalls() []peer.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.duplicates)
}

func (h *fakeHandler) docsChanged() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.docs
}

// silent reports whether the handler was never called at all.
func (h *fakeHandler) silent() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.entries) == 0 && len(h.heartbeats) == 0 && len(h.peerEvents) == 0 && h.docs == 0 &&
		len(h.forks) == 0 && len(h.duplicates) == 0
}

// summary counts the calls, for failure messages.
func (h *fakeHandler) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("%d entry calls, %d heartbeats, peer events %v, %d documents changed, %d fork proofs, duplicates %v",
		len(h.entries), len(h.heartbeats), h.peerEvents, h.docs, len(h.forks), h.duplicates)
}

// hasEvent reports whether the handler saw PeerChanged(p, connected).
func (h *fakeHandler) hasEvent(p peer.ID, connected bool) bool {
	return slices.Contains(h.events(), peerEvent{p: p, connected: connected})
}

// testNode is a running mesh with its fakes.
type testNode struct {
	identity
	m   *Mesh
	fam *fakeFamily
	log *fakeLog
	h   *fakeHandler
}

// startNode starts a mesh for ident on 127.0.0.1 and closes it at cleanup.
// log may be nil (an empty log); mut may adjust the config.
// servingPair starts member a serving logA and member b, and connects b to a.
func servingPair(t testing.TB, ia, ib identity, logA *fakeLog) (a, b *testNode) {
	t.Helper()
	a = startNode(t, ia, newFamily(testFamily, ia, ib), logA, nil)
	b = startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	return a, b
}

func startNode(t testing.TB, ident identity, fam *fakeFamily, log *fakeLog, mut func(*Config)) *testNode {
	t.Helper()
	return runNode(t, nil, ident, fam, log, mut)
}

// attachNode attaches a family to the shared host hb (a relay serving
// several families) and detaches it at cleanup.
func attachNode(t testing.TB, hb *Host, ident identity, fam *fakeFamily, log *fakeLog, mut func(*Config)) *testNode {
	t.Helper()
	return runNode(t, hb, ident, fam, log, mut)
}

func runNode(t testing.TB, hb *Host, ident identity, fam *fakeFamily, log *fakeLog, mut func(*Config)) *testNode {
	t.Helper()
	if log == nil {
		log = newLog()
	}
	n := &testNode{identity: ident, fam: fam, log: log, h: &fakeHandler{}}
	role := "site"
	if ident.relay {
		role = "relay"
	}
	cfg := Config{
		Key:     ident.key,
		Listen:  []string{"/ip4/127.0.0.1/tcp/0"},
		Family:  fam,
		Log:     log,
		Handler: n.h,
		Heartbeat: func() Heartbeat {
			return Heartbeat{Site: ident.site, Role: role, Version: "test", Protocol: ProtocolVersion, Schema: wire.SchemaVersion,
				Frontier: log.Frontier(), Heads: log.heads(), Wall: time.Now().UTC(), Status: "ok"}
		},
	}
	if mut != nil {
		mut(&cfg)
	}
	cfg.MDNS = false
	var m *Mesh
	var err error
	if hb == nil {
		m, err = New(context.Background(), cfg)
	} else {
		m, err = hb.Attach(context.Background(), cfg)
	}
	if err != nil {
		t.Fatalf("start mesh of %s: %v", ident.site, err)
	}
	n.m = m
	t.Cleanup(func() { _ = m.Close() })
	return n
}

// addrInfo is how another host dials n.
func (n *testNode) addrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.m.ID(), Addrs: n.m.host.Addrs()}
}

// connect makes a dial b and waits until both completed the hello exchange.
func connect(t testing.TB, a, b *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.m.host.Connect(ctx, b.addrInfo()); err != nil {
		t.Fatalf("%s dials %s: %v", a.site, b.site, err)
	}
	waitFor(t, a.site+" and "+b.site+" see each other connected", func() bool {
		return a.h.hasEvent(b.id, true) && b.h.hasEvent(a.id, true)
	})
}

// waitGossip waits until a and b each know the other subscribes to the
// family's topics, so a flood publish reaches the other at once.
func waitGossip(t testing.TB, a, b *testNode) {
	t.Helper()
	waitFor(t, "gossip between "+a.site+" and "+b.site, func() bool {
		for _, x := range [][2]*testNode{{a, b}, {b, a}} {
			g := x[0].m.gossip.Load()
			if g == nil {
				return false
			}
			for _, topic := range []interface{ ListPeers() []peer.ID }{g.ent, g.hbt, g.fkt} {
				if !slices.Contains(topic.ListPeers(), x[1].id) {
					return false
				}
			}
		}
		return true
	})
}

func connected(h interface{ Network() network.Network }, p peer.ID) bool {
	return h.Network().Connectedness(p) == network.Connected
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 10*time.Second, what, cond)
}

// waitWithin is waitFor with a deadline of its own.
func waitWithin(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCount waits until m counted at least n rejections for reason.
func waitCount(t testing.TB, m *Mesh, reason string, n uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d rejection(s) %q", n, reason), func() bool { return m.Rejections()[reason] >= n })
}

// signChain builds n signed entries of site, chained after (from-1, prev).
func signChain(t testing.TB, family string, ident identity, from uint64, prev wire.Hash, n int) []*wire.Signed {
	t.Helper()
	out := make([]*wire.Signed, 0, n)
	for i := range n {
		seq := from + uint64(i)
		e := &wire.Entry{Family: family, Site: ident.site, Epoch: 1, Seq: seq, Prev: prev, HLC: seq << 16, Schema: wire.SchemaVersion,
			Ops: []wire.Op{{Kind: wire.OpPut, Table: "patients", Key: fmt.Sprintf("%s-%d", ident.site, seq),
				Fields: map[string]any{"name": "test", "n": int64(seq)}}}}
		s, err := wire.Sign(e, ident.siteKey)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
		prev = s.Hash
	}
	return out
}

// groupChain is signChain as a writer with one signature per commit group
// writes it: only the last entry is signed.
func groupChain(t testing.TB, family string, ident identity, from uint64, prev wire.Hash, n int) []*wire.Signed {
	t.Helper()
	out := signChain(t, family, ident, from, prev, n)
	for _, s := range out[:len(out)-1] {
		s.Sig = nil
	}
	return out
}

// groupMsg encodes entries as one message of the groups topic.
func groupMsg(t testing.TB, ss ...*wire.Signed) []byte {
	t.Helper()
	envs := make([][]byte, len(ss))
	for i, s := range ss {
		envs[i] = s.Marshal()
	}
	b, err := wire.Marshal(&groupMessage{Entries: envs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
