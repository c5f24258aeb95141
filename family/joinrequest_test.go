package family

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestJoinRequestRoundTrip(t *testing.T) {
	_, info, _ := testFamily(t)
	for _, role := range []Role{RoleSite, RoleRelay} {
		req := testRequest(t, info, "clinic-a", role)
		data := mustMarshal(t, req)
		got, err := ParseJoinRequest(data)
		if err != nil {
			t.Fatalf("ParseJoinRequest: %v", err)
		}
		if !bytes.Equal(mustMarshal(t, got), data) || got.PeerID != req.PeerID || !bytes.Equal(got.Key(), req.PublicKey) {
			t.Fatalf("round trip differs:\n%s\n%s", data, mustMarshal(t, got))
		}
	}
}

func TestNewJoinRequestRejects(t *testing.T) {
	_, info, _ := testFamily(t)
	req := testRequest(t, info, "clinic-a", RoleSite)
	tests := []struct {
		name        string
		site        string
		role        Role
		fp, db      string
		fragment    string
		keyOverride []byte
	}{
		{"bad site", "Clinic A", RoleSite, "fp", "db", "site ID", nil},
		{"bad role", "a", "admin", "fp", "db", "role", nil},
		{"no fingerprint", "a", RoleSite, "", "db", "machine_fingerprint", nil},
		{"no database", "a", RoleSite, "fp", "", "database_id", nil},
		{"short key", "a", RoleSite, "fp", "db", "public key", []byte{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := req.Key()
			if tt.keyOverride != nil {
				key = tt.keyOverride
			}
			_, err := NewJoinRequest(info, tt.site, tt.role, key, tt.fp, tt.db, t0)
			wantErr(t, err, ErrFormat, tt.fragment)
		})
	}
}

func TestParseJoinRequestRejects(t *testing.T) {
	_, info, _ := testFamily(t)
	valid := mustMarshal(t, testRequest(t, info, "clinic-a", RoleSite))
	other := testRequest(t, info, "clinic-b", RoleSite)
	tests := []struct {
		name     string
		edit     func(m map[string]any)
		fragment string
	}{
		{"site empty", func(m map[string]any) { m["site"] = "" }, "site ID is empty"},
		{"site upper case", func(m map[string]any) { m["site"] = "Clinic" }, "site ID"},
		{"site too long", func(m map[string]any) { m["site"] = strings.Repeat("a", 65) }, "site ID"},
		{"role unknown", func(m map[string]any) { m["role"] = "authority" }, "role"},
		{"role missing", func(m map[string]any) { delete(m, "role") }, "role"},
		{"peer id of another key", func(m map[string]any) { m["peer_id"] = other.PeerID.String() }, "not the ID of the public key"},
		{"peer id garbage", func(m map[string]any) { m["peer_id"] = "hello" }, "peer_id"},
		{"peer id missing", func(m map[string]any) { delete(m, "peer_id") }, "peer ID is missing"},
		{"public key short", func(m map[string]any) { m["public_key"] = base64.StdEncoding.EncodeToString([]byte{1, 2}) }, "public key"},
		{"public key not base64", func(m map[string]any) { m["public_key"] = "%%%" }, "public_key"},
		{"fingerprint empty", func(m map[string]any) { m["machine_fingerprint"] = "" }, "machine_fingerprint is empty"},
		{"fingerprint too long", func(m map[string]any) { m["machine_fingerprint"] = strings.Repeat("f", 129) }, "machine_fingerprint is 129 bytes"},
		{"database id empty", func(m map[string]any) { m["database_id"] = "" }, "database_id is empty"},
		{"database id too long", func(m map[string]any) { m["database_id"] = strings.Repeat("d", 129) }, "database_id is 129 bytes"},
		{"created_at missing", func(m map[string]any) { delete(m, "created_at") }, "created_at is missing"},
		{"created_at garbage", func(m map[string]any) { m["created_at"] = "yesterday" }, `field "created_at" is malformed`},
		{"family id short", func(m map[string]any) { m["family_id"] = "abc" }, "family ID"},
		{"family id upper", func(m map[string]any) { m["family_id"] = strings.ToUpper(info.FamilyID) }, "family ID"},
		{"format missing", func(m map[string]any) { delete(m, "format") }, "no \"format\" field"},
		{"format negative", func(m map[string]any) { m["format"] = -1 }, "invalid format"},
		{"format newer", func(m map[string]any) { m["format"] = 2 }, "newer ppsync"},
		{"format float", func(m map[string]any) { m["format"] = 1.5 }, "format"},
		{"type certificate", func(m map[string]any) { m["type"] = "certificate" }, "is a member certificate, not a join request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJoinRequest(editJSON(t, valid, tt.edit))
			wantErr(t, err, ErrFormat, tt.fragment)
		})
	}
	// Fields from a later format are ignored.
	if _, err := ParseJoinRequest(editJSON(t, valid, func(m map[string]any) { m["os"] = "windows"; m["hints"] = []int{1} })); err != nil {
		t.Fatalf("unknown fields: %v", err)
	}
}
