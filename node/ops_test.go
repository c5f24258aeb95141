package node

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
)

// badOpCases are operations every write path must refuse with the same
// message: the API (one transaction, a batch), an own write of the practice
// database's capture (typed operations) and `ppsync import` (see
// cmd/ppsync's TestImportChecksAsTheNodeDoes).
var badOpCases = []struct {
	name, ops string // the "ops" array as JSON
	status    int
	code, msg string
}{
	{"no ops", `[]`, 400, "bad_request", `"ops" is empty; a transaction needs at least one operation: {"ops":[{"op":"put","table":"T","key":"K","fields":{...}}]}`},
	{"bad op", `[{"op":"upsert","table":"t","key":"k","fields":{}}]`, 400, "bad_request", `operation 1: "op" is "upsert"; it must be "put" or "delete"`},
	{"empty table", `[{"op":"put","table":"","key":"k","fields":{"a":1}}]`, 400, "bad_request", `operation 1: "table" is empty`},
	{"empty key", `[{"op":"delete","table":"t","key":"k"},{"op":"delete","table":"t","key":""}]`, 400, "bad_request", `operation 2: "key" is empty`},
	{"long key", `[{"op":"put","table":"t","key":"` + strings.Repeat("k", 300) + `","fields":{"a":1}}]`, 413, "too_large", `operation 1: "key" is 300 bytes, the limit is 256`},
	{"delete with fields", `[{"op":"delete","table":"t","key":"k","fields":{"a":1}}]`, 400, "bad_request", `operation 1: a delete takes no "fields" (it deletes the whole record t/k)`},
	{"empty field name", `[{"op":"put","table":"t","key":"k","fields":{"":1}}]`, 400, "bad_request", `operation 1 (t/k): field name is empty`},
	{"number out of range", `[{"op":"put","table":"t","key":"k","fields":{"n":1e400}}]`, 400, "bad_request", `operation 1 (t/k) field "n": "1e400" is not a number`},
	{"too deep", `[{"op":"put","table":"t","key":"k","fields":{"d":` + strings.Repeat("[", 33) + strings.Repeat("]", 33) + `}}]`, 413, "too_large", `operation 1 (t/k) field "d": value nests deeper than 32 levels`},
}

// TestEveryWritePathRefusesTheSameBadOp: one check of operations, one
// message, whichever way a write comes in.
func TestEveryWritePathRefusesTheSameBadOp(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	const good = `{"ops":[{"op":"put","table":"t","key":"ok","fields":{"a":1}}]}`
	for _, c := range badOpCases {
		t.Run(c.name, func(t *testing.T) {
			var e api.APIError
			if code := r.call(t, "POST", "/v1/transactions", `{"ops":`+c.ops+`}`, &e); code != c.status || e.Code != c.code || e.Error != c.msg {
				t.Errorf("one transaction: %d %+v, want %d %s %q", code, e, c.status, c.code, c.msg)
			}
			e = api.APIError{}
			if code := r.call(t, "POST", "/v1/transactions/batch", `{"transactions":[`+good+`,{"ops":`+c.ops+`}]}`, &e); code != c.status || e.Code != c.code || e.Error != "transaction 2: "+c.msg {
				t.Errorf("batch: %d %+v, want %d %s %q", code, e, c.status, c.code, "transaction 2: "+c.msg)
			}
			// The same operations as the practice database's capture hands
			// them to the log (kinds already parsed).
			var in []api.OpJSON
			dec := json.NewDecoder(strings.NewReader(c.ops))
			dec.UseNumber()
			if err := dec.Decode(&in); err != nil {
				t.Fatal(err)
			}
			ops := make([]wire.Op, len(in))
			for i, o := range in {
				ops[i] = wire.Op{Kind: wire.OpPut, Table: o.Table, Key: o.Key, Fields: o.Fields}
				if o.Op == "delete" {
					ops[i].Kind = wire.OpDelete
				} else if o.Op != "put" {
					return // no typed form
				}
			}
			if _, err := r.n.writeBatch(context.Background(), [][]wire.Op{ops}); err == nil || err.Error() != c.msg {
				t.Errorf("own write: %v, want %q", err, c.msg)
			} else if want := map[int]error{400: wire.ErrInvalid, 413: wire.ErrTooLarge}[c.status]; !errors.Is(err, want) {
				t.Errorf("own write: %v is not %v", err, want)
			}
		})
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Frontier["clinic-a"] != 0 {
		t.Fatalf("refused writes committed something: %v", st.Frontier)
	}
}
