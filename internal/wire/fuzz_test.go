package wire

import (
	"bytes"
	"crypto/ed25519"
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
	u := *s
	u.Sig = nil // an entry inside a commit group
	f.Add(u.Marshal())
	f.Add([]byte{0x82, 0xa1, 'b', 0xc4, 0x00, 0xa1, 's', 0xc4, 0x00})
	f.Add([]byte{0x82, 0xa1, 'b', 0xc4, 0x00, 0xa1, 's', 0xc0})
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
		if len(d.Sig) != 0 && len(d.Sig) != 64 {
			t.Fatalf("decoder accepted a signature of %d bytes", len(d.Sig))
		}
		if signed, err := EnvelopeSigned(b); err != nil || signed != d.IsSigned() {
			t.Fatalf("EnvelopeSigned says %v (%v), the decoder %v", signed, err, d.IsSigned())
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

// FuzzVerifyRun alters one byte of the envelope of one entry of a valid run
// of two commit groups and checks that VerifyRun then refuses it unless the
// entry decodes to the same body: an unsigned entry's body is bound by the
// hash chain, a signed entry's by its signature, and no altered signature
// passes. (A middle group end whose signature the alteration made
// unreadable decodes as unsigned, which the chain still covers.)
func FuzzVerifyRun(f *testing.F) {
	key := testKey(f)
	pub := key.Public().(ed25519.PublicKey)
	keys := func(string, uint64) (ed25519.PublicKey, error) { return pub, nil }
	run := groupOf(f, key, 1, Hash{}, 3, "a")
	run = append(run, groupOf(f, key, 4, run[2].Hash, 2, "a")...)
	envs := make([][]byte, len(run))
	for i, s := range run {
		envs[i] = s.Marshal()
	}
	f.Add(uint8(0), uint16(10), uint8(1))
	f.Add(uint8(1), uint16(40), uint8(0x80))
	f.Add(uint8(2), uint16(0xffff), uint8(3))
	f.Add(uint8(4), uint16(0xfff0), uint8(9))
	f.Fuzz(func(t *testing.T, which uint8, at uint16, flip uint8) {
		if flip == 0 {
			return
		}
		i := int(which) % len(envs)
		env := bytes.Clone(envs[i])
		env[int(at)%len(env)] ^= flip
		d, err := DecodeEnvelope(env)
		if err != nil {
			return // not an entry any more
		}
		alt := append([]*Signed{}, run...)
		alt[i] = d
		err = VerifyRun(alt, keys)
		if d.Hash == run[i].Hash && bytes.Equal(d.Sig, run[i].Sig) && err != nil {
			t.Fatalf("the same run refused: %v", err)
		}
		// What passes is what the site wrote: the same body. (Other bytes of
		// the envelope may differ: an unsigned middle entry stays
		// authenticated by the signed entry after it.)
		if err == nil && d.Hash != run[i].Hash {
			t.Fatalf("entry %d altered (byte %d ^ %#x) and the run still verifies", i+1, int(at)%len(env), flip)
		}
		if err == nil && d.IsSigned() && !bytes.Equal(d.Sig, run[i].Sig) {
			t.Fatalf("entry %d's signature altered (byte %d ^ %#x) and the run still verifies", i+1, int(at)%len(env), flip)
		}
	})
}
