package wire

import (
	"crypto/ed25519"
	"math"
	"slices"
)

// EncodedOps is a transaction's operations validated (ValidateOps, which
// normalizes their values) and encoded as they appear in an entry's body.
// A writer makes it on its own goroutine, before its transaction is stamped,
// so the committer only builds the entry's header around it (EncodeBodyOps).
type EncodedOps struct {
	ops []Op
	enc []byte
}

// EncodeOps validates ops and encodes them canonically. ops must not change
// afterwards: the encoding stands for them.
func EncodeOps(ops []Op) (EncodedOps, error) {
	if err := ValidateOps(ops); err != nil {
		return EncodedOps{}, err
	}
	enc, ok := appendOps(make([]byte, 0, opsSize(ops)), ops)
	if !ok { // a value of a type that ValidateOps does not leave: the codec knows
		var err error
		if enc, err = Marshal(ops); err != nil {
			return EncodedOps{}, err
		}
	}
	return EncodedOps{ops: ops, enc: enc}, nil
}

// opsSize guesses the encoded size of ops.
func opsSize(ops []Op) int {
	n := 5
	for i := range ops {
		n += 16 + len(ops[i].Table) + len(ops[i].Key) + 24*len(ops[i].Fields)
	}
	return n
}

// appendOps appends the codec's canonical encoding of ops (see Marshal),
// whose values ValidateOps normalized. It says false, having appended part of
// it, for a value of another type.
func appendOps(b []byte, ops []Op) ([]byte, bool) {
	b = appendLen(b, len(ops), 0x90, 0xdc, 0xdd)
	for i := range ops {
		op := &ops[i]
		if len(op.Fields) > 0 {
			b = append(b, 0x84, 0xa1, 'f')
			var ok bool
			if b, ok = appendMap(b, op.Fields); !ok {
				return b, false
			}
		} else {
			b = append(b, 0x83)
		}
		b = appendUint(append(b, 0xa1, 'k'), uint64(op.Kind))
		b = appendStr(append(b, 0xa1, 't'), op.Table)
		b = appendStr(append(b, 0xa1, 'y'), op.Key)
	}
	return b, true
}

// appendLen appends the header of an array or map of n elements: fix is the
// first byte of its one-byte form (below 16), b16 and b32 of the others.
func appendLen(b []byte, n int, fix, b16, b32 byte) []byte {
	switch {
	case n < 16:
		return append(b, fix|byte(n))
	case n <= 0xffff:
		return append(b, b16, byte(n>>8), byte(n))
	}
	return append(b, b32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// appendMap appends a map of field values, its keys in byte order.
func appendMap(b []byte, m map[string]any) ([]byte, bool) {
	if m == nil {
		return append(b, 0xc0), true
	}
	b = appendLen(b, len(m), 0x80, 0xde, 0xdf)
	var buf [16]string
	names := buf[:0]
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		b = appendStr(b, k)
		var ok bool
		if b, ok = appendValue(b, m[k]); !ok {
			return b, false
		}
	}
	return b, true
}

// appendValue appends one normalized field value (see NormalizeValue).
func appendValue(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(b, 0xc0), true
	case bool:
		if x {
			return append(b, 0xc3), true
		}
		return append(b, 0xc2), true
	case string:
		return appendStr(b, x), true
	case int64:
		return appendInt(b, x), true
	case float64:
		u := math.Float64bits(x)
		return append(b, 0xcb, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32), byte(u>>24), byte(u>>16), byte(u>>8), byte(u)), true
	case []any:
		if x == nil {
			return append(b, 0xc0), true
		}
		b = appendLen(b, len(x), 0x90, 0xdc, 0xdd)
		for _, e := range x {
			var ok bool
			if b, ok = appendValue(b, e); !ok {
				return b, false
			}
		}
		return b, true
	case map[string]any:
		return appendMap(b, x)
	}
	return b, false
}

// appendInt appends v as the codec does: a fixint from -32 to 127, else the
// smallest signed form.
func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= -32 && v <= math.MaxInt8:
		return append(b, byte(v))
	case v >= math.MinInt8 && v < 0:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16 && v <= math.MaxInt16:
		return append(b, 0xd1, byte(v>>8), byte(v))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		return append(b, 0xd2, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(b, 0xd3, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Ops returns the operations the encoding stands for.
func (o EncodedOps) Ops() []Op { return o.ops }

// EncodeBodyOps is EncodeBody for an entry whose operations in clear are
// ops (e.Ops must be ops.Ops()): it checks the rest of the entry and builds
// the body by hand around the operations' encoding, byte for byte what
// EncodeBody gives (a test compares them), without encoding or checking the
// operations again. With the zero EncodedOps it checks and encodes e.Ops
// itself.
func EncodeBodyOps(e *Entry, ops EncodedOps) ([]byte, error) {
	if ops.enc != nil && (len(e.Ops) != len(ops.ops) || &e.Ops[0] != &ops.ops[0]) {
		return nil, errorf(ErrInvalid, "entry %s: the encoded operations are not the entry's", e.ID())
	}
	checkOps, err := e.validateHeader()
	if err != nil {
		return nil, err
	}
	if checkOps && ops.enc == nil {
		if err := ValidateOps(e.Ops); err != nil {
			return nil, err
		}
	}
	opsEnc := ops.enc
	if opsEnc == nil {
		if opsEnc, err = Marshal(e.Ops); err != nil {
			return nil, err
		}
	}
	var grants []byte
	if len(e.Grants) > 0 {
		if grants, err = Marshal(e.Grants); err != nil {
			return nil, err
		}
	}
	b := appendBody(make([]byte, 0, bodySize(e, len(opsEnc), len(grants))), e, opsEnc, grants)
	if len(b)+ed25519.SignatureSize+16 > MaxEntryBytes {
		return nil, errorf(ErrTooLarge, "entry %s encodes to %d bytes, the limit is %d", e.ID(), len(b), MaxEntryBytes)
	}
	return b, nil
}

// bodySize bounds the encoded size of e's body with ops and grants encoded.
func bodySize(e *Entry, ops, grants int) int {
	n := 1 + 13*3 + 5*9 + 3*(len(e.Family)+5) + len(e.Site) + len(e.Key) + 34 + 5 + len(e.Sealed) + ops + grants
	for s := range e.Deps {
		n += len(s) + 5 + 9
	}
	return n
}

// appendBody appends the codec's canonical encoding of e (see Marshal): a
// map of its fields that are set or always present, keys in byte order, with
// the encodings of its operations and grants as given.
func appendBody(b []byte, e *Entry, ops, grants []byte) []byte {
	n := 8 // ep, fa, hl, op, pv, sc, si, sq
	if e.App != 0 {
		n++
	}
	if len(e.Deps) > 0 {
		n++
	}
	if len(grants) > 0 {
		n++
	}
	if e.Key != "" {
		n++
	}
	if len(e.Sealed) > 0 {
		n++
	}
	b = append(b, 0x80|byte(n)) // at most 13 fields: a fixmap
	if e.App != 0 {
		b = appendUint(appendKey(b, "ap"), uint64(e.App))
	}
	if len(e.Deps) > 0 {
		b = appendDeps(appendKey(b, "dp"), e.Deps)
	}
	b = appendUint(appendKey(b, "ep"), e.Epoch)
	b = appendStr(appendKey(b, "fa"), e.Family)
	if len(grants) > 0 {
		b = append(appendKey(b, "gr"), grants...)
	}
	b = appendUint(appendKey(b, "hl"), e.HLC)
	if e.Key != "" {
		b = appendStr(appendKey(b, "ky"), e.Key)
	}
	b = append(appendKey(b, "op"), ops...)
	b = appendBin(appendKey(b, "pv"), e.Prev[:])
	b = appendUint(appendKey(b, "sc"), uint64(e.Schema))
	b = appendStr(appendKey(b, "si"), e.Site)
	if len(e.Sealed) > 0 {
		b = appendBin(appendKey(b, "sl"), e.Sealed)
	}
	return appendUint(appendKey(b, "sq"), e.Seq)
}

// appendKey appends a field name of two characters (a fixstr).
func appendKey(b []byte, k string) []byte { return append(b, 0xa2, k[0], k[1]) }

// appendUint appends v in the fewest bytes msgpack allows.
func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= 0xff:
		return append(b, 0xcc, byte(v))
	case v <= 0xffff:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v <= 0xffffffff:
		return append(b, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(b, 0xcf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// appendStr appends a string (fixstr, str8, str16 or str32).
func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= 0xff:
		b = append(b, 0xd9, byte(n))
	case n <= 0xffff:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, s...)
}

// appendDeps appends a map of site to seq, its keys in byte order.
func appendDeps(b []byte, deps map[string]uint64) []byte {
	b = appendLen(b, len(deps), 0x80, 0xde, 0xdf)
	var buf [8]string
	sites := buf[:0]
	for s := range deps {
		sites = append(sites, s)
	}
	slices.Sort(sites)
	for _, s := range sites {
		b = appendUint(appendStr(b, s), deps[s])
	}
	return b
}
