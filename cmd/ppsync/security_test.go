//go:build !windows

package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// certifiedNode sets up a family and one site through the command line, with
// its certificate installed: a node that `ppsync run` would start.
func certifiedNode(t *testing.T) (data string, env map[string]string) {
	t.Helper()
	tmp := t.TempDir()
	auth, data := filepath.Join(tmp, "auth"), filepath.Join(tmp, "data")
	env = map[string]string{"PPSYNC_MACHINE_ID": "perm-test-machine"}
	ppsync(t, "", env, "family", "create", "--dir", auth, "--name", "Test").want(t, exitOK)
	ppsync(t, "", env, "init", "--data", data, "--family", filepath.Join(auth, "family.json"), "--site", "clinic-a").want(t, exitOK)
	cert := filepath.Join(tmp, "a.cert")
	ppsync(t, "", env, "family", "admit", "--dir", auth, "--request", filepath.Join(data, "join-request.json"), "--out", cert).want(t, exitOK)
	ppsync(t, "", env, "install", "--data", data, cert).want(t, exitOK)
	return data, env
}

// TestRunRefusesReadableKeys: a key or the database that other users can
// read stops `ppsync run` with the file and the command that fixes it, and
// `ppsync init --data DATA` fixes it.
func TestRunRefusesReadableKeys(t *testing.T) {
	data, env := certifiedNode(t)
	for _, f := range []string{"node.key", "api.key"} {
		if m := mode(t, filepath.Join(data, f)); m != 0o600 {
			t.Errorf("init left %s with mode %04o", f, m)
		}
	}
	if m := mode(t, filepath.Join(data, "db")); m&0o077 != 0 {
		t.Errorf("init left the database directory with mode %04o", m)
	}
	for _, tc := range []struct {
		name string
		mode os.FileMode
		fix  string
	}{
		{"node.key", 0o644, "chmod 600 " + filepath.Join(data, "node.key")},
		{"api.key", 0o640, "chmod 600 " + filepath.Join(data, "api.key")},
		{"db", 0o755, "chmod -R go-rwx " + filepath.Join(data, "db")},
	} {
		path := filepath.Join(data, tc.name)
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		r := ppsync(t, "", env, "run", "--data", data, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--headless")
		r.want(t, exitError, path, "can be read by other users", tc.fix, "ppsync init --data "+data)
		if _, err := os.Stat(filepath.Join(data, "runtime.json")); err == nil {
			t.Fatal("the refused node wrote runtime.json")
		}
		r = ppsync(t, "", env, "init", "--data", data)
		r.want(t, exitOK)
		if m := mode(t, path); m&0o077 != 0 {
			t.Fatalf("init left %s with mode %04o; it printed %q", tc.name, m, r.stdout)
		}
	}
	r := ppsync(t, "", env, "init", "--data", data)
	r.want(t, exitOK)
	if want := "already readable by this account only"; !strings.Contains(r.stdout, want) {
		t.Errorf("a second init printed %q, want %q", r.stdout, want)
	}
}

// TestStatusAtAStalePort: runtime.json left by a node that stopped names a
// port another program now holds; `ppsync status` says the node is not
// running (exit 3) and that program never receives the API key.
func TestStatusAtAStalePort(t *testing.T) {
	dir := t.TempDir()
	key := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%s %v", r.URL, r.Header))
		mu.Unlock()
		http.NotFound(w, r)
	}))
	defer srv.Close()
	os.WriteFile(filepath.Join(dir, "api.key"), []byte(key+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "runtime.json"), []byte(`{"pid":1,"api":"`+srv.URL+`","peer_id":"p","addrs":[]}`), 0o644)
	ppsync(t, "", nil, "status", "--data", dir).want(t, exitNotRunning, "ppsync is not running on "+dir, "the key was not sent")
	mu.Lock()
	defer mu.Unlock()
	if len(got) == 0 {
		t.Fatal("status sent nothing to the stale port: the test proves nothing")
	}
	for _, g := range got {
		if strings.Contains(g, key) || strings.Contains(g, "Authorization") {
			t.Fatalf("the program at the stale port received the key: %s", g)
		}
	}
}
