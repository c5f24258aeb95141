package node

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
)

func readRuntime(t *testing.T, dir string) api.Runtime {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, RuntimeFile))
	if err != nil {
		t.Fatal(err)
	}
	var rt api.Runtime
	if err := json.Unmarshal(b, &rt); err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestAPIBeyondLoopbackServesTLS: an API on every interface serves HTTPS
// with the data directory's certificate, runtime.json carries its
// fingerprint, the client pins it, and plain HTTP or another certificate
// gets nowhere.
func TestAPIBeyondLoopbackServesTLS(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	if m := mode(t, filepath.Join(f.data, datadir.APITLSKeyFile)); m != 0o600 && runtime.GOOS != "windows" {
		t.Fatalf("init wrote the TLS key with mode %04o", m)
	}
	cfg := f.config()
	cfg.API = "0.0.0.0:0"
	f.startConfig(cfg)
	rt := readRuntime(t, f.data)
	if !strings.HasPrefix(rt.API, "https://127.0.0.1:") || len(rt.TLSFingerprint) != 64 {
		t.Fatalf("runtime.json: api %q fingerprint %q", rt.API, rt.TLSFingerprint)
	}
	c, err := api.NewClient(f.data)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.Status(context.Background()); err != nil || st.Site != "clinic-a" {
		t.Fatalf("status over pinned TLS: %+v %v", st, err)
	}
	// Plain HTTP to the TLS port: no answer the client accepts.
	plain := "http://" + strings.TrimPrefix(rt.API, "https://")
	if resp, err := http.Get(plain + "/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the TLS port answered plain HTTP")
		}
	}
	// Another fingerprint: refused before anything is sent.
	other, err := api.NewClientPinned(rt.API, "k", strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Verify(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client pinning another certificate: %v", err)
	}
	// Without a fingerprint an https client cannot be made.
	if _, err := api.NewClientPinned(rt.API, "k", ""); err == nil {
		t.Fatal("an https client without a fingerprint was made")
	}
}

// TestAPIInsecureWarns: api_insecure serves a non-loopback API as plain
// HTTP, with a warning.
func TestAPIInsecureWarns(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	cfg := f.config()
	cfg.API = "0.0.0.0:0"
	cfg.APIInsecure = true
	var out syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&out, nil))
	f.startConfig(cfg)
	rt := readRuntime(t, f.data)
	if !strings.HasPrefix(rt.API, "http://127.0.0.1:") || rt.TLSFingerprint != "" {
		t.Fatalf("runtime.json: %+v", rt)
	}
	if !strings.Contains(out.String(), "over plain HTTP (api_insecure = true)") {
		t.Fatalf("no warning in the log:\n%s", out.String())
	}
	c, err := api.NewClient(f.data)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestHostHeaderAllowlist: a request naming another host (DNS rebinding: a
// web site whose name resolves to 127.0.0.1) is refused with 421; loopback
// names and api_hosts pass.
func TestHostHeaderAllowlist(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	cfg := f.config()
	cfg.APIHosts = []string{"Reception-PC.clinic.local"}
	r := f.startConfig(cfg)
	_, port, _ := strings.Cut(strings.TrimPrefix(r.base, "http://"), ":")
	for host, want := range map[string]int{
		"rebind.attacker.example:" + port:   http.StatusMisdirectedRequest,
		"192.168.1.20:" + port:              http.StatusMisdirectedRequest,
		"localhost:" + port:                 http.StatusOK,
		"127.0.0.1:" + port:                 http.StatusOK,
		"[::1]:" + port:                     http.StatusOK,
		"reception-pc.clinic.local:" + port: http.StatusOK,
	} {
		req, _ := http.NewRequest("GET", r.base+"/v1/status", nil)
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+r.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.APIError
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, resp.StatusCode, want)
		}
		if want != http.StatusOK && !strings.Contains(e.Error, "api_hosts") {
			t.Errorf("Host %s: message %q does not say how to allow it", host, e.Error)
		}
	}
}

// TestTLSCertDamagedRefusesStart: a non-loopback API whose certificate
// cannot be used is not served at all (no fallback to plain HTTP).
func TestTLSCertDamagedRefusesStart(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	if err := os.WriteFile(filepath.Join(f.data, datadir.APITLSCertFile), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := f.config()
	cfg.API = "0.0.0.0:0"
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "delete both files") || !strings.Contains(err.Error(), "api_insecure") {
		t.Fatalf("open with a damaged certificate: %v", err)
	}
	if errors.Is(err, ErrRefused) {
		t.Fatal("a damaged certificate is not a binding refusal")
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
