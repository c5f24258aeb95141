package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// importLines returns n valid import lines (each with a trailing newline).
func importLines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `{"ops":[{"op":"put","table":"t","key":"k%d","fields":{"i":%d}}]}`+"\n", i, i)
	}
	return b.String()
}

func TestImport(t *testing.T) {
	f := newFakeNode(t)
	input := "\xef\xbb\xbf" + importLines(2500) + "\r\n   \n" + `{"ops":[{"op":"delete","table":"t","key":"k1"}]}` // blank lines, no final newline
	file := filepath.Join(t.TempDir(), "in.jsonl")
	if err := os.WriteFile(file, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	r := ppsync(t, "", nil, "import", "--data", f.dir, file)
	r.want(t, exitOK)
	if r.stdout != `{"transactions":2501,"last_seq":2501}`+"\n" {
		t.Errorf("import printed %q", r.stdout)
	}
	if f.batches != 3 {
		t.Errorf("%d batches, want 3 (1000 lines each)", f.batches)
	}
	if _, ok := f.records["t"]["k1"]; ok || len(f.records["t"]) != 2499 {
		t.Errorf("the node holds %d records", len(f.records["t"]))
	}

	// stdin, with progress forced on.
	r = ppsync(t, importLines(3), nil, "import", "--data", f.dir, "-", "--progress")
	r.want(t, exitOK, "imported 3 transactions")
	if r.stdout != `{"transactions":3,"last_seq":2504}`+"\n" {
		t.Errorf("import - printed %q", r.stdout)
	}

	// An empty input imports nothing.
	r = ppsync(t, "", nil, "import", "--data", f.dir, "-")
	r.want(t, exitOK)
	if r.stdout != `{"transactions":0,"last_seq":0}`+"\n" {
		t.Errorf("empty import printed %q", r.stdout)
	}
}

func TestImportBadLine(t *testing.T) {
	for _, tc := range []struct{ line, has string }{
		{`{"ops":[{"op":"put","table":"t","key":"k"`, "not valid JSON"},
		{`[1,2]`, "not a JSON object"},
		{`{"ops":{}}`, `"ops" is a object; it must be an array`},
		{`{}`, `has no "ops" array`},
		{`{"opz":[]}`, `has the unknown field "opz"`},
		{`{"ops":[{"op":"delete","table":"t","key":"k","feilds":{}}]}`, `has the unknown field "feilds"`},
		{`{"ops":[{"op":"delete","table":"t","key":"k"}]} {}`, `holds more than one JSON value`},
		{`{"ops":[]}`, `"ops" is empty`},
		{`{"ops":[{"op":"upsert","table":"t","key":"k","fields":{}}]}`, `operation 1: "op" is "upsert"`},
		{`{"ops":[{"op":"put","key":"k","fields":{}}]}`, `operation 1: "table" is missing`},
		{`{"ops":[{"op":"put","table":"t","key":"","fields":{}}]}`, `operation 1: "key" is empty`},
		{`{"ops":[{"op":"put","table":"t","key":5,"fields":{}}]}`, `"ops.key" is a number; it must be a string`},
		{`{"ops":[{"op":"put","table":"t","key":"k"}]}`, `operation 1: a put needs "fields"`},
		{`{"ops":[{"op":"put","table":"t","key":"k","fields":[1]}]}`, `operation 1: "fields" must be a JSON object`},
		{`{"ops":[{"op":"delete","table":"t","key":"k","fields":{ }},{"op":"delete","table":"t","key":"k","fields":{"a":1}}]}`, `operation 2: a delete takes no "fields"`},
	} {
		t.Run(tc.line, func(t *testing.T) {
			f := newFakeNode(t)
			input := importLines(1500) + tc.line + "\n" + importLines(10)
			r := ppsync(t, input, nil, "import", "--data", f.dir, "-")
			r.want(t, exitError, "line 1501: "+tc.has, "the 1500 transactions before it were imported")
			if f.seq != 1500 {
				t.Errorf("the node committed %d transactions, want the 1500 before the bad line", f.seq)
			}
		})
	}
}

func TestImportRefusedChunk(t *testing.T) {
	// The node names the refused transaction: the ones before it in its
	// batch are sent again, so everything before the bad line is imported.
	f := newFakeNode(t)
	input := importLines(1200) + `{"ops":[{"op":"put","table":"refused","key":"k","fields":{}}]}` + "\n" + importLines(5)
	r := ppsync(t, input, nil, "import", "--data", f.dir, "-")
	r.want(t, exitError, `line 1201: the node refused it: table name "refused" is reserved`, "the 1200 transactions before it were imported")
	if f.seq != 1200 {
		t.Errorf("the node committed %d transactions, want 1200", f.seq)
	}

	// The first transaction of a batch: nothing to send again.
	f = newFakeNode(t)
	input = importLines(1000) + `{"ops":[{"op":"put","table":"refused","key":"k","fields":{}}]}` + "\n"
	ppsync(t, input, nil, "import", "--data", f.dir, "-").want(t, exitError, "line 1001: the node refused it", "the 1000 transactions before it were imported")

	// A refusal that names no transaction: the batch's line range.
	f = newFakeNode(t)
	input = importLines(1001) + `{"ops":[{"op":"put","table":"refused-all","key":"k","fields":{}}]}` + "\n"
	ppsync(t, input, nil, "import", "--data", f.dir, "-").want(t, exitError,
		"the node refused lines 1001-1002, so none of them was imported: the whole batch is refused", "the 1000 transactions before line 1001 were imported")
	ppsync(t, `{"ops":[{"op":"put","table":"refused-all","key":"k","fields":{}}]}`, nil, "import", "--data", f.dir, "-").want(t, exitError,
		"the node refused line 1,", "nothing was imported")
}

func TestImportLongLine(t *testing.T) {
	f := newFakeNode(t)
	input := importLines(2) + `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":"` + strings.Repeat("x", importMaxLine) + `"}}]}` + "\n"
	r := ppsync(t, input, nil, "import", "--data", f.dir, "-")
	r.want(t, exitError, "line 3 is longer than 2 MiB", "the 2 transactions before it were imported")
}

// TestImportSpeed checks that the client side (read, validate, send) is far
// above the contract's "thousands of lines per second".
func TestImportSpeed(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	f := newFakeNode(t)
	const n = 20000
	input := importLines(n)
	start := time.Now()
	r := ppsync(t, input, nil, "import", "--data", f.dir, "-")
	r.want(t, exitOK)
	el := time.Since(start)
	var res importResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Transactions != n {
		t.Fatalf("import printed %q", r.stdout)
	}
	t.Logf("%d lines in %v (%.0f lines/s, fake node included)", n, el, n/el.Seconds())
	if el > 10*time.Second {
		t.Errorf("import of %d lines took %v", n, el)
	}
}

// badImportOps are operations the node refuses (node's badOpCases): the
// import refuses each line before sending it, with the node's message.
var badImportOps = []struct{ ops, msg string }{
	{`[]`, `"ops" is empty; a transaction needs at least one operation: {"ops":[{"op":"put","table":"T","key":"K","fields":{...}}]}`},
	{`[{"op":"upsert","table":"t","key":"k","fields":{}}]`, `operation 1: "op" is "upsert"; it must be "put" or "delete"`},
	{`[{"op":"put","table":"","key":"k","fields":{"a":1}}]`, `operation 1: "table" is empty`},
	{`[{"op":"delete","table":"t","key":"k"},{"op":"delete","table":"t","key":""}]`, `operation 2: "key" is empty`},
	{`[{"op":"put","table":"t","key":"` + strings.Repeat("k", 300) + `","fields":{"a":1}}]`, `operation 1: "key" is 300 bytes, the limit is 256`},
	{`[{"op":"delete","table":"t","key":"k","fields":{"a":1}}]`, `operation 1: a delete takes no "fields" (it deletes the whole record t/k)`},
	{`[{"op":"put","table":"t","key":"k","fields":{"":1}}]`, `operation 1 (t/k): field name is empty`},
	{`[{"op":"put","table":"t","key":"k","fields":{"n":1e400}}]`, `operation 1 (t/k) field "n": "1e400" is not a number`},
	{`[{"op":"put","table":"t","key":"k","fields":{"d":` + strings.Repeat("[", 33) + strings.Repeat("]", 33) + `}}]`, `operation 1 (t/k) field "d": value nests deeper than 32 levels`},
}

func TestImportChecksAsTheNodeDoes(t *testing.T) {
	for _, c := range badImportOps {
		if err := checkImportLine([]byte(`{"ops":` + c.ops + `}`)); err == nil || err.Error() != c.msg {
			t.Errorf("%.60s: %v, want %q", c.ops, err, c.msg)
		}
	}
}
