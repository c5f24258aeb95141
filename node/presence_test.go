package node

import (
	"fmt"
	"testing"

	"github.com/ppsync/ppsync/node/api"
)

// A site started again on records it holds, whose writes then change some
// of them a field at a time and create others: every change keeps the
// record's other fields. The first write after the start builds the state's
// presence filter from the records held; the writes after it skip the reads
// of the new records only, so a filter that missed a held record would have
// its change start the record afresh.
func TestWritesAfterRestartKeepEveryField(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	const n = 100
	var req api.BatchRequest
	for i := range n {
		req.Transactions = append(req.Transactions, api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "patients",
			Key: fmt.Sprintf("p%03d", i), Fields: map[string]any{"name": fmt.Sprint("Patient ", i), "dob": "1984-03-12"}}}})
	}
	if code := r.call(t, "POST", "/v1/transactions/batch", req, &api.BatchResult{}); code != 200 {
		t.Fatalf("batch: %d", code)
	}
	r.stop()

	r = f.start()
	for i := range n {
		for _, body := range []string{
			fmt.Sprintf(`{"ops":[{"op":"put","table":"patients","key":"p%03d","fields":{"phone":"+41 31 555 %04d"}}]}`, i, i),
			fmt.Sprintf(`{"ops":[{"op":"put","table":"patients","key":"q%03d","fields":{"name":"New %d"}}]}`, i, i),
		} {
			if code := r.call(t, "POST", "/v1/transactions", body, &api.TxResult{}); code != 200 {
				t.Fatalf("write %d: %d", i, code)
			}
		}
	}
	var list api.ListResult
	if code := r.call(t, "GET", fmt.Sprintf("/v1/records/patients?limit=%d", 2*n), nil, &list); code != 200 || len(list.Records) != 2*n {
		t.Fatalf("list: %d, %d records; want %d", code, len(list.Records), 2*n)
	}
	for _, rec := range list.Records {
		want := map[string]bool{"name": true}
		if rec.Key[0] == 'p' {
			want = map[string]bool{"name": true, "dob": true, "phone": true}
		}
		for field := range want {
			if rec.Fields[field] == nil {
				t.Fatalf("record %s lost its field %s after the restart: %v", rec.Key, field, rec.Fields)
			}
		}
		if len(rec.Fields) != len(want) {
			t.Fatalf("record %s: fields %v", rec.Key, rec.Fields)
		}
	}
}
