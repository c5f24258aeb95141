//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// systemdDir is where units are installed; /run/systemd/system exists only
// where systemd is the running init.
const (
	systemdUnitDir = "/etc/systemd/system"
	systemdRunDir  = "/run/systemd/system"
)

func checkSystemd(name string) error {
	if _, err := os.Stat(systemdRunDir); err != nil {
		return fmt.Errorf("%w: this machine does not run systemd, so ppsync cannot install %s as a service here; start `ppsync run --data DATA --headless` from your init system instead (`ppsync service unit --data DATA` shows the command line)", errNoServiceManager, name)
	}
	return nil
}

func serviceInstall(s serviceSpec) error {
	if err := checkSystemd(s.Name); err != nil {
		return err
	}
	if err := makeLogDir(s.DataDir); err != nil {
		return err
	}
	path := filepath.Join(systemdUnitDir, s.Name+".service")
	if err := os.WriteFile(path, []byte(systemdUnit(s)), 0o644); err != nil {
		if os.IsPermission(err) {
			return fmt.Errorf("installing a service needs root: run `sudo ppsync service install --data %s`", s.DataDir)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := systemctl("daemon-reload"); err != nil {
		return err
	}
	return systemctl("enable", s.Name+".service")
}

func serviceControl(s serviceSpec, action string) error {
	if err := checkSystemd(s.Name); err != nil {
		return err
	}
	switch action {
	case "start", "stop":
		return systemctl(action, s.Name+".service")
	case "uninstall":
		_ = systemctl("stop", s.Name+".service") // may not run
		if err := systemctl("disable", s.Name+".service"); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(systemdUnitDir, s.Name+".service")); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove the unit: %w", err)
		}
		return systemctl("daemon-reload")
	}
	return fmt.Errorf("unknown service action %q", action)
}

func systemctl(args ...string) error {
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s failed: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	return nil
}

// runService runs the node; systemd controls it with signals.
func runService(ctx context.Context, run func(context.Context) error) error { return run(ctx) }

// dirOwner is the name (else the UID) of the account that owns dir; "" when
// it cannot be found.
func dirOwner(dir string) string {
	fi, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	uid := strconv.FormatUint(uint64(st.Uid), 10)
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return uid
}
