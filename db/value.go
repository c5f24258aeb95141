package db

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// BlobKey marks a byte string in a record's fields: {"$blob": "BASE64"}.
// Fields hold JSON-compatible values only, and a text value is never an
// object, so the form cannot be mistaken for anything else.
const BlobKey = "$blob"

// Blob returns the field value that stands for b.
func Blob(b []byte) map[string]any {
	return map[string]any{BlobKey: base64.StdEncoding.EncodeToString(b)}
}

// AsBlob returns the bytes of a blob field value.
func AsBlob(v any) ([]byte, bool) {
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return nil, false
	}
	s, ok := m[BlobKey].(string)
	if !ok {
		return nil, false
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, false
	}
	return b, true
}

// EncodeKey turns a row's primary key values into a record key: a single
// integer or text column gives its decimal or text form; anything else (a
// key of several columns, a real or a blob) gives the JSON array of the
// values, as fields encode them.
func EncodeKey(vals []any) (string, error) {
	if len(vals) == 1 {
		switch x := vals[0].(type) {
		case int64:
			return strconv.FormatInt(x, 10), nil
		case string:
			if x != "" && !strings.HasPrefix(x, "[") {
				return x, nil
			}
		}
	}
	b, err := json.Marshal(vals)
	if err != nil {
		return "", fmt.Errorf("db: encode key %v: %w", vals, err)
	}
	return string(b), nil
}

// DecodeKey turns a record key of t back into its primary key values,
// guided by the declared types of the key's columns.
func DecodeKey(t *Table, key string) ([]any, error) {
	if len(t.PK) == 1 && !strings.HasPrefix(key, "[") {
		c, _ := t.Column(t.PK[0])
		if IntegerType(c.Type) {
			i, err := strconv.ParseInt(key, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: key %q of table %s is not an integer", ErrValue, key, t.Name)
			}
			return []any{i}, nil
		}
		return []any{key}, nil
	}
	dec := json.NewDecoder(strings.NewReader(key))
	dec.UseNumber()
	var raw []any
	if err := dec.Decode(&raw); err != nil || len(raw) != len(t.PK) {
		return nil, fmt.Errorf("%w: key %q does not name the %d primary key column(s) of table %s", ErrValue, key, len(t.PK), t.Name)
	}
	out := make([]any, len(raw))
	for i, v := range raw {
		if n, ok := v.(json.Number); ok {
			if iv, err := n.Int64(); err == nil && !strings.ContainsAny(string(n), ".eE") {
				out[i] = iv
			} else if f, err := n.Float64(); err == nil {
				out[i] = f
			}
			continue
		}
		if b, ok := AsBlob(v); ok {
			out[i] = b
			continue
		}
		out[i] = v
	}
	return out, nil
}

// IntegerType reports whether a declared column type has integer affinity
// (SQLite's rule: the name contains "INT"; PostgreSQL's integer types too).
func IntegerType(decl string) bool {
	d := strings.ToUpper(decl)
	return strings.Contains(d, "INT") || d == "SERIAL" || d == "BIGSERIAL" || d == "SMALLSERIAL"
}
