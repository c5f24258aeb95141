package lock

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// FileName is the lock file's name inside the data directory.
const FileName = "ppsync.lock"

// maxHolderBytes bounds how much of the lock file is read for the holder.
const maxHolderBytes = 4 << 10

// Lock is a held single-instance lock on a data directory. It is not safe
// for concurrent use.
type Lock struct {
	f    *os.File
	path string
}

// HeldError reports that another process holds the lock on Dir.
type HeldError struct {
	// Dir is the data directory.
	Dir string
	// PID is the holder's process ID; 0 when it is not known (the holder
	// has locked the file but not yet written its PID).
	PID int
	// Started is when the holder took the lock; zero when not known.
	Started time.Time
}

// Error says which process holds the lock and how to stop it, in words for
// the person at the keyboard.
func (e *HeldError) Error() string {
	if e.PID <= 0 {
		return fmt.Sprintf("another ppsync is already running on %s; %s", e.Dir, stopHint(0))
	}
	return fmt.Sprintf("another ppsync (PID %d) is already running on %s; %s", e.PID, e.Dir, stopHint(e.PID))
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// holderInfo is the lock file's content.
type holderInfo struct {
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

// Acquire takes the single-instance lock on dataDir, which must exist. When
// another process (or another Acquire in this process) holds it, Acquire
// returns a [*HeldError]. The operating system releases the lock when the
// process ends, so a lock file left behind by a killed process never blocks.
func Acquire(dataDir string) (*Lock, error) {
	path := filepath.Join(dataDir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: acquire: %w", err)
	}
	ok, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock: acquire %s: %w", path, err)
	}
	if !ok {
		h := readHolder(f)
		f.Close()
		return nil, &HeldError{Dir: dataDir, PID: h.PID, Started: h.Started}
	}
	l := &Lock{f: f, path: path}
	if err := l.writeHolder(); err != nil {
		return nil, errors.Join(fmt.Errorf("lock: acquire %s: %w", path, err), l.Release())
	}
	return l, nil
}

// writeHolder replaces the lock file's content with this process's PID and
// start time.
func (l *Lock) writeHolder() error {
	b, err := json.Marshal(holderInfo{PID: os.Getpid(), Started: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	_, err = l.f.WriteAt(append(b, '\n'), 0)
	return err
}

// Release clears the holder from the lock file and releases the lock.
// Releasing an already released Lock does nothing.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	var errs []error
	if err := f.Truncate(0); err != nil {
		errs = append(errs, err)
	}
	if err := unlock(f); err != nil {
		errs = append(errs, err)
	}
	if err := f.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lock: release %s: %w", l.path, err)
	}
	return nil
}

// Holder reports whether another process (or a Lock of this process) holds
// the lock on dataDir, and its PID (0 when not known). It takes the lock for
// a moment when it is free, and does not create the lock file.
func Holder(dataDir string) (pid int, held bool, err error) {
	path := filepath.Join(dataDir, FileName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("lock: holder: %w", err)
	}
	defer f.Close()
	ok, err := tryLock(f)
	if err != nil {
		return 0, false, fmt.Errorf("lock: holder %s: %w", path, err)
	}
	if ok {
		if err := unlock(f); err != nil {
			return 0, false, fmt.Errorf("lock: holder %s: %w", path, err)
		}
		return 0, false, nil
	}
	return readHolder(f).PID, true, nil
}

// readHolder reads the holder from the lock file. The content is only
// informative: anything unreadable gives the zero holderInfo.
func readHolder(f *os.File) holderInfo {
	buf := make([]byte, maxHolderBytes)
	n, _ := f.ReadAt(buf, 0)
	s := strings.TrimSpace(string(buf[:n]))
	var h holderInfo
	if err := json.Unmarshal([]byte(s), &h); err == nil && h.PID > 0 {
		return h
	}
	if pid, err := strconv.Atoi(s); err == nil && pid > 0 {
		return holderInfo{PID: pid}
	}
	return holderInfo{}
}
