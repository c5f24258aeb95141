package node

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"
)

func scrape(t *testing.T, r *running, pattern string) float64 {
	t.Helper()
	req, _ := http.NewRequest("GET", r.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + pattern + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s not found in:\n%s", pattern, body)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsMoveAsEntriesFlow(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	tf.start("relay")
	a := tf.start("clinic-a")
	b := tf.start("clinic-b")
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
}
