package wire

import (
	"bytes"
	"testing"
)

// FuzzDecodeEnvelope feeds untrusted bytes to the entry decoder: it must never
// panic, and whatever it accepts must be a valid entry whose body re-encodes to
// the same canonical bytes when the input was canonical.
func FuzzDecodeEnvelope(f *testing.F) {
	key := testKey(f)
	s, err := Sign(sampleEntry(), key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.Marshal())
	f.Add([]byte{0x82, 0xa1, 'b', 0xc4, 0x00, 0xa1, 's', 0xc4, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeEnvelope(b)
		if err != nil {
			return
		}
		if err := d.Entry.Validate(); err != nil {
			t.Fatalf("decoder accepted an invalid entry: %v", err)
		}
		if HashOf(d.Body) != d.Hash {
			t.Fatal("hash does not match body")
		}
		re, err := EncodeBody(&d.Entry)
		if err != nil {
			t.Fatalf("accepted entry does not re-encode: %v", err)
		}
		// Re-decoding the re-encoded body gives the same canonical bytes again.
		d2, err := DecodeBody(re, d.Sig)
		if err != nil {
			t.Fatalf("re-encoded body does not decode: %v", err)
		}
		re2, err := EncodeBody(&d2.Entry)
		if err != nil || !bytes.Equal(re, re2) {
			t.Fatalf("canonical encoding is not a fixed point: %v", err)
		}
	})
}
