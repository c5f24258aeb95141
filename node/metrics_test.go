package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, r *running, pattern string) float64 {
	t.Helper()
	body := metricsText(t, r)
	m := regexp.MustCompile(`(?m)^` + pattern + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s not found in:\n%s", pattern, body)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsMoveAsEntriesFlow(t *testing.T) {
	tf, a, b := relayAndTwoSites(t)
	if v := scrape(t, a, `ppsync_entries_total\{origin="own"\}`); v != 0 {
		t.Fatalf("own entries before writing: %v", v)
	}
	tf.write("clinic-a", 25, "patients")
	tf.waitConverged(20*time.Second, "relay", "clinic-a", "clinic-b")
	if v := scrape(t, a, `ppsync_entries_total\{origin="own"\}`); v != 25 {
		t.Fatalf("own entries: %v", v)
	}
	got := scrape(t, b, `ppsync_entries_total\{origin="gossip"\}`) + scrape(t, b, `ppsync_entries_total\{origin="catch-up"\}`)
	if got != 25 {
		t.Fatalf("entries received at clinic-b: %v", got)
	}
	if v := scrape(t, b, `ppsync_frontier_seq\{site="clinic-a"\}`); v != 25 {
		t.Fatalf("frontier at clinic-b: %v", v)
	}
	if v := scrape(t, b, `ppsync_records`); v != 25 {
		t.Fatalf("records at clinic-b: %v", v)
	}
	if v := scrape(t, a, `ppsync_online`); v != 1 {
		t.Fatalf("online: %v", v)
	}
	// The log's syncs to disk: every entry either end holds was made durable
	// by one, and the histogram counts each sync once.
	for _, c := range []struct {
		r    *running
		name string
	}{{a, "clinic-a"}, {b, "clinic-b"}} {
		syncs := scrape(t, c.r, `ppsync_disk_sync_seconds_count`)
		entries := scrape(t, c.r, `ppsync_disk_synced_entries_total`)
		if syncs < 1 || syncs > entries {
			t.Fatalf("%s: %v syncs made %v entries durable", c.name, syncs, entries)
		}
		if all := scrape(t, c.r, `ppsync_disk_sync_seconds_bucket\{le="\+Inf"\}`); all != syncs {
			t.Fatalf("%s: the +Inf bucket holds %v syncs of %v", c.name, all, syncs)
		}
		if v := scrape(t, c.r, `ppsync_disk_sync_seconds_sum`); v <= 0 {
			t.Fatalf("%s: %v syncs took %v s", c.name, syncs, v)
		}
		if entries < 25 {
			t.Fatalf("%s: syncs made %v entries durable, want 25 at least", c.name, entries)
		}
	}
}

// GET /metrics?family=all labels a node's figures with its family's ID
// (one family at a site); a family the node does not serve is refused.
func TestMetricsOfAllFamilies(t *testing.T) {
	tf, a, _ := relayAndTwoSites(t)
	tf.write("clinic-a", 3, "patients")
	fid := a.n.id.FamilyID
	series := `ppsync_entries_total\{family="` + fid + `",origin="own"\}`
	waitUntil(t, "own entries under the family label", 20*time.Second, func() (bool, string) {
		code, body := metricsAt(t, a, "/metrics?family=all")
		m := regexp.MustCompile(`(?m)^` + series + ` 3$`).FindString(body)
		return code == http.StatusOK && m != "" && strings.Contains(body, "\nppsync_relay_families 1\n"), fmt.Sprintf("%d %q", code, m)
	})
	if code, body := metricsAt(t, a, "/metrics?family="+fid); code != http.StatusOK || !strings.Contains(body, `ppsync_entries_total{origin="own"} 3`) {
		t.Errorf("?family=%s: %d\n%s", fid, code, body)
	}
	if code, body := metricsAt(t, a, "/metrics?family=0123abcd"); code != http.StatusNotFound || !strings.Contains(body, "serves no family") {
		t.Errorf("?family of a family not served: %d %s", code, body)
	}
}

// TestMetricsDB: a node bound to a practice database exports its figures; a
// node without one exports none of them.
func TestMetricsDB(t *testing.T) {
	path, d := practiceFile(t, `CREATE TABLE codes(id INTEGER PRIMARY KEY, code TEXT UNIQUE)`, `INSERT INTO codes VALUES (1, 'A')`)
	sqlExec(t, d, `INSERT INTO patients(name) VALUES ('from before ppsync')`)
	tf := newTestFamily(t)
	tf.addDB("clinic-a", "sqlite:"+path)
	tf.add("clinic-b", "site")
	a := tf.start("clinic-a")
	b := tf.start("clinic-b")
	waitDB(t, a, "database ready", dbReady)

	waitMetrics := func(what string, want map[string]float64) {
		t.Helper()
		waitUntil(t, what, 20*time.Second, func() (bool, string) {
			saw := ""
			ok := true
			for name, v := range want {
				got := scrape(t, a, name)
				saw += fmt.Sprintf(" %s=%v", name, got)
				ok = ok && got == v
			}
			return ok, saw
		})
	}
	// The initial load is not a capture.
	waitMetrics("after the initial load", map[string]float64{
		"ppsync_db_captured_total": 0, "ppsync_db_applied_total": 0, "ppsync_db_pending_capture": 0,
		"ppsync_db_refused_rows": 0, "ppsync_db_problem": 0,
	})

	// Two rows inserted with plain SQL: captured.
	sqlExec(t, d, `INSERT INTO patients(name) VALUES ('Ada'), ('Bo')`)
	waitMetrics("captured", map[string]float64{"ppsync_db_captured_total": 2, "ppsync_db_pending_capture": 0})

	// A row written through the API is applied to the database; one that
	// breaks a unique constraint is refused.
	for _, tx := range []string{
		`{"ops":[{"op":"put","table":"patients","key":"100","fields":{"name":"Cy"}}]}`,
		`{"ops":[{"op":"put","table":"codes","key":"2","fields":{"code":"A"}}]}`,
	} {
		if code := a.call(t, "POST", "/v1/transactions", tx, nil); code != 200 {
			t.Fatalf("%s: %d", tx, code)
		}
	}
	waitMetrics("applied and refused", map[string]float64{
		"ppsync_db_applied_total": 1, "ppsync_db_refused_rows": 1, "ppsync_db_pending_apply": 0, "ppsync_db_problem": 0,
	})
	var name string
	if err := d.QueryRow(`SELECT name FROM patients WHERE id = 100`).Scan(&name); err != nil || name != "Cy" {
		t.Fatalf("applied row: %q %v", name, err)
	}

	// The change table the triggers write to is gone: a problem.
	sqlExec(t, d, `DROP TABLE _ppsync_changes`)
	waitMetrics("problem", map[string]float64{"ppsync_db_problem": 1})
	if st, _ := a.n.DBStatus(context.Background()); st.Problem == "" {
		t.Fatal("ppsync_db_problem is 1 but DBStatus has no problem")
	}

	body := metricsText(t, a)
	for _, want := range []string{"ppsync_db_captured_total counter", "ppsync_db_applied_total counter", "ppsync_db_pending_capture gauge",
		"ppsync_db_pending_apply gauge", "ppsync_db_refused_rows gauge", "ppsync_db_problem gauge"} {
		if !strings.Contains(body, "# TYPE "+want+"\n") {
			t.Errorf("no %q in:\n%s", "# TYPE "+want, body)
		}
	}

	// No database: no ppsync_db_ metric.
	body = metricsText(t, b)
	if strings.Contains(body, "ppsync_db_") || !strings.Contains(body, "ppsync_online") {
		t.Fatalf("metrics of a node without a database:\n%s", body)
	}
}

func metricsText(t *testing.T, r *running) string {
	t.Helper()
	code, body := metricsAt(t, r, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	return body
}

// metricsAt returns the status and body of GET path on r's API.
func metricsAt(t *testing.T, r *running, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
