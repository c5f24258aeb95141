//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServiceUnit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data dir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"format":1,"site":"clinic-north"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := ppsync(t, "", nil, "service", "unit", "--data", dir)
	r.want(t, exitOK)
	for _, want := range []string{
		"[Unit]", "Description=ppsync keeps this site's practice database in sync",
		`run --data "` + dir + `" --headless --log-file "` + filepath.Join(dir, "logs", "ppsync.log") + `"`,
		"Restart=on-failure", "RestartPreventExitStatus=4 5", "KillSignal=SIGTERM", "WantedBy=multi-user.target",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("unit lacks %q:\n%s", want, r.stdout)
		}
	}
	spec, err := newServiceSpec(dir)
	if err != nil || spec.Name != "ppsync-clinic-north" {
		t.Fatalf("spec %+v %v", spec, err)
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
