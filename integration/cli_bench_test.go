//go:build unix

package integration

// Benchmarks of the real binary and its local API, each with a baseline
// measured in the same run. Figures come from b.ReportMetric; nothing here
// asserts a time.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchLine is one ~200-byte single-op import line.
func benchLine(table string, i int) string {
	const target = 200
	head := fmt.Sprintf(`{"ops":[{"op":"put","table":%q,"key":"p%08d","fields":{"name":"Patient %08d","dob":"1970-01-01","phone":"555-%07d","note":"`,
		table, i, i, i%10_000_000)
	tail := `"}}]}`
	pad := max(target-len(head)-len(tail), 0)
	return head + strings.Repeat("x", pad) + tail
}

// apiClient posts to a running node's local API (runtime.json, api.key).
type apiClient struct {
	base, key string
	http      *http.Client
}

func newAPIClient(tb testing.TB, data string, conns int) *apiClient {
	tb.Helper()
	rt, ok := readRuntime(data)
	if !ok {
		tb.Fatalf("no runtime.json in %s", data)
	}
	key, err := os.ReadFile(filepath.Join(data, "api.key"))
	if err != nil {
		tb.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}
	tb.Cleanup(tr.CloseIdleConnections)
	return &apiClient{base: strings.TrimRight(rt.API, "/"), key: strings.TrimSpace(string(key)),
		http: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// post sends body to path and decodes a 200 answer into out.
func (c *apiClient) post(path string, body []byte, out any) error {
	req, err := http.NewRequest(http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

type batchAnswer struct {
	Transactions int    `json:"transactions"`
	LastSeq      uint64 `json:"last_seq"`
}

// batchBody is a POST /v1/transactions/batch body of lines.
func batchBody(lines []string) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"transactions":[`)
	for i, l := range lines {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(l)
	}
	buf.WriteString("]}")
	return buf.Bytes()
}

// postBatches posts lines in batches of size, one request in flight.
func postBatches(tb testing.TB, c *apiClient, lines []string, size int) {
	tb.Helper()
	for i := 0; i < len(lines); i += size {
		chunk := lines[i:min(i+size, len(lines))]
		var ans batchAnswer
		if err := c.post("/v1/transactions/batch", batchBody(chunk), &ans); err != nil {
			tb.Fatal(err)
		}
		if ans.Transactions != len(chunk) {
			tb.Fatalf("batch committed %d of %d transactions", ans.Transactions, len(chunk))
		}
	}
}

// BenchmarkImport100k: `ppsync import` of 100,000 single-op ~200-byte lines
// into a running node (target 20,000 transactions/s), beside the same lines
// POSTed to /v1/transactions/batch in batches of 1,000, one in flight.
func BenchmarkImport100k(b *testing.B) {
	const n = 100_000
	s := setupSite(b)
	lines := make([]string, n)
	for i := range lines {
		lines[i] = benchLine("bench", i+1)
	}
	file := filepath.Join(s.dir, "import.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	p := startNode(b, s.data)
	api := newAPIClient(b, s.data, 2)
	var cliTime, apiTime time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		r := ppsyncEnv(b, env(e2eMachine), 10*time.Minute, "", "import", "--data", s.data, file).want(b, exitOK)
		cliTime += time.Since(start)
		var res batchAnswer
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Transactions != n {
			b.Fatalf("import printed %q (%v)", r.stdout, err)
		}
		start = time.Now()
		postBatches(b, api, lines, 1000)
		apiTime += time.Since(start)
	}
	b.StopTimer()
	cliRate := float64(b.N*n) / cliTime.Seconds()
	apiRate := float64(b.N*n) / apiTime.Seconds()
	b.ReportMetric(cliRate, "import_tx/s")
	b.ReportMetric(apiRate, "api_batch_tx/s")
	b.ReportMetric(cliRate/apiRate, "import/api")
	b.ReportMetric(0, "ns/op")
	p.stopClean()
}

// BenchmarkAPIPutLatency16: 16 clients each committing single-transaction
// POST /v1/transactions for ~3 s; p50 and p99 latency and throughput.
func BenchmarkAPIPutLatency16(b *testing.B) {
	const clients = 16
	const duration = 3 * time.Second
	s := setupSite(b)
	p := startNode(b, s.data)
	api := newAPIClient(b, s.data, clients)
	var all []time.Duration
	var total time.Duration
	var failed atomic.Value
	b.ResetTimer()
	for iter := range b.N {
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(duration)
		for w := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for i := 0; time.Now().Before(deadline); i++ {
					body := fmt.Sprintf(`{"ops":[{"op":"put","table":"lat","key":"i%d-w%02d-%07d","fields":{"name":"Patient %d","note":"latency"}}]}`, iter, w, i, i)
					t0 := time.Now()
					if err := api.post("/v1/transactions", []byte(body), nil); err != nil {
						failed.Store(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		total += time.Since(start)
	}
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	if len(all) == 0 {
		b.Fatal("no transaction committed")
	}
	slices.Sort(all)
	pct := func(q float64) float64 {
		return float64(all[min(int(q*float64(len(all))), len(all)-1)]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(len(all))/total.Seconds(), "tx/s")
	b.ReportMetric(0, "ns/op")
	p.stopClean()
}

// BenchmarkStartup1M: the time from launching `ppsync run` to runtime.json
// (polled every 2 ms) on a node whose log holds 1,000,000 entries (target
// under 1 s), beside the same for an empty node.
func BenchmarkStartup1M(b *testing.B) {
	const entries = 1_000_000
	big := setupSite(b)
	fillStart := time.Now()
	p := startNode(b, big.data)
	fillNode(b, big.data, entries)
	p.stopClean()
	b.Logf("filled the log with %d entries in %s", entries, time.Since(fillStart).Round(time.Millisecond))

	empty := setupSite(b)
	startNode(b, empty.data).stopClean() // both have run once before

	// The first start after the fill, and the big node really holds them.
	p = launch(b, big.data, e2eMachine)
	first := p.waitReady(readyTimeout, 2*time.Millisecond)
	if st := nodeStatus(b, big.data); st.Frontier[e2eSite] != entries {
		b.Fatalf("the node holds %d entries, want %d", st.Frontier[e2eSite], entries)
	}
	p.stopClean()

	var bigTime, emptyTime time.Duration
	b.ResetTimer()
	for range b.N {
		bigTime += medianStartup(b, "1M", big.data)
		emptyTime += medianStartup(b, "empty", empty.data)
	}
	b.StopTimer()
	bigS := bigTime.Seconds() / float64(b.N)
	emptyS := emptyTime.Seconds() / float64(b.N)
	b.ReportMetric(bigS, "startup_1M_s")
	b.ReportMetric(emptyS, "startup_empty_s")
	b.ReportMetric(bigS/emptyS, "1M/empty")
	b.ReportMetric(first.Seconds(), "first_start_1M_s")
	b.ReportMetric(0, "ns/op")
}

// medianStartup starts and stops the node of data three times and returns
// the median time from launch to runtime.json.
func medianStartup(b *testing.B, label, data string) time.Duration {
	b.Helper()
	var ds []time.Duration
	for range 3 {
		p := launch(b, data, e2eMachine)
		ds = append(ds, p.waitReady(readyTimeout, 2*time.Millisecond))
		p.stopClean()
	}
	b.Logf("%s node: start-up %v", label, ds)
	slices.Sort(ds)
	return ds[1]
}

// fillNode commits n single-op ~200-byte transactions through the batch API
// (batches of 1,000, two in flight).
func fillNode(tb testing.TB, data string, n int) {
	tb.Helper()
	api := newAPIClient(tb, data, 2)
	const size = 1000
	next := make(chan int)
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lines := make([]string, 0, size)
			for from := range next {
				lines = lines[:0]
				for i := from; i < min(from+size, n); i++ {
					lines = append(lines, benchLine("fill", i+1))
				}
				var ans batchAnswer
				if err := api.post("/v1/transactions/batch", batchBody(lines), &ans); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	func() {
		defer close(next)
		for from := 0; from < n; from += size {
			select {
			case next <- from:
			case err := <-errc:
				tb.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errc:
		tb.Error(err)
	default:
	}
	if tb.Failed() {
		tb.FailNow()
	}
}
