package node

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
)

// Test-only helpers for the attack tests: a raw libp2p peer that speaks the
// mesh's wire protocols by hand, and small polling utilities.

// The mesh's protocol IDs and hello message, mirrored here (they are
// unexported in package mesh) so a test can speak them as any peer could.
// Every stream of a family is opened as /ppsync/f/<family ID>/<kind>; a
// ppsync host lists only /ppsync/f in identify.
const (
	atkHelloProto    protocol.ID = "/hello/1"
	atkCatchupProto  protocol.ID = "/catchup/1"
	atkFrontierProto protocol.ID = "/frontier/1"
	atkMeshsubProto  protocol.ID = "/meshsub/1.2.0"
	atkProtoBase     protocol.ID = "/ppsync/f"
)

// atkProto is family's stream protocol of kind.
func atkProto(family string, kind protocol.ID) protocol.ID {
	return protocol.ID("/ppsync/f/" + family + string(kind))
}

type atkHello struct {
	Family   string     `codec:"fa"`
	Version  string     `codec:"ve"`
	Protocol uint32     `codec:"pr"`
	Schema   uint32     `codec:"sc"`
	Docs     [][]byte   `codec:"do"`
	Addrs    []string   `codec:"ad"`
	Known    []atkKnown `codec:"kn"`
}

type atkKnown struct {
	ID    string   `codec:"id"`
	Addrs []string `codec:"ad"`
}

func atkWriteFrame(w io.Writer, b []byte) error {
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(b)))
	if _, err := w.Write(hdr[:n]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func atkReadFrame(r *bufio.Reader, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return b, err
}

// atkPeer is a bare libp2p host on 127.0.0.1 with gossipsub, driven by a test.
type atkPeer struct {
	t      testing.TB
	h      host.Host
	ps     *pubsub.PubSub
	hello  atkHello
	target string // the family whose nodes it speaks to

	mu     sync.Mutex
	topics map[string]*pubsub.Topic
}

// newAtkPeer builds a raw peer with key that speaks to the nodes of family
// target. hello is what it says in the hello exchange (its Addrs are filled
// in).
func newAtkPeer(t testing.TB, key ed25519.PrivateKey, target string, hello atkHello) *atkPeer {
	t.Helper()
	priv, err := crypto.UnmarshalEd25519PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h,
		// The mesh's policy (mesh/gossip.go): entries carry their own
		// signatures, pubsub messages none.
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithMessageIdFn(func(m *pb.Message) string {
			sum := sha256.Sum256(m.Data)
			return string(sum[:16])
		}),
		pubsub.WithFloodPublish(true),
		pubsub.WithGossipSubProtocols([]protocol.ID{atkProto(target, atkMeshsubProto)}, func(f pubsub.GossipSubFeature, _ protocol.ID) bool {
			return pubsub.GossipSubDefaultFeatures(f, pubsub.GossipSubID_v12)
		}),
		pubsub.WithProtocolMatchFn(func(own protocol.ID) func(protocol.ID) bool {
			return func(p protocol.ID) bool { return p == own || p == atkProtoBase }
		}),
	)
	if err != nil {
		cancel()
		h.Close()
		t.Fatal(err)
	}
	for _, a := range h.Addrs() {
		hello.Addrs = append(hello.Addrs, a.String())
	}
	rp := &atkPeer{t: t, h: h, ps: ps, hello: hello, target: target, topics: map[string]*pubsub.Topic{}}
	// It answers the nodes' liveness pings (8 bytes echoed) as a member's
	// node does, so a slow test does not see it cut off as silent.
	h.SetStreamHandler(atkProto(target, "/alive/1"), func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		var b [8]byte
		if _, err := io.ReadFull(s, b[:]); err == nil {
			_, _ = s.Write(b[:])
		}
	})
	h.SetStreamHandler(atkProto(target, atkHelloProto), func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := atkReadFrame(bufio.NewReader(s), 4<<20); err != nil {
			s.Reset()
			return
		}
		b, _ := wire.Marshal(&rp.hello)
		_ = atkWriteFrame(s, b)
	})
	t.Cleanup(func() {
		cancel()
		h.Close()
	})
	return rp
}

// atkNodeAddr returns a running node's loopback TCP address (with /p2p/ID).
func atkNodeAddr(t testing.TB, n *Node) string {
	t.Helper()
	for _, a := range n.mesh.Addrs() {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") && !strings.Contains(a, "p2p-circuit") {
			return a
		}
	}
	t.Fatalf("node %s has no loopback TCP address: %v", n.id.Site, n.mesh.Addrs())
	return ""
}

// connect dials a node's address and returns its peer ID.
func (rp *atkPeer) connect(addr string) peer.ID {
	rp.t.Helper()
	ai, err := peer.AddrInfoFromString(addr)
	if err != nil {
		rp.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rp.h.Connect(ctx, *ai); err != nil {
		rp.t.Fatalf("raw peer: connect %s: %v", addr, err)
	}
	return ai.ID
}

// sayHello runs the hello exchange with p and returns p's hello.
func (rp *atkPeer) sayHello(p peer.ID, h atkHello) (atkHello, error) {
	var theirs atkHello
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := rp.h.NewStream(ctx, p, atkProto(rp.target, atkHelloProto))
	if err != nil {
		return theirs, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := wire.Marshal(&h)
	if err != nil {
		return theirs, err
	}
	if err := atkWriteFrame(s, b); err != nil {
		return theirs, err
	}
	fb, err := atkReadFrame(bufio.NewReader(s), 4<<20)
	if err != nil {
		return theirs, err
	}
	err = wire.Unmarshal(fb, &theirs)
	return theirs, err
}

// tryStream opens a stream of the target family's kind to p, writes a frame
// and reads one: it returns what came back, or the error.
func (rp *atkPeer) tryStream(p peer.ID, kind protocol.ID, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := rp.h.NewStream(ctx, p, atkProto(rp.target, kind))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if req != nil {
		if err := atkWriteFrame(s, req); err != nil {
			return nil, err
		}
		_ = s.CloseWrite()
	}
	return atkReadFrame(bufio.NewReader(s), 16<<20)
}

func (rp *atkPeer) topic(name string) *pubsub.Topic {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if tp := rp.topics[name]; tp != nil {
		return tp
	}
	tp, err := rp.ps.Join(name)
	if err != nil {
		rp.t.Fatal(err)
	}
	rp.topics[name] = tp
	return tp
}

// waitTopicPeers waits until every peer in ps announced topic to this peer.
func (rp *atkPeer) waitTopicPeers(name string, ps ...peer.ID) {
	rp.t.Helper()
	tp := rp.topic(name)
	atkWaitFor(rp.t, 10*time.Second, "raw peer sees the nodes on "+name, func() (bool, string) {
		have := map[peer.ID]bool{}
		for _, p := range tp.ListPeers() {
			have[p] = true
		}
		for _, p := range ps {
			if !have[p] {
				return false, fmt.Sprintf("topic peers %v", tp.ListPeers())
			}
		}
		return true, ""
	})
}

func (rp *atkPeer) publish(name string, data []byte) {
	rp.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rp.topic(name).Publish(ctx, data); err != nil {
		rp.t.Fatalf("raw peer: publish on %s: %v", name, err)
	}
}

func atkEntriesTopic(familyID string) string { return fmt.Sprintf("/ppsync/%s/groups/1", familyID) }

// atkGroup wraps envelopes as one message of the groups topic (a run of a
// site's entries that should end at a signed one).
func atkGroup(t testing.TB, envs ...[]byte) []byte {
	t.Helper()
	b, err := wire.Marshal(&struct {
		Entries [][]byte `codec:"en"`
	}{Entries: envs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// atkGroups splits a stored run into its commit groups (each ending at a
// signed entry), the envelopes of each encoded by enc.
func atkGroups(run []*wire.Signed, enc func(*wire.Signed) []byte) [][][]byte {
	var out [][][]byte
	var cur [][]byte
	for _, s := range run {
		cur = append(cur, enc(s))
		if s.IsSigned() {
			out = append(out, cur)
			cur = nil
		}
	}
	return out
}

// atkPoll polls cond every 25ms until it holds or d passes; it returns
// whether it held and the last detail.
func atkPoll(d time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(d)
	for {
		ok, detail := cond()
		if ok || time.Now().After(deadline) {
			return ok, detail
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// atkWaitFor polls cond until it holds, or fails the test after d.
func atkWaitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if ok, detail := atkPoll(d, cond); !ok {
		t.Fatalf("timed out after %s waiting for %s: %s", d, what, detail)
	}
}

// atkHoldFor checks cond every 50ms for d; it fails at the first violation.
func atkHoldFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok, detail := cond(); !ok {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nodeKeyOf reads a node's Ed25519 key from its data directory.
func (tf *testFamily) atkNodeKey(name string) ed25519.PrivateKey {
	tf.t.Helper()
	k, err := datadir.ReadNodeKey(filepath.Join(tf.nodes[name].data, NodeKeyFile))
	if err != nil {
		tf.t.Fatal(err)
	}
	return k
}

// atkPeerID returns the peer ID of a node's key.
func atkPeerID(t testing.TB, key ed25519.PrivateKey) peer.ID {
	t.Helper()
	id, err := family.PeerIDOf(key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// rawMember builds a raw peer with the key of admitted (never started) site
// name, connects it to the given running nodes and runs the hello exchange
// with each, so every one of them holds its certificate.
func (tf *testFamily) atkMember(name string, nodes ...string) (*atkPeer, map[string]peer.ID) {
	tf.t.Helper()
	key := tf.atkNodeKey(name)
	rp := newAtkPeer(tf.t, key, tf.auth.FamilyID(), atkHello{Family: tf.auth.FamilyID(), Version: "test", Protocol: mesh.ProtocolVersion,
		Schema: wire.SchemaVersion, Docs: [][]byte{tf.nodes[name].cert}})
	ids := map[string]peer.ID{}
	for _, s := range nodes {
		p := rp.connect(atkNodeAddr(tf.t, tf.nodes[s].r.n))
		if _, err := rp.sayHello(p, rp.hello); err != nil {
			tf.t.Fatalf("hello with %s: %v", s, err)
		}
		ids[s] = p
	}
	me := rp.h.ID()
	for _, s := range nodes {
		n := tf.nodes[s].r.n
		atkWaitFor(tf.t, 10*time.Second, s+" admits "+name, func() (bool, string) {
			_, ok := members{n}.Member(me)
			return ok, "not a member yet"
		})
	}
	return rp, ids
}

// status fetches GET /v1/status of a running node.
func (tf *testFamily) atkStatus(name string) api.Status {
	tf.t.Helper()
	var st api.Status
	if code := tf.nodes[name].r.call(tf.t, "GET", "/v1/status", nil, &st); code != 200 {
		tf.t.Fatalf("status of %s: HTTP %d", name, code)
	}
	return st
}

// frontiers returns the frontier of each named running node.
func (tf *testFamily) atkFrontiers(names ...string) map[string]map[string]uint64 {
	out := map[string]map[string]uint64{}
	for _, s := range names {
		out[s] = tf.nodes[s].r.n.txlog.Frontier()
	}
	return out
}

// atkSignEntry builds and signs an entry of site with key.
func atkSignEntry(t testing.TB, familyID, site string, epoch, seq uint64, prev wire.Hash, schema uint32, key ed25519.PrivateKey, table, recKey string) *wire.Signed {
	t.Helper()
	e := &wire.Entry{Family: familyID, Site: site, Epoch: epoch, Seq: seq, Prev: prev,
		HLC: uint64(hlc.Make(time.Now().UnixMilli(), 0)), Schema: schema,
		Ops: []wire.Op{{Kind: wire.OpPut, Table: table, Key: recKey, Fields: map[string]any{"by": "test"}}}}
	s, err := wire.Sign(e, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// atkRewrap encodes an envelope with its keys in the other order: the same
// entry (same body, signature and hash) in different bytes, so gossip's
// duplicate filter (which keys on the bytes) does not drop it.
func atkRewrap(s *wire.Signed) []byte {
	var b []byte
	b = append(b, 0x82, 0xa1, 's', 0xc4, byte(len(s.Sig)))
	b = append(b, s.Sig...)
	b = append(b, 0xa1, 'b', 0xc6)
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.Body)))
	return append(b, s.Body...)
}

// atkOversized is a well-formed envelope whose body is larger than
// wire.MaxEntryBytes (yet small enough to pass gossip's message size limit).
func atkOversized() []byte {
	body := make([]byte, wire.MaxEntryBytes+1024)
	for i := range body {
		body[i] = 'x'
	}
	var b []byte
	b = append(b, 0x82, 0xa1, 'b', 0xc6)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	b = append(b, 0xa1, 's', 0xc4, 64)
	return append(b, make([]byte, 64)...)
}

// atkCopyDir copies a stopped node's data directory, keeping it private as
// `cp -a` would (os.CopyFS makes every file 0644).
func atkCopyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	if _, err := datadir.Tighten(dst); err != nil {
		t.Fatal(err)
	}
}

// atkInitDir initialises a data directory for site (not yet admitted),
// registered under name, and returns its join request.
func (tf *testFamily) atkInitDir(name, site string) (*famNode, *family.JoinRequest) {
	tf.t.Helper()
	fn := &famNode{site: site, data: filepath.Join(tf.t.TempDir(), name)}
	res, err := Init(InitOptions{DataDir: fn.data, FamilyFile: filepath.Join(tf.authDir, family.InfoFile), Site: site, Role: "site", Env: tf.getenv})
	if err != nil {
		tf.t.Fatal(err)
	}
	b, err := os.ReadFile(res.JoinRequest)
	if err != nil {
		tf.t.Fatal(err)
	}
	req, err := family.ParseJoinRequest(b)
	if err != nil {
		tf.t.Fatal(err)
	}
	tf.nodes[name] = fn
	return fn, req
}

// atkMoveTo has the authority move site req.Site to the directory of fn
// (a new epoch) and installs that certificate and the given nodes'
// certificates there.
func (tf *testFamily) atkMoveTo(fn *famNode, req *family.JoinRequest, know ...string) {
	tf.t.Helper()
	c, err := tf.auth.Move(tf.authDir, req, time.Now())
	if err != nil {
		tf.t.Fatal(err)
	}
	fn.cert, _ = c.Marshal()
	tf.install(fn, fn.cert)
	for _, k := range know {
		tf.install(fn, tf.nodes[k].cert)
	}
}
