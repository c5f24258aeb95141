package wire

import (
	"errors"
	"fmt"
)

// Hard limits on an entry. Each one is checked when an entry is built and when
// one is decoded, and breaking it gives an error that names the limit.
const (
	// MaxEntryBytes is the largest encoded entry (envelope: body and signature).
	MaxEntryBytes = 512 << 10
	// MaxNameBytes is the longest table name, record key or field name.
	MaxNameBytes = 256
	// MaxOps is the most operations one entry may carry.
	MaxOps = 10000
	// MaxDepth is the deepest nesting of objects and arrays inside a field value.
	MaxDepth = 32
	// MaxSiteIDBytes is the longest site ID.
	MaxSiteIDBytes = 64
	// MaxDeps is the most sites a writer's frontier (deps) may name.
	MaxDeps = 4096
)

// Sentinel errors. Every broken rule this package reports matches one of these
// with errors.Is, so callers can count rejections by reason; its message is
// plain, without the sentinel's words (see ruleError).
var (
	ErrTooLarge  = errors.New("wire: too large")
	ErrMalformed = errors.New("wire: malformed")
	ErrInvalid   = errors.New("wire: invalid")
	ErrSignature = errors.New("wire: bad signature")
	ErrChain     = errors.New("wire: broken chain")
)

// ruleError is a broken rule: its message says which, in plain words, for
// whoever wrote the entry or the operation (the API and the command line
// show it as it is); it matches its sentinel with errors.Is.
type ruleError struct {
	kind error // one of the sentinels above
	msg  string
}

func (e *ruleError) Error() string { return e.msg }
func (e *ruleError) Unwrap() error { return e.kind }

// errorf returns a broken rule of the given kind.
func errorf(kind error, format string, a ...any) error {
	return &ruleError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// ValidateSiteID reports whether s is a usable site ID: 1 to 64 characters of
// lower-case letters, digits, '-', '_' and '.', starting with a letter or digit.
func ValidateSiteID(s string) error {
	if s == "" {
		return errorf(ErrInvalid, "site ID is empty")
	}
	if len(s) > MaxSiteIDBytes {
		return errorf(ErrInvalid, "site ID %.20q... is %d bytes, the limit is %d", s, len(s), MaxSiteIDBytes)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return errorf(ErrInvalid, "site ID %q may hold only lower-case letters, digits, '-', '_' and '.', and must start with a letter or digit", s)
		}
	}
	return nil
}

// ValidateName checks a table name, record key or field name: 1 to 256 bytes of valid UTF-8.
func ValidateName(what, s string) error {
	if s == "" {
		return errorf(ErrInvalid, "%s is empty", what)
	}
	if len(s) > MaxNameBytes {
		return errorf(ErrTooLarge, "%s is %d bytes, the limit is %d", what, len(s), MaxNameBytes)
	}
	if !validUTF8(s) {
		return errorf(ErrInvalid, "%s is not valid UTF-8", what)
	}
	return nil
}

// The one check of a transaction's operations. Every path that takes
// operations goes through it: the API and `ppsync import` with CheckOps (the
// operations as people write them), own writes of any origin (the practice
// database's capture included) and entries from peers with ValidateOps. Its
// messages are the ones people see, so they name things as the JSON does
// ("op", "table", "key", "fields").

// OpInput is one operation as a writer spells it: an operation of the API's
// JSON, of a line of `ppsync import`.
type OpInput struct {
	Op     string // "put" or "delete"
	Table  string
	Key    string
	Fields map[string]any // a put's fields (nil: none); a delete takes none
}

// CheckOps checks a transaction as a writer spells it and returns its
// operations, with normalized field values (see NormalizeValue). It is the
// same check as ValidateOps, with the operation kinds given by name.
func CheckOps(in []OpInput) ([]Op, error) {
	if err := checkOpCount(len(in)); err != nil {
		return nil, err
	}
	out := make([]Op, len(in))
	for i, o := range in {
		op := Op{Table: o.Table, Key: o.Key, Fields: o.Fields}
		switch o.Op {
		case "put":
			op.Kind = OpPut
			if op.Fields == nil {
				op.Fields = map[string]any{} // a record with no fields (yet)
			}
		case "delete":
			op.Kind = OpDelete
		case "":
			return nil, errorf(ErrInvalid, `operation %d: "op" is missing; it must be "put" or "delete"`, i+1)
		default:
			return nil, errorf(ErrInvalid, `operation %d: "op" is %q; it must be "put" or "delete"`, i+1, clip(o.Op, 20))
		}
		if err := checkOp(i, &op); err != nil {
			return nil, err
		}
		out[i] = op
	}
	return out, nil
}

// ValidateOps checks a transaction's operations and normalizes their field
// values in place. It is what a writer calls before an entry is stamped, and
// part of every entry's validation.
func ValidateOps(ops []Op) error {
	if err := checkOpCount(len(ops)); err != nil {
		return err
	}
	for i := range ops {
		if err := checkOp(i, &ops[i]); err != nil {
			return err
		}
	}
	return nil
}

func checkOpCount(n int) error {
	if n == 0 {
		return errorf(ErrInvalid, `"ops" is empty; a transaction needs at least one operation: {"ops":[{"op":"put","table":"T","key":"K","fields":{...}}]}`)
	}
	if n > MaxOps {
		return errorf(ErrTooLarge, "a transaction has %d operations, the limit is %d", n, MaxOps)
	}
	return nil
}

// checkOp checks operation i (counted from 0) and normalizes its values.
func checkOp(i int, op *Op) error {
	if op.Kind != OpPut && op.Kind != OpDelete {
		return errorf(ErrInvalid, `operation %d: unknown kind %d; it must be put or delete`, i+1, op.Kind)
	}
	if err := ValidateName(`"table"`, op.Table); err != nil {
		return fmt.Errorf("operation %d: %w", i+1, err)
	}
	if err := ValidateName(`"key"`, op.Key); err != nil {
		return fmt.Errorf("operation %d: %w", i+1, err)
	}
	if op.Kind == OpDelete {
		if len(op.Fields) != 0 {
			return errorf(ErrInvalid, `operation %d: a delete takes no "fields" (it deletes the whole record %s/%s)`, i+1, op.Table, op.Key)
		}
		op.Fields = nil
		return nil
	}
	for name, v := range op.Fields {
		if err := ValidateName("field name", name); err != nil {
			return fmt.Errorf("operation %d (%s/%s): %w", i+1, op.Table, op.Key, err)
		}
		nv, err := NormalizeValue(v)
		if err != nil {
			return fmt.Errorf("operation %d (%s/%s) field %q: %w", i+1, op.Table, op.Key, name, err)
		}
		if !returnedAsIs(v) {
			op.Fields[name] = nv
		}
	}
	return nil
}

// clip shortens s to at most n characters for a message.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
