package wire

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// The body reader gives what the codec gives, for every kind of entry the
// encoder makes, and reads by hand every entry without grants.
func TestReadBodyIsTheCodecs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	pick := edgeUints(r)
	byHand := 0
	for i := range 1000 {
		e := randomEntry(r, pick)
		if len(e.Ops) > 0 && r.IntN(2) == 0 {
			e.Ops = flatEntry().Ops
		}
		body, err := EncodeBody(e)
		if err != nil {
			continue
		}
		if checkBodyLikeCodec(t, body) {
			byHand++
		} else if len(e.Grants) == 0 && opsFlat(e.Ops) {
			t.Fatalf("entry %d (%+v) without grants, its operations flat, is not read by hand", i, e)
		}
	}
	if byHand < 500 {
		t.Fatalf("only %d of 1000 entries read by hand", byHand)
	}
}

// flatEntry is sampleEntry with operations whose values are all flat.
func flatEntry() *Entry {
	e := sampleEntry()
	e.App = 3
	e.Ops = []Op{
		{Kind: OpPut, Table: "patients", Key: "p1", Fields: map[string]any{"name": "Ada", "age": int64(36), "w": 61.5, "ok": true, "x": nil}},
		{Kind: OpDelete, Table: "appointments", Key: "a9"},
	}
	return e
}

// opsFlat reports whether readOps takes ops: every field value flat.
func opsFlat(ops []Op) bool {
	b, err := Marshal(ops)
	if err != nil {
		return false
	}
	_, ok := readOps(b)
	return ok || len(ops) == 0
}

// checkBodyLikeCodec fails if readBody reads b and the codec decodes it
// otherwise or refuses it. It reports whether readBody read it.
func checkBodyLikeCodec(t *testing.T, b []byte) bool {
	t.Helper()
	var got Entry
	if !readBody(b, &got) {
		return false
	}
	var want Entry
	if err := Unmarshal(b, &want); err != nil {
		t.Fatalf("read by hand, the codec refuses %x: %v", b, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%x: read by hand\n%#v\nthe codec\n%#v", b, got, want)
	}
	return true
}

// A body the reader leaves to the codec still decodes: keys out of order,
// a duplicate key, grants.
func TestReadBodyLeavesTheRestToTheCodec(t *testing.T) {
	e := flatEntry()
	body, err := EncodeBody(e)
	if err != nil {
		t.Fatal(err)
	}
	var x Entry
	if !readBody(body, &x) {
		t.Fatal("the sample entry is not read by hand")
	}
	// "sq" first, then the rest: the codec reads it, the hand reader does not.
	n := int(body[0] & 0x0f)
	var sq []byte
	for i := 1; i+3 <= len(body); i++ {
		if body[i] == 0xa2 && body[i+1] == 's' && body[i+2] == 'q' && i+3 < len(body) {
			sq = body[i:]
			rest := append([]byte{body[0]}, sq...)
			rest = append(rest, body[1:i]...)
			if readBody(rest, &Entry{}) {
				t.Fatal("a body with its keys out of order was read by hand")
			}
			d, err := DecodeBody(rest, nil)
			if err != nil {
				t.Fatalf("a body with its keys out of order does not decode: %v", err)
			}
			if d.Seq != e.Seq || d.Site != e.Site || !reflect.DeepEqual(d.Ops, e.Ops) {
				t.Fatalf("decoded %+v, want %+v", d.Entry, *e)
			}
			break
		}
	}
	if sq == nil || n == 0 {
		t.Fatal("no sq key in the sample body")
	}
	dup := append([]byte{body[0] + 1}, body[1:]...)
	dup = append(dup, 0xa2, 's', 'q', 0x05)
	if readBody(dup, &Entry{}) {
		t.Fatal("a body with a duplicate key was read by hand")
	}
	checkBodyLikeCodec(t, dup)
}

func FuzzReadBody(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		if b, err := EncodeBody(randomEntry(r, r.Uint64)); err == nil && len(b) < 4096 {
			f.Add(b)
		}
	}
	for _, e := range []*Entry{sampleEntry(), flatEntry()} {
		if b, err := EncodeBody(e); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkBodyLikeCodec(t, b)
	})
}

// BenchmarkDecodeBody decodes the body of a sealed entry as catch-up and
// gossip receive them, by hand (DecodeBody) and, as the baseline, with the
// codec alone.
func BenchmarkDecodeBody(b *testing.B) {
	e := flatEntry()
	e.Ops, e.Key, e.Sealed, e.Schema = nil, "k1-0123456789abcdef", make([]byte, 240), SchemaSealed
	body, err := EncodeBody(e)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeBody(body, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var x Entry
			if err := Unmarshal(body, &x); err != nil {
				b.Fatal(err)
			}
			if err := x.Validate(); err != nil {
				b.Fatal(err)
			}
			_ = HashOf(body)
		}
	})
}
