package wire

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

// sampleOps are operations with every kind of flat value (read by hand) and
// some the codec reads (nested values, a big unsigned integer, a delete).
func sampleOps() [][]Op {
	flat := []Op{{Kind: OpPut, Table: "patients", Key: "p00000001", Fields: map[string]any{
		"name": "Patient 00000001", "s31": strings.Repeat("x", 31), "s300": strings.Repeat("y", 300), "s70k": strings.Repeat("z", 70_000),
		"zero": int64(0), "small": int64(127), "neg": int64(-32), "neg8": int64(-100), "u8": int64(200), "u16": int64(60_000),
		"u32": int64(4_000_000_000), "i16": int64(-30_000), "i32": int64(-2_000_000_000), "i64": int64(math.MinInt64), "max": int64(math.MaxInt64),
		"f": 1.5, "nan-free": -0.25, "t": true, "fa": false, "nil": nil, "": "empty name",
	}}}
	return [][]Op{
		flat,
		{{Kind: OpPut, Table: "t", Key: "k", Fields: map[string]any{"a": "b"}}, {Kind: OpPut, Table: "t", Key: "k2", Fields: map[string]any{"n": int64(1)}}},
		{{Kind: OpDelete, Table: "appointments", Key: "a9"}},
		{{Kind: OpPut, Table: "t", Key: "k", Fields: map[string]any{"nested": map[string]any{"a": int64(1)}, "list": []any{"x", 1.5}}}},
		{{Kind: OpPut, Table: "t", Key: "k", Fields: map[string]any{"big": uint64(math.MaxUint64)}}},
		{},
	}
}

func TestUnmarshalOpsIsTheCodecs(t *testing.T) {
	for i, ops := range sampleOps() {
		b, err := Marshal(ops)
		if err != nil {
			t.Fatal(err)
		}
		checkOpsLikeCodec(t, b)
		got, err := UnmarshalOps(b)
		if err != nil {
			t.Fatalf("ops %d: %v", i, err)
		}
		if i == 0 {
			if _, ok := readOps(b); !ok {
				t.Fatalf("flat operations are not read by hand")
			}
			if !reflect.DeepEqual(got, ops) {
				t.Fatalf("ops %d: decoded %#v, want %#v", i, got, ops)
			}
		}
	}
}

// checkOpsLikeCodec fails if readOps reads b and the codec decodes it
// otherwise or refuses it.
func checkOpsLikeCodec(t *testing.T, b []byte) {
	t.Helper()
	got, ok := readOps(b)
	if !ok {
		return
	}
	var want []Op
	if err := Unmarshal(b, &want); err != nil {
		t.Fatalf("read by hand, the codec refuses %x: %v", b, err)
	}
	if !sameOps(got, want) {
		t.Fatalf("%x: read by hand %#v, the codec %#v", b, got, want)
	}
}

// sameOps reports whether a and b are the same operations, field values
// compared as reflect.DeepEqual does but floats by their bits: a NaN (which
// both readers take in, and ValidateOps refuses later) equals the same NaN,
// and 0 and -0 differ.
func sameOps(a, b []Op) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Kind != y.Kind || x.Table != y.Table || x.Key != y.Key || len(x.Fields) != len(y.Fields) || (x.Fields == nil) != (y.Fields == nil) {
			return false
		}
		for name, v := range x.Fields {
			w, ok := y.Fields[name]
			if !ok || !sameValue(v, w) {
				return false
			}
		}
	}
	return true
}

func sameValue(v, w any) bool {
	switch x := v.(type) {
	case float64:
		y, ok := w.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	case []any:
		y, ok := w.([]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := w.(map[string]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !sameValue(xv, yv) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(v, w)
}

func FuzzUnmarshalOps(f *testing.F) {
	for _, ops := range sampleOps() {
		b, err := Marshal(ops)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x91, 0x82, 0xa1, 'k', 0x01, 0xa1, 'k', 0x02})
	f.Add([]byte{0x91, 0x81, 0xa1, 'f', 0x81, 0xa1, 'a', 0xcc, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkOpsLikeCodec(t, b)
	})
}
