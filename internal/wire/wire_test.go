package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func testKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func sampleEntry() *Entry {
	return &Entry{
		Family: "f00d", Site: "clinic-a", Epoch: 1, Seq: 2, Prev: Hash{1, 2, 3}, HLC: 12345, Schema: SchemaVersion,
		Deps: map[string]uint64{"clinic-b": 7, "clinic-c": 1},
		Ops: []Op{
			{Kind: OpPut, Table: "patients", Key: "p1", Fields: map[string]any{
				"name": "Ada", "age": 36, "tags": []any{"x", 1.5, true, nil}, "addr": map[string]any{"city": "Bern", "zip": "3000"},
			}},
			{Kind: OpDelete, Table: "appointments", Key: "a9"},
		},
	}
}

func TestCanonicalEncodingIsStable(t *testing.T) {
	key := testKey(t)
	a, err := Sign(sampleEntry(), key)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ { // map iteration order varies from run to run
		b, err := Sign(sampleEntry(), key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Body, b.Body) || a.Hash != b.Hash {
			t.Fatalf("same entry encoded differently on try %d", i)
		}
	}
	// Decoding and re-encoding gives the same bytes.
	d, err := DecodeEnvelope(a.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	re, err := EncodeBody(&d.Entry)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(re, a.Body) {
		t.Fatalf("re-encoding a decoded entry changed its bytes")
	}
	if err := d.Verify(key.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	if d.Ops[0].Fields["age"] != int64(36) || d.Ops[0].Fields["tags"].([]any)[1] != 1.5 {
		t.Fatalf("values changed in round trip: %#v", d.Ops[0].Fields)
	}
}

func TestSignatureBindsBody(t *testing.T) {
	key := testKey(t)
	s, err := Sign(sampleEntry(), key)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	other := testKey(t).Public().(ed25519.PublicKey)
	if err := s.Verify(other); !errors.Is(err, ErrSignature) {
		t.Fatalf("verify with another key: %v, want ErrSignature", err)
	}
	body := append([]byte(nil), s.Body...)
	body[len(body)-3] ^= 1
	if d, err := DecodeBody(body, s.Sig); err == nil {
		if err := d.Verify(pub); !errors.Is(err, ErrSignature) {
			t.Fatalf("tampered body verified: %v", err)
		}
	}
}

func TestLimits(t *testing.T) {
	key := testKey(t)
	cases := []struct {
		name string
		mod  func(e *Entry)
		want error
	}{
		{"long table", func(e *Entry) { e.Ops[0].Table = strings.Repeat("t", 257) }, ErrTooLarge},
		{"long key", func(e *Entry) { e.Ops[0].Key = strings.Repeat("k", 257) }, ErrTooLarge},
		{"long field", func(e *Entry) { e.Ops[0].Fields = map[string]any{strings.Repeat("f", 257): 1} }, ErrTooLarge},
		{"too many ops", func(e *Entry) {
			e.Ops = make([]Op, MaxOps+1)
			for i := range e.Ops {
				e.Ops[i] = Op{Kind: OpDelete, Table: "t", Key: "k"}
			}
		}, ErrTooLarge},
		{"too deep", func(e *Entry) {
			var v any = "leaf"
			for i := 0; i < MaxDepth+1; i++ {
				v = []any{v}
			}
			e.Ops[0].Fields = map[string]any{"deep": v}
		}, ErrTooLarge},
		{"too big", func(e *Entry) {
			e.Ops[0].Fields = map[string]any{"blob": strings.Repeat("x", MaxEntryBytes)}
		}, ErrTooLarge},
		{"no ops", func(e *Entry) { e.Ops = nil }, ErrInvalid},
		{"bad site", func(e *Entry) { e.Site = "Clinic A" }, ErrInvalid},
		{"seq 0", func(e *Entry) { e.Seq = 0 }, ErrInvalid},
		{"first with prev", func(e *Entry) { e.Seq = 1 }, ErrInvalid},
		{"later without prev", func(e *Entry) { e.Prev = Hash{} }, ErrInvalid},
		{"unknown op", func(e *Entry) { e.Ops[0].Kind = 9 }, ErrInvalid},
		{"delete with fields", func(e *Entry) { e.Ops[1].Fields = map[string]any{"a": 1} }, ErrInvalid},
		{"NaN", func(e *Entry) { e.Ops[0].Fields = map[string]any{"n": nan()} }, ErrInvalid},
		{"bad utf8", func(e *Entry) { e.Ops[0].Fields = map[string]any{"s": "\xff"} }, ErrInvalid},
		{"not json", func(e *Entry) { e.Ops[0].Fields = map[string]any{"c": make(chan int)} }, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := sampleEntry()
			c.mod(e)
			_, err := Sign(e, key)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
		})
	}
	// The deepest allowed value is fine.
	e := sampleEntry()
	var v any = "leaf"
	for i := 0; i < MaxDepth; i++ {
		v = []any{v}
	}
	e.Ops[0].Fields = map[string]any{"deep": v}
	s, err := Sign(e, key)
	if err != nil {
		t.Fatalf("depth %d refused: %v", MaxDepth, err)
	}
	if _, err := DecodeEnvelope(s.Marshal()); err != nil {
		t.Fatalf("decode depth %d: %v", MaxDepth, err)
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestNormalizeJSON(t *testing.T) {
	dec := json.NewDecoder(strings.NewReader(`{"i": 42, "big": 18446744073709551615, "f": 1.25, "n": null, "o": {"a": [1, "b"]}}`))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	n, err := NormalizeValue(m)
	if err != nil {
		t.Fatal(err)
	}
	got := n.(map[string]any)
	if got["i"] != int64(42) || got["f"] != 1.25 || got["n"] != nil || got["big"] != float64(18446744073709551615) {
		t.Fatalf("normalized %#v", got)
	}
	if got["o"].(map[string]any)["a"].([]any)[0] != int64(1) {
		t.Fatalf("nested not normalized: %#v", got["o"])
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {0xc1}, {0x82}, bytes.Repeat([]byte{0x91}, 5000), make([]byte, MaxEntryBytes+1)} {
		if _, err := DecodeEnvelope(b); err == nil {
			t.Fatalf("garbage %x... decoded", b[:min(len(b), 8)])
		}
	}
}

func TestValidateSiteID(t *testing.T) {
	for _, ok := range []string{"a", "clinic-1", "x.y_z", strings.Repeat("a", 64)} {
		if err := ValidateSiteID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a b", "a/b", strings.Repeat("a", 65), "é"} {
		if err := ValidateSiteID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func BenchmarkEncodeSign(b *testing.B) {
	key := testKey(b)
	e := sampleEntry()
	for b.Loop() {
		if _, err := Sign(e, key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	s, _ := Sign(sampleEntry(), testKey(b))
	raw := s.Marshal()
	for b.Loop() {
		if _, err := DecodeEnvelope(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDecodeEnvelopeInPlace: an envelope as Marshal encodes it (read in
// place) and the same envelope in other encodings the codec accepts (keys
// in the other order, strings for bytes, a nil signature) decode alike;
// a map with another key, a repeated key or bytes after it is not read in
// place: the codec decides, as before.
func TestDecodeEnvelopeInPlace(t *testing.T) {
	s, err := Sign(sampleEntry(), testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	str := func(b []byte) []byte { return append([]byte{0xd9, byte(len(b))}, b...) }
	reversed := append(append(append([]byte{0x82, 0xa1, 's'}, appendBin(nil, s.Sig)...), 0xa1, 'b'), appendBin(nil, s.Body)...)
	asStrings := append(append(append([]byte{0x82, 0xa1, 'b'}, appendBin(nil, s.Body)...), 0xa1, 's'), str(s.Sig)...)
	unsigned := append(append([]byte{0x82, 0xa1, 'b'}, appendBin(nil, s.Body)...), 0xa1, 's', 0xc0)
	for name, env := range map[string][]byte{"marshal": s.Marshal(), "reversed": reversed, "strings": asStrings, "nil signature": unsigned} {
		d, err := DecodeEnvelope(env)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var want Envelope
		if err := Unmarshal(env, &want); err != nil {
			t.Fatalf("%s: the codec: %v", name, err)
		}
		if !bytes.Equal(d.Body, want.Body) || !bytes.Equal(d.Sig, want.Sig) || d.Hash != s.Hash || !bytes.Equal(d.Marshal(), env) {
			t.Fatalf("%s: decoded body %d bytes, sig %x; want %d bytes, sig %x", name, len(d.Body), d.Sig, len(want.Body), want.Sig)
		}
		if name == "nil signature" && d.Sig != nil {
			t.Fatalf("%s: signature %x, want none", name, d.Sig)
		}
		d.Body = append(d.Body, 0xff) // the body is capped: appending copies, the envelope stays
		if !bytes.Equal(d.Marshal(), env) {
			t.Fatalf("%s: appending to the body changed the envelope", name)
		}
	}
	good := s.Marshal()
	for name, env := range map[string][]byte{
		"other key":    append(append([]byte{0x82, 0xa1, 'b'}, appendBin(nil, s.Body)...), append([]byte{0xa1, 'x'}, appendBin(nil, s.Sig)...)...),
		"repeated key": append(append([]byte{0x82, 0xa1, 'b'}, appendBin(nil, s.Body)...), append([]byte{0xa1, 'b'}, appendBin(nil, s.Body)...)...),
		"trailing":     append(bytes.Clone(good), 0xc0),
		"short":        good[:len(good)-1],
	} {
		if _, _, ok := envelopeParts(env); ok {
			t.Fatalf("%s: read in place", name)
		}
		// The codec decides, as before.
		d, err := DecodeEnvelope(env)
		var want Envelope
		werr := Unmarshal(env, &want)
		if werr == nil {
			_, werr = DecodeBody(want.Body, want.Sig)
		}
		if (err == nil) != (werr == nil) || (err == nil && (!bytes.Equal(d.Body, want.Body) || !bytes.Equal(d.Sig, want.Sig))) {
			t.Fatalf("%s: decoded %v, the codec %v", name, err, werr)
		}
	}
}

// A value that returnedAsIs names is returned by NormalizeValue as it is,
// so checkOp may leave it in place; one it does not name is not.
func TestReturnedAsIsMatchesNormalize(t *testing.T) {
	for _, v := range []any{nil, true, int64(-3), "text", 2.5} {
		got, err := NormalizeValue(v)
		if err != nil || !returnedAsIs(v) || got != v {
			t.Errorf("%T %v: normalized to %T %v (%v), returned as is: %v", v, v, got, got, err, returnedAsIs(v))
		}
	}
	for _, v := range []any{3, int32(3), uint64(3), float32(1.5), []byte("b"), []any{int64(1)}, map[string]any{"k": 1}} {
		if returnedAsIs(v) {
			t.Errorf("%T is said to be returned as it is, but NormalizeValue converts it", v)
		}
	}
}
