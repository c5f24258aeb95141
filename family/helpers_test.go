package family

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)

// testFamily creates a family in a fresh directory.
func testFamily(t testing.TB) (*Authority, *Info, string) {
	t.Helper()
	dir := t.TempDir()
	auth, info, err := CreateFamily(dir, "Riverside Dental", t0)
	if err != nil {
		t.Fatalf("CreateFamily: %v", err)
	}
	return auth, info, dir
}

// testRequest builds a join request for a fresh node key.
func testRequest(t testing.TB, info *Info, site string, role Role) *JoinRequest {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req, err := NewJoinRequest(info, site, role, pub, "fp-"+site, "db-"+site, t0)
	if err != nil {
		t.Fatalf("NewJoinRequest: %v", err)
	}
	return req
}

// testCert issues a certificate without the registry.
func testCert(t testing.TB, auth *Authority, info *Info, site string, epoch uint64) *Certificate {
	t.Helper()
	c, err := auth.issue(testRequest(t, info, site, RoleSite), epoch, 0, t0.Add(time.Duration(epoch)*time.Hour))
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	return c
}

func testRevocation(t testing.TB, auth *Authority, site string, epoch uint64, reason string) *Revocation {
	t.Helper()
	r, err := auth.revoke(site, epoch, reason, t0.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	return r
}

func testRoster(t testing.TB, info *Info) *Roster {
	t.Helper()
	r, err := NewRoster(info)
	if err != nil {
		t.Fatalf("NewRoster: %v", err)
	}
	return r
}

func mustMarshal(t testing.TB, v interface{ Marshal() ([]byte, error) }) []byte {
	t.Helper()
	data, err := v.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return data
}

// editJSON decodes a JSON object, lets edit change it, and re-encodes it.
func editJSON(t testing.TB, data []byte, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wantErr checks that err wraps target (nil target: no error) and mentions
// every fragment.
func wantErr(t testing.TB, err, target error, fragments ...string) {
	t.Helper()
	if target == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}
