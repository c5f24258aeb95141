//go:build !windows

package datadir

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// exposure says who besides the owner can read path ("" when nobody): any
// group or other permission bit counts.
func exposure(path string, info os.FileInfo) (string, error) {
	if m := info.Mode().Perm(); m&0o077 != 0 {
		return fmt.Sprintf("mode %04o", m), nil
	}
	return "", nil
}

// fixCommand is the command that makes path private.
func fixCommand(path string, dir bool) string {
	if dir {
		return "chmod -R go-rwx " + shellQuote(path)
	}
	return "chmod 600 " + shellQuote(path)
}

// restrict clears the group and other permission bits of path and, with
// recursive, of everything in it.
func restrict(path string, info os.FileInfo, recursive bool) (bool, error) {
	changed, err := clearGroupOther(path, info.Mode())
	if err != nil || !info.IsDir() || !recursive {
		return changed, err
	}
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == path {
			return err
		}
		i, err := d.Info()
		if err != nil {
			return err
		}
		did, err := clearGroupOther(p, i.Mode())
		changed = changed || did
		return err
	})
	return changed, err
}

func clearGroupOther(path string, mode os.FileMode) (bool, error) {
	if mode&os.ModeSymlink != 0 || mode.Perm()&0o077 == 0 {
		return false, nil
	}
	return true, os.Chmod(path, mode.Perm()&^0o077)
}

// shellQuote quotes path for a POSIX shell when it needs it.
func shellQuote(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '/' || r == '.' || r == '-' || r == '_') {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}
