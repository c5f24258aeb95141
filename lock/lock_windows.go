//go:build windows

package lock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

// Windows byte-range locks are mandatory: other processes cannot read locked
// bytes. The lock therefore covers one byte far past the holder's PID (at
// 1 GiB, like SQLite's pending byte) so that other processes can still read
// who holds it.
const (
	lockOffset = 1 << 30
	lockLen    = 1
)

func overlapped() *windows.Overlapped {
	return &windows.Overlapped{Offset: lockOffset}
}

// tryLock takes an exclusive LockFileEx lock on f without waiting. The lock
// belongs to the handle, so a second open of the same file conflicts even
// within one process; Windows releases it when the process ends.
func tryLock(f *os.File) (bool, error) {
	err := windows.LockFileEx(windows.Handle(f.Fd()),
		windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY,
		0, lockLen, 0, overlapped())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, windows.ERROR_LOCK_VIOLATION):
		return false, nil
	default:
		return false, fmt.Errorf("LockFileEx: %w", err)
	}
}

func unlock(f *os.File) error {
	if err := windows.UnlockFileEx(windows.Handle(f.Fd()), 0, lockLen, 0, overlapped()); err != nil {
		return fmt.Errorf("UnlockFileEx: %w", err)
	}
	return nil
}

func stopHint(pid int) string {
	const service = "or `ppsync service stop` if it runs as a service"
	if pid <= 0 {
		return "stop it with Ctrl-C in its window, " + service
	}
	return fmt.Sprintf("stop it with Ctrl-C in its window or `taskkill /PID %d`, %s", pid, service)
}
