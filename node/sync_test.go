package node

import (
	"context"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

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
	if b.n.sync.heldCount() != 0 {
		t.Fatalf("%d entries still held", b.n.sync.heldCount())
	}
}
