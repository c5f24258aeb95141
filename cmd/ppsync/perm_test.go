//go:build !windows

package main

import (
	"os"
	"path/filepath"
	"strings"
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
