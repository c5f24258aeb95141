package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// badOps are transactions every path must refuse, with the message people
// see (the API, `ppsync import` and the log of an entry from a peer).
var badOps = []struct {
	name string
	in   []OpInput
	kind error
	msg  string
}{
	{"no ops", nil, ErrInvalid, `"ops" is empty; a transaction needs at least one operation: {"ops":[{"op":"put","table":"T","key":"K","fields":{...}}]}`},
	{"too many ops", repeatOps(MaxOps + 1), ErrTooLarge, "a transaction has 10001 operations, the limit is 10000"},
	{"empty table", []OpInput{{Op: "put", Key: "k", Fields: map[string]any{"a": 1}}}, ErrInvalid, `operation 1: "table" is empty`},
	{"empty key", []OpInput{{Op: "put", Table: "t", Fields: map[string]any{}}}, ErrInvalid, `operation 1: "key" is empty`},
	{"long table", []OpInput{{Op: "delete", Table: strings.Repeat("t", 257), Key: "k"}}, ErrTooLarge, `operation 1: "table" is 257 bytes, the limit is 256`},
	{"long key", []OpInput{{Op: "delete", Table: "t", Key: "k"}, {Op: "put", Table: "t", Key: strings.Repeat("k", 300)}}, ErrTooLarge, `operation 2: "key" is 300 bytes, the limit is 256`},
	{"bad utf8 key", []OpInput{{Op: "delete", Table: "t", Key: "\xff"}}, ErrInvalid, `operation 1: "key" is not valid UTF-8`},
	{"delete with fields", []OpInput{{Op: "delete", Table: "t", Key: "k", Fields: map[string]any{"a": 1}}}, ErrInvalid, `operation 1: a delete takes no "fields" (it deletes the whole record t/k)`},
	{"empty field name", []OpInput{{Op: "put", Table: "t", Key: "k", Fields: map[string]any{"": 1}}}, ErrInvalid, `operation 1 (t/k): field name is empty`},
	{"NaN", []OpInput{{Op: "put", Table: "t", Key: "k", Fields: map[string]any{"n": nan()}}}, ErrInvalid, `operation 1 (t/k) field "n": number NaN is not allowed (JSON has no NaN or infinity)`},
	{"number out of range", []OpInput{{Op: "put", Table: "t", Key: "k", Fields: map[string]any{"n": json.Number("1e400")}}}, ErrInvalid, `operation 1 (t/k) field "n": "1e400" is not a number`},
	{"too deep", []OpInput{{Op: "put", Table: "t", Key: "k", Fields: map[string]any{"d": deep(MaxDepth + 1)}}}, ErrTooLarge, `operation 1 (t/k) field "d": value nests deeper than 32 levels`},
}

func repeatOps(n int) []OpInput {
	ops := make([]OpInput, n)
	for i := range ops {
		ops[i] = OpInput{Op: "delete", Table: "t", Key: "k"}
	}
	return ops
}

func deep(n int) any {
	var v any = "leaf"
	for range n {
		v = []any{v}
	}
	return v
}

// TestOneOpCheck: the operations as people write them (CheckOps), as an own
// write stamps them (ValidateOps) and inside an entry (Validate) are refused
// by the same rule with the same message, which carries no sentinel words.
func TestOneOpCheck(t *testing.T) {
	for _, c := range badOps {
		t.Run(c.name, func(t *testing.T) {
			_, err := CheckOps(c.in)
			if !errors.Is(err, c.kind) || err.Error() != c.msg {
				t.Fatalf("CheckOps: %v (%T), want %q (%v)", err, err, c.msg, c.kind)
			}
			ops := make([]Op, len(c.in))
			for i, o := range c.in {
				ops[i] = Op{Kind: OpPut, Table: o.Table, Key: o.Key, Fields: o.Fields}
				if o.Op == "delete" {
					ops[i].Kind = OpDelete
				}
			}
			if err := ValidateOps(ops); !errors.Is(err, c.kind) || err.Error() != c.msg {
				t.Fatalf("ValidateOps: %v, want %q", err, c.msg)
			}
			e := sampleEntry()
			e.Ops = ops
			if _, err := Sign(e, testKey(t)); !errors.Is(err, c.kind) || err.Error() != c.msg {
				t.Fatalf("an entry: %v, want %q", err, c.msg)
			}
		})
	}
}

func TestCheckOpsKinds(t *testing.T) {
	for _, c := range []struct {
		op, msg string
	}{
		{"", `operation 1: "op" is missing; it must be "put" or "delete"`},
		{"upsert", `operation 1: "op" is "upsert"; it must be "put" or "delete"`},
		{strings.Repeat("x", 30), `operation 1: "op" is "xxxxxxxxxxxxxxxxxxx…"; it must be "put" or "delete"`},
	} {
		if _, err := CheckOps([]OpInput{{Op: c.op, Table: "t", Key: "k"}}); !errors.Is(err, ErrInvalid) || err.Error() != c.msg {
			t.Errorf("op %q: %v, want %q", c.op, err, c.msg)
		}
	}
	if err := ValidateOps([]Op{{Kind: 9, Table: "t", Key: "k"}}); !errors.Is(err, ErrInvalid) || err.Error() != "operation 1: unknown kind 9; it must be put or delete" {
		t.Errorf("kind 9: %v", err)
	}
	// A put without fields is a record with no fields (yet); values are
	// normalized; a delete's empty fields are dropped.
	ops, err := CheckOps([]OpInput{{Op: "put", Table: "t", Key: "a"}, {Op: "put", Table: "t", Key: "b", Fields: map[string]any{"n": json.Number("7")}},
		{Op: "delete", Table: "t", Key: "c", Fields: map[string]any{}}})
	if err != nil || ops[0].Fields == nil || len(ops[0].Fields) != 0 || ops[1].Fields["n"] != int64(7) || ops[2].Kind != OpDelete || ops[2].Fields != nil {
		t.Fatalf("CheckOps: %#v %v", ops, err)
	}
}
