//go:build linux

package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestServiceUnit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data dir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"format":1,"site":"clinic-north","account":{"id":"1000","name":"clinicadmin"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := ppsync(t, "", nil, "service", "unit", "--data", dir)
	r.want(t, exitOK)
	for _, want := range []string{
		"[Unit]", "Description=ppsync keeps this site's practice database in sync",
		`run --data "` + dir + `" --headless --log-file "` + filepath.Join(dir, "logs", "ppsync.log") + `"`,
		"\nUser=clinicadmin\n", "Restart=on-failure", "RestartPreventExitStatus=4 5", "KillSignal=SIGTERM", "WantedBy=multi-user.target",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("unit lacks %q:\n%s", want, r.stdout)
		}
	}
	spec, err := newServiceSpec(dir)
	if err != nil || spec.Name != "ppsync-clinic-north" || spec.User != "clinicadmin" {
		t.Fatalf("spec %+v %v", spec, err)
	}
}

// TestServiceUnitUser: the unit runs the node as the account init
// recorded; for a node set up before accounts were recorded, as the owner of
// the data directory.
func TestServiceUnitUser(t *testing.T) {
	data, _ := certifiedNode(t)
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	r := ppsync(t, "", nil, "service", "unit", "--data", data)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "\nUser="+me.Username+"\n") {
		t.Errorf("the unit of a node set up by %s lacks User=:\n%s", me.Username, r.stdout)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"format":1,"site":"old-site"}`), 0o644)
	r = ppsync(t, "", nil, "service", "unit", "--data", dir)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "\nUser="+me.Username+"\n") {
		t.Errorf("the unit of an older node owned by %s lacks User=:\n%s", me.Username, r.stdout)
	}
}

func TestServiceWithoutSystemd(t *testing.T) {
	if _, err := os.Stat(systemdRunDir); err == nil {
		t.Skip("this machine runs systemd: installing would change it")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"format":1,"site":"clinic-north"}`), 0o644)
	r := ppsync(t, "", nil, "service", "install", "--data", dir)
	r.want(t, exitError, "does not run systemd")
	if _, err := os.Stat(filepath.Join(systemdUnitDir, "ppsync-clinic-north.service")); err == nil {
		t.Fatal("a unit was written without systemd")
	}
	ppsync(t, "", nil, "service", "install", "--data", t.TempDir()).want(t, exitError, "not a ppsync data directory")
}

// TestServiceLogDirOwner: `sudo ppsync service install` makes DATA/logs for
// the service's log file, and gives it to the owner of the data directory
// (the account the service runs as), also when it was made by root before;
// a root-owned logs directory left the node without its log file. Needs
// root, as install does.
func TestServiceLogDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a directory to another account needs root")
	}
	const uid, gid = 65534, 65534 // nobody
	owner := func(path string) (uint32, uint32) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	for _, before := range []bool{false, true} {
		data := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(data, uid, gid); err != nil {
			t.Fatal(err)
		}
		if before { // made by root earlier
			if err := os.Mkdir(filepath.Join(data, "logs"), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if err := makeLogDir(data); err != nil {
				t.Fatal(err)
			}
		}
		if u, g := owner(filepath.Join(data, "logs")); u != uid || g != gid {
			t.Errorf("logs existed before: %v: owned by %d:%d, want the data directory's %d:%d", before, u, g, uid, gid)
		}
		fi, _ := os.Stat(filepath.Join(data, "logs"))
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("logs has mode %v, want 0700", fi.Mode().Perm())
		}
	}
	// A user who owns the data directory changes nothing.
	mine := t.TempDir()
	if err := makeLogDir(mine); err != nil {
		t.Fatal(err)
	}
	if u, _ := owner(filepath.Join(mine, "logs")); u != 0 {
		t.Errorf("logs of root's own data directory owned by %d", u)
	}
}
