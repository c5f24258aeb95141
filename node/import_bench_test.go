package node

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// BenchmarkBatchAPI posts 100,000 single-op transactions to
// /v1/transactions/batch in batches of 1,000, one in flight (as `ppsync
// import` does), and reports transactions per second.
func BenchmarkBatchAPI(b *testing.B) {
	const total, per = 100_000, 1000
	var bodies [][]byte
	for i := 0; i < total; i += per {
		var buf bytes.Buffer
		buf.WriteString(`{"transactions":[`)
		for j := i; j < i+per; j++ {
			if j > i {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"ops":[{"op":"put","table":"patients","key":"p%08d","fields":{"name":"Patient %d","dob":"1984-03-12","phone":"+41 31 555 01 23","city":"Bern","balance":%d}}]}`, j, j, j%1000)
		}
		buf.WriteString(`]}`)
		bodies = append(bodies, buf.Bytes())
	}
	for b.Loop() {
		f := newFixture(b, "clinic-a", "site")
		r := f.start()
		start := time.Now()
		for _, body := range bodies {
			req, _ := http.NewRequest("POST", r.base+"/v1/transactions/batch", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+r.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		b.ReportMetric(total/time.Since(start).Seconds(), "tx/s")
		r.stop()
	}
}
