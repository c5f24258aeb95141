package wire

import (
	"encoding/binary"
	"math"
)

// bodyKeys are the field names of an entry's body in the order the canonical
// encoding writes them (appendBody): sorted.
var bodyKeys = [...]string{"ap", "dp", "ep", "fa", "gr", "hl", "ky", "op", "pv", "sc", "si", "sl", "sq"}

// readBody reads an entry body as appendBody writes it: a map whose keys
// come in bodyKeys' order, each at most once, with operations in clear that
// readOps takes and no grants. ok is false for anything else (grants, nested
// or unusual values, another key order, a duplicate or unknown key, other
// integer or byte forms), and then the codec decides: what readBody returns
// is always what the codec would.
func readBody(b []byte, e *Entry) bool {
	r := opReader{b: b, ok: true}
	c := r.byte()
	if !r.ok || c&0xf0 != 0x80 { // at most 13 fields: a fixmap
		return false
	}
	next := 0 // the index in bodyKeys the next key must be at or after
	for range int(c & 0x0f) {
		k := r.key()
		if !r.ok {
			return false
		}
		at := next
		for at < len(bodyKeys) && bodyKeys[at] != k {
			at++
		}
		if at == len(bodyKeys) {
			return false
		}
		next = at + 1
		switch k {
		case "ap":
			e.App = r.uint32()
		case "dp":
			e.Deps = r.deps()
		case "ep":
			e.Epoch = r.uint()
		case "fa":
			e.Family = r.str()
		case "hl":
			e.HLC = r.uint()
		case "ky":
			e.Key = r.str()
		case "op":
			if len(r.b) > 0 && r.b[0] == 0xc0 {
				r.b = r.b[1:]
				e.Ops = nil
			} else {
				e.Ops = r.ops()
			}
		case "pv":
			if bin := r.bin(); len(bin) == len(e.Prev) {
				copy(e.Prev[:], bin)
			} else {
				r.ok = false
			}
		case "sc":
			e.Schema = r.uint32()
		case "si":
			e.Site = r.str()
		case "sl":
			if e.Sealed = r.bin(); len(e.Sealed) == 0 {
				r.ok = false
			}
		case "sq":
			e.Seq = r.uint()
		default: // "gr": the codec
			return false
		}
		if !r.ok {
			return false
		}
	}
	return len(r.b) == 0
}

// key reads a field name of two characters (a fixstr) without copying it.
func (r *opReader) key() string {
	if len(r.b) < 3 || r.b[0] != 0xa2 {
		r.ok = false
		return ""
	}
	k := r.b[1:3]
	r.b = r.b[3:]
	switch string(k) { // constant strings: no allocation
	case "ap":
		return "ap"
	case "dp":
		return "dp"
	case "ep":
		return "ep"
	case "fa":
		return "fa"
	case "gr":
		return "gr"
	case "hl":
		return "hl"
	case "ky":
		return "ky"
	case "op":
		return "op"
	case "pv":
		return "pv"
	case "sc":
		return "sc"
	case "si":
		return "si"
	case "sl":
		return "sl"
	case "sq":
		return "sq"
	}
	r.ok = false
	return ""
}

// uint reads an unsigned integer in one of msgpack's unsigned forms.
func (r *opReader) uint() uint64 {
	c := r.byte()
	if !r.ok {
		return 0
	}
	var n int
	switch {
	case c <= 0x7f:
		return uint64(c)
	case c == 0xcc:
		n = 1
	case c == 0xcd:
		n = 2
	case c == 0xce:
		n = 4
	case c == 0xcf:
		n = 8
	default:
		r.ok = false
		return 0
	}
	v := r.next(n)
	if !r.ok {
		return 0
	}
	var x uint64
	for _, d := range v {
		x = x<<8 | uint64(d)
	}
	return x
}

// uint32 reads an unsigned integer that fits 32 bits.
func (r *opReader) uint32() uint32 {
	x := r.uint()
	if x > math.MaxUint32 {
		r.ok = false
		return 0
	}
	return uint32(x)
}

// bin reads a byte string (bin8, bin16 or bin32), clipped so that appending
// to it cannot write into what follows.
func (r *opReader) bin() []byte {
	c := r.byte()
	var n int
	switch c {
	case 0xc4:
		n = int(r.byte())
	case 0xc5:
		v := r.next(2)
		if r.ok {
			n = int(binary.BigEndian.Uint16(v))
		}
	case 0xc6:
		v := r.next(4)
		if r.ok {
			n = int(binary.BigEndian.Uint32(v))
		}
	default:
		r.ok = false
	}
	if !r.ok {
		return nil
	}
	v := r.next(n)
	return v[:len(v):len(v)]
}

// deps reads a non-empty map of site to seq, each site once.
func (r *opReader) deps() map[string]uint64 {
	n := r.length(r.byte(), 0x80, 0x0f, 0xde, 0xdf)
	if !r.ok || n == 0 || n > len(r.b) {
		r.ok = false
		return nil
	}
	m := make(map[string]uint64, n)
	for range n {
		s := r.str()
		v := r.uint()
		if !r.ok {
			return nil
		}
		if _, dup := m[s]; dup {
			r.ok = false
			return nil
		}
		m[s] = v
	}
	return m
}
