package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/ppsync/ppsync/internal/wire"
)

// Checking `ppsync import` lines before they are sent, so that a bad line
// is reported with its line number instead of failing its whole batch.

// importLine is the shape of one line, decoded only to check it; the line
// itself is sent as written.
type importLine struct {
	Ops *[]importOp `json:"ops"`
}

type importOp struct {
	Op     string          `json:"op"`
	Table  *string         `json:"table"`
	Key    *string         `json:"key"`
	Fields json.RawMessage `json:"fields"`
}

// checkImportLine checks that a line is one transaction the node can take,
// and says what is wrong in plain words if not.
func checkImportLine(line []byte) error {
	if line[0] != '{' {
		return errors.New(`not a JSON object; each line must look like {"ops":[{"op":"put","table":"t","key":"k","fields":{}}]}`)
	}
	var tx importLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields() // as the node does: a typo is not silently dropped
	if err := dec.Decode(&tx); err != nil {
		return describeLineError(err)
	}
	if dec.InputOffset() != int64(len(line)) {
		return errors.New("holds more than one JSON value; put one transaction per line")
	}
	if tx.Ops == nil {
		return errors.New(`has no "ops" array`)
	}
	ops := *tx.Ops
	if len(ops) == 0 {
		return errors.New(`"ops" is empty; a transaction needs at least one operation`)
	}
	if len(ops) > wire.MaxOps {
		return fmt.Errorf("has %d operations, the limit is %d", len(ops), wire.MaxOps)
	}
	for i, op := range ops {
		if err := checkImportOp(op); err != nil {
			return fmt.Errorf("operation %d: %v", i+1, err)
		}
	}
	return nil
}

func checkImportOp(op importOp) error {
	if op.Op != "put" && op.Op != "delete" {
		if op.Op == "" {
			return errors.New(`"op" is missing; it must be "put" or "delete"`)
		}
		return fmt.Errorf(`"op" is %q; it must be "put" or "delete"`, truncate(op.Op, 20))
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"table", op.Table}, {"key", op.Key}} {
		switch {
		case f.v == nil:
			return fmt.Errorf("%q is missing", f.name)
		case *f.v == "":
			return fmt.Errorf("%q is empty", f.name)
		case len(*f.v) > wire.MaxNameBytes:
			return fmt.Errorf("%q is %d bytes, the limit is %d", f.name, len(*f.v), wire.MaxNameBytes)
		}
	}
	fields := bytes.TrimSpace(op.Fields)
	isNull := len(fields) == 0 || string(fields) == "null"
	switch {
	case op.Op == "put" && isNull:
		return errors.New(`a put needs "fields", a JSON object`)
	case op.Op == "put" && fields[0] != '{':
		return errors.New(`"fields" must be a JSON object`)
	case op.Op == "delete" && !isNull && !isEmptyObject(fields):
		return errors.New(`a delete takes no "fields"`)
	}
	return nil
}

// isEmptyObject reports whether a JSON value is {} (with any spacing).
func isEmptyObject(v []byte) bool {
	return len(v) >= 2 && v[0] == '{' && len(bytes.TrimSpace(v[1:len(v)-1])) == 0 && v[len(v)-1] == '}'
}

// describeLineError turns a JSON decoding error into plain words.
func describeLineError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("not valid JSON (%v at byte %d)", syn, syn.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errors.New("not valid JSON (it ends too early)")
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return fmt.Errorf("is a JSON %s, not an object", typ.Value)
		}
		return fmt.Errorf("%q is a %s; it must be %s", field, typ.Value, describeType(typ.Type))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("has the unknown field %s (known: ops; op, table, key, fields)", name)
	}
	return fmt.Errorf("not valid JSON (%v)", err)
}

func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a JSON value"
		}
		return "an array"
	case reflect.Struct:
		return "an object"
	case reflect.String:
		return "a string"
	}
	return "something else"
}
