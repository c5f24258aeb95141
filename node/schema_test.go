package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/node/api"
)

func TestSchemaRefusesUnknownTablesAndWrongTypes(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	schema := `{"format":1,"version":3,"tables":{
	  "patients":{"strict":true,"fields":{"name":"string","age":"integer?","balance":"number","tags":"array","address":"object","vip":"bool","extra":"any"}},
	  "notes":{"fields":{"text":"string"}}}}`
	if err := os.WriteFile(filepath.Join(f.data, SchemaFile), []byte(schema), 0o644); err != nil {
		t.Fatal(err)
	}
	r := f.start()
	ok := []string{
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"name":"Ada","age":36,"balance":12.5,"tags":["a"],"address":{"city":"Bern"},"vip":true,"extra":null}}]}`,
		`{"ops":[{"op":"put","table":"patients","key":"p2","fields":{"age":null,"balance":3}}]}`,
		`{"ops":[{"op":"put","table":"notes","key":"n1","fields":{"text":"x","anything":1}}]}`,
		`{"ops":[{"op":"delete","table":"patients","key":"p2"}]}`,
	}
	for _, body := range ok {
		if code := r.call(t, "POST", "/v1/transactions", body, nil); code != 200 {
			t.Fatalf("%s: %d", body, code)
		}
	}
	bad := map[string]string{
		`{"ops":[{"op":"put","table":"patinets","key":"p1","fields":{"name":"Ada"}}]}`:                                                                         `unknown table "patinets"`,
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"age":"36"}}]}`:                                                                           "field patients.age must be integer?, not a string",
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"age":36.5}}]}`:                                                                           "must be integer?, not a number",
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"name":null}}]}`:                                                                          "must be string, not null",
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"nickname":"A"}}]}`:                                                                       `has no field "nickname"`,
		`{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"vip":"yes"}}]}`:                                                                          "must be bool",
		`{"transactions":[{"ops":[{"op":"put","table":"notes","key":"n2","fields":{"text":"ok"}}]},{"ops":[{"op":"put","table":"x","key":"k","fields":{}}]}]}`: "transaction 2",
	}
	for body, want := range bad {
		path := "/v1/transactions"
		if strings.HasPrefix(body, `{"transactions"`) {
			path += "/batch"
		}
		var e api.APIError
		if code := r.call(t, "POST", path, body, &e); code != 400 || !strings.Contains(e.Error, want) {
			t.Errorf("%s: %d %q, want 400 containing %q", body, code, e.Error, want)
		}
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Frontier["clinic-a"] != uint64(len(ok)) {
		t.Fatalf("refused writes committed something: %v", st.Frontier)
	}
}

func TestSchemaFileErrors(t *testing.T) {
	for body, want := range map[string]string{
		`{"format":2,"tables":{}}`:                            "format 2",
		`{"format":1,"tables":{"t":{"fields":{"a":"text"}}}}`: `type "text"`,
		`{"format":1,"tablez":{}}`:                            "not a valid schema",
		`not json`:                                            "not a valid schema",
	} {
		if _, err := parseSchema([]byte(body), SchemaFile); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}
