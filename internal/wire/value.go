package wire

import (
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"
)

func validUTF8(s string) bool { return utf8.ValidString(s) }

// NormalizeValue checks that v is a JSON-compatible field value and returns it
// in the one form that ppsync stores and encodes:
//
//	nil, bool, string (valid UTF-8), int64, float64 (finite),
//	[]any and map[string]any of those, nested at most MaxDepth deep.
//
// Integers of every Go type become int64 (unsigned values above the int64 range
// become float64, as JSON readers see them); json.Number becomes int64 when it
// is an integer in range and float64 otherwise; []byte becomes a string.
func NormalizeValue(v any) (any, error) { return normalize(v, 0) }

// returnedAsIs reports whether NormalizeValue returns v itself when it
// accepts it (a scalar in normal form), so that a caller need not store the
// result again. It must match normalize's cases.
func returnedAsIs(v any) bool {
	switch v.(type) {
	case nil, bool, int64, string, float64:
		return true
	}
	return false
}

func normalize(v any, depth int) (any, error) {
	switch x := v.(type) {
	case nil, bool, int64:
		return x, nil
	case string:
		if !validUTF8(x) {
			return nil, errorf(ErrInvalid, "string value is not valid UTF-8")
		}
		return v, nil // v, not x: boxing x again would allocate
	case []byte:
		return normalize(string(x), depth)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, errorf(ErrInvalid, "number %v is not allowed (JSON has no NaN or infinity)", x)
		}
		return v, nil
	case float32:
		return normalize(float64(x), depth)
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint:
		return normalizeUint(uint64(x)), nil
	case uint64:
		return normalizeUint(x), nil
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return i, nil
		}
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, errorf(ErrInvalid, "%q is not a number", string(x))
		}
		return normalize(f, depth)
	case []any:
		if depth >= MaxDepth {
			return nil, errorf(ErrTooLarge, "value nests deeper than %d levels", MaxDepth)
		}
		out := make([]any, len(x))
		for i, e := range x {
			n, err := normalize(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]any:
		if depth >= MaxDepth {
			return nil, errorf(ErrTooLarge, "value nests deeper than %d levels", MaxDepth)
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			if !validUTF8(k) {
				return nil, errorf(ErrInvalid, "object key is not valid UTF-8")
			}
			n, err := normalize(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	case map[any]any:
		if depth >= MaxDepth {
			return nil, errorf(ErrTooLarge, "value nests deeper than %d levels", MaxDepth)
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			var ks string
			switch kk := k.(type) {
			case string:
				ks = kk
			case []byte:
				ks = string(kk)
			default:
				return nil, errorf(ErrInvalid, "object key %v is not a string", k)
			}
			if !validUTF8(ks) {
				return nil, errorf(ErrInvalid, "object key is not valid UTF-8")
			}
			n, err := normalize(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[ks] = n
		}
		return out, nil
	}
	return nil, errorf(ErrInvalid, "value of type %T is not JSON-compatible", v)
}

func normalizeUint(u uint64) any {
	if u <= math.MaxInt64 {
		return int64(u)
	}
	return float64(u)
}
