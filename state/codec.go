package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/ppsync/ppsync/internal/wire"
)

// Stored records are on the hot path of Apply and of every read, so they have
// a small hand-written binary encoding rather than reflection-driven msgpack.
// It is canonical: the encoder has one output for each record (fields sorted,
// minimal uvarints, a field's version elided exactly when it equals the
// record's put version), and the decoder rejects anything else, so equal
// records are equal bytes on every node, once the node's own feed cursor is
// left out (splitRecord).
//
//	record  = 0x01 body | 0x02 uvarint(cursor) body
//	body    = version(put) version(del) uvarint(#fields) field...
//	version = uvarint(HLC) uvarint(len(site)) site uvarint(seq) uvarint(op)
//	field   = uvarint(len(name)) name (0x00 | 0x01 version) uvarint(len(value)) value
//
// A field's 0x00 means "written by the record's put version"; value is the
// field value as wire.Marshal encodes it. cursor (format 0x02, never 0) is
// the change-feed cursor of the record's latest visible change on this node;
// format 0x01 says it is not in the record (a record written before records
// carried it, whose feed entry the spaceLast index finds, or one never
// visibly changed).
const (
	recordFormat       = 0x01
	recordFormatCursor = 0x02
)

const (
	fieldVerPut      = 0x00
	fieldVerExplicit = 0x01
)

func appendVersion(b []byte, v Version) []byte {
	b = binary.AppendUvarint(b, v.HLC)
	b = binary.AppendUvarint(b, uint64(len(v.Site)))
	b = append(b, v.Site...)
	b = binary.AppendUvarint(b, v.Seq)
	return binary.AppendUvarint(b, uint64(v.Op))
}

// encode returns the canonical bytes of r.
func (r *storedRecord) encode() []byte {
	n := 1 + 2*(24+len(r.Put.Site)) + 4
	for _, f := range r.Fields {
		n += 8 + len(f.Name) + len(f.Val)
		if f.Ver != r.Put {
			n += 24 + len(f.Ver.Site)
		}
	}
	b := make([]byte, 0, n+binary.MaxVarintLen64)
	if r.Cursor == 0 {
		b = append(b, recordFormat)
	} else {
		b = append(b, recordFormatCursor)
		b = binary.AppendUvarint(b, r.Cursor)
	}
	b = appendVersion(b, r.Put)
	b = appendVersion(b, r.Del)
	b = binary.AppendUvarint(b, uint64(len(r.Fields)))
	for _, f := range r.Fields {
		b = binary.AppendUvarint(b, uint64(len(f.Name)))
		b = append(b, f.Name...)
		if f.Ver == r.Put {
			b = append(b, fieldVerPut)
		} else {
			b = append(b, fieldVerExplicit)
			b = appendVersion(b, f.Ver)
		}
		b = binary.AppendUvarint(b, uint64(len(f.Val)))
		b = append(b, f.Val...)
	}
	return b
}

// decoder reads the binary encodings of this file. The first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad or truncated number")
		return 0
	}
	if n != uvarintLen(x) {
		d.fail("non-minimal number")
		return 0
	}
	d.b = d.b[n:]
	return x
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// bytes returns the next length-prefixed bytes (aliasing the input).
func (d *decoder) bytes(limit int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(limit) || n > uint64(len(d.b)) {
		d.fail("length %d out of range", n)
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) version() Version {
	var v Version
	v.HLC = d.uvarint()
	v.Site = string(d.bytes(wire.MaxSiteIDBytes))
	v.Seq = d.uvarint()
	op := d.uvarint()
	if op > wire.MaxOps {
		d.fail("operation index %d out of range", op)
	}
	v.Op = uint32(op)
	if v.Site == "" && v != (Version{}) {
		d.fail("version without a site")
	}
	return v
}

// decodeRecord decodes and checks stored record bytes. The result does not
// alias b.
func decodeRecord(b []byte) (storedRecord, error) {
	cursor, body, err := splitRecord(b)
	if err != nil {
		return storedRecord{}, err
	}
	d := decoder{b: body}
	r := storedRecord{Cursor: cursor}
	r.Put = d.version()
	r.Del = d.version()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("%d fields in %d bytes", n, len(d.b))
	}
	if d.err != nil {
		return storedRecord{}, d.err
	}
	if n > 0 {
		r.Fields = make([]storedField, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var f storedField
		f.Name = string(d.bytes(wire.MaxNameBytes))
		switch d.byte() {
		case fieldVerPut:
			f.Ver = r.Put
		case fieldVerExplicit:
			if f.Ver = d.version(); d.err == nil && f.Ver == r.Put {
				d.fail("field %q spells out the record's version", f.Name)
			}
		default:
			d.fail("field %q: bad version tag", f.Name)
		}
		f.Val = slices.Clone(d.bytes(wire.MaxEntryBytes))
		r.Fields = append(r.Fields, f)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d stray bytes at the end", len(d.b))
	}
	if d.err != nil {
		return storedRecord{}, d.err
	}
	if err := r.check(); err != nil {
		return storedRecord{}, err
	}
	return r, nil
}

// splitRecord splits stored record bytes into this node's feed cursor (0
// for format 0x01) and the body, the part every node holds alike.
func splitRecord(b []byte) (cursor uint64, body []byte, err error) {
	d := decoder{b: b}
	switch f := d.byte(); {
	case d.err != nil:
	case f == recordFormatCursor:
		if cursor = d.uvarint(); d.err == nil && cursor == 0 {
			d.fail("a record with a feed cursor of 0")
		}
	case f != recordFormat:
		return 0, nil, fmt.Errorf("unknown record format %d", f)
	}
	if d.err != nil {
		return 0, nil, d.err
	}
	return cursor, d.b, nil
}

// check verifies the invariants documented on storedRecord.
func (r *storedRecord) check() error {
	if r.Put.IsZero() && r.Del.IsZero() {
		return errors.New("record has neither a put nor a delete")
	}
	if !r.Put.IsZero() && r.Put.Compare(r.Del) <= 0 {
		return errors.New("record's put is not newer than its delete")
	}
	if r.Put.IsZero() && len(r.Fields) != 0 {
		return errors.New("deleted record holds fields")
	}
	for i := range r.Fields {
		f := &r.Fields[i]
		if f.Name == "" {
			return errors.New("record has a field without a name")
		}
		if i > 0 && r.Fields[i-1].Name >= f.Name {
			return errors.New("record fields are not sorted")
		}
		if f.Ver.Compare(r.Del) <= 0 || f.Ver.Compare(r.Put) > 0 {
			return fmt.Errorf("field %q has version %v outside (%v, %v]", f.Name, f.Ver, r.Del, r.Put)
		}
		if len(f.Val) == 0 {
			return fmt.Errorf("field %q has no value", f.Name)
		}
	}
	return nil
}

// encodeDeps encodes deps (site -> seq) canonically: sites sorted.
//
//	deps = uvarint(#sites) (uvarint(len(site)) site uvarint(seq))...
func encodeDeps(deps map[string]uint64) []byte {
	sites := slices.Sorted(maps.Keys(deps))
	b := binary.AppendUvarint(nil, uint64(len(sites)))
	for _, s := range sites {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
		b = binary.AppendUvarint(b, deps[s])
	}
	return b
}

func decodeDeps(b []byte) (map[string]uint64, error) {
	d := decoder{b: b}
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("%d sites in %d bytes", n, len(d.b))
	}
	deps := make(map[string]uint64, min(n, wire.MaxDeps))
	for i := uint64(0); i < n && d.err == nil; i++ {
		site := string(d.bytes(wire.MaxSiteIDBytes))
		deps[site] = d.uvarint()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d stray bytes at the end", len(d.b))
	}
	return deps, d.err
}

// encodeUints and decodeUints store small fixed tuples of counters.
func encodeUints(xs ...uint64) []byte {
	b := make([]byte, 0, 8*len(xs))
	for _, x := range xs {
		b = binary.BigEndian.AppendUint64(b, x)
	}
	return b
}

func decodeUints(b []byte, xs ...*uint64) error {
	if len(b) != 8*len(xs) {
		return fmt.Errorf("%d bytes, want %d", len(b), 8*len(xs))
	}
	for i, x := range xs {
		*x = binary.BigEndian.Uint64(b[8*i:])
	}
	return nil
}

// encodeValues encodes each value as wire.Marshal would, with one encoder
// call: wire.Marshal of the list, split at its elements. (A msgpack value
// encodes the same inside an array as alone.)
func encodeValues(vals []any) ([][]byte, error) {
	if out, ok := encodeScalars(vals); ok {
		return out, nil
	}
	enc, err := wire.Marshal(vals)
	if err != nil {
		return nil, err
	}
	d := decoder{b: enc}
	n := d.msgpackArrayHeader()
	if d.err == nil && n != uint64(len(vals)) {
		d.fail("array of %d values, want %d", n, len(vals))
	}
	out := make([][]byte, len(vals))
	for i := range out {
		out[i] = d.msgpackValue()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d stray bytes", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("split encoded values: %w", d.err)
	}
	return out, nil
}

// encodeScalars is encodeValues for values that are all nil, bool, int64,
// float64 or string (a row of a practice database, mostly), written by hand
// as wire.Marshal writes them, without the codec's reflection. ok is false
// when some value is of another type.
func encodeScalars(vals []any) (out [][]byte, ok bool) {
	n := 0
	for _, v := range vals {
		switch x := v.(type) {
		case nil, bool:
			n++
		case int64, float64:
			n += 9
		case string:
			n += 5 + len(x)
		default:
			return nil, false
		}
	}
	buf := make([]byte, 0, n)
	out = make([][]byte, len(vals))
	for i, v := range vals {
		start := len(buf)
		buf = appendScalar(buf, v)
		out[i] = buf[start:len(buf):len(buf)]
	}
	return out, true
}

// appendScalar appends the MessagePack encoding of a nil, bool, int64,
// float64 or string value exactly as wire.Marshal encodes it: the smallest
// integer form (signed), float64 always as 8 bytes, str8 for 32..255 bytes.
func appendScalar(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, 0xc0)
	case bool:
		if x {
			return append(b, 0xc3)
		}
		return append(b, 0xc2)
	case int64:
		switch {
		case x >= 0 && x <= 127:
			return append(b, byte(x))
		case x < 0 && x >= -32:
			return append(b, byte(x))
		case x >= math.MinInt8 && x <= math.MaxInt8:
			return append(b, 0xd0, byte(x))
		case x >= math.MinInt16 && x <= math.MaxInt16:
			return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(x))
		case x >= math.MinInt32 && x <= math.MaxInt32:
			return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(x))
		}
		return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(x))
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(x))
	case string:
		switch n := len(x); {
		case n < 32:
			b = append(b, 0xa0|byte(n))
		case n < 1<<8:
			b = append(b, 0xd9, byte(n))
		case n < 1<<16:
			b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
		}
		return append(b, x...)
	}
	panic(fmt.Sprintf("state: appendScalar of %T", v))
}

func (d *decoder) msgpackArrayHeader() uint64 {
	c := d.byte()
	switch {
	case c >= 0x90 && c <= 0x9f:
		return uint64(c & 0x0f)
	case c == 0xdc:
		return d.bigEndian(2)
	case c == 0xdd:
		return d.bigEndian(4)
	}
	d.fail("not a msgpack array (0x%02x)", c)
	return 0
}

func (d *decoder) bigEndian(n int) uint64 {
	if d.err != nil || len(d.b) < n {
		d.fail("truncated")
		return 0
	}
	var x uint64
	for _, c := range d.b[:n] {
		x = x<<8 | uint64(c)
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) skip(n uint64) {
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("truncated")
		return
	}
	d.b = d.b[n:]
}

// msgpackValue returns the bytes of the next complete msgpack value.
func (d *decoder) msgpackValue() []byte {
	start := d.b
	for pending := uint64(1); pending > 0 && d.err == nil; pending-- {
		c := d.byte()
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			pending += 2 * uint64(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			pending += uint64(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			d.skip(uint64(c & 0x1f))
		case c == 0xc4 || c == 0xd9:
			d.skip(d.bigEndian(1))
		case c == 0xc5 || c == 0xda:
			d.skip(d.bigEndian(2))
		case c == 0xc6 || c == 0xdb:
			d.skip(d.bigEndian(4))
		case c == 0xc7:
			d.skip(d.bigEndian(1) + 1)
		case c == 0xc8:
			d.skip(d.bigEndian(2) + 1)
		case c == 0xc9:
			d.skip(d.bigEndian(4) + 1)
		case c == 0xca || c == 0xce || c == 0xd2:
			d.skip(4)
		case c == 0xcb || c == 0xcf || c == 0xd3:
			d.skip(8)
		case c == 0xcc || c == 0xd0:
			d.skip(1)
		case c == 0xcd || c == 0xd1:
			d.skip(2)
		case c >= 0xd4 && c <= 0xd8:
			d.skip(1 + 1<<(c-0xd4))
		case c == 0xdc:
			pending += d.bigEndian(2)
		case c == 0xdd:
			pending += d.bigEndian(4)
		case c == 0xde:
			pending += 2 * d.bigEndian(2)
		case c == 0xdf:
			pending += 2 * d.bigEndian(4)
		default:
			d.fail("bad msgpack byte 0x%02x", c)
		}
	}
	if d.err != nil {
		return nil
	}
	return start[: len(start)-len(d.b) : len(start)-len(d.b)]
}
