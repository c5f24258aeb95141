package lock

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

func fakeFiles(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		s, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
		}
		return []byte(s), nil
	}
}

func TestReadMachineID(t *testing.T) {
	const etc, dbus = "/etc/machine-id", "/var/lib/dbus/machine-id"
	paths := []string{etc, dbus}
	for name, tc := range map[string]struct {
		files map[string]string
		want  string
	}{
		"etc":           {map[string]string{etc: "aaaa\n", dbus: "bbbb\n"}, "aaaa"},
		"dbus fallback": {map[string]string{dbus: "bbbb\n"}, "bbbb"},
		"empty etc":     {map[string]string{etc: "\n", dbus: "bbbb"}, "bbbb"},
		"uninitialized": {map[string]string{etc: "uninitialized\n", dbus: "bbbb"}, "bbbb"},
		"none":          {map[string]string{}, ""},
		"both unusable": {map[string]string{etc: "", dbus: " "}, ""},
	} {
		got, err := readMachineID(fakeFiles(tc.files), paths)
		if tc.want == "" {
			if !errors.Is(err, ErrNoMachineID) || !strings.Contains(err.Error(), EnvMachineID) {
				t.Errorf("%s: %q, %v; want ErrNoMachineID naming %s", name, got, err, EnvMachineID)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, tc.want)
		}
	}
	denied := func(string) ([]byte, error) { return nil, os.ErrPermission }
	if _, err := readMachineID(denied, paths); !errors.Is(err, os.ErrPermission) {
		t.Errorf("unreadable file: %v, want the read error", err)
	}
}
