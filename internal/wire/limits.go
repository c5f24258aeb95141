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

// Sentinel errors. Errors returned by this package wrap one of these, so callers
// can count rejections by reason with errors.Is.
var (
	ErrTooLarge  = errors.New("wire: too large")
	ErrMalformed = errors.New("wire: malformed")
	ErrInvalid   = errors.New("wire: invalid")
	ErrSignature = errors.New("wire: bad signature")
)

// ValidateSiteID reports whether s is a usable site ID: 1 to 64 characters of
// lower-case letters, digits, '-', '_' and '.', starting with a letter or digit.
func ValidateSiteID(s string) error {
	if s == "" {
		return fmt.Errorf("%w: site ID is empty", ErrInvalid)
	}
	if len(s) > MaxSiteIDBytes {
		return fmt.Errorf("%w: site ID %.20q... is %d bytes, the limit is %d", ErrInvalid, s, len(s), MaxSiteIDBytes)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return fmt.Errorf("%w: site ID %q may hold only lower-case letters, digits, '-', '_' and '.', and must start with a letter or digit", ErrInvalid, s)
		}
	}
	return nil
}

// ValidateName checks a table name, record key or field name: 1 to 256 bytes of valid UTF-8.
func ValidateName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	if len(s) > MaxNameBytes {
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrTooLarge, what, len(s), MaxNameBytes)
	}
	if !validUTF8(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	return nil
}
