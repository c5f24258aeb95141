package mesh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// oversizedEnvelope is a well-formed envelope whose body is larger than
// wire.MaxEntryBytes, yet under gossip's message size limit.
func oversizedEnvelope() []byte {
	body := bytes.Repeat([]byte{'x'}, wire.MaxEntryBytes+1024)
	var b []byte
	b = append(b, 0x82, 0xa1, 'b', 0xc6)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	b = append(b, 0xa1, 's', 0xc4, 64)
	return append(b, make([]byte, 64)...)
}

// The groups topic's validator, called directly: every rejection has its
// reason, and only a member's well-formed run of this family that chains and
// ends at an entry signed by its site's key passes (and is handed over
// decoded).
// validationCase is one message given to a validator and what it must say.
type validationCase struct {
	name   string
	from   peer.ID
	data   []byte
	want   pubsub.ValidationResult
	reason string
}

func TestValidateGroup(t *testing.T) {
	ia, ib, ic := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	good := signChain(t, testFamily, ib, 1, wire.Hash{}, 1)[0]
	other := signChain(t, "0therfamily", ib, 1, wire.Hash{}, 1)[0]
	stranger := signChain(t, testFamily, ic, 1, wire.Hash{}, 1)[0] // site c has no key in A's roster
	forged := signChain(t, testFamily, identity{site: "b", siteKey: ic.siteKey}, 1, wire.Hash{}, 1)[0]
	grp := groupChain(t, testFamily, ib, 1, wire.Hash{}, 4) // #1..#3 unsigned, #4 signed
	// A group whose end is signed by another key.
	forgedEnd := groupChain(t, testFamily, identity{site: "b", siteKey: ic.siteKey}, 1, wire.Hash{}, 3)
	// A group whose unsigned middle entry was altered: the chain breaks.
	altered := slices.Clone(grp)
	e := grp[1].Entry
	e.HLC++
	mid, err := wire.Sign(&e, ib.siteKey)
	if err != nil {
		t.Fatal(err)
	}
	mid.Sig = nil
	altered[1] = mid
	// A group spliced from two branches: the first half of one, the signed
	// end of another that parted at #2.
	alt := branchOf(t, ib, grp[0], 3)
	spliced := []*wire.Signed{grp[0], grp[1], alt[1], alt[2]}
	// Unsigned to the end: nothing authenticates it.
	unsigned := groupChain(t, testFamily, ib, 1, wire.Hash{}, 3)
	unsigned[2] = withoutSig(unsigned[2])

	for _, tc := range []validationCase{
		{"valid", ib.id, groupMsg(t, good), pubsub.ValidationAccept, ""},
		{"valid group", ib.id, groupMsg(t, grp...), pubsub.ValidationAccept, ""},
		{"own", ia.id, []byte("anything"), pubsub.ValidationAccept, ""},
		{"non-member", ic.id, groupMsg(t, good), pubsub.ValidationReject, "gossip_from_non_member"},
		{"malformed", ib.id, []byte("\x82\xa1bnot an envelope"), pubsub.ValidationReject, "gossip_malformed"},
		{"empty", ib.id, groupMsg(t), pubsub.ValidationReject, "gossip_malformed"},
		{"oversized", ib.id, oversizedEnvelope(), pubsub.ValidationReject, "gossip_oversized"},
		{"other family", ib.id, groupMsg(t, other), pubsub.ValidationReject, "gossip_wrong_family"},
		{"unknown signer", ib.id, groupMsg(t, stranger), pubsub.ValidationIgnore, "gossip_unknown_signer"}, // not held against the forwarder
		{"bad signature", ib.id, groupMsg(t, forged), pubsub.ValidationReject, "gossip_bad_signature"},
		{"forged group end", ib.id, groupMsg(t, forgedEnd...), pubsub.ValidationReject, "gossip_bad_signature"},
		{"altered middle", ib.id, groupMsg(t, altered...), pubsub.ValidationReject, "gossip_bad_chain"},
		{"spliced", ib.id, groupMsg(t, spliced...), pubsub.ValidationReject, "gossip_bad_chain"},
		{"no signed end", ib.id, groupMsg(t, unsigned...), pubsub.ValidationReject, "gossip_bad_signature"},
	} {
		before := a.m.Rejections()
		msg := &pubsub.Message{Message: &pb.Message{Data: tc.data}}
		g := &gossip{}
		if got := a.m.validateGroup(g, tc.from, msg); got != tc.want {
			t.Errorf("%s: validation %v, want %v", tc.name, got, tc.want)
		}
		// A member's accepted message is held until the handler took it;
		// nothing else is.
		held := int64(0)
		if tc.want == pubsub.ValidationAccept && tc.from != ia.id {
			held = int64(len(tc.data))
		}
		if g.held.Load() != held {
			t.Errorf("%s: %d bytes of gossip held, want %d", tc.name, g.held.Load(), held)
		}
		after := a.m.Rejections()
		for reason, n := range after {
			want := before[reason]
			if reason == tc.reason {
				want++
			}
			if n != want {
				t.Errorf("%s: %d rejections %q, want %d", tc.name, n, reason, want)
			}
		}
		if tc.reason != "" && after[tc.reason] == 0 {
			t.Errorf("%s: not counted as %q", tc.name, tc.reason)
		}
		if tc.name == "valid group" {
			run, ok := msg.ValidatorData.([]*wire.Signed)
			if !ok || len(run) != 4 || run[3].Hash != grp[3].Hash || run[0].IsSigned() {
				t.Errorf("valid group: validator data %v, want the decoded run", msg.ValidatorData)
			}
		}
	}

	// A node holding gossipHeldBytes of accepted gossip that its handler has
	// not taken yet (it stores slower than its members write) ignores the
	// next message, without blaming the forwarder: catch-up brings it.
	busy := &gossip{}
	busy.held.Store(gossipHeldBytes)
	before := a.m.Rejections()["gossip_receiver_busy"]
	msg := &pubsub.Message{Message: &pb.Message{Data: groupMsg(t, good)}}
	if got := a.m.validateGroup(busy, ib.id, msg); got != pubsub.ValidationIgnore || msg.ValidatorData != nil {
		t.Errorf("receiver busy: validation %v with data %v, want ignored, not decoded", got, msg.ValidatorData)
	}
	if a.m.Rejections()["gossip_receiver_busy"] != before+1 || busy.held.Load() != gossipHeldBytes {
		t.Errorf("receiver busy: counted %d, held %d; want counted once, nothing more held", a.m.Rejections()["gossip_receiver_busy"]-before, busy.held.Load())
	}
	// Once the handler took what was held, the next one passes.
	busy.release(gossipHeldBytes)
	if got := a.m.validateGroup(busy, ib.id, msg); got != pubsub.ValidationAccept {
		t.Errorf("after the held gossip was taken: validation %v, want accepted", got)
	}

	// At a relay every family's held gossip counts against the host's bound
	// as well: a family that holds nothing is still refused while the host's
	// families together hold hostGossipHeldBytes (counted apart from its own
	// bound), and taken again once they stored theirs.
	var host atomic.Int64
	host.Store(hostGossipHeldBytes)
	idle := &gossip{hostHeld: &host}
	beforeHost := a.m.Rejections()["gossip_host_busy"]
	msg = &pubsub.Message{Message: &pb.Message{Data: groupMsg(t, good)}}
	if got := a.m.validateGroup(idle, ib.id, msg); got != pubsub.ValidationIgnore || msg.ValidatorData != nil {
		t.Errorf("host busy: validation %v with data %v, want ignored, not decoded", got, msg.ValidatorData)
	}
	if a.m.Rejections()["gossip_host_busy"] != beforeHost+1 || idle.held.Load() != 0 || host.Load() != hostGossipHeldBytes {
		t.Errorf("host busy: counted %d, family holds %d, host %d; want counted once, nothing more held", a.m.Rejections()["gossip_host_busy"]-beforeHost, idle.held.Load(), host.Load())
	}
	host.Add(-gossipHeldBytes) // other families stored theirs
	n := int64(len(msg.Data))
	if got := a.m.validateGroup(idle, ib.id, msg); got != pubsub.ValidationAccept {
		t.Errorf("after the host's gossip was taken: validation %v, want accepted", got)
	}
	if idle.held.Load() != n || host.Load() != hostGossipHeldBytes-gossipHeldBytes+n {
		t.Errorf("accepted: family holds %d, host %d; want %d and %d", idle.held.Load(), host.Load(), n, hostGossipHeldBytes-gossipHeldBytes+n)
	}
	idle.release(int(n))
	if idle.held.Load() != 0 || host.Load() != hostGossipHeldBytes-gossipHeldBytes {
		t.Errorf("released: family holds %d, host %d", idle.held.Load(), host.Load())
	}
}

// A family's gossip that ends (it sleeps, or the family is removed) while
// messages are still held gives them back to the host: the messages in
// pubsub's queues are dropped without a release, and the host would
// otherwise count them for ever, refusing every family's gossip in the end.
func TestEndedGossipGivesItsHeldBytesBack(t *testing.T) {
	var host atomic.Int64
	host.Store(1000) // other families' gossip
	g := &gossip{hostHeld: &host}
	for range 3 {
		if why := g.hold(100); why != "" {
			t.Fatalf("hold refused by the %s bound", why)
		}
	}
	g.release(100)
	if g.held.Load() != 200 || host.Load() != 1200 {
		t.Fatalf("family holds %d, host %d; want 200 and 1200", g.held.Load(), host.Load())
	}
	g.retire()
	if host.Load() != 1000 {
		t.Errorf("after the gossip ended the host counts %d, want the other families' 1000", host.Load())
	}
	g.release(100) // a late release (pubsub's tracer) no longer counts on the host
	g.retire()     // ending twice gives back nothing more
	if host.Load() != 1000 || g.held.Load() != 100 {
		t.Errorf("after a late release: host %d, family %d; want 1000 and 100", host.Load(), g.held.Load())
	}
	if why := g.hold(10); why == "" || host.Load() != 1000 {
		t.Errorf("an ended gossip took a message (refused by %q), host %d", why, host.Load())
	}
}

// branchOf writes n entries of ident's site after base, different from any
// other chain (a second copy of the site), as one group.
func branchOf(t testing.TB, ident identity, base *wire.Signed, n int) []*wire.Signed {
	t.Helper()
	out := make([]*wire.Signed, 0, n)
	prev := base.Hash
	for i := range n {
		seq := base.Seq + 1 + uint64(i)
		e := &wire.Entry{Family: base.Family, Site: ident.site, Epoch: 1, Seq: seq, Prev: prev, HLC: seq<<16 + 1, Schema: wire.SchemaVersion,
			Ops: []wire.Op{{Kind: wire.OpDelete, Table: "patients", Key: fmt.Sprintf("clone-%d", seq)}}}
		s, err := wire.Sign(e, ident.siteKey)
		if err != nil {
			t.Fatal(err)
		}
		if i < n-1 {
			s.Sig = nil
		}
		out = append(out, s)
		prev = s.Hash
	}
	return out
}

func withoutSig(s *wire.Signed) *wire.Signed {
	c := *s
	c.Sig = nil
	return &c
}

// GroupMessages cuts a committed run at its signed entries: whole groups
// per message, a group too large for one message left to catch-up, and
// nothing after the last signed entry.
func TestGroupMessages(t *testing.T) {
	ia := newIdentity(t, "a")
	run := groupChain(t, testFamily, ia, 1, wire.Hash{}, 3)
	run = append(run, groupChain(t, testFamily, ia, 4, run[2].Hash, 2)...)
	msgs := GroupMessages(run)
	if len(msgs) != 1 || msgs[0].Entries != 5 {
		t.Fatalf("two small groups: %d messages, want one of 5 entries", len(msgs))
	}
	tail := withoutSig(run[4])
	msgs = GroupMessages(append(slices.Clone(run[:4]), tail))
	if len(msgs) != 1 || msgs[0].Entries != 3 {
		t.Fatalf("an unsigned tail: %+v, want one message of the first group", msgs)
	}
	// A group too large for one message: only the groups around it go.
	big := make([]*wire.Signed, 0, 40)
	prev := run[4].Hash
	for i := range 40 {
		seq := uint64(6 + i)
		e := &wire.Entry{Family: testFamily, Site: "a", Epoch: 1, Seq: seq, Prev: prev, HLC: seq << 16, Schema: wire.SchemaVersion,
			Ops: []wire.Op{{Kind: wire.OpPut, Table: "t", Key: "k", Fields: map[string]any{"v": strings.Repeat("x", 20000)}}}}
		s, err := wire.Sign(e, ia.siteKey)
		if err != nil {
			t.Fatal(err)
		}
		if i < 39 {
			s.Sig = nil
		}
		big = append(big, s)
		prev = s.Hash
	}
	after := groupChain(t, testFamily, ia, 46, prev, 2)
	all := append(append(slices.Clone(run), big...), after...)
	msgs = GroupMessages(all)
	if len(msgs) != 2 || msgs[0].Entries != 5 || msgs[1].Entries != 2 {
		t.Fatalf("with a large group: %d messages, want the 5 before it and the 2 after it", len(msgs))
	}
	for _, m := range msgs {
		if len(m.Data) > maxGossipMessage {
			t.Errorf("a message of %d bytes, the limit is %d", len(m.Data), maxGossipMessage)
		}
	}
}

// The heartbeat topic's validator, called directly: a heartbeat must be
// signed by the member it names.
func TestValidateHeartbeat(t *testing.T) {
	ia, ib, ic := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c")
	a := startNode(t, ia, newFamily(testFamily, ia, ib, ic), nil, nil)
	sign := func(author peer.ID, key ed25519.PrivateKey, hb Heartbeat) []byte {
		body, err := wire.Marshal(&hb)
		if err != nil {
			t.Fatal(err)
		}
		b, err := wire.Marshal(&signedHeartbeat{Body: body, Peer: author.String(),
			Sig: ed25519.Sign(key, append([]byte(heartbeatDomain), body...))})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hb := Heartbeat{Site: "b", Frontier: map[string]uint64{"b": 7}}
	outsider := newIdentity(t, "x")

	for _, tc := range []validationCase{
		{"valid", ib.id, sign(ib.id, ib.key, hb), pubsub.ValidationAccept, ""},
		{"forwarded", ic.id, sign(ib.id, ib.key, hb), pubsub.ValidationAccept, ""}, // C relays B's heartbeat
		{"forwarder not a member", outsider.id, sign(ib.id, ib.key, hb), pubsub.ValidationReject, "heartbeat_non_member"},
		{"author not a member", ib.id, sign(outsider.id, outsider.key, hb), pubsub.ValidationIgnore, "heartbeat_unknown_author"},
		{"speaks for another", ib.id, sign(ic.id, ib.key, hb), pubsub.ValidationReject, "heartbeat_bad_signature"},
		{"malformed", ib.id, []byte{0xc1}, pubsub.ValidationReject, "heartbeat_malformed"},
		{"oversized", ib.id, make([]byte, maxHeartbeat+1), pubsub.ValidationReject, "heartbeat_oversized"},
	} {
		before := a.m.Rejections()
		msg := &pubsub.Message{Message: &pb.Message{Data: tc.data}}
		if got := a.m.validateHeartbeat(context.Background(), tc.from, msg); got != tc.want {
			t.Errorf("%s: validation %v, want %v", tc.name, got, tc.want)
		}
		if tc.reason != "" && a.m.Rejections()[tc.reason] != before[tc.reason]+1 {
			t.Errorf("%s: not counted as %q", tc.name, tc.reason)
		}
		if tc.want == pubsub.ValidationAccept {
			vh, ok := msg.ValidatorData.(verifiedHeartbeat)
			if !ok || vh.from != ib.id || vh.hb.Site != "b" || vh.hb.Frontier["b"] != 7 {
				t.Errorf("%s: validator data %+v, want B's heartbeat", tc.name, msg.ValidatorData)
			}
		}
	}
}

// End to end over gossip: A's valid entries reach B's handler as gossip,
// unchanged; bad messages are rejected by B's validator, counted, and never
// delivered; a forged heartbeat never reaches B's handler.
//
// Each bad message comes from a different member: B's peer score charges
// the forwarder 100 times the square of its invalid messages, so a second
// invalid message from one member takes it below the graylist threshold and
// B ignores it for minutes.
func TestGossipDeliversValidEntriesAndRejectsOthers(t *testing.T) {
	ia, ib, ic, id := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c"), newIdentity(t, "d")
	all := []identity{ia, ib, ic, id}
	a := startNode(t, ia, newFamily(testFamily, all...), nil, nil)
	b := startNode(t, ib, newFamily(testFamily, all...), nil, nil)
	c := startNode(t, ic, newFamily(testFamily, all...), nil, nil)
	d := startNode(t, id, newFamily(testFamily, all...), nil, nil)
	for _, x := range []*testNode{a, c, d} {
		connect(t, x, b)
		waitGossip(t, x, b)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	chain := signChain(t, testFamily, ia, 1, wire.Hash{}, 2)
	if err := a.m.Publish(ctx, groupMsg(t, chain[0])); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		from   *testNode
		env    []byte
		reason string
	}{
		{a, groupMsg(t, signChain(t, "0therfamily", ia, 1, wire.Hash{}, 1)[0]), "gossip_wrong_family"},
		{c, []byte("not an envelope at all"), "gossip_malformed"},
		{d, oversizedEnvelope(), "gossip_oversized"},
	}
	for _, m := range bad {
		if err := m.from.m.Publish(ctx, m.env); err != nil {
			t.Fatal(err)
		}
	}
	// A heartbeat that claims to come from A, signed with C's key.
	body, err := wire.Marshal(&Heartbeat{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := wire.Marshal(&signedHeartbeat{Body: body, Peer: ia.id.String(), Sig: ed25519.Sign(ic.key, append([]byte(heartbeatDomain), body...))})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.m.gossip.Load().hbt.Publish(ctx, forged); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Publish(ctx, groupMsg(t, chain[1])); err != nil {
		t.Fatal(err)
	}

	for _, m := range bad {
		waitCount(t, b.m, m.reason, 1)
	}
	waitCount(t, b.m, "heartbeat_bad_signature", 1)
	// Runs that pile up while one is stored are delivered together, joined
	// when they follow each other (ingestEntries): count entries, not calls.
	delivered := func() []*wire.Signed {
		var out []*wire.Signed
		for _, c := range b.h.entryCalls() {
			out = append(out, c.run...)
		}
		return out
	}
	waitFor(t, "B receives both valid entries", func() bool { return len(delivered()) >= 2 })

	for _, c := range b.h.entryCalls() {
		if !c.gossip || c.from != ia.id {
			t.Fatalf("entry call gossip=%v from %s, want gossiped entries from A", c.gossip, c.from)
		}
	}
	got := map[uint64]*wire.Signed{}
	for _, e := range delivered() {
		if got[e.Seq] != nil {
			t.Fatalf("entry a#%d delivered twice", e.Seq)
		}
		got[e.Seq] = e
	}
	if len(got) != 2 {
		t.Fatalf("B's handler got entries %v, want a#1 and a#2", slices.Collect(maps.Keys(got)))
	}
	for _, want := range chain {
		e := got[want.Seq]
		if e == nil || e.Hash != want.Hash || !bytes.Equal(e.Marshal(), want.Marshal()) || e.Site != "a" || e.Family != testFamily {
			t.Errorf("entry a#%d not delivered as published: %+v", want.Seq, e)
		}
	}
	for _, hb := range b.h.heartbeatsFrom(ia.id) {
		if hb.Version == "" {
			t.Errorf("a forged heartbeat reached the handler: %+v", hb)
		}
	}
	if n := len(a.h.entryCalls()); n != 0 {
		t.Errorf("A's own publications came back to its handler %d times", n)
	}
}

// A fork proof reaches the other member's handler (over gossip and over a
// stream of its own).
func TestForkProofSpreads(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	waitGossip(t, a, b)

	base := signChain(t, testFamily, ia, 1, wire.Hash{}, 1)[0]
	x := signChain(t, testFamily, ia, 2, base.Hash, 1)[0]
	e := x.Entry // the same seq written twice: a fork
	e.HLC++
	y, err := wire.Sign(&e, ia.siteKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.m.PublishForkProof(ctx, []*wire.Signed{x}, []*wire.Signed{y}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B hears of the fork", func() bool { return len(b.h.forkCalls()) > 0 })
	for _, f := range b.h.forkCalls() {
		if f.from != ia.id || f.a.Hash != x.Hash || f.b.Hash != y.Hash {
			t.Errorf("fork proof from %s of %s/%s, want A's of %s/%s", f.from, f.a.Hash.Short(), f.b.Hash.Short(), x.Hash.Short(), y.Hash.Short())
		}
	}
	if len(a.h.forkCalls()) != 0 {
		t.Error("A's own fork proof came back to its handler")
	}
}

func TestGossipRuns(t *testing.T) {
	a := newIdentity(t, "clinic-a")
	b := newIdentity(t, "clinic-b")
	as := signChain(t, "fam", a, 1, wire.Hash{}, 6)
	bs := signChain(t, "fam", b, 1, wire.Hash{}, 2)
	// A different entry for clinic-a#3: what a cloned copy of the site writes.
	forkA3, err := wire.Sign(&wire.Entry{Family: "fam", Site: "clinic-a", Epoch: 1, Seq: 3, Prev: as[1].Hash, HLC: 3 << 16,
		Schema: wire.SchemaVersion, Ops: []wire.Op{{Kind: wire.OpDelete, Table: "patients", Key: "x"}}}, a.siteKey)
	if err != nil || forkA3.Hash == as[2].Hash {
		t.Fatalf("test setup: forked entry %v", err)
	}
	g := func(from string, ss ...*wire.Signed) gossiped { return gossiped{run: ss, from: peer.ID(from)} }
	batch := []gossiped{
		g("p1", as[4]), g("p2", bs[1]), g("p1", as[1], as[2]), g("p1", as[0]),
		g("p2", as[1], as[2]), // the same run again: dropped
		g("p2", bs[0]), g("p3", forkA3), g("p1", as[5]),
	}
	var got []string
	for _, run := range gossipRuns(batch) {
		var ids []string
		for _, e := range run.run {
			ids = append(ids, fmt.Sprintf("%s#%d", e.Site, e.Seq))
		}
		got = append(got, string(run.from)+":"+strings.Join(ids, ","))
	}
	want := []string{
		"p1:clinic-a#1,clinic-a#2,clinic-a#3", // #4 is missing: the run ends at #3
		"p1:clinic-a#5,clinic-a#6",
		"p2:clinic-b#1,clinic-b#2",
		"p3:clinic-a#3", // the fork, alone, after the rest
	}
	if strings.Join(got, " | ") != strings.Join(want, " | ") {
		t.Fatalf("runs:\n got %v\nwant %v", got, want)
	}
}

// A commit group travels as one gossip message and reaches the handler as
// one run, unsigned entries and all.
func TestGossipCarriesGroups(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	waitGossip(t, a, b)
	grp := groupChain(t, testFamily, ia, 1, wire.Hash{}, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range GroupMessages(grp) {
		if err := a.m.Publish(ctx, m.Data); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "B receives the group", func() bool { return len(b.h.entryCalls()) > 0 })
	calls := b.h.entryCalls()
	if len(calls) != 1 || !calls[0].gossip || len(calls[0].run) != 5 {
		t.Fatalf("B got %d calls, want the group as one gossiped run of 5", len(calls))
	}
	for i, s := range calls[0].run {
		if s.Hash != grp[i].Hash || s.IsSigned() != (i == 4) {
			t.Errorf("entry %d of the run is not the one published", i+1)
		}
	}
	// Once the handler took the run, B holds no gossip.
	waitFor(t, "B's held gossip released", func() bool { return b.m.gossip.Load().held.Load() == 0 })
}

// Many small groups share messages, never more entries in one than a
// receiver takes.
func TestGroupMessagesBoundEntries(t *testing.T) {
	ia := newIdentity(t, "a")
	var run []*wire.Signed
	prev := wire.Hash{}
	for len(run) < 3000 {
		g := groupChain(t, testFamily, ia, uint64(len(run)+1), prev, 2)
		run = append(run, g...)
		prev = g[1].Hash
	}
	total := 0
	for _, m := range GroupMessages(run) {
		if m.Entries > maxGossipEntries || m.Entries%2 != 0 {
			t.Fatalf("a message of %d entries (limit %d, whole groups of 2)", m.Entries, maxGossipEntries)
		}
		total += m.Entries
	}
	if total != len(run) {
		t.Fatalf("%d entries in messages, want %d", total, len(run))
	}
}

// A fork proof whose conflicting entries are inside commit groups carries
// each branch to its signed end, by gossip, by stream and by catch-up.
func TestForkProofCarriesRuns(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	base := signChain(t, testFamily, ia, 1, wire.Hash{}, 1)[0]
	x := groupChain(t, testFamily, ia, 2, base.Hash, 3)
	y := branchOf(t, ia, base, 2)
	logA := newLog()
	logA.add(base)
	logA.add(x...)
	logA.proofs = [][2][][]byte{{runEnvs(x), runEnvs(y)}}
	a, b := servingPair(t, ia, ib, logA)
	waitGossip(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.m.Fetch(ctx, ia.id, logA.Frontier(), map[string][]byte{"a": x[2].Hash[:]}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.m.PublishForkProof(ctx, x, y); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B hears of the fork by catch-up, gossip and stream", func() bool { return len(b.h.forkCalls()) >= 3 })
	for _, f := range b.h.forkCalls() {
		if len(f.ra) != 3 || len(f.rb) != 2 || f.ra[2].Hash != x[2].Hash || f.rb[1].Hash != y[1].Hash || f.ra[0].IsSigned() || !f.rb[1].IsSigned() {
			t.Errorf("fork proof of %d and %d entries, want the runs of 3 and 2 as sent", len(f.ra), len(f.rb))
		}
	}
}

func runEnvs(run []*wire.Signed) [][]byte {
	out := make([][]byte, len(run))
	for i, s := range run {
		out[i] = s.Marshal()
	}
	return out
}

// A relay forwards the heartbeats of a site that joined a moment ago to a
// site that has not learned of it yet: they are ignored, and the relay is
// not held to blame: its own heartbeats, and what it forwards later, keep
// coming (a rejection each would have had gossip's scoring graylist it).
func TestHeartbeatOfUnknownMemberDoesNotBlameTheForwarder(t *testing.T) {
	ir, ia, ic := newIdentity(t, "relay"), newIdentity(t, "a"), newIdentity(t, "c")
	ir.relay = true
	r := startNode(t, ir, newFamily(testFamily, ir, ia, ic), nil, nil)
	famA := newFamily(testFamily, ir, ia) // A has not learned of C
	a := startNode(t, ia, famA, nil, nil)
	c := startNode(t, ic, newFamily(testFamily, ir, ic), nil, nil)
	connect(t, a, r)
	connect(t, c, r)
	waitGossip(t, a, r)
	waitGossip(t, c, r)
	// C's heartbeats reach A through the relay, several times.
	waitFor(t, "C's heartbeats reach A through the relay", func() bool {
		c.m.PublishHeartbeat()
		return a.m.Rejections()["heartbeat_unknown_author"] >= 3
	})
	if n := len(a.h.heartbeatsFrom(ic.id)); n != 0 {
		t.Errorf("%d heartbeats of a member A does not know reached its handler", n)
	}
	// The relay's own heartbeat still reaches A.
	before := len(a.h.heartbeatsFrom(ir.id))
	waitFor(t, "the relay's heartbeat reaches A", func() bool {
		r.m.PublishHeartbeat()
		return len(a.h.heartbeatsFrom(ir.id)) > before
	})
	// Once A learns of C, C's heartbeats come through the relay.
	famA.add(ic)
	waitFor(t, "C's heartbeat reaches A once A knows C", func() bool {
		c.m.PublishHeartbeat()
		return len(a.h.heartbeatsFrom(ic.id)) > 0
	})
}

// A group message published while no member has joined the family's
// gossip is held and sent when one joins: a site writing just as its relay
// came back sent the write to no one, and the other sites got it seconds
// later by catch-up. One held past unsentFor is left to catch-up.
func TestGroupPublishedBeforeAnyMemberJoinsIsSentWhenOneDoes(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, nil)
	g := a.m.gossip.Load()
	if g == nil {
		t.Fatal("a site's gossip is not running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, e := range signChain(t, testFamily, ia, 1, wire.Hash{}, 2) {
		if err := a.m.Publish(ctx, groupMsg(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	g.unsentMu.Lock()
	if len(g.unsent) != 2 {
		g.unsentMu.Unlock()
		t.Fatalf("%d messages held, want the 2 published with nobody joined", len(g.unsent))
	}
	g.unsent[0].at = time.Now().Add(-2 * unsentFor) // the first held too long
	g.unsentMu.Unlock()

	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, nil)
	connect(t, b, a)
	waitFor(t, "b receives the held entry by gossip", func() bool { return sitesReceived(b.h)["a"] >= 1 })
	for _, c := range b.h.entryCalls() {
		if !c.gossip || c.from != ia.id || len(c.run) != 1 || c.run[0].Seq != 2 {
			t.Errorf("b received %d entries from %s (gossip %v), want only the second, by gossip from a", len(c.run), c.from, c.gossip)
		}
	}
}

// awaitListed says whether pubsub can send a joining member a message: yes
// for a member connected and joined, no for one that is not connected (at
// once, not after listedWait: a member gone right after joining held back
// the heartbeat on joining of every member after it).
func TestAwaitListed(t *testing.T) {
	ia, ib, ic := newIdentity(t, "a"), newIdentity(t, "b"), newIdentity(t, "c")
	fam := newFamily(testFamily, ia, ib, ic)
	a := startNode(t, ia, fam, nil, nil)
	b := startNode(t, ib, fam, nil, nil)
	connect(t, b, a)
	waitGossip(t, a, b)
	g := a.m.gossip.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !a.m.awaitListed(ctx, g.hbt, ib.id) {
		t.Error("B, connected and joined, is not listed")
	}
	start := time.Now()
	if a.m.awaitListed(ctx, g.hbt, ic.id) {
		t.Error("C, never connected, is listed")
	}
	if took := time.Since(start); took >= listedWait {
		t.Errorf("awaitListed waited %s for a member not connected", took)
	}
}
