package seal

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	k := NewKey(1)
	body := []byte(`{"ops":[{"table":"patients","key":"p1","fields":{"name":"Ada Lovelace"}}]}`)
	ad := []byte("family|clinic-a|1|42|prevhash")
	s := Seal(k, body, ad)
	if bytes.Contains(s, []byte("Ada")) || len(s) != len(body)+Overhead {
		t.Fatalf("sealed %d bytes for %d: %x", len(s), len(body), s)
	}
	if s2 := Seal(k, body, ad); bytes.Equal(s, s2) {
		t.Fatal("two seals of one body are equal: the nonce repeats")
	}
	got, err := Open(k, s, ad)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("open: %q %v", got, err)
	}
	// Moved to another entry, another key, a flipped bit, cut short: refused.
	other := NewKey(1)
	flipped := bytes.Clone(s)
	flipped[len(flipped)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"other header": func() ([]byte, error) { return Open(k, s, []byte("family|clinic-a|1|43|prevhash")) },
		"other key":    func() ([]byte, error) { return Open(other, s, ad) },
		"flipped bit":  func() ([]byte, error) { return Open(k, flipped, ad) },
		"cut short":    func() ([]byte, error) { return Open(k, s[:10], ad) },
	} {
		if out, err := try(); !errors.Is(err, ErrOpen) || out != nil {
			t.Errorf("%s: %q %v, want ErrOpen", name, out, err)
		}
	}
	if k.ID == other.ID || len(k.ID) != 32 {
		t.Fatalf("key IDs %q %q", k.ID, other.ID)
	}
	again, err := KeyFrom(1, k.Secret[:])
	if err != nil || again.ID != k.ID {
		t.Fatalf("KeyFrom: %+v %v", again, err)
	}
}

func TestX25519FromEd25519(t *testing.T) {
	for range 20 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		xp, err := X25519Private(priv)
		if err != nil {
			t.Fatal(err)
		}
		xpub, err := X25519Public(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(xp.PublicKey().Bytes(), xpub.Bytes()) {
			t.Fatal("the X25519 public key derived from the Ed25519 public key does not match the private one")
		}
	}
}

func TestWrapUnwrap(t *testing.T) {
	pubA, privA, _ := ed25519.GenerateKey(rand.Reader)
	_, privB, _ := ed25519.GenerateKey(rand.Reader)
	k := NewKey(3)
	ad := []byte("family|" + k.ID + "|3|clinic-a")
	w, err := Wrap(k, pubA, ad)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(w.Box, k.Secret[:]) {
		t.Fatal("the wrapped key holds the secret in the clear")
	}
	got, err := Unwrap(w, privA, 3, ad)
	if err != nil || got != k {
		t.Fatalf("unwrap: %+v %v", got, err)
	}
	if _, err := Unwrap(w, privB, 3, ad); !errors.Is(err, ErrOpen) {
		t.Fatalf("another site unwrapped it: %v", err)
	}
	if _, err := Unwrap(w, privA, 3, []byte("family|"+k.ID+"|3|clinic-b")); !errors.Is(err, ErrOpen) {
		t.Fatalf("a wrap for clinic-a opened as one for clinic-b: %v", err)
	}
	bad := w
	bad.Ephemeral = make([]byte, 32) // the zero point: low order
	if _, err := Unwrap(bad, privA, 3, ad); !errors.Is(err, ErrOpen) {
		t.Fatalf("low-order ephemeral: %v", err)
	}
	// A 32-byte value that is no point of the curve (about half are not).
	for i := range 256 {
		notPoint := make([]byte, 32)
		notPoint[0] = byte(i)
		notPoint[1] = 7
		if _, err := X25519Public(notPoint); err != nil {
			if _, err := Wrap(k, notPoint, ad); err == nil {
				t.Fatal("wrapped to a key that is no point")
			}
			return
		}
	}
	t.Fatal("found no 32-byte value that is not a point")
}

func BenchmarkSeal(b *testing.B) {
	k := NewKey(1)
	body := make([]byte, 200)
	ad := make([]byte, 100)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		_ = Seal(k, body, ad)
	}
}
