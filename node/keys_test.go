package node

import (
	"context"
	"testing"
	"time"
)

// TestSitesThatMakeKeysAtOnceConverge: three sites that first write while
// they cannot reach each other each make a data key of their own. Once they
// meet, every site holds every key, reads every entry, and all agree.
func TestSitesThatMakeKeysAtOnceConverge(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	sites := []string{"clinic-a", "clinic-b", "clinic-c"}
	for _, s := range sites {
		tf.add(s, "site")
	}
	for _, s := range sites { // the relay is down: nobody reaches anybody
		tf.start(s)
		tf.write(s, 5, "patients")
	}
	ids := map[string]bool{}
	for _, s := range sites {
		ks := tf.nodes[s].r.n.ring.Keys()
		if len(ks) != 1 || !ks[0].Held {
			t.Fatalf("%s holds %+v before meeting the others, want its own key", s, ks)
		}
		ids[ks[0].ID] = true
	}
	if len(ids) != 3 {
		t.Fatalf("the sites made %d distinct keys, want 3", len(ids))
	}
	// Started before the relay, they know no address of it: a restart
	// with the relay up is how they meet.
	for _, s := range sites {
		tf.stop(s)
	}
	tf.start("relay")
	for _, s := range sites {
		tf.start(s)
	}
	all := append([]string{"relay"}, sites...)
	tf.waitKeysSettled(30*time.Second, sites...)
	tf.waitConverged(30*time.Second, all...)
	for _, s := range sites {
		n := tf.nodes[s].r.n
		for id := range ids {
			if !n.ring.Has(id) {
				t.Fatalf("%s lacks key %.8s", s, id)
			}
		}
		for _, o := range sites {
			if _, err := n.Get(context.Background(), "patients", o+"-4"); err != nil {
				t.Fatalf("%s cannot read %s's record: %v", s, o, err)
			}
		}
	}
	// All now seal with the same key: the smallest ID of the newest epoch.
	cur, _ := tf.nodes["clinic-a"].r.n.ring.Current()
	for _, s := range sites[1:] {
		if c, _ := tf.nodes[s].r.n.ring.Current(); c.ID != cur.ID {
			t.Fatalf("%s seals with %.8s, clinic-a with %.8s", s, c.ID, cur.ID)
		}
	}
}

// TestSiteOfflineAcrossRotationReadsEverything: a site that is off while
// another starts a new key epoch catches up on its return and reads what
// was written under the new key.
func TestSiteOfflineAcrossRotationReadsEverything(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	sites := []string{"clinic-a", "clinic-b", "clinic-c"}
	for _, s := range sites {
		tf.add(s, "site")
	}
	tf.start("relay")
	for _, s := range sites {
		tf.start(s)
	}
	for _, s := range sites {
		tf.write(s, 3, "patients")
	}
	all := append([]string{"relay"}, sites...)
	tf.waitKeysSettled(30*time.Second, sites...)
	tf.waitConverged(20*time.Second, all...)
	before, _ := tf.nodes["clinic-a"].r.n.ring.Current()
	tf.stop("clinic-c")

	ks, err := tf.nodes["clinic-a"].r.n.RotateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var after string
	for _, k := range ks.Keys {
		if k.Sealing {
			after = k.ID
			if k.Epoch != before.Epoch+1 {
				t.Fatalf("the new key has epoch %d, want %d", k.Epoch, before.Epoch+1)
			}
		}
	}
	tf.write("clinic-a", 4, "visits")
	tf.waitKeysSettled(20*time.Second, "clinic-a", "clinic-b")
	tf.write("clinic-b", 2, "visits")
	e, err := tf.nodes["clinic-b"].r.n.txlog.Get("clinic-b", tf.nodes["clinic-b"].r.n.txlog.Head("clinic-b").Seq)
	if err != nil {
		t.Fatal(err)
	}
	if e.Key != after {
		t.Fatalf("clinic-b's write after the rotation is sealed with %q, want the new key %s", e.Key, after)
	}
	tf.start("clinic-c")
	tf.waitKeysSettled(30*time.Second, sites...)
	tf.waitConverged(30*time.Second, all...)
	c := tf.nodes["clinic-c"].r.n
	if !c.ring.Has(after) || !c.ring.Has(before.ID) {
		t.Fatal("clinic-c does not hold both key epochs")
	}
	for _, k := range []string{"clinic-a-3", "clinic-b-1"} {
		if _, err := c.Get(context.Background(), "visits", k); err != nil {
			t.Fatalf("clinic-c cannot read visits/%s written under the new key: %v", k, err)
		}
	}
	if held, _ := c.txlog.Held(); held != 0 {
		t.Fatalf("clinic-c still holds %d entries", held)
	}
}
