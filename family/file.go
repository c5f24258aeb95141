package family

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ppsync/ppsync/internal/atomicfile"
)

// FormatVersion is the file format this package writes and the newest it reads.
const FormatVersion = 1

// MaxFileBytes bounds every file this package parses.
const MaxFileBytes = 64 << 10

// Kinds of file, written in each file's "type" field. The field is optional
// on read (a file without it is accepted); when present it must match.
const (
	kindInfo         = "family"
	kindAuthorityKey = "authority-key"
	kindJoinRequest  = "join-request"
	kindCertificate  = "certificate"
	kindRevocation   = "revocation"
)

// Field limits.
const (
	maxNameBytes      = 256
	maxIDBytes        = 128 // machine fingerprint, database ID
	maxReasonBytes    = 1024
	maxBootstrapAddrs = 64
	maxAddrBytes      = 1024
)

// kindNames gives the plain-language name of each file kind and what to do
// with it, for errors that find one kind where another was expected.
var kindNames = map[string]string{
	kindInfo:         "a family file (family.json)",
	kindAuthorityKey: "the family's secret authority key",
	kindJoinRequest:  "a join request (the family authority admits it with `ppsync family admit`)",
	kindCertificate:  "a member certificate",
	kindRevocation:   "a revocation",
}

func describeKind(kind string) string {
	if d, ok := kindNames[kind]; ok {
		return d
	}
	return fmt.Sprintf("a file of unknown type %.32q", kind)
}

// header is the part of every file read before the rest.
type header struct {
	Format int    `json:"format"`
	Type   string `json:"type"`
}

// checkHeader enforces the size limit, the format version and the kind.
// what names the input in errors ("certificate", a path, ...).
func checkHeader(data []byte, kind, what string) error {
	if len(data) > MaxFileBytes {
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrFormat, what, len(data), MaxFileBytes)
	}
	var h header
	if err := json.Unmarshal(data, &h); err != nil {
		return fmt.Errorf("%w: %s is not a valid %s: %s", ErrFormat, what, kind, jsonProblem(err))
	}
	if h.Type != "" && h.Type != kind {
		return fmt.Errorf("%w: %s is %s, not %s", ErrFormat, what, describeKind(h.Type), describeKind(kind))
	}
	return checkFormat(h.Format, what)
}

func checkFormat(format int, what string) error {
	switch {
	case format == FormatVersion:
		return nil
	case format > FormatVersion:
		return fmt.Errorf("%w: %s has format %d: it was written by a newer ppsync (this one reads format %d); upgrade ppsync", ErrFormat, what, format, FormatVersion)
	case format == 0:
		return fmt.Errorf("%w: %s has no \"format\" field", ErrFormat, what)
	default:
		return fmt.Errorf("%w: %s has invalid format %d", ErrFormat, what, format)
	}
}

// decodeFile checks the header, then decodes data into v.
func decodeFile(data []byte, kind, what string, v any) error {
	if err := checkHeader(data, kind, what); err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		problem := jsonProblem(err)
		if field := badField(data, v); field != "" {
			problem = fmt.Sprintf("field %.40q is malformed", field)
		}
		return fmt.Errorf("%w: %s is not a valid %s: %s", ErrFormat, what, kind, problem)
	}
	return nil
}

// badField finds the top-level field of data that fails to decode into a
// fresh value of v's type, for error messages; "" if none can be singled out.
func badField(data []byte, v any) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return ""
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	t := reflect.TypeOf(v).Elem()
	for _, name := range names {
		one, err := json.Marshal(map[string]json.RawMessage{name: fields[name]})
		if err != nil {
			continue
		}
		if json.Unmarshal(one, reflect.New(t).Interface()) != nil {
			return name
		}
	}
	return ""
}

// jsonProblem describes a decoding error without quoting the input's values
// (files may hold secrets): the position of a syntax error, or the field.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %q has the wrong type", typ.Field)
		}
		return "not a JSON object"
	default:
		return "malformed JSON or field value"
	}
}

// encodeFile renders v as indented JSON followed by a newline.
func encodeFile(v any) ([]byte, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("family: encode: %w", err)
	}
	return append(data, '\n'), nil
}

// readFile reads at most MaxFileBytes+1 bytes of path, so an oversized file
// is reported by the parser instead of being read whole.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// exists reports whether path exists; errors other than "not exist" are returned.
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// checkText validates a free-text field: valid UTF-8, no control characters,
// at most limit bytes; empty only if allowEmpty.
func checkText(what, s string, limit int, allowEmpty bool) error {
	if s == "" {
		if allowEmpty {
			return nil
		}
		return fmt.Errorf("%w: %s is empty", ErrFormat, what)
	}
	if len(s) > limit {
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrFormat, what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrFormat, what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s contains a control character", ErrFormat, what)
		}
	}
	return nil
}

// checkTime validates a timestamp field.
func checkTime(what string, t time.Time) error {
	if t.IsZero() {
		return fmt.Errorf("%w: %s is missing", ErrFormat, what)
	}
	if y := t.UTC().Year(); y < 2000 || y > 9999 {
		return fmt.Errorf("%w: %s has implausible year %d", ErrFormat, what, y)
	}
	return nil
}

// canonicalTime is the form of a time inside signed bytes. It depends only on
// the instant, not on the zone the file happened to be written in.
func canonicalTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

// stamp normalizes a caller's clock reading for a file: UTC, whole seconds.
func stamp(now time.Time) time.Time {
	return now.UTC().Truncate(time.Second)
}

// writeFileAtomic writes data to path so that a crash leaves the old file or
// the new one, never a torn one (see internal/atomicfile).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("family: %w", err)
	}
	return nil
}
