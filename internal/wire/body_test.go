package wire

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// The hand-built body is the codec's canonical encoding for every kind of
// entry: plain, with deps of every map size class, sealed, with grants,
// with numbers and strings at the edges of msgpack's size classes.
func TestEncodeBodyOpsMatchesCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := edgeUints(r)
	for i := range 1000 {
		e := randomEntry(r, pick)
		want, wantErr := EncodeBody(e)
		var ops EncodedOps
		if len(e.Ops) > 0 && r.IntN(4) > 0 {
			var err error
			if ops, err = EncodeOps(e.Ops); err != nil {
				if wantErr == nil {
					t.Fatalf("entry %d: EncodeOps says %v, EncodeBody encodes it", i, err)
				}
				continue
			}
		}
		got, err := EncodeBodyOps(e, ops)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("entry %d: EncodeBodyOps says %v, EncodeBody %v", i, err, wantErr)
		}
		if err != nil {
			continue
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("entry %d (%+v): hand-built\n%x\ncodec\n%x", i, e, got, want)
		}
		d, err := DecodeBody(got, nil)
		if err != nil {
			t.Fatalf("entry %d: the body does not decode: %v", i, err)
		}
		if re, err := EncodeBody(&d.Entry); err != nil || !bytes.Equal(re, got) {
			t.Fatalf("entry %d: decoded and encoded again differs (%v)", i, err)
		}
	}
}

// edgeUints returns a source of integers, most at the edges of msgpack's
// size classes, the rest random of random widths.
func edgeUints(r *rand.Rand) func() uint64 {
	uints := []uint64{0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, 1<<63 + 5, ^uint64(0)}
	return func() uint64 {
		if r.IntN(3) == 0 {
			return r.Uint64() >> r.UintN(64)
		}
		return uints[r.IntN(len(uints))]
	}
}

func randomEntry(r *rand.Rand, pick func() uint64) *Entry {
	str := func(min, max int) string {
		n := min + r.IntN(max-min+1)
		return "a" + strings.Repeat("b", n-1)
	}
	e := &Entry{Family: str(1, 128), Site: str(1, MaxSiteIDBytes), Epoch: max(1, pick()), Seq: max(1, pick()),
		HLC: pick(), Schema: uint32(max(1, pick()>>32)), App: uint32(pick() >> 32)}
	if e.Seq > 1 {
		e.Prev = Hash{byte(r.Uint32()), 1, 2, 3, 31: 7}
	}
	if r.IntN(2) == 0 {
		e.Deps = map[string]uint64{}
		for range []int{0, 1, 3, 15, 16, 17, 40}[r.IntN(7)] {
			e.Deps[fmt.Sprintf("s%d-%s", r.IntN(1000), str(1, 40))] = pick()
		}
	}
	switch r.IntN(5) {
	case 0: // sealed
		e.Key, e.Sealed, e.Schema = str(1, 64), bytes.Repeat([]byte{9}, []int{1, 255, 256, 70000}[r.IntN(4)]), max(e.Schema, SchemaSealed)
	case 1: // grants, maybe with operations
		e.Schema = max(e.Schema, SchemaSealed)
		for range 1 + r.IntN(3) {
			e.Grants = append(e.Grants, Grant{Key: str(1, 64), KeyEpoch: max(1, pick()), To: str(1, 20), ToEpoch: max(1, pick()),
				Excl: []string{"x@1"}, Eph: make([]byte, 32), Box: []byte{1, 2, 3}})
		}
		if r.IntN(2) == 0 {
			e.Ops = sampleEntry().Ops
		}
	default:
		e.Ops = sampleEntry().Ops
		for range r.IntN(4) {
			e.Ops = append(e.Ops, Op{Kind: OpPut, Table: str(1, 256), Key: str(1, 40), Fields: map[string]any{
				str(1, 40): int64(pick()), "n": -int64(pick() >> 1), "f": 1.25, "s": str(1, 70000), "b": r.IntN(2) == 0,
			}})
		}
	}
	return e
}

// EncodeBodyOps refuses operations that are not the entry's, and an entry
// that breaks a rule, as EncodeBody does.
func TestEncodeBodyOpsChecks(t *testing.T) {
	e := sampleEntry()
	other, err := EncodeOps(sampleEntry().Ops)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EncodeBodyOps(e, other); !errors.Is(err, ErrInvalid) {
		t.Fatalf("operations of another entry: %v", err)
	}
	ops, err := EncodeOps(e.Ops)
	if err != nil {
		t.Fatal(err)
	}
	e.Seq = 0
	if _, err := EncodeBodyOps(e, ops); !errors.Is(err, ErrInvalid) {
		t.Fatalf("seq 0: %v", err)
	}
	if _, err := EncodeOps([]Op{{Kind: OpPut, Table: "", Key: "k"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an operation without a table: %v", err)
	}
	e = sampleEntry()
	e.Ops = []Op{{Kind: OpPut, Table: "t", Key: "k", Fields: map[string]any{"s": strings.Repeat("x", MaxEntryBytes)}}}
	if ops, err = EncodeOps(e.Ops); err != nil {
		t.Fatal(err)
	}
	if _, err := EncodeBodyOps(e, ops); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("an entry above the size limit: %v", err)
	}
}

// BenchmarkEncodeBodyOps is the committer's share of encoding an entry whose
// operations its writer encoded (EncodeOps).
func BenchmarkEncodeBodyOps(b *testing.B) {
	e := sampleEntry()
	ops, err := EncodeOps(e.Ops)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		body, err := EncodeBodyOps(e, ops)
		if err != nil {
			b.Fatal(err)
		}
		_ = HashOf(body)
	}
}

// The hand-built encoding of operations is the codec's for every kind of
// normalized value, at the edges of msgpack's size classes.
func TestEncodeOpsMatchesCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ints := []int64{0, 1, -1, -32, -33, 127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769,
		1<<31 - 1, 1 << 31, -1 << 31, -1<<31 - 1, 1<<63 - 1, -1 << 63}
	lens := []int{0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536}
	keys := []string{"a", "B", "é", "zz", "Ä", "a b", "日本", "ab", "a\x00", "~"}
	var value func(depth int) any
	value = func(depth int) any {
		switch r.IntN(9) {
		case 0:
			return nil
		case 1:
			return r.IntN(2) == 0
		case 2:
			n := lens[r.IntN(len(lens))]
			if n > 0xff && r.IntN(20) > 0 { // long strings are slow to compare: a few
				n = 33
			}
			return strings.Repeat("x", n)
		case 3:
			return ints[r.IntN(len(ints))]
		case 4:
			return r.Int64() >> r.UintN(64)
		case 5:
			return []float64{0, 1.5, -2.25e300, 1e-300}[r.IntN(4)]
		case 6:
			if depth >= 3 {
				return "leaf"
			}
			a := make([]any, []int{0, 1, 15, 16, 17}[r.IntN(5)])
			for i := range a {
				a[i] = value(depth + 1)
			}
			return a
		default:
			if depth >= 3 {
				return int64(7)
			}
			m := map[string]any{}
			for range []int{0, 1, 15, 16, 17}[r.IntN(5)] {
				m[keys[r.IntN(len(keys))]+fmt.Sprint(r.IntN(30))] = value(depth + 1)
			}
			return m
		}
	}
	for i := range 500 {
		var ops []Op
		for range 1 + r.IntN(3) {
			op := Op{Kind: OpPut, Table: "t" + strings.Repeat("a", r.IntN(40)), Key: "k" + fmt.Sprint(r.IntN(1000))}
			if r.IntN(5) == 0 {
				op.Kind = OpDelete
			} else {
				op.Fields = map[string]any{}
				for range 1 + r.IntN(20) {
					op.Fields[keys[r.IntN(len(keys))]+fmt.Sprint(r.IntN(50))] = value(0)
				}
			}
			ops = append(ops, op)
		}
		got, err := EncodeOps(ops)
		if err != nil {
			t.Fatalf("ops %d: %v", i, err)
		}
		want, err := Marshal(ops)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.enc, want) {
			t.Fatalf("ops %d: hand-built\n%x\ncodec\n%x", i, got.enc, want)
		}
	}
	// Values that ValidateOps normalizes are encoded as normalized.
	ops := []Op{{Kind: OpPut, Table: "t", Key: "k", Fields: map[string]any{"i": 3, "u": uint64(1 << 63), "f": float32(1.5), "b": []byte("x")}}}
	got, err := EncodeOps(ops)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Marshal(ops)
	if err != nil || !bytes.Equal(got.enc, want) {
		t.Fatalf("normalized values: hand-built %x, codec %x (%v)", got.enc, want, err)
	}
}

// BenchmarkEncodeOps is a writer's share of encoding its entry.
func BenchmarkEncodeOps(b *testing.B) {
	ops := sampleEntry().Ops
	for b.Loop() {
		if _, err := EncodeOps(ops); err != nil {
			b.Fatal(err)
		}
	}
}
