//go:build unix

package lock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tryLock takes an exclusive flock on f without waiting. flock locks belong
// to the open file description, so a second open of the same file conflicts
// even within one process, and the kernel drops the lock when the last
// descriptor closes, which includes the process dying.
func tryLock(f *os.File) (bool, error) {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK), errors.Is(err, unix.EAGAIN):
			return false, nil
		default:
			return false, fmt.Errorf("flock: %w", err)
		}
	}
}

func unlock(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		return fmt.Errorf("flock unlock: %w", err)
	}
	return nil
}

func stopHint(pid int) string {
	const service = "or `ppsync service stop` if it runs as a service"
	if pid <= 0 {
		return "stop it with Ctrl-C in its terminal, " + service
	}
	return fmt.Sprintf("stop it with Ctrl-C in its terminal or `kill %d`, %s", pid, service)
}
