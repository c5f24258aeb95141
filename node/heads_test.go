package node

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

func TestMissing(t *testing.T) {
	have := map[string]uint64{"a": 10, "b": 3, "c": 0}
	for _, c := range []struct {
		of   map[string]uint64
		want uint64
	}{
		{nil, 13},
		{map[string]uint64{"a": 10, "b": 3}, 0},
		{map[string]uint64{"a": 4, "b": 5, "d": 9}, 6}, // b ahead and d unknown to have count nothing
	} {
		if got := missing(have, c.of); got != c.want {
			t.Errorf("missing(%v, %v) = %d, want %d", have, c.of, got, c.want)
		}
		if got := ahead(have, c.of); got != (c.want > 0) {
			t.Errorf("ahead(%v, %v) = %v", have, c.of, got)
		}
	}
	if beyond(3, 5) != 0 || beyond(5, 3) != 2 {
		t.Error("beyond")
	}
}

// TestLagAgreesEverywhere: a member's lag and this site's pending entries
// read the same in GET /v1/peers, GET /v1/status and /metrics (one lag
// computation over the members' heartbeats).
func TestLagAgreesEverywhere(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	a := tf.start("clinic-a")
	tf.start("clinic-b")
	tf.write("clinic-a", 3, "patients")
	tf.waitConverged(20*time.Second, "relay", "clinic-a", "clinic-b")
	waitLags := func(want map[string]uint64, pending uint64) {
		t.Helper()
		atkWaitFor(t, 20*time.Second, fmt.Sprintf("lags %v pending %d", want, pending), func() (bool, string) {
			var pr api.PeersResult
			a.call(t, "GET", "/v1/peers", nil, &pr)
			var st api.Status
			a.call(t, "GET", "/v1/status", nil, &st)
			metrics := metricsText(t, a)
			got := map[string]uint64{}
			for _, p := range pr.Peers {
				got[p.Site] = p.Lag
				if line := fmt.Sprintf("ppsync_peer_lag_entries{site=%q} %d\n", p.Site, p.Lag); !strings.Contains(metrics, line) {
					return false, "metrics lack " + line
				}
			}
			if line := fmt.Sprintf("ppsync_backlog_entries %d\n", st.Pending); !strings.Contains(metrics, line) {
				return false, "metrics lack " + line
			}
			return fmt.Sprint(got) == fmt.Sprint(want) && st.Pending == pending, fmt.Sprintf("peers %v, pending %d", got, st.Pending)
		})
	}
	waitLags(map[string]uint64{"relay": 0, "clinic-b": 0}, 0)
	tf.stop("clinic-b")
	tf.write("clinic-a", 5, "appointments")
	waitLags(map[string]uint64{"relay": 0, "clinic-b": 5}, 0) // the relay holds them
	tf.stop("relay")
	tf.write("clinic-a", 2, "invoices")
	waitLags(map[string]uint64{"relay": 2, "clinic-b": 7}, 2) // no member is known to hold the last 2
}
