package wire

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"reflect"
	"sync"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// handle is configured once and never changed afterwards (the codec requires it).
var handle = newHandle()

func newHandle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true
	h.Canonical = true // map keys sorted: one encoding per value
	h.RawToString = true
	h.SignedInteger = true
	h.MapType = reflect.TypeOf(map[string]any(nil))
	h.SliceType = reflect.TypeOf([]any(nil))
	// Entry -> ops array -> op -> fields map -> value: four levels above a
	// field value, plus one for slack.
	h.MaxDepth = MaxDepth + 5
	h.MaxInitLen = 1024
	h.InterfaceReset = true
	h.MapValueReset = true
	h.SliceElementReset = true
	return h
}

// encoders recycles encoders: building one costs more than encoding a small
// entry. Pooled encoders hold no data between uses.
var encoders = sync.Pool{New: func() any {
	var b []byte
	return codec.NewEncoderBytes(&b, handle)
}}

var decoders = sync.Pool{New: func() any { return codec.NewDecoderBytes(nil, handle) }}

// Marshal encodes v canonically. It is for ppsync's own message types.
func Marshal(v any) ([]byte, error) {
	enc := encoders.Get().(*codec.Encoder)
	defer encoders.Put(enc)
	var b []byte
	enc.ResetBytes(&b)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("wire: encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal decodes untrusted bytes into v. The caller bounds len(b).
func Unmarshal(b []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil { // the codec should not panic; belt and braces for untrusted input
			err = errorf(ErrMalformed, "cannot decode %T: %v", v, r)
		}
	}()
	dec := decoders.Get().(*codec.Decoder)
	dec.ResetBytes(b)
	err = dec.Decode(v)
	decoders.Put(dec) // not reached after a panic: a decoder in an unknown state is dropped
	if err != nil {
		return errorf(ErrMalformed, "cannot decode %T: %v", v, err)
	}
	return nil
}

// Envelope is an entry as it travels and is stored: the canonical body bytes
// and the signature over their hash. Sig is empty for an entry inside a commit
// group: only the last entry of a group is signed, and its signature covers
// the entries before it through the hash chain (see VerifyRun).
type Envelope struct {
	Body []byte `codec:"b"`
	Sig  []byte `codec:"s"`
}

// Signed is a decoded, validated entry together with its wire form. It is what
// the packages pass around once bytes have been checked. Treat it as immutable
// once built: one decoded from bytes remembers them (see Marshal).
type Signed struct {
	Entry
	Hash Hash   // SHA-256 of Body
	Body []byte // canonical body bytes
	Sig  []byte // Ed25519 signature over Hash; empty inside a commit group

	env []byte // the envelope as decoded, when it came from bytes
}

// EncodeBody encodes an entry's body canonically. It validates first.
func EncodeBody(e *Entry) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	b, err := Marshal(e)
	if err != nil {
		return nil, err
	}
	if len(b)+ed25519.SignatureSize+16 > MaxEntryBytes {
		return nil, errorf(ErrTooLarge, "entry %s encodes to %d bytes, the limit is %d", e.ID(), len(b), MaxEntryBytes)
	}
	return b, nil
}

// Sign builds the body of e, hashes it and signs the hash with key.
func Sign(e *Entry, key ed25519.PrivateKey) (*Signed, error) {
	body, err := EncodeBody(e)
	if err != nil {
		return nil, err
	}
	h := HashOf(body)
	return &Signed{Entry: *e, Hash: h, Body: body, Sig: ed25519.Sign(key, h[:])}, nil
}

// IsSigned reports whether s carries a signature of its own (it ends a commit
// group). An unsigned entry is authentic only through a signed one after it.
func (s *Signed) IsSigned() bool { return len(s.Sig) > 0 }

// Verify checks s's signature against the writer's public key. An unsigned
// entry fails: it can only be checked in a run that ends at a signed entry
// (VerifyRun).
func (s *Signed) Verify(pub ed25519.PublicKey) error {
	if !s.IsSigned() {
		return errorf(ErrSignature, "entry %s (%s) carries no signature of its own: it can only be checked together with the signed entry that ends its commit group", s.ID(), s.Hash.Short())
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, s.Hash[:], s.Sig) {
		return errorf(ErrSignature, "entry %s (%s) is not signed by the key of site %q epoch %d", s.ID(), s.Hash.Short(), s.Site, s.Epoch)
	}
	return nil
}

// Marshal encodes the envelope of s. An entry decoded from an envelope returns
// those bytes without encoding again.
func (s *Signed) Marshal() []byte {
	if s.env != nil {
		return s.env
	}
	return appendEnvelope(make([]byte, 0, len(s.Body)+len(s.Sig)+16), s.Body, s.Sig)
}

// appendEnvelope appends the canonical encoding of Envelope{body, sig} (what
// Marshal gives: a map of two byte strings, "b" then "s"; no signature is an
// empty byte string), built by hand: it runs for every entry committed.
func appendEnvelope(b, body, sig []byte) []byte {
	b = append(b, 0x82, 0xa1, 'b')
	b = appendBin(b, body)
	b = append(b, 0xa1, 's')
	return appendBin(b, sig)
}

// AppendStr appends s as a msgpack string (fixstr, str8, str16 or str32), as
// the codec encodes it.
func AppendStr(b []byte, s string) []byte { return appendStr(b, s) }

// AppendBin appends v as msgpack bytes (bin8, bin16 or bin32), as the codec
// encodes them.
func AppendBin(b, v []byte) []byte { return appendBin(b, v) }

func appendBin(b, v []byte) []byte {
	switch n := len(v); {
	case n <= 0xff:
		b = append(b, 0xc4, byte(n))
	case n <= 0xffff:
		b = append(b, 0xc5, byte(n>>8), byte(n))
	default:
		b = append(b, 0xc6, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, v...)
}

// DecodeEnvelope decodes and validates untrusted envelope bytes. It does not
// check the signature: that needs the writer's key (see Signed.Verify).
func DecodeEnvelope(b []byte) (*Signed, error) {
	if len(b) > MaxEntryBytes {
		return nil, errorf(ErrTooLarge, "entry is %d bytes, the limit is %d", len(b), MaxEntryBytes)
	}
	if body, sig, ok := envelopeParts(b); ok {
		// As Marshal encodes it: the body and the signature are read in
		// place from one copy of the envelope, which the entry keeps.
		env := bytes.Clone(b)
		s, err := DecodeBody(env[body.from:body.to:body.to], env[sig.from:sig.to:sig.to])
		if err != nil {
			return nil, err
		}
		s.env = env
		return s, nil
	}
	var env Envelope
	if err := Unmarshal(b, &env); err != nil {
		return nil, err
	}
	s, err := DecodeBody(env.Body, env.Sig)
	if err != nil {
		return nil, err
	}
	s.env = bytes.Clone(b)
	return s, nil
}

// DecodeBody decodes and validates untrusted body bytes with their signature.
func DecodeBody(body, sig []byte) (*Signed, error) {
	if len(body) > MaxEntryBytes {
		return nil, errorf(ErrTooLarge, "entry body is %d bytes, the limit is %d", len(body), MaxEntryBytes)
	}
	if len(sig) != ed25519.SignatureSize && len(sig) != 0 {
		return nil, errorf(ErrMalformed, "signature is %d bytes, want %d or none", len(sig), ed25519.SignatureSize)
	}
	if len(sig) == 0 {
		sig = nil
	}
	s := &Signed{Body: body, Sig: sig, Hash: HashOf(body)}
	if !readBody(body, &s.Entry) { // what the codec would give, by hand
		s.Entry = Entry{}
		if err := Unmarshal(body, &s.Entry); err != nil {
			return nil, err
		}
	}
	if err := s.Entry.Validate(); err != nil {
		return nil, fmt.Errorf("entry %s: %w", s.ID(), err)
	}
	return s, nil
}
