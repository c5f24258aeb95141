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
	uints := []uint64{0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, 1<<63 + 5, ^uint64(0)}
	pick := func() uint64 {
		if r.IntN(3) == 0 {
			return r.Uint64() >> r.UintN(64)
		}
		return uints[r.IntN(len(uints))]
	}
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
