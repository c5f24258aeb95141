package node

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// chainOf signs n linked entries of one site with a throwaway key.
func chainOf(t *testing.T, site string, n int) []*wire.Signed {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var out []*wire.Signed
	var prev wire.Hash
	for i := 1; i <= n; i++ {
		s := atkSignEntry(t, "fam", site, 1, uint64(i), prev, wire.SchemaVersion, key, "t", "k")
		prev = s.Hash
		out = append(out, s)
	}
	return out
}

func TestReorderHoldsAndReleasesInOrder(t *testing.T) {
	es := chainOf(t, "clinic-a", 6)
	r := newReorder()
	now := time.Unix(1000, 0)
	from := peer.ID("p1")
	for _, i := range []int{4, 2, 3, 5} { // seqs 5, 3, 4, 6
		if !r.hold(es[i], from, now) {
			t.Fatalf("hold seq %d refused", es[i].Seq)
		}
	}
	if !r.hold(es[2], from, now) || r.len() != 4 {
		t.Fatalf("holding seq 3 twice: %d held, want 4", r.len())
	}
	if _, ok := r.next("clinic-a", 1); ok {
		t.Fatal("next after head 1 gave an entry, but seq 2 is not held")
	}
	var got []uint64
	for head := uint64(2); ; head++ {
		h, ok := r.next("clinic-a", head)
		if !ok {
			break
		}
		got = append(got, h.e.Seq)
	}
	if want := []uint64{3, 4, 5, 6}; len(got) != len(want) || got[0] != 3 || got[3] != 6 {
		t.Fatalf("released %v, want %v", got, want)
	}
	if r.len() != 0 || r.bytes != 0 {
		t.Fatalf("after releasing all: %d held, %d bytes", r.len(), r.bytes)
	}
}

func TestReorderExpiresOpenGaps(t *testing.T) {
	es := chainOf(t, "clinic-a", 5)
	bs := chainOf(t, "clinic-b", 3)
	r := newReorder()
	t0 := time.Unix(1000, 0)
	r.hold(es[4], "pa", t0)                // clinic-a#5: its gap stays open
	r.hold(es[2], "pa", t0)                // clinic-a#3: the log reaches it meanwhile
	r.hold(bs[2], "pb", t0.Add(gapWait/2)) // clinic-b#3: not waited long enough yet
	heads := map[string]uint64{"clinic-a": 3, "clinic-b": 1}
	head := func(s string) uint64 { return heads[s] }
	if got := r.expired(t0.Add(gapWait/2), head); len(got) != 0 {
		t.Fatalf("expired before gapWait: %v", got)
	}
	if r.len() != 2 {
		t.Fatalf("entries the log already holds were not dropped: %d held, want 2", r.len())
	}
	got := r.expired(t0.Add(gapWait), head)
	if len(got) != 1 || got[0] != "pa" || r.len() != 1 {
		t.Fatalf("expired at gapWait: peers %v, %d left; want [pa], 1 left", got, r.len())
	}
	got = r.expired(t0.Add(2*gapWait), head)
	if len(got) != 1 || got[0] != "pb" || r.len() != 0 {
		t.Fatalf("expired later: peers %v, %d left; want [pb], 0 left", got, r.len())
	}
}

func TestReorderIsBounded(t *testing.T) {
	r := newReorder()
	es := chainOf(t, "clinic-a", 3)
	big := *es[1]
	big.Body = make([]byte, reorderMaxBytes) // as if one entry filled the budget
	if r.hold(&big, "p", time.Now()) {
		t.Fatal("an entry larger than the byte budget was held")
	}
	for i := range reorderMax {
		e := *es[1]
		e.Seq = uint64(i + 2)
		if !r.hold(&e, "p", time.Now()) {
			t.Fatalf("hold %d of %d refused", i+1, reorderMax)
		}
	}
	extra := *es[1]
	extra.Seq = reorderMax + 2
	if r.hold(&extra, "p", time.Now()) || r.len() != reorderMax {
		t.Fatalf("held %d entries, the limit is %d", r.len(), reorderMax)
	}
	if !r.arm() || r.arm() {
		t.Fatal("arm must report true once while entries are held")
	}
	if !r.disarm() {
		t.Fatal("disarm must report the entries still held")
	}
}

// TestGossipOutOfOrderIsApplied feeds a node a site's entries as gossip in
// the wrong order: they all land, by gossip, without a catch-up session.
func TestGossipOutOfOrderIsApplied(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("clinic-a", "site")
	tf.addKnowing("clinic-b", "site", "clinic-a")
	a := tf.start("clinic-a")
	tf.write("clinic-a", 6, "patients")
	es, err := a.n.txlog.Range("clinic-a", 1, 6)
	if err != nil || len(es) != 6 {
		t.Fatalf("range: %d entries, %v", len(es), err)
	}
	tf.stop("clinic-a") // clinic-b must get them from the calls below only
	b := tf.startWith("clinic-b", func(c *Config) { c.SyncInterval = Duration(time.Hour) })
	from := a.n.mesh.ID()
	ctx := context.Background()
	for _, run := range [][]*wire.Signed{es[2:3], es[1:2], es[4:6]} { // seqs 3, 2, then 5-6 as one run, ahead of 1
		if n, err := b.n.sync.Entries(ctx, from, run, true); n != 0 || err != nil {
			t.Fatalf("entries %d..%d ahead of the log: appended %d, err %v; want held", run[0].Seq, run[len(run)-1].Seq, n, err)
		}
	}
	n, err := b.n.sync.Entries(ctx, from, es[0:1], true)
	if err != nil || n != 3 {
		t.Fatalf("seq 1: appended %d (err %v), want 3 (1, then the held 2 and 3)", n, err)
	}
	if got := b.n.txlog.Head("clinic-a").Seq; got != 3 {
		t.Fatalf("head %d after seq 1 arrived, want 3", got)
	}
	if n, err := b.n.sync.Entries(ctx, from, es[3:4], true); err != nil || n != 3 {
		t.Fatalf("seq 4: appended %d (err %v), want 3", n, err)
	}
	if got, c := b.n.counters.receivedGossip.Load(), b.n.counters.receivedCatchUp.Load(); got != 6 || c != 0 {
		t.Fatalf("received %d by gossip and %d by catch-up, want 6 and 0", got, c)
	}
	if b.n.sync.held.len() != 0 {
		t.Fatalf("%d entries still held", b.n.sync.held.len())
	}
}
