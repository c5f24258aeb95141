package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// A relay holds a family to [relay] family_max_mb: past it the relay takes
// none of the family's new entries and says so, while the site keeps them;
// with the limit raised (a restart with the new setting) it takes them all.
func TestRelayFamilyStorageLimit(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.startWith("relay", func(c *Config) { c.Relay.MaxMB = 1 })
	tf.start("clinic-a")
	site := tf.nodes["clinic-a"].r
	blob := strings.Repeat("x", 60_000)
	for i := range 40 { // about 2.4 MB
		body := fmt.Sprintf(`{"ops":[{"op":"put","table":"scans","key":"s-%d","fields":{"image":%q}}]}`, i, blob)
		var tx api.TxResult
		if code := site.call(t, "POST", "/v1/transactions", body, &tx); code != 200 {
			t.Fatalf("write %d: %d", i, code)
		}
	}
	head := site.n.txlog.Head("clinic-a").Seq
	relay := tf.nodes["relay"].r.n
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := relay.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		warned := false
		for _, w := range st.Warnings {
			warned = warned || strings.Contains(w, "over its storage limit")
		}
		if warned && relay.txlog.Frontier()["clinic-a"] < head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay holds %d of %d entries and warns %q", relay.txlog.Frontier()["clinic-a"], head, st.Warnings)
		}
		time.Sleep(20 * time.Millisecond)
	}
	held := relay.txlog.Frontier()["clinic-a"]
	if held == 0 {
		t.Fatal("the relay took nothing of the family below its limit")
	}
	fs, err := relay.Families(context.Background())
	if err != nil || len(fs) != 1 || !fs[0].OverStorage || fs[0].BytesStored < 1<<20 {
		t.Fatalf("families: %+v, %v", fs, err)
	}
	// The site keeps every entry; the relay takes them once allowed.
	listen := tf.relay[:strings.Index(tf.relay, "/p2p/")] // the same address: the site dials it again
	tf.stop("relay")
	tf.startWith("relay", func(c *Config) { c.Relay.MaxMB, c.Listen = 0, []string{listen} })
	deadline = time.Now().Add(30 * time.Second)
	for tf.nodes["relay"].r.n.txlog.Frontier()["clinic-a"] < head {
		if time.Now().After(deadline) {
			t.Fatalf("with no limit the relay holds %d of %d entries", tf.nodes["relay"].r.n.txlog.Frontier()["clinic-a"], head)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the relay held %d of %d entries at its 1 MB limit, all after it was lifted", held, head)
}
