package family

import (
	"bytes"
	"strings"
	"testing"
)

// testFiles returns one valid file of every kind.
func testFiles(t *testing.T) (auth *Authority, info *Info, files map[string][]byte) {
	t.Helper()
	auth, info, _ = testFamily(t)
	if err := info.AddBootstrap("/ip4/203.0.113.7/tcp/4001/p2p/" + testPeerID(t).String()); err != nil {
		t.Fatal(err)
	}
	return auth, info, map[string][]byte{
		"info":        mustMarshal(t, info),
		"join":        mustMarshal(t, testRequest(t, info, "clinic-a", RoleSite)),
		"certificate": mustMarshal(t, testCert(t, auth, info, "clinic-a", 1)),
		"revocation":  mustMarshal(t, testRevocation(t, auth, "clinic-a", 1, "laptop stolen")),
	}
}

func parseAny(kind string, data []byte) error {
	var err error
	switch kind {
	case "info":
		_, err = ParseInfo(data)
	case "join":
		_, err = ParseJoinRequest(data)
	case "certificate":
		_, err = ParseCertificate(data)
	case "revocation":
		_, err = ParseRevocation(data)
	}
	return err
}

func TestFormatVersions(t *testing.T) {
	_, info, files := testFiles(t)
	roster := testRoster(t, info)
	for kind, valid := range files {
		t.Run(kind, func(t *testing.T) {
			tests := []struct {
				name     string
				edit     func(m map[string]any)
				target   error
				fragment string
			}{
				{"valid", func(map[string]any) {}, nil, ""},
				{"format 2", func(m map[string]any) { m["format"] = 2 }, ErrFormat, "written by a newer ppsync"},
				{"format 2 with changed fields", func(m map[string]any) { m["format"] = 2; m["site"] = map[string]any{"v": 2} }, ErrFormat, "written by a newer ppsync"},
				{"format 0", func(m map[string]any) { m["format"] = 0 }, ErrFormat, "format"},
				{"format string", func(m map[string]any) { m["format"] = "1" }, ErrFormat, `"format" has the wrong type`},
				{"unknown fields", func(m map[string]any) { m["zz_future"] = map[string]any{"a": []any{1, "b"}}; m["x"] = nil }, nil, ""},
				{"no type field", func(m map[string]any) { delete(m, "type") }, nil, ""},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					data := editJSON(t, valid, tt.edit)
					wantErr(t, parseAny(kind, data), tt.target, tt.fragment)
				})
			}
			// Unknown fields do not break signatures.
			data := editJSON(t, valid, func(m map[string]any) { m["zz_future"] = true })
			switch kind {
			case "certificate":
				c, err := ParseCertificate(data)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := roster.Add(c); err != nil {
					t.Fatalf("Add with unknown fields: %v", err)
				}
			case "revocation":
				r, err := ParseRevocation(data)
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Verify(info); err != nil {
					t.Fatalf("Verify with unknown fields: %v", err)
				}
			}
		})
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	_, _, files := testFiles(t)
	big := append(bytes.Repeat([]byte(" "), MaxFileBytes), files["certificate"]...)
	inputs := []struct {
		name     string
		data     []byte
		fragment string
	}{
		{"empty", nil, "invalid JSON"},
		{"not json", []byte("hello"), "invalid JSON"},
		{"array", []byte("[1,2]"), "not a JSON object"},
		{"null", []byte("null"), "no \"format\""},
		{"truncated", files["certificate"][:40], "invalid JSON"},
		{"trailing", append(bytes.Clone(files["certificate"]), '}'), "invalid JSON"},
		{"oversized", big, "the limit is 65536"},
	}
	for kind := range files {
		for _, in := range inputs {
			t.Run(kind+"/"+in.name, func(t *testing.T) {
				wantErr(t, parseAny(kind, in.data), ErrFormat, in.fragment)
			})
		}
	}
	// Each parser names the kind it found.
	for kind, data := range files {
		for other := range files {
			if other == kind {
				continue
			}
			err := parseAny(other, data)
			if err == nil {
				t.Errorf("%s parsed as %s", kind, other)
			}
		}
	}
}

func TestParseInstallable(t *testing.T) {
	_, _, files := testFiles(t)
	noType := func(data []byte) []byte {
		return editJSON(t, data, func(m map[string]any) { delete(m, "type") })
	}
	tests := []struct {
		name     string
		data     []byte
		want     string // "cert", "rev" or an error fragment
		wantFail bool
	}{
		{"certificate", files["certificate"], "cert", false},
		{"revocation", files["revocation"], "rev", false},
		{"certificate without type", noType(files["certificate"]), "cert", false},
		{"revocation without type", noType(files["revocation"]), "rev", false},
		{"join request", files["join"], "join request", true},
		{"join request without type", noType(files["join"]), "join request", true},
		{"family file", files["info"], "family file", true},
		{"family file without type", noType(files["info"]), "neither a certificate nor a revocation", true},
		{"garbage", []byte("{{"), "invalid JSON", true},
		{"newer certificate", editJSON(t, files["certificate"], func(m map[string]any) { m["format"] = 2 }), "newer ppsync", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, r, err := ParseInstallable(tt.data)
			if tt.wantFail {
				wantErr(t, err, ErrFormat, tt.want)
				if c != nil || r != nil {
					t.Fatal("results with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tt.want == "cert") != (c != nil) || (tt.want == "rev") != (r != nil) {
				t.Fatalf("got cert=%v rev=%v, want %s", c != nil, r != nil, tt.want)
			}
		})
	}
	if !strings.Contains(describeKind("x"), "unknown type") {
		t.Fatal("describeKind")
	}
}
