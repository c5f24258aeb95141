package wire

import (
	"encoding/binary"
	"math"
)

// UnmarshalOps decodes untrusted bytes that hold a list of operations (what
// Marshal(ops) gives: opened sealed operations). Operations whose fields are
// flat values (strings, integers, doubles, booleans, null), as Marshal
// encodes them, are read by hand; anything else (nested values, other
// encodings) goes through the codec, which decides as before. Either way the
// result is the codec's.
func UnmarshalOps(b []byte) ([]Op, error) {
	if ops, ok := readOps(b); ok {
		return ops, nil
	}
	var ops []Op
	if err := Unmarshal(b, &ops); err != nil {
		return nil, err
	}
	return ops, nil
}

// opReader reads the msgpack subset readOps takes.
type opReader struct {
	b  []byte
	ok bool
}

func (r *opReader) byte() byte {
	if len(r.b) == 0 {
		r.ok = false
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *opReader) next(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.ok = false
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// length reads the length of a container whose fix form is fix (low bits
// in mask) and whose 16- and 32-bit forms are c16 and c32.
func (r *opReader) length(c byte, fix, mask, c16, c32 byte) int {
	switch {
	case c&^mask == fix:
		return int(c & mask)
	case c == c16:
		v := r.next(2)
		if !r.ok {
			return 0
		}
		return int(binary.BigEndian.Uint16(v))
	case c == c32:
		v := r.next(4)
		if !r.ok {
			return 0
		}
		return int(binary.BigEndian.Uint32(v))
	}
	r.ok = false
	return 0
}

// str reads a msgpack string.
func (r *opReader) str() string {
	c := r.byte()
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xd9:
		n = int(r.byte())
	case c == 0xda, c == 0xdb:
		n = r.length(c, 0xff, 0, 0xda, 0xdb)
	default:
		r.ok = false
	}
	if !r.ok {
		return ""
	}
	return string(r.next(n))
}

// value reads a flat field value as the codec decodes it into an any.
func (r *opReader) value() any {
	if len(r.b) == 0 {
		r.ok = false
		return nil
	}
	c := r.b[0]
	switch {
	case c <= 0x7f:
		r.b = r.b[1:]
		return int64(c)
	case c >= 0xe0:
		r.b = r.b[1:]
		return int64(int8(c))
	case c&0xe0 == 0xa0, c == 0xd9, c == 0xda, c == 0xdb:
		return r.str()
	}
	r.b = r.b[1:]
	switch c {
	case 0xc0:
		return nil
	case 0xc2:
		return false
	case 0xc3:
		return true
	case 0xcb:
		v := r.next(8)
		if !r.ok {
			return nil
		}
		return math.Float64frombits(binary.BigEndian.Uint64(v))
	case 0xcc:
		return int64(r.byte())
	case 0xcd:
		v := r.next(2)
		if !r.ok {
			return nil
		}
		return int64(binary.BigEndian.Uint16(v))
	case 0xce:
		v := r.next(4)
		if !r.ok {
			return nil
		}
		return int64(binary.BigEndian.Uint32(v))
	case 0xd0:
		return int64(int8(r.byte()))
	case 0xd1:
		v := r.next(2)
		if !r.ok {
			return nil
		}
		return int64(int16(binary.BigEndian.Uint16(v)))
	case 0xd2:
		v := r.next(4)
		if !r.ok {
			return nil
		}
		return int64(int32(binary.BigEndian.Uint32(v)))
	case 0xd3:
		v := r.next(8)
		if !r.ok {
			return nil
		}
		return int64(binary.BigEndian.Uint64(v))
	}
	// uint64, float32, bytes, extensions, nested maps and arrays: the codec.
	r.ok = false
	return nil
}

// readOps reads b as a list of operations, each a map of "k", "t", "y" and
// a non-empty "f" of flat values, each key once; ok is false for anything
// else, and then the codec decides.
func readOps(b []byte) ([]Op, bool) {
	r := opReader{b: b, ok: true}
	ops := r.ops()
	return ops, r.ok && len(r.b) == 0
}

// ops reads a list of operations as readOps takes them, leaving what
// follows it.
func (r *opReader) ops() []Op {
	n := r.length(r.byte(), 0x90, 0x0f, 0xdc, 0xdd)
	if !r.ok || n > len(r.b) || n > MaxOps {
		r.ok = false
		return nil
	}
	ops := make([]Op, n)
	for i := range ops {
		if !r.op(&ops[i]) {
			r.ok = false
			return nil
		}
	}
	return ops
}

// op reads one operation into op; false if it is not one readOps takes.
func (r *opReader) op(op *Op) bool {
	keys := r.length(r.byte(), 0x80, 0x0f, 0xde, 0xdf)
	if !r.ok || keys > 4 {
		return false
	}
	var seen [4]bool
	for range keys {
		k := r.str()
		if !r.ok || len(k) != 1 {
			return false
		}
		var at int
		switch k[0] {
		case 'k':
			at = 0
			c := r.byte()
			if c > 0x7f {
				return false
			}
			op.Kind = OpKind(c)
		case 't':
			at = 1
			op.Table = r.str()
		case 'y':
			at = 2
			op.Key = r.str()
		case 'f':
			at = 3
			fields := r.length(r.byte(), 0x80, 0x0f, 0xde, 0xdf)
			if !r.ok || fields == 0 || fields > len(r.b) {
				return false
			}
			op.Fields = make(map[string]any, fields)
			for range fields {
				name := r.str()
				v := r.value()
				if !r.ok {
					return false
				}
				op.Fields[name] = v
			}
		default:
			return false
		}
		if !r.ok || seen[at] {
			return false
		}
		seen[at] = true
	}
	return true
}
