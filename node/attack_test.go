package node

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/txlog"
)

// Attack tests: real libp2p hosts on 127.0.0.1 trying to get into, or
// mislead, a running family.

func atkNewKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestStrangerGetsNothing: a node of another family, and a raw libp2p host
// with its own key, get nothing from the family and deliver nothing to it.
func TestStrangerGetsNothing(t *testing.T) {
	tf, _, _ := relayAndTwoSites(t)
	relay := tf.nodes["relay"].r.n

	// A whole other family whose site is configured to dial our relay.
	other := newTestFamily(t)
	other.add("clinic-z", "site")
	other.relay = tf.relay
	other.start("clinic-z")
	stranger := other.nodes["clinic-z"].r.n

	tf.write("clinic-a", 5, "patients")
	tf.write("clinic-b", 5, "patients")
	other.write("clinic-z", 5, "patients")

	// A raw host with its own key: tries every protocol, a relay slot and
	// gossip before the hello, then a hello of another family, then one that
	// claims to be of this family.
	before := relay.mesh.Rejections()
	famID := tf.auth.FamilyID()
	rp := newAtkPeer(t, atkNewKey(t), tf.auth.FamilyID(), atkHello{Family: other.auth.FamilyID(), Version: "test", Protocol: mesh.ProtocolVersion, Schema: wire.SchemaVersion})
	rid := rp.connect(tf.relay)

	req, _ := wire.Marshal(map[string]any{"fa": famID, "hv": map[string]uint64{}})
	if b, err := rp.tryStream(rid, atkCatchupProto, req); err == nil {
		t.Fatalf("catch-up served a stranger %d bytes", len(b))
	}
	if b, err := rp.tryStream(rid, atkFrontierProto, nil); err == nil {
		t.Fatalf("frontier served a stranger: %x", b)
	}
	ai, _ := peer.AddrInfoFromString(tf.relay)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := client.Reserve(ctx, rp.h, *ai); err == nil {
		t.Fatal("the relay gave a stranger a slot")
	}
	cancel()
	// Gossip: the stranger's pubsub, speaking the family's gossip protocol,
	// opens its stream to the relay (identify lists /ppsync/f); the relay
	// holds it until the hello on that connection proves a membership, and
	// the stranger's does not (below): the stream is refused. The relay's
	// gossip never opens one to a stranger, so the stranger learns no topic
	// and delivers nothing.
	topic := atkEntriesTopic(famID)
	rp.topic(topic)
	forged := atkSignEntry(t, famID, "clinic-a", 1, 6, tf.nodes["clinic-a"].r.n.txlog.Head("clinic-a").Hash, wire.SchemaVersion, atkNewKey(t), "patients", "stranger")
	rp.publish(topic, forged.Marshal())

	if _, err := rp.sayHello(rid, rp.hello); err != nil {
		t.Logf("hello of another family: %v", err)
	}
	atkWaitFor(t, 15*time.Second, "the relay refuses the stranger's gossip stream", func() (bool, string) {
		got := relay.mesh.Rejections()
		return got["meshsub_non_member"] > before["meshsub_non_member"], fmt.Sprintf("%v", got)
	})
	if peers := rp.topic(topic).ListPeers(); len(peers) != 0 {
		t.Errorf("the stranger sees gossip peers on the family's topic: %v", peers)
	}
	atkWaitFor(t, 5*time.Second, "the relay drops the stranger", func() (bool, string) {
		return len(rp.h.Network().ConnsToPeer(rid)) == 0, "still connected"
	})
	// Again, now claiming this family's ID (with no certificate to show).
	rp.connect(tf.relay)
	claim := rp.hello
	claim.Family = famID
	_, _ = rp.sayHello(rid, claim)
	atkWaitFor(t, 5*time.Second, "the relay counts every rejection", func() (bool, string) {
		got := relay.mesh.Rejections()
		for _, k := range []string{"catchup_non_member", "frontier_non_member", "relay_reserve_non_member", "wrong_family", "not_member"} {
			if got[k] <= before[k] {
				return false, fmt.Sprintf("%s not counted: %v", k, got)
			}
		}
		return true, ""
	})
	atkWaitFor(t, 5*time.Second, "the relay drops the claimant", func() (bool, string) {
		return len(rp.h.Network().ConnsToPeer(rid)) == 0, "still connected"
	})

	// The stranger node itself never got through: it dialed the bootstrap
	// address it was given on probation, showed only its own certificate,
	// was refused (another family), and says so.
	atkWaitFor(t, 15*time.Second, "the stranger reports its bootstrap as no member of its family", func() (bool, string) {
		st, err := stranger.Status(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return !st.Online && strings.Contains(st.OfflineReason, "is not a member of this family"), fmt.Sprintf("%+v %q", st.Bootstrap, st.OfflineReason)
	})
	if got := relay.mesh.Rejections(); got["wrong_family"] < 2 { // the raw host and the stranger node
		t.Errorf("the relay did not refuse the stranger node's hello as another family's: %v", got)
	}
	tf.write("clinic-a", 3, "visits")
	tf.waitConverged(10*time.Second, "relay", "clinic-a", "clinic-b")

	ourSites := map[string]bool{"clinic-a": true, "clinic-b": true}
	check := func() (bool, string) {
		for _, s := range []string{"relay", "clinic-a", "clinic-b"} {
			n := tf.nodes[s].r.n
			for site := range n.txlog.Frontier() {
				if !ourSites[site] {
					return false, fmt.Sprintf("%s holds entries of %q: %v", s, site, n.txlog.Frontier())
				}
			}
			if f := n.txlog.Frontier(); f["clinic-a"] != 8 {
				return false, fmt.Sprintf("%s: clinic-a's log changed: %v", s, f)
			}
			if q, _ := n.txlog.Quarantined("clinic-a"); len(q) > 0 {
				return false, s + " quarantined a stranger's entry"
			}
			if len(n.txlog.Forks()) > 0 {
				return false, s + " reports a fork"
			}
			for _, pi := range n.mesh.Peers() {
				if pi.Member.PeerID == rp.h.ID() || pi.Member.PeerID.String() == stranger.id.PeerID {
					return false, s + " lists the stranger as a member"
				}
			}
		}
		f := stranger.txlog.Frontier()
		if len(f) != 1 || f["clinic-z"] != 5 {
			return false, fmt.Sprintf("the stranger holds %v", f)
		}
		if _, err := relay.state.Digest(); err != nil {
			return false, err.Error()
		}
		return true, ""
	}
	atkHoldFor(t, 2*time.Second, "nothing crossed between the families", check)
	for _, s := range []string{"clinic-a", "clinic-b"} {
		for _, pi := range tf.nodes[s].r.n.mesh.Peers() {
			if pi.Member.Site == "clinic-z" {
				t.Fatalf("%s knows the stranger's site", s)
			}
		}
	}
}

// TestStrangerLearnsNoMembership: a stranger that reaches the relay learns
// nothing of the family from the hello exchange: no certificate (site IDs,
// peer IDs, machine fingerprints, database IDs) and no member's address.
func TestStrangerLearnsNoMembership(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.start("relay")
	tf.start("clinic-a")
	atkWaitFor(t, 10*time.Second, "clinic-a connects", func() (bool, string) {
		return tf.atkStatus("clinic-a").Peers > 0, "no peers"
	})
	// The stranger claims this family and shows certificates of another
	// (each is parsed and refused before the relay drops it: time enough for
	// the relay's answer to arrive).
	other := newTestFamily(t)
	other.add("clinic-z", "site")
	var docs [][]byte
	for range 2000 {
		docs = append(docs, other.nodes["clinic-z"].cert)
	}
	rp := newAtkPeer(t, atkNewKey(t), tf.auth.FamilyID(), atkHello{Family: tf.auth.FamilyID(), Version: "test", Protocol: mesh.ProtocolVersion, Schema: wire.SchemaVersion, Docs: docs})
	rid := rp.connect(tf.relay)
	theirs, err := rp.sayHello(rid, rp.hello)
	if err != nil {
		t.Logf("the relay answered nothing: %v", err)
		return
	}
	var sites []string
	for _, d := range theirs.Docs {
		if c, _, err := family.ParseInstallable(d); err == nil && c != nil {
			sites = append(sites, fmt.Sprintf("%s (peer %.16s…, machine %.12s…, database %.12s…)", c.Site, c.PeerID, c.MachineFingerprint, c.DatabaseID))
		}
	}
	if len(theirs.Docs) > 0 || len(theirs.Known) > 0 {
		t.Fatalf("a stranger learned %d certificates [%s] and %d member addresses %v", len(theirs.Docs), strings.Join(sites, "; "), len(theirs.Known), theirs.Known)
	}
}

// TestRevokedNodeIsCutOff: a revoked site is disconnected, its writes reach
// nobody, others' writes do not reach it, and the revocation spreads.
func TestRevokedNodeIsCutOff(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-x"} {
		tf.add(s, "site")
	}
	tf.start("relay")
	for _, s := range []string{"clinic-a", "clinic-b", "clinic-x"} {
		tf.start(s)
	}
	all := []string{"relay", "clinic-a", "clinic-b", "clinic-x"}
	tf.write("clinic-a", 3, "patients")
	tf.write("clinic-x", 3, "patients")
	tf.waitConverged(15*time.Second, all...)
	relay := tf.nodes["relay"].r.n
	x := tf.nodes["clinic-x"].r.n
	xID := atkPeerID(t, tf.atkNodeKey("clinic-x"))
	before := relay.mesh.Rejections()

	rev, err := tf.auth.Revoke(tf.authDir, "clinic-x", "laptop stolen", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := rev.Marshal()
	var res api.InstallResult
	if code := tf.nodes["relay"].r.call(t, "POST", "/v1/install", string(rb), &res); code != 200 || !res.Changed {
		t.Fatalf("install revocation at the relay: %d %+v", code, res)
	}

	// The revocation spreads from the relay alone, and clinic-x is cut off.
	atkWaitFor(t, 10*time.Second, "the revocation spreads and clinic-x is disconnected", func() (bool, string) {
		for _, s := range []string{"relay", "clinic-a", "clinic-b"} {
			n := tf.nodes[s].r.n
			if st := n.roster.Status("clinic-x"); st.State != family.StateRevoked {
				return false, fmt.Sprintf("%s sees clinic-x as %v", s, st.State)
			}
			if !(members{n}).Banned(xID) {
				return false, s + " does not ban clinic-x"
			}
			for _, pi := range n.mesh.Peers() {
				if pi.Member.PeerID == xID {
					return false, s + " still lists clinic-x as a member"
				}
			}
		}
		for _, pi := range x.mesh.Peers() {
			if pi.Connected {
				return false, "clinic-x is still connected to " + pi.Member.Site
			}
		}
		return true, ""
	})
	if got := relay.mesh.Rejections(); got["membership_ended"] <= before["membership_ended"] {
		t.Fatalf("the relay did not count the ended membership: %v", got)
	}

	// clinic-x was told of its revocation before it was cut off: its API
	// refuses writes. Writing straight into its log stands for a copy that
	// never heard; those entries must reach nobody.
	atkWaitFor(t, 10*time.Second, "clinic-x refuses writes", func() (bool, string) {
		err := x.writeBlocked()
		return errors.Is(err, ErrRefused), fmt.Sprint(err)
	})
	xFront := tf.atkFrontiers("relay", "clinic-a", "clinic-b")
	xHead := x.txlog.Frontier()
	x.mesh.Redial() // it tries again at once: refused at the gate
	atkWriteDirect(t, x, "clinic-x", 5, "visits")
	tf.write("clinic-a", 4, "visits")
	atkWaitFor(t, 10*time.Second, "clinic-a's writes reach the others", func() (bool, string) {
		// 7 writes, and the grants of the key epoch the revocation started.
		want := tf.nodes["clinic-a"].r.n.txlog.Frontier()["clinic-a"]
		for _, s := range []string{"relay", "clinic-b"} {
			if f := tf.nodes[s].r.n.txlog.Frontier(); f["clinic-a"] < 7 || f["clinic-a"] != want {
				return false, fmt.Sprintf("%s: %v", s, f)
			}
		}
		return true, ""
	})
	atkWaitFor(t, 10*time.Second, "the relay refuses clinic-x at the gate", func() (bool, string) {
		got := relay.mesh.Rejections()
		return got["banned_peer"] > before["banned_peer"], fmt.Sprint(got)
	})
	atkHoldFor(t, 2500*time.Millisecond, "clinic-x is isolated", func() (bool, string) {
		for _, s := range []string{"relay", "clinic-a", "clinic-b"} {
			if got, want := tf.nodes[s].r.n.txlog.Frontier()["clinic-x"], xFront[s]["clinic-x"]; got != want {
				return false, fmt.Sprintf("%s took clinic-x's entries after the revocation: %d (had %d)", s, got, want)
			}
		}
		if got := x.txlog.Frontier()["clinic-a"]; got != xHead["clinic-a"] {
			return false, fmt.Sprintf("clinic-x got clinic-a's later writes: %d (had %d)", got, xHead["clinic-a"])
		}
		return true, ""
	})
	if d1, d2 := tf.digest("clinic-a"), tf.digest("clinic-b"); d1 != d2 {
		t.Fatalf("clinic-a and clinic-b differ")
	}
	// The revocation started a new key epoch that clinic-x never received:
	// with its own node key and data directory it cannot read what clinic-a
	// wrote after it (the entry itself taken from the relay).
	a := tf.nodes["clinic-a"].r.n
	last, err := relay.txlog.Get("clinic-a", a.txlog.Head("clinic-a").Seq)
	if err != nil {
		t.Fatal(err)
	}
	used, ok := a.ring.Key(last.Key)
	if !ok || used.Epoch < 2 {
		t.Fatalf("clinic-a's last entry is sealed with key %q (epoch %d, held %v), want a key of epoch 2 or later", last.Key, used.Epoch, ok)
	}
	if x.ring.Has(last.Key) {
		t.Fatal("the revoked clinic-x holds the key of the epoch after its revocation")
	}
	for _, g := range last.Grants {
		if g.To == "clinic-x" {
			t.Fatalf("clinic-a gave clinic-x a key after its revocation: %+v", g)
		}
	}
	if ops := x.opener.Open(last); ops != nil {
		t.Fatalf("the revoked clinic-x opened an entry written after its revocation: %+v", ops)
	}
	if ops := tf.nodes["clinic-b"].r.n.opener.Open(last); len(ops) == 0 {
		t.Fatal("clinic-b cannot open the entry written after the revocation")
	}
	if st := x.roster.Status("clinic-x"); st.State != family.StateRevoked {
		t.Logf("note: clinic-x itself was never told of its revocation (its roster says %v; its status writable=%v)", st.State, tf.atkStatus("clinic-x").Writable)
	}
}

// TestForgedReplayedOversizedGossip: a genuine member's raw host publishes a
// forged entry, replays, an oversized message and garbage on the entries
// topic: each is rejected and counted or changes nothing, and no node fails.
func TestForgedReplayedOversizedGossip(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.add("attacker", "site")   // admitted, never started: its key drives the raw host
	tf.add("attacker-2", "site") // a second one (gossip scoring mutes a peer after two rejections)
	tf.start("relay")
	tf.start("clinic-a")
	tf.start("clinic-b")
	nodes := []string{"relay", "clinic-a", "clinic-b"}
	tf.write("clinic-a", 5, "patients")
	tf.write("clinic-b", 2, "patients")
	tf.waitConverged(15*time.Second, nodes...)
	tf.waitKeysSettled(10*time.Second, "clinic-a", "clinic-b")
	tf.waitConverged(15*time.Second, nodes...)
	aHead := tf.nodes["clinic-a"].r.n.txlog.Head("clinic-a").Seq // 5 writes and any data keys given
	famID := tf.auth.FamilyID()
	topic := atkEntriesTopic(famID)

	rp, ids := tf.atkMember("attacker", nodes...)
	var pids []peer.ID
	for _, s := range nodes {
		pids = append(pids, ids[s])
	}
	rp.waitTopicPeers(topic, pids...)

	digests := map[string]string{}
	heads := map[string]txlog.Head{}
	rej := map[string]map[string]uint64{}
	for _, s := range nodes {
		digests[s] = tf.digest(s)
		heads[s] = tf.nodes[s].r.n.txlog.Head("clinic-a")
		rej[s] = tf.nodes[s].r.n.mesh.Rejections()
	}
	front := tf.atkFrontiers(nodes...)

	// (b) Replays: every entry of clinic-a, as stored (gossip's seen-cache
	// drops those) and re-wrapped in new bytes (those reach the log).
	old, err := tf.nodes["relay"].r.n.txlog.Range("clinic-a", 1, 0)
	if err != nil || len(old) < 5 { // 5 writes, and data keys given in entries of their own
		t.Fatalf("relay's log of clinic-a: %d, %v", len(old), err)
	}
	for _, s := range old {
		if d, err := wire.DecodeEnvelope(atkRewrap(s)); err != nil || d.Hash != s.Hash || bytes.Equal(atkRewrap(s), s.Marshal()) {
			t.Fatalf("re-wrapping %s: %v", s.ID(), err)
		}
	}
	for _, g := range atkGroups(old, (*wire.Signed).Marshal) {
		rp.publish(topic, atkGroup(t, g...))
	}
	for _, g := range atkGroups(old, atkRewrap) {
		rp.publish(topic, atkGroup(t, g...))
	}
	// A marker after the replays: a valid entry of the attacker's own site,
	// of a newer schema, so it is stored (frontier moves) but never applied
	// (digests must not move).
	marker := atkSignEntry(t, famID, "attacker", 1, 1, wire.Hash{}, wire.SchemaVersion+1, tf.atkNodeKey("attacker"), "marker", "m")
	rp.publish(topic, atkGroup(t, marker.Marshal()))
	atkWaitFor(t, 10*time.Second, "the marker reaches every node", func() (bool, string) {
		for _, s := range nodes {
			if f := tf.nodes[s].r.n.txlog.Frontier(); f["attacker"] != 1 {
				return false, fmt.Sprintf("%s: %v %v", s, f, tf.nodes[s].r.n.mesh.Rejections())
			}
		}
		return true, ""
	})
	unchanged := func(what string) func() (bool, string) {
		return func() (bool, string) {
			for _, s := range nodes {
				n := tf.nodes[s].r.n
				if d := tf.digest(s); d != digests[s] {
					return false, fmt.Sprintf("%s: %s changed the state digest", s, what)
				}
				if h := n.txlog.Head("clinic-a"); h != heads[s] {
					return false, fmt.Sprintf("%s: %s moved clinic-a's head to %d %s", s, what, h.Seq, h.Hash.Short())
				}
				f := maps.Clone(n.txlog.Frontier())
				delete(f, "attacker")
				if !maps.Equal(f, front[s]) {
					return false, fmt.Sprintf("%s: %s changed the frontier: %v (was %v)", s, what, f, front[s])
				}
				if q, _ := n.txlog.Quarantined("clinic-a"); len(q) > 0 {
					return false, fmt.Sprintf("%s: %s was quarantined", s, what)
				}
				if len(n.txlog.Forks()) > 0 {
					return false, fmt.Sprintf("%s: %s made a fork: %+v", s, what, n.txlog.Forks())
				}
			}
			return true, ""
		}
	}
	atkHoldFor(t, 500*time.Millisecond, "replays", unchanged("a replay"))
	for _, s := range nodes {
		if got := tf.nodes[s].r.n.mesh.Rejections(); !maps.Equal(got, rej[s]) {
			t.Fatalf("%s rejected a valid replay: %v (before %v)", s, got, rej[s])
		}
	}

	// (a) A forged entry: clinic-a's next seq, signed with the attacker's key.
	forged := atkSignEntry(t, famID, "clinic-a", 1, 6, heads["relay"].Hash, wire.SchemaVersion, tf.atkNodeKey("attacker"), "patients", "forged")
	rp.publish(topic, atkGroup(t, forged.Marshal()))
	// (c) An oversized message.
	rp.publish(topic, atkOversized())
	// (d) Garbage, from a second genuine member.
	rp2, ids2 := tf.atkMember("attacker-2", nodes...)
	pids = pids[:0]
	for _, s := range nodes {
		pids = append(pids, ids2[s])
	}
	rp2.waitTopicPeers(topic, pids...)
	garbage := make([]byte, 300)
	_, _ = rand.Read(garbage)
	rp2.publish(topic, garbage)

	atkWaitFor(t, 10*time.Second, "every node counts each rejection", func() (bool, string) {
		for _, s := range nodes {
			got := tf.nodes[s].r.n.mesh.Rejections()
			for _, k := range []string{"gossip_bad_signature", "gossip_oversized", "gossip_malformed"} {
				if got[k] <= rej[s][k] {
					return false, fmt.Sprintf("%s: %s not counted: %v", s, k, got)
				}
			}
		}
		return true, ""
	})
	atkHoldFor(t, time.Second, "forged, oversized and garbage gossip", unchanged("forged gossip"))
	for _, s := range nodes {
		st := tf.atkStatus(s)
		if st.Frontier["clinic-a"] != aHead || len(st.Forks) != 0 {
			t.Fatalf("%s status after the attack: %+v", s, st)
		}
		if held, _ := tf.nodes[s].r.n.txlog.Held(); held != 1 {
			t.Fatalf("%s holds %d entries for a newer schema, want the marker only", s, held)
		}
	}
	// The family still works.
	tf.write("clinic-b", 1, "visits")
	tf.waitConverged(10*time.Second, nodes...)
}

// atkMove: clinic-a ran and synced; support moved it to a new data
// directory; the old machine, never told, wrote on.
type atkMove struct {
	tf       *testFamily
	oldID    peer.ID
	oldAfter []*wire.Signed // written by the old machine after the move
	head     uint64         // clinic-a's last seq before the move (its writes and the data keys it gave)
}

// atkSetupMove runs the move. With sameSecond the authority issues the new
// certificate in the same second as the old machine's last write before
// the move (certificates carry whole seconds).
func atkSetupMove(t testing.TB, sameSecond bool) *atkMove {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	tf.start("clinic-a")
	tf.start("clinic-b")
	tf.write("clinic-a", 4, "patients")
	tf.write("clinic-b", 2, "patients")
	tf.waitConverged(15*time.Second, "relay", "clinic-a", "clinic-b")
	relay := tf.nodes["relay"].r.n
	old := tf.nodes["clinic-a"].r.n
	ms := &atkMove{tf: tf, oldID: atkPeerID(t, tf.atkNodeKey("clinic-a"))}
	nw, req := tf.atkInitDir("clinic-a-new", "clinic-a")

	// The old machine's last write before the move (its head, ms.head).
	if sameSecond {
		atkWaitFor(t, 2*time.Second, "the start of a second", func() (bool, string) {
			return time.Now().Nanosecond() < 200e6, ""
		})
	}
	tf.waitKeysSettled(10*time.Second, "clinic-a", "clinic-b")
	tf.write("clinic-a", 1, "last-before-move")
	tf.waitConverged(10*time.Second, "relay", "clinic-a", "clinic-b")
	ms.head = old.txlog.Head("clinic-a").Seq
	if !sameSecond {
		last, err := old.txlog.Get("clinic-a", ms.head)
		if err != nil {
			t.Fatal(err)
		}
		atkWaitFor(t, 2*time.Second, "the next second", func() (bool, string) {
			return time.Now().Truncate(time.Second).After(atkHLCTime(last.HLC)), ""
		})
	}
	before := relay.mesh.Rejections()
	tf.atkMoveTo(nw, req, "relay")
	if sameSecond {
		last, _ := old.txlog.Get("clinic-a", ms.head)
		c, _ := family.ParseCertificate(nw.cert)
		if !c.IssuedAt.Before(atkHLCTime(last.HLC)) || time.Since(atkHLCTime(last.HLC)) > time.Second {
			t.Skipf("timing: could not issue the certificate (%s) in the second of the last write (%s)", c.IssuedAt, atkHLCTime(last.HLC))
		}
	}
	var res api.InstallResult
	if code := tf.nodes["relay"].r.call(t, "POST", "/v1/install", string(nw.cert), &res); code != 200 || !res.Changed {
		t.Fatalf("install the moved certificate at the relay: %d %+v", code, res)
	}
	atkWaitFor(t, 10*time.Second, "the move spreads and the old machine is cut off", func() (bool, string) {
		for _, s := range []string{"relay", "clinic-b"} {
			n := tf.nodes[s].r.n
			if st := n.roster.Status("clinic-a"); st.Epoch != 2 || st.State != family.StateCurrent {
				return false, fmt.Sprintf("%s: clinic-a at %+v", s, st)
			}
			if !(members{n}).Banned(ms.oldID) {
				return false, s + " does not ban the old machine"
			}
		}
		for _, pi := range old.mesh.Peers() {
			if pi.Connected {
				return false, "the old machine is still connected to " + pi.Member.Site
			}
		}
		return true, ""
	})
	if got := relay.mesh.Rejections(); got["membership_ended"] <= before["membership_ended"] {
		t.Fatalf("the relay did not count the ended membership: %v", got)
	}

	// The old machine was told of the move before it was cut off, so its API
	// refuses writes; writing straight into its log stands for an old machine
	// that never heard (cut off by a partition first).
	atkWriteDirect(t, old, "clinic-a", 3, "after-move")
	for seq := ms.head + 1; seq <= ms.head+3; seq++ {
		s, err := old.txlog.Get("clinic-a", seq)
		if err != nil {
			t.Fatal(err)
		}
		ms.oldAfter = append(ms.oldAfter, s)
	}
	// Sync Now on the old machine dials at once: the relay refuses it.
	tf.nodes["clinic-a"].r.call(t, "POST", "/v1/sync", nil, nil)
	atkWaitFor(t, 10*time.Second, "the relay refuses the old machine at the gate", func() (bool, string) {
		got := relay.mesh.Rejections()
		return got["banned_peer"] > before["banned_peer"], fmt.Sprint(got)
	})
	return ms
}

func atkHLCTime(v uint64) time.Time { return hlc.Timestamp(v).Time() }

// startNew starts the new machine connected and waits until it accepts a
// write; every refusal before must say catching_up. It returns the write.
func (ms *atkMove) startNew(t testing.TB) api.TxResult {
	tf := ms.tf
	tf.start("clinic-a-new")
	var tx struct {
		api.TxResult
		api.APIError
	}
	refused := 0
	atkWaitFor(t, 15*time.Second, "the new machine accepts a write", func() (bool, string) {
		tx.TxResult, tx.APIError = api.TxResult{}, api.APIError{}
		code := tf.nodes["clinic-a-new"].r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"new","fields":{"a":1}}]}`, &tx)
		if code == 200 {
			return true, ""
		}
		if code != 409 || tx.Code != "catching_up" {
			t.Fatalf("write at the new machine: %d %+v", code, tx.APIError)
		}
		refused++
		return false, fmt.Sprintf("%s (frontier %v)", tx.APIError.Error, tf.nodes["clinic-a-new"].r.n.txlog.Frontier())
	})
	t.Logf("the new machine refused %d writes while it caught up", refused)
	return tx.TxResult
}

// TestMovedSiteOldMachineIsFenced: the old machine of a moved site is refused
// at the gate, what it writes afterwards is quarantined wherever it lands,
// and the new machine catches up its site's log before it writes.
func TestMovedSiteOldMachineIsFenced(t *testing.T) {
	ms := atkSetupMove(t, false)
	tf := ms.tf
	relay := tf.nodes["relay"].r.n

	atkHoldFor(t, 1500*time.Millisecond, "the old machine's later entries reach nobody", func() (bool, string) {
		for _, s := range []string{"relay", "clinic-b"} {
			if got := tf.nodes[s].r.n.txlog.Frontier()["clinic-a"]; got != ms.head {
				return false, fmt.Sprintf("%s took them: clinic-a at %d", s, got)
			}
		}
		return true, ""
	})
	// The new machine, alone, refuses writes: it has not learned its log.
	tf.startWith("clinic-a-new", func(c *Config) { c.Bootstrap = nil })
	var apiErr api.APIError
	if code := tf.nodes["clinic-a-new"].r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":1}}]}`, &apiErr); code != 409 || apiErr.Code != "catching_up" {
		t.Fatalf("a write at the new machine before it caught up: %d %+v", code, apiErr)
	}
	tf.stop("clinic-a-new")

	// Connected, it catches up, then writes after the family's head.
	tx := ms.startNew(t)
	if tx.Seq != ms.head+1 {
		t.Fatalf("the new machine's first write got seq %d, want 6 (after the family's head)", tx.Seq)
	}
	nn := tf.nodes["clinic-a-new"].r.n
	if h := nn.txlog.Head("clinic-a"); h.Seq != ms.head+1 || h.Epoch != 2 {
		t.Fatalf("the new machine's head is seq %d epoch %d, want 6 at epoch 2", h.Seq, h.Epoch)
	}
	if e, _ := nn.txlog.Get("clinic-a", ms.head); e == nil || e.Hash != atkEntry(t, relay, ms.head).Hash {
		t.Fatal("the new machine's log does not continue the family's")
	}
	tf.waitConverged(10*time.Second, "relay", "clinic-b", "clinic-a-new")
	for _, s := range []string{"relay", "clinic-b", "clinic-a-new"} {
		n := tf.nodes[s].r.n
		if got := n.txlog.Frontier()["clinic-a"]; got != ms.head+1 {
			t.Fatalf("%s holds clinic-a up to %d", s, got)
		}
		if e, _ := n.txlog.Get("clinic-a", ms.head+1); e == nil || e.Epoch != 2 {
			t.Fatalf("%s: clinic-a#%d is not the new machine's", s, ms.head+1)
		}
		if len(n.txlog.Forks()) != 0 {
			t.Fatalf("%s reports a fork: %+v", s, n.txlog.Forks())
		}
	}
	// The old machine's later entries reach the relay anyway, as a catch-up
	// run from a member that had them (through the mesh's handler entry
	// point): the new machine's chain (epoch 2) is the site's, so they are
	// kept as evidence, not applied, and are no fork.
	dg := tf.digest("relay")
	_, err := relay.sync.Entries(context.Background(), atkPeerID(t, tf.atkNodeKey("clinic-b")), ms.oldAfter, false)
	if !errors.Is(err, txlog.ErrFenced) {
		t.Fatalf("the old machine's later entries at the relay: %v, want ErrFenced", err)
	}
	if q, _ := relay.txlog.Quarantined("clinic-a"); len(q) != 3 {
		t.Fatalf("the relay quarantined %d entries, want 3", len(q))
	}
	if got := relay.txlog.Frontier()["clinic-a"]; got != ms.head+1 || tf.digest("relay") != dg {
		t.Fatalf("the relay applied fenced entries: clinic-a at %d", got)
	}
	if fs := relay.txlog.Forks(); len(fs) != 0 {
		t.Fatalf("fenced entries made a fork: %+v", fs)
	}
}

// TestMovedSiteStaleEntriesDoNotForkTheSite: the old machine's entries
// written after the move, arriving after the new machine wrote the same
// seqs, are fenced (kept, not applied) like before: not a fork that stops
// the moved site.
func TestMovedSiteStaleEntriesDoNotForkTheSite(t *testing.T) {
	ms := atkSetupMove(t, false)
	tf := ms.tf
	if tx := ms.startNew(t); tx.Seq != ms.head+1 {
		e, _ := tf.nodes["relay"].r.n.txlog.Get("clinic-a", 6)
		t.Fatalf("the new machine's first write got seq %d (6: epoch %d key %q grants %d)", tx.Seq, e.Epoch, e.Key, len(e.Grants))
	}
	tf.waitConverged(10*time.Second, "relay", "clinic-b", "clinic-a-new")
	b := tf.nodes["clinic-b"].r.n
	_, err := b.sync.Entries(context.Background(), atkPeerID(t, tf.atkNodeKey("relay")), ms.oldAfter, false)
	forks := b.txlog.Forks()
	q, _ := b.txlog.Quarantined("clinic-a")
	t.Logf("the old machine's post-move entries at clinic-b: err=%v forks=%+v quarantined=%d", err, forks, len(q))
	if len(forks) != 0 || errors.Is(err, txlog.ErrForked) {
		t.Fatalf("fenced entries were taken for a fork of clinic-a: %v", err)
	}
	if !errors.Is(err, txlog.ErrFenced) || len(q) != 3 {
		t.Fatalf("want the 3 entries fenced and quarantined: err=%v quarantined=%d", err, len(q))
	}
	if got := b.txlog.Frontier()["clinic-a"]; got != ms.head+1 {
		t.Fatalf("clinic-b holds clinic-a up to %d", got)
	}
	// The moved site writes on.
	tf.write("clinic-a-new", 1, "visits")
	tf.waitConverged(10*time.Second, "relay", "clinic-b", "clinic-a-new")
}

// TestMoveRightAfterAWriteKeepsThatWrite: a write the old machine made and
// synced just before the move (in the same second as the new certificate)
// is part of the site's log: the new machine catches up to it and writes on.
func TestMoveRightAfterAWriteKeepsThatWrite(t *testing.T) {
	ms := atkSetupMove(t, true)
	tf := ms.tf
	nwDone := make(chan struct{})
	var tx api.TxResult
	var failed string
	func() {
		defer close(nwDone)
		tf.start("clinic-a-new")
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			var r struct {
				api.TxResult
				api.APIError
			}
			if code := tf.nodes["clinic-a-new"].r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"new","fields":{"a":1}}]}`, &r); code == 200 {
				tx = r.TxResult
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		nn := tf.nodes["clinic-a-new"].r.n
		q, _ := nn.txlog.Quarantined("clinic-a")
		failed = fmt.Sprintf("the new machine never accepted a write: it holds clinic-a up to %d (the family: %d), quarantined %d of its own site's pre-move entries", nn.txlog.Frontier()["clinic-a"], ms.head, len(q))
	}()
	<-nwDone
	nn := tf.nodes["clinic-a-new"].r.n
	if failed == "" && tx.Seq != ms.head+1 {
		q, _ := nn.txlog.Quarantined("clinic-a")
		failed = fmt.Sprintf("the new machine quarantined %d of its site's pre-move entries and wrote seq %d (the family already holds a different clinic-a#%d)", len(q), tx.Seq, tx.Seq)
		// What the family makes of it.
		relay := tf.nodes["relay"].r.n
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && len(relay.txlog.Forks()) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		failed += fmt.Sprintf("; the relay then reports forks %+v", relay.txlog.Forks())
	}
	if failed != "" {
		t.Fatal(failed)
	}
	tf.waitConverged(10*time.Second, "relay", "clinic-b", "clinic-a-new")
	for _, s := range []string{"relay", "clinic-b", "clinic-a-new"} {
		if fs := tf.nodes[s].r.n.txlog.Forks(); len(fs) != 0 {
			t.Fatalf("%s reports a fork: %+v", s, fs)
		}
	}
}

func atkEntry(t testing.TB, n *Node, seq uint64) *wire.Signed {
	t.Helper()
	e, err := n.txlog.Get("clinic-a", seq)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// atkTx is one acknowledged write.
type atkTx struct {
	by   string
	seq  uint64
	hash string
}

// TestClonedDataDirForkIsDetected: two copies of one site's data directory
// (same key, same machine ID) both write: every node reports the fork within
// 10 seconds, and every acknowledged entry of either copy is kept.
func TestClonedDataDirForkIsDetected(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	tf.start("clinic-a")
	tf.start("clinic-b")
	tf.write("clinic-a", 3, "patients")
	tf.write("clinic-b", 2, "patients")
	tf.waitConverged(15*time.Second, "relay", "clinic-a", "clinic-b")
	tf.stop("clinic-a")
	clone := &famNode{site: "clinic-a", data: filepath.Join(t.TempDir(), "clone"), cert: tf.nodes["clinic-a"].cert}
	atkCopyDir(t, tf.nodes["clinic-a"].data, clone.data)
	tf.nodes["clinic-a-clone"] = clone
	tf.start("clinic-a")
	tf.start("clinic-a-clone")
	copies := []string{"clinic-a", "clinic-a-clone"}
	all := []string{"relay", "clinic-b", "clinic-a", "clinic-a-clone"}
	atkWaitFor(t, 10*time.Second, "both copies are online", func() (bool, string) {
		for _, c := range copies {
			if st := tf.atkStatus(c); st.Peers < 1 || !st.Writable {
				return false, fmt.Sprintf("%s: peers %d writable %v", c, st.Peers, st.Writable)
			}
		}
		return true, ""
	})

	var acked []atkTx
	for i := range 4 {
		for _, c := range copies {
			var r struct {
				api.TxResult
				api.APIError
			}
			body := fmt.Sprintf(`{"ops":[{"op":"put","table":"visits","key":"%s-%d","fields":{"i":%d}}]}`, c, i, i)
			if code := tf.nodes[c].r.call(t, "POST", "/v1/transactions", body, &r); code == 200 {
				acked = append(acked, atkTx{by: c, seq: r.Seq, hash: r.Hash})
			} else {
				t.Logf("%s refused write %d: %d %s %s", c, i, code, r.Code, r.APIError.Error)
			}
		}
	}
	start := time.Now()
	t.Logf("acknowledged: %v", acked)
	ok, detail := atkPoll(10*time.Second, func() (bool, string) {
		for _, s := range all {
			st := tf.atkStatus(s)
			if len(st.Forks) == 0 {
				detail := ""
				for _, o := range all {
					n := tf.nodes[o].r.n
					h := n.txlog.Head("clinic-a")
					ev, _ := n.txlog.Evidence("clinic-a")
					q, _ := n.txlog.Quarantined("clinic-a")
					detail += fmt.Sprintf("\n  %s: clinic-a head %d %s, forks %d, evidence %d, quarantined %d, peers %d, catch-ups ok %d failed %d, rejections %v", o, h.Seq, h.Hash.Short(), len(n.txlog.Forks()), len(ev), len(q), tf.atkStatus(o).Peers, n.counters.catchupOK.Load(), n.counters.catchupFailed.Load(), n.mesh.Rejections())
				}
				return false, s + " shows no fork" + detail
			}
			found := false
			for _, w := range st.Warnings {
				found = found || strings.Contains(w, "fork")
			}
			if !found {
				return false, s + " has no fork warning"
			}
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("no fork reported 10s after both copies wrote: %s", detail)
	}
	t.Logf("every node showed the fork %s after the writes", time.Since(start).Round(time.Millisecond))

	// No acknowledged entry is lost: each is in the log, the evidence or the
	// quarantine of the relay (which stores and forwards every log).
	has := func(n *Node, a atkTx) bool {
		if e, err := n.txlog.Get("clinic-a", a.seq); err == nil && e.Hash.String() == a.hash {
			return true
		}
		ev, _ := n.txlog.Evidence("clinic-a")
		q, _ := n.txlog.Quarantined("clinic-a")
		for _, e := range append(ev, q...) {
			if e.Hash.String() == a.hash {
				return true
			}
		}
		return false
	}
	atkWaitFor(t, 10*time.Second, "the relay keeps every acknowledged entry", func() (bool, string) {
		relay := tf.nodes["relay"].r.n
		for _, a := range acked {
			if !has(relay, a) {
				return false, fmt.Sprintf("the relay lacks %s's clinic-a#%d %.12s", a.by, a.seq, a.hash)
			}
		}
		return true, ""
	})
	for _, a := range acked {
		if !has(tf.nodes[a.by].r.n, a) {
			t.Fatalf("%s lost its own clinic-a#%d", a.by, a.seq)
		}
	}
	// The copies may write no more.
	for _, c := range copies {
		var e api.APIError
		if code := tf.nodes[c].r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{}}]}`, &e); code == 200 {
			t.Logf("note: %s still accepts writes after the fork", c)
		}
	}
}

// TestVersionMismatchIsShown: members on different versions each say so.
func TestVersionMismatchIsShown(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.startWith("relay", func(c *Config) { c.Version = "1.0.0" })
	tf.startWith("clinic-a", func(c *Config) { c.Version = "1.1.0" })
	want := map[string][2]string{"relay": {"1.0.0", "1.1.0"}, "clinic-a": {"1.1.0", "1.0.0"}}
	atkWaitFor(t, 10*time.Second, "both report the mismatch", func() (bool, string) {
		for s, v := range want {
			st := tf.atkStatus(s)
			if st.Version != v[0] || !st.VersionMismatch {
				return false, fmt.Sprintf("%s: version %q mismatch %v", s, st.Version, st.VersionMismatch)
			}
			found := false
			for _, w := range st.Warnings {
				found = found || strings.Contains(w, "systems are on different versions") && strings.Contains(w, v[1])
			}
			if !found {
				return false, fmt.Sprintf("%s warnings: %q", s, st.Warnings)
			}
			var peers struct {
				Peers []api.PeerJSON `json:"peers"`
			}
			if code := tf.nodes[s].r.call(t, "GET", "/v1/peers", nil, &peers); code != 200 {
				return false, fmt.Sprintf("%s peers: HTTP %d", s, code)
			}
			if len(peers.Peers) != 1 || peers.Peers[0].Version != v[1] {
				return false, fmt.Sprintf("%s peers: %+v", s, peers.Peers)
			}
		}
		return true, ""
	})
}

// TestNewerSchemaEntryIsStoredNotApplied: an entry of a newer schema (from a
// site already upgraded) is stored and forwarded by catch-up, held, and
// never applied.
func TestNewerSchemaEntryIsStoredNotApplied(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("clinic-new", "site") // runs a newer ppsync: never started here
	tf.addKnowing("relay", "relay", "clinic-new")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	tf.start("clinic-a")
	tf.start("clinic-b")
	tf.write("clinic-a", 3, "patients")
	tf.waitConverged(15*time.Second, "relay", "clinic-a", "clinic-b")
	nodes := []string{"relay", "clinic-a", "clinic-b"}
	digests := map[string]string{}
	for _, s := range nodes {
		digests[s] = tf.digest(s)
	}
	relay := tf.nodes["relay"].r.n
	e := atkSignEntry(t, tf.auth.FamilyID(), "clinic-new", 1, 1, wire.Hash{}, wire.SchemaVersion+1, tf.atkNodeKey("clinic-new"), "patients", "from-the-future")
	res, err := relay.txlog.AppendRemote(context.Background(), e)
	if err != nil || res.Appended != 1 {
		t.Fatalf("append at the relay: %+v %v", res, err)
	}
	atkWaitFor(t, 10*time.Second, "the entry is forwarded by catch-up", func() (bool, string) {
		for _, s := range nodes {
			if f := tf.nodes[s].r.n.txlog.Frontier(); f["clinic-new"] != 1 {
				return false, fmt.Sprintf("%s: %v", s, f)
			}
		}
		return true, ""
	})
	for _, s := range nodes {
		n := tf.nodes[s].r.n
		if held, err := n.txlog.Held(); err != nil || held != 1 {
			t.Fatalf("%s holds %d entries for a newer schema (%v), want 1", s, held, err)
		}
		if d := tf.digest(s); d != digests[s] {
			t.Fatalf("%s applied (part of) a newer-schema entry: the digest changed", s)
		}
		got, err := n.txlog.Get("clinic-new", 1)
		if err != nil || got.Hash != e.Hash {
			t.Fatalf("%s stores %v, %v", s, got, err)
		}
		var apiErr api.APIError
		want := 404
		if s == "relay" {
			want = 409 // a relay holds no readable data at all
		}
		if code := tf.nodes[s].r.call(t, "GET", "/v1/records/patients/from-the-future", nil, &apiErr); code != want {
			t.Fatalf("%s shows the newer-schema record: HTTP %d", s, code)
		}
		if st := tf.atkStatus(s); st.Held != 1 {
			t.Fatalf("%s status held = %d", s, st.Held)
		}
	}
	// Sync goes on around it.
	tf.write("clinic-b", 2, "visits")
	tf.waitConverged(10*time.Second, nodes...)
}

// atkWriteDirect commits count transactions straight into n's log and queues
// them for gossip, bypassing the API's write gate.
func atkWriteDirect(t testing.TB, n *Node, site string, count int, table string) {
	t.Helper()
	txs := make([][]wire.Op, count)
	for i := range txs {
		txs[i] = []wire.Op{{Kind: wire.OpPut, Table: table, Key: fmt.Sprintf("%s-direct-%d", site, i), Fields: map[string]any{"i": int64(i)}}}
	}
	_, err := n.txlog.WriteMany(context.Background(), txs)
	if err != nil {
		t.Fatal(err)
	}
}

// TestForgedCatchUpEntryIsShownAndCounted: entries a member hands over that
// the log refuses (here clinic-a's next entry signed with another key,
// arriving as a catch-up run) are counted in /metrics by reason and shown in
// the activity feed as "rejected"; the log is unchanged.
func TestForgedCatchUpEntryIsShownAndCounted(t *testing.T) {
	tf, _, b := relayAndTwoSites(t)
	tf.write("clinic-a", 1, "patients")
	tf.waitConverged(10*time.Second, "relay", "clinic-a", "clinic-b")
	head := b.n.txlog.Head("clinic-a")
	forged := atkSignEntry(t, tf.auth.FamilyID(), "clinic-a", 1, head.Seq+1, head.Hash, wire.SchemaVersion, atkNewKey(t), "patients", "forged")
	from := tf.nodes["clinic-a"].r.n.mesh.ID()
	if _, err := b.n.sync.Entries(context.Background(), from, []*wire.Signed{forged}, false); !errors.Is(err, wire.ErrSignature) {
		t.Fatalf("Entries of a forged run: %v, want a signature error", err)
	}
	if got := b.n.counters.rejectedSignature.Load(); got != 1 {
		t.Fatalf("rejected (signature) = %d, want 1", got)
	}
	var act map[string][]api.Event
	b.call(t, "GET", "/v1/activity?limit=20", nil, &act)
	found := false
	for _, ev := range act["events"] {
		if ev.Type == EvRejected && strings.Contains(string(ev.Data), `"site":"clinic-a"`) && strings.Contains(string(ev.Data), from.String()) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no rejected event in the activity feed: %+v", act["events"])
	}
	metrics := metricsText(t, b)
	if !strings.Contains(metrics, `ppsync_rejections_total{reason="entry-signature"} 1`) {
		t.Fatalf("metrics lack the refused entry:\n%s", metrics)
	}
	if b.n.txlog.Head("clinic-a") != head {
		t.Fatal("the forged entry changed the log")
	}
}

// Commit groups from a member, by catch-up and by gossip: a group whose
// signed end is forged, whose unsigned middle entry was altered, that was
// spliced from two branches of the site, or that has no signed end is
// refused and counted, nothing of it is stored, and no fork is recorded; a
// fork proof made of such runs proves nothing.
func TestForgedGroupsAreRefused(t *testing.T) {
	tf, _, b := relayAndTwoSites(t)
	tf.write("clinic-a", 2, "patients")
	tf.waitConverged(10*time.Second, "relay", "clinic-a", "clinic-b")
	head := b.n.txlog.Head("clinic-a")
	famID, aKey := tf.auth.FamilyID(), tf.atkNodeKey("clinic-a")
	grp := func(key ed25519.PrivateKey, tag string, n int) []*wire.Signed {
		out := make([]*wire.Signed, 0, n)
		prev := head.Hash
		for i := range n {
			s := atkSignEntry(t, famID, "clinic-a", 1, head.Seq+1+uint64(i), prev, wire.SchemaVersion, key, "patients", fmt.Sprint(tag, i))
			if i < n-1 {
				s.Sig = nil
			}
			out = append(out, s)
			prev = s.Hash
		}
		return out
	}
	genuine, other := grp(aKey, "main", 3), grp(aKey, "clone", 3) // two copies of the site
	altered := slices.Clone(genuine)
	altered[1] = grp(aKey, "altered", 2)[1]
	altered[1].Sig = nil
	from := tf.nodes["clinic-a"].r.n.mesh.ID()
	rejected := func() uint64 { return b.n.counters.rejectedSignature.Load() + b.n.counters.rejectedChain.Load() }
	for _, tc := range []struct {
		name   string
		run    []*wire.Signed
		gossip bool
		want   error
	}{
		{"forged group end", grp(atkNewKey(t), "forged", 3), false, wire.ErrSignature},
		{"altered unsigned middle", altered, false, txlog.ErrChain},
		{"spliced from two branches", []*wire.Signed{genuine[0], genuine[1], other[2]}, false, txlog.ErrChain},
		{"no signed end", genuine[:2], false, wire.ErrSignature},
		{"gossiped unsigned entry", genuine[:1], true, wire.ErrSignature},
		{"gossiped forged group", grp(atkNewKey(t), "forged", 3), true, wire.ErrSignature},
	} {
		before := rejected()
		if _, err := b.n.sync.Entries(context.Background(), from, tc.run, tc.gossip); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if rejected() != before+1 {
			t.Errorf("%s: not counted as a refusal", tc.name)
		}
		if h := b.n.txlog.Head("clinic-a"); h != head {
			t.Fatalf("%s moved clinic-a's head to %d", tc.name, h.Seq)
		}
		if _, err := b.n.txlog.Get("clinic-a", head.Seq+1); !errors.Is(err, txlog.ErrNotFound) {
			t.Fatalf("%s: an entry of the refused run is stored: %v", tc.name, err)
		}
		if q, _ := b.n.txlog.Quarantined("clinic-a"); len(q) > 0 || len(b.n.txlog.Forks()) > 0 {
			t.Fatalf("%s: quarantined %d, forks %v", tc.name, len(q), b.n.txlog.Forks())
		}
	}
	// Fork proofs whose second branch is spliced (the clone's first entry,
	// then the genuine group's signed end) or has no signed end.
	b.n.sync.ForkProof(from, genuine, []*wire.Signed{other[0], genuine[1], genuine[2]})
	b.n.sync.ForkProof(from, genuine, other[:2])
	if len(b.n.txlog.Forks()) > 0 {
		t.Fatalf("a proof of spliced or unsigned runs recorded a fork: %v", b.n.txlog.Forks())
	}
	// The family still works.
	tf.write("clinic-a", 1, "visits")
	tf.waitConverged(10*time.Second, "relay", "clinic-a", "clinic-b")
}
