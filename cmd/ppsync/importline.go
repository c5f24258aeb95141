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
// and says what is wrong in plain words if not. The line's JSON shape is
// checked here; its operations by the one check every write goes through
// (wire.CheckOps), which the node applies too, with the same messages.
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
	ops := make([]wire.OpInput, len(*tx.Ops))
	for i, op := range *tx.Ops {
		in, err := importOpInput(op)
		if err != nil {
			return fmt.Errorf("operation %d: %v", i+1, err)
		}
		ops[i] = in
	}
	_, err := wire.CheckOps(ops)
	return err
}

// importOpInput checks the shape of one operation of a line (a line names
// the table and the key, and gives a put its fields as an object) and
// decodes it for wire.CheckOps.
func importOpInput(op importOp) (wire.OpInput, error) {
	in := wire.OpInput{Op: op.Op}
	for _, f := range []struct {
		name string
		v    *string
		to   *string
	}{{"table", op.Table, &in.Table}, {"key", op.Key, &in.Key}} {
		if f.v == nil {
			return in, fmt.Errorf("%q is missing", f.name)
		}
		*f.to = *f.v
	}
	fields := bytes.TrimSpace(op.Fields)
	isNull := len(fields) == 0 || string(fields) == "null"
	switch {
	case op.Op == "put" && isNull:
		return in, errors.New(`a put needs "fields", a JSON object`)
	case isNull:
		return in, nil
	case fields[0] != '{':
		return in, errors.New(`"fields" must be a JSON object`)
	}
	dec := json.NewDecoder(bytes.NewReader(fields))
	dec.UseNumber() // as the node does: integers keep every digit
	if err := dec.Decode(&in.Fields); err != nil {
		return in, describeLineError(err)
	}
	return in, nil
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
