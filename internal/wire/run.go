package wire

import (
	"crypto/ed25519"
	"fmt"
)

// A commit group's entries are signed once: the writer signs only the last
// entry of each group, and the others travel and are stored with an empty
// signature. A signature over an entry's hash covers its body, which names
// its predecessor's hash and seq, so it covers the predecessor too, and so
// on back along the chain: one signed entry authenticates every entry
// before it that links to it.

// Group bounds: a writer signs at least one entry in every MaxGroupEntries
// entries and every MaxGroupBytes of envelopes, so that any stored entry is
// at most that far from a signed one, and a catch-up batch, a gossip message
// or a fork proof that must end at a signed entry stays bounded.
const (
	MaxGroupEntries = 256
	MaxGroupBytes   = 1 << 20
)

// SiteKeys answers which public key signs a site's entries of an epoch.
type SiteKeys func(site string, epoch uint64) (ed25519.PublicKey, error)

// VerifyRun checks a run of consecutive entries of one site: each links to
// the one before it (same site, seq + 1, its hash named as the previous),
// epochs never go back, the last entry of each epoch in the run and the last
// of the run are signed, and every signature in the run is valid for its
// epoch's key. Every entry of a run that passes is authenticated by a
// signature of its own epoch, and no invalid signature is passed on (a
// group end is where a later batch, message or proof ends). An empty run is
// an error.
func VerifyRun(run []*Signed, keys SiteKeys) error {
	if err := CheckChain(run); err != nil {
		return err
	}
	if err := checkGroupBounds(run); err != nil {
		return err
	}
	for i, s := range run {
		ends := i+1 == len(run) || run[i+1].Epoch != s.Epoch
		if !ends && !s.IsSigned() {
			continue
		}
		if !s.IsSigned() {
			return errorf(ErrSignature, "entry %s (%s) ends a run but carries no signature: the entries before it are not authenticated", s.ID(), s.Hash.Short())
		}
		key, err := keys(s.Site, s.Epoch)
		if err != nil {
			return fmt.Errorf("verify %s: %w", s.ID(), err)
		}
		if err := s.Verify(key); err != nil {
			return err
		}
	}
	return nil
}

// checkGroupBounds refuses a run with more unsigned entries in a row than a
// writer leaves (fewer than MaxGroupEntries, of at most MaxGroupBytes of
// bodies): a run whose group ends were stripped on the way would otherwise
// be stored as one group too large to serve, gossip or prove a fork with.
func checkGroupBounds(run []*Signed) error {
	n, size := 0, 0
	for _, s := range run {
		if s.IsSigned() {
			n, size = 0, 0
			continue
		}
		n++
		size += len(s.Body)
		if n >= MaxGroupEntries || size > MaxGroupBytes {
			return errorf(ErrSignature, "entry %s follows %d unsigned entries (%d bytes): a writer signs at least every %d entries and %d bytes", s.ID(), n-1, size, MaxGroupEntries, MaxGroupBytes)
		}
	}
	return nil
}

// CheckChain checks that run is one site's consecutive entries, each naming
// the one before it, epochs never going back. It checks no signature.
func CheckChain(run []*Signed) error {
	if len(run) == 0 {
		return errorf(ErrInvalid, "the run of entries is empty")
	}
	for i := 1; i < len(run); i++ {
		p, s := run[i-1], run[i]
		if s.Site != p.Site || s.Family != p.Family {
			return errorf(ErrInvalid, "a run mixes entries of sites %q and %q", p.Site, s.Site)
		}
		if s.Seq != p.Seq+1 || s.Prev != p.Hash {
			return errorf(ErrChain, "entry %s does not link to %s before it in the run (the chain is broken)", s.ID(), p.ID())
		}
		if s.Epoch < p.Epoch {
			return errorf(ErrInvalid, "entry %s has epoch %d after epoch %d", s.ID(), s.Epoch, p.Epoch)
		}
	}
	return nil
}

// SignedEnd returns the index of the first signed entry of run at or after
// i, or -1 if none is: where the commit group holding run[i] ends.
func SignedEnd(run []*Signed, i int) int {
	for j := i; j < len(run); j++ {
		if run[j].IsSigned() {
			return j
		}
	}
	return -1
}

// EnvelopeSigned reports whether encoded envelope bytes carry a signature,
// without decoding the body: how a server reading its own log finds where
// commit groups end. Bytes it cannot read are decoded in full.
func EnvelopeSigned(env []byte) (bool, error) {
	if n, ok := envelopeSigLen(env); ok {
		return n > 0, nil
	}
	s, err := DecodeEnvelope(env)
	if err != nil {
		return false, err
	}
	return s.IsSigned(), nil
}

// envelopeSigLen reads the length of the signature of an envelope encoded
// as a map of two byte strings, "b" then "s" (how Marshal encodes one).
func envelopeSigLen(b []byte) (int, bool) {
	_, sig, ok := envelopeParts(b)
	return sig.len(), ok
}

// span is a part of a byte slice: b[from:to].
type span struct{ from, to int }

func (s span) len() int { return s.to - s.from }

// envelopeParts finds the body and the signature in an envelope encoded as
// a map of exactly the two byte strings "b" and "s" (how Marshal encodes
// one, in either order). ok is false for anything else: the codec then
// decides.
func envelopeParts(b []byte) (body, sig span, ok bool) {
	if len(b) < 1 || b[0] != 0x82 {
		return body, sig, false
	}
	rest := b[1:]
	seenB, seenS := false, false
	for range 2 {
		if len(rest) < 2 || rest[0] != 0xa1 {
			return body, sig, false
		}
		key := rest[1]
		n, after, ok := bytesHeader(rest[2:])
		if !ok || n > len(after) {
			return body, sig, false
		}
		at := span{from: len(b) - len(after), to: len(b) - len(after) + n}
		switch {
		case key == 'b' && !seenB:
			body, seenB = at, true
		case key == 's' && !seenS:
			sig, seenS = at, true
		default:
			return body, sig, false
		}
		rest = after[n:]
	}
	return body, sig, seenB && seenS && len(rest) == 0
}

// bytesHeader reads a msgpack byte or string header: the length that
// follows and the bytes after the header. nil counts as empty.
func bytesHeader(b []byte) (int, []byte, bool) {
	if len(b) == 0 {
		return 0, nil, false
	}
	c := b[0]
	switch {
	case c == 0xc0:
		return 0, b[1:], true
	case c >= 0xa0 && c <= 0xbf:
		return int(c & 0x1f), b[1:], true
	case (c == 0xc4 || c == 0xd9) && len(b) >= 2:
		return int(b[1]), b[2:], true
	case (c == 0xc5 || c == 0xda) && len(b) >= 3:
		return int(b[1])<<8 | int(b[2]), b[3:], true
	case (c == 0xc6 || c == 0xdb) && len(b) >= 5:
		return int(b[1])<<24 | int(b[2])<<16 | int(b[3])<<8 | int(b[4]), b[5:], true
	}
	return 0, nil, false
}
