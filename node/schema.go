package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ppsync/ppsync/internal/wire"
)

// SchemaFile is the optional DATA/schema.json: the tables and field types the
// practice software writes. With it, the node refuses a local write to an
// unknown table or a field of the wrong type with a clear error, before
// anything is committed. Without it, any table and field is accepted.
// Entries from peers are not checked against it: they were checked where they
// were written, perhaps under another version of the schema.
const SchemaFile = "schema.json"

// Schema is DATA/schema.json.
//
//	{"format":1,"version":3,"tables":{
//	  "patients":{"strict":true,"fields":{"name":"string","dob":"string","age":"integer?","tags":"array"}}}}
//
// Field types: string, number, integer, bool, object, array, any; a trailing
// "?" also allows null. A strict table refuses fields it does not list.
type Schema struct {
	Format  int                    `json:"format"`
	Version int                    `json:"version"`
	Tables  map[string]TableSchema `json:"tables"`
}

// TableSchema describes one table.
type TableSchema struct {
	Strict bool              `json:"strict"`
	Fields map[string]string `json:"fields"`
}

var fieldTypes = map[string]bool{"string": true, "number": true, "integer": true, "bool": true, "object": true, "array": true, "any": true}

// loadSchema reads DATA/schema.json; a missing file gives nil (no checks).
func loadSchema(dataDir string) (*Schema, error) {
	path := filepath.Join(dataDir, SchemaFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("node: read %s: %w", path, err)
	}
	return parseSchema(b, path)
}

func parseSchema(b []byte, name string) (*Schema, error) {
	var s Schema
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("node: %s is not a valid schema: %v", name, err)
	}
	if s.Format != 1 {
		return nil, fmt.Errorf("node: %s has format %d; this ppsync reads format 1", name, s.Format)
	}
	for t, ts := range s.Tables {
		if err := wire.ValidateName("table name", t); err != nil {
			return nil, fmt.Errorf("node: %s: %w", name, err)
		}
		for f, typ := range ts.Fields {
			if !fieldTypes[strings.TrimSuffix(typ, "?")] {
				return nil, fmt.Errorf("node: %s: field %s.%s has type %q; use string, number, integer, bool, object, array or any (with ? to allow null)", name, t, f, typ)
			}
		}
	}
	return &s, nil
}

// check refuses operations the schema does not allow.
func (s *Schema) check(ops []wire.Op) error {
	if s == nil {
		return nil
	}
	for i, op := range ops {
		ts, ok := s.Tables[op.Table]
		if !ok {
			return badRequest("operation %d: unknown table %q (the schema, version %d, has %s)", i+1, op.Table, s.Version, strings.Join(s.tableNames(), ", "))
		}
		for f, v := range op.Fields {
			typ, ok := ts.Fields[f]
			if !ok {
				if ts.Strict {
					return badRequest("operation %d: table %q has no field %q in the schema (version %d)", i+1, op.Table, f, s.Version)
				}
				continue
			}
			if !typeMatches(strings.TrimSuffix(typ, "?"), strings.HasSuffix(typ, "?"), v) {
				return badRequest("operation %d: field %s.%s must be %s, not %s", i+1, op.Table, f, typ, jsonKind(v))
			}
		}
	}
	return nil
}

func (s *Schema) tableNames() []string {
	names := make([]string, 0, len(s.Tables))
	for t := range s.Tables {
		names = append(names, t)
	}
	sort.Strings(names)
	return names
}

// typeMatches checks a normalized value (see wire.NormalizeValue).
func typeMatches(typ string, nullable bool, v any) bool {
	if v == nil {
		return nullable || typ == "any"
	}
	switch typ {
	case "any":
		return true
	case "string":
		_, ok := v.(string)
		return ok
	case "integer":
		_, ok := v.(int64)
		return ok
	case "number":
		switch v.(type) {
		case int64, float64:
			return true
		}
	case "bool":
		_, ok := v.(bool)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	}
	return false
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a number"
	case bool:
		return "true/false"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}
