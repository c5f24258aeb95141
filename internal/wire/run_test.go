package wire

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"testing"
)

// groupOf signs n consecutive entries of site "clinic-a" after prev (seq
// from-1) with key, as a writer with one signature per commit group does:
// only the last is signed.
func groupOf(t testing.TB, key ed25519.PrivateKey, from uint64, prev Hash, n int, salt string) []*Signed {
	t.Helper()
	out := make([]*Signed, 0, n)
	for i := range n {
		seq := from + uint64(i)
		e := &Entry{Family: "f00d", Site: "clinic-a", Epoch: 1, Seq: seq, Prev: prev, HLC: seq, Schema: SchemaVersion,
			Ops: []Op{{Kind: OpPut, Table: "t", Key: fmt.Sprintf("%s-%d", salt, seq), Fields: map[string]any{"n": int64(seq)}}}}
		s, err := Sign(e, key)
		if err != nil {
			t.Fatal(err)
		}
		if i < n-1 {
			s.Sig = nil
		}
		out = append(out, s)
		prev = s.Hash
	}
	return out
}

func keysOf(pub ed25519.PublicKey) SiteKeys {
	return func(site string, epoch uint64) (ed25519.PublicKey, error) {
		if site != "clinic-a" || epoch != 1 {
			return nil, fmt.Errorf("no key for %s epoch %d", site, epoch)
		}
		return pub, nil
	}
}

// An unsigned entry survives the round trip through its envelope, fails
// Verify with a clear message, and any signature other than 64 bytes or none
// is malformed.
func TestUnsignedEnvelope(t *testing.T) {
	key := testKey(t)
	grp := groupOf(t, key, 1, Hash{}, 2, "x")
	d, err := DecodeEnvelope(grp[0].Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if d.IsSigned() || d.Hash != grp[0].Hash {
		t.Fatalf("decoded unsigned entry: signed %v, hash %s", d.IsSigned(), d.Hash.Short())
	}
	err = d.Verify(key.Public().(ed25519.PublicKey))
	if !errors.Is(err, ErrSignature) {
		t.Fatalf("Verify of an unsigned entry: %v, want ErrSignature", err)
	}
	if want := "carries no signature"; !contains(err.Error(), want) {
		t.Fatalf("Verify of an unsigned entry says %q, want it to say %q", err, want)
	}
	for _, n := range []int{1, 32, 63, 65} {
		if _, err := DecodeBody(grp[0].Body, make([]byte, n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("signature of %d bytes: %v, want ErrMalformed", n, err)
		}
	}
	for _, s := range grp {
		signed, err := EnvelopeSigned(s.Marshal())
		if err != nil || signed != s.IsSigned() {
			t.Errorf("EnvelopeSigned(%s) = %v, %v, want %v", s.ID(), signed, err, s.IsSigned())
		}
	}
}

// VerifyRun accepts a run that chains and ends signed, and refuses every
// way of passing off entries the site did not write.
func TestVerifyRun(t *testing.T) {
	key, other := testKey(t), testKey(t)
	keys := keysOf(key.Public().(ed25519.PublicKey))
	grp := groupOf(t, key, 1, Hash{}, 4, "main")
	if err := VerifyRun(grp, keys); err != nil {
		t.Fatalf("a group: %v", err)
	}
	if err := VerifyRun(grp[1:], keys); err != nil {
		t.Fatalf("the tail of a group: %v", err)
	}
	// Two groups in one run: the first group's end is signed too.
	next := groupOf(t, key, 5, grp[3].Hash, 3, "main")
	if err := VerifyRun(append(append([]*Signed{}, grp...), next...), keys); err != nil {
		t.Fatalf("two groups: %v", err)
	}
	// A branch written by a second copy of the site from #2 on.
	branch := groupOf(t, key, 2, grp[0].Hash, 3, "clone")

	forgedEnd := groupOf(t, other, 1, Hash{}, 4, "main")
	altered := append([]*Signed{}, grp...)
	e := grp[1].Entry
	e.HLC++
	mid, err := Sign(&e, key)
	if err != nil {
		t.Fatal(err)
	}
	mid.Sig = nil
	altered[1] = mid
	tampered := append([]*Signed{}, grp...)
	last := *grp[3]
	last.Sig = append([]byte(nil), grp[3].Sig...)
	last.Sig[0] ^= 1
	tampered[3] = &last

	for _, tc := range []struct {
		name string
		run  []*Signed
		want error
	}{
		{"forged group end", forgedEnd, ErrSignature},
		{"tampered signature", tampered, ErrSignature},
		{"altered middle", altered, ErrChain},
		{"spliced branches", []*Signed{grp[0], grp[1], branch[1], branch[2]}, ErrChain},
		{"no signed end", grp[:3], ErrSignature},
		{"one unsigned entry", grp[1:2], ErrSignature},
		{"gap", []*Signed{grp[0], grp[2], grp[3]}, ErrChain},
		{"empty", nil, ErrInvalid},
	} {
		if err := VerifyRun(tc.run, keys); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A group longer than a writer makes (its inner ends stripped on the
	// way) is refused; the longest a writer makes passes.
	long := groupOf(t, key, 1, Hash{}, MaxGroupEntries+1, "long")
	if err := VerifyRun(long, keys); !errors.Is(err, ErrSignature) {
		t.Errorf("a group of %d entries: %v, want ErrSignature", len(long), err)
	}
	if err := VerifyRun(groupOf(t, key, 1, Hash{}, MaxGroupEntries, "max"), keys); err != nil {
		t.Errorf("a group of %d entries: %v", MaxGroupEntries, err)
	}
	if SignedEnd(grp, 0) != 3 || SignedEnd(grp[:3], 0) != -1 {
		t.Errorf("SignedEnd: %d, %d", SignedEnd(grp, 0), SignedEnd(grp[:3], 0))
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// BenchmarkEncodeSignGroup64 is BenchmarkEncodeSign for a commit group of 64
// entries signed once, per entry: encoding and hashing each, one signature.
func BenchmarkEncodeSignGroup64(b *testing.B) {
	key := testKey(b)
	e := sampleEntry()
	for b.Loop() {
		for i := range 64 {
			body, err := EncodeBody(e)
			if err != nil {
				b.Fatal(err)
			}
			h := HashOf(body)
			if i == 63 {
				_ = ed25519.Sign(key, h[:])
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/entry")
}

// BenchmarkVerifyRun64 checks a run of one group of 64 entries: the chain and
// one signature.
func BenchmarkVerifyRun64(b *testing.B) {
	key := testKey(b)
	run := groupOf(b, key, 1, Hash{}, 64, "x")
	keys := keysOf(key.Public().(ed25519.PublicKey))
	for b.Loop() {
		if err := VerifyRun(run, keys); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/entry")
}

// The hand-built envelope is the codec's canonical encoding, for every size
// class of body and with or without a signature.
func TestEnvelopeEncodingMatchesCodec(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536, 70000} {
		for _, sig := range [][]byte{{}, make([]byte, 64)} {
			body := make([]byte, n)
			for i := range body {
				body[i] = byte(i)
			}
			want, err := Marshal(&Envelope{Body: body, Sig: sig})
			if err != nil {
				t.Fatal(err)
			}
			if got := appendEnvelope(nil, body, sig); !bytes.Equal(got, want) {
				t.Fatalf("body of %d bytes, signature of %d: hand-built %x..., codec %x...", n, len(sig), got[:min(8, len(got))], want[:min(8, len(want))])
			}
		}
	}
}
