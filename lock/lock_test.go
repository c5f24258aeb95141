package lock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// envHoldDir tells TestHelperHold, run as a child process, which directory
// to lock.
const envHoldDir = "PPSYNC_LOCK_TEST_HOLD_DIR"

func mustAcquire(t *testing.T, dir string) *Lock {
	t.Helper()
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Release(); err != nil {
			t.Errorf("Release: %v", err)
		}
	})
	return l
}

func wantHeld(t *testing.T, err error, pid int) *HeldError {
	t.Helper()
	if !errors.Is(err, ErrHeld) {
		t.Fatalf("err = %v, want ErrHeld", err)
	}
	var he *HeldError
	if !errors.As(err, &he) {
		t.Fatalf("err = %T, want *HeldError", err)
	}
	if he.PID != pid {
		t.Fatalf("HeldError.PID = %d, want %d", he.PID, pid)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("PID %d", pid)) {
		t.Errorf("message %q does not name PID %d", err, pid)
	}
	return he
}

func TestAcquireTwiceInProcess(t *testing.T) {
	dir := t.TempDir()
	l := mustAcquire(t, dir)
	_, err := Acquire(dir)
	he := wantHeld(t, err, os.Getpid())
	if he.Dir != dir || he.Started.IsZero() {
		t.Errorf("HeldError = %+v, want Dir %s and a start time", he, dir)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	mustAcquire(t, dir)
}

func TestAcquireMissingDir(t *testing.T) {
	_, err := Acquire(filepath.Join(t.TempDir(), "absent"))
	if err == nil || errors.Is(err, ErrHeld) {
		t.Fatalf("Acquire in a missing directory: %v, want a plain error", err)
	}
}

func TestHolder(t *testing.T) {
	dir := t.TempDir()
	check := func(wantPID int, wantHeld bool) {
		t.Helper()
		pid, held, err := Holder(dir)
		if err != nil || pid != wantPID || held != wantHeld {
			t.Fatalf("Holder = %d, %v, %v; want %d, %v, nil", pid, held, err, wantPID, wantHeld)
		}
	}
	check(0, false) // no lock file yet
	if _, err := os.Stat(filepath.Join(dir, FileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Holder created the lock file: %v", err)
	}
	l := mustAcquire(t, dir)
	check(os.Getpid(), true)
	check(os.Getpid(), true) // asking does not disturb the holder
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	check(0, false)
	mustAcquire(t, dir) // Holder left the lock free
}

func TestHeldErrorMessage(t *testing.T) {
	msg := (&HeldError{Dir: "/srv/ppsync", PID: 1234}).Error()
	for _, want := range []string{"PID 1234", "/srv/ppsync", "Ctrl-C", "ppsync service stop"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	kill := "kill 1234"
	if runtime.GOOS == "windows" {
		kill = "taskkill /PID 1234"
	}
	if !strings.Contains(msg, kill) {
		t.Errorf("message %q lacks %q", msg, kill)
	}
	if msg := (&HeldError{Dir: "/d"}).Error(); strings.Contains(msg, "PID") || !strings.Contains(msg, "already running") {
		t.Errorf("unknown-PID message %q", msg)
	}
}

func TestReadHolderTolerant(t *testing.T) {
	for content, want := range map[string]int{
		"":                        0,
		"garbage":                 0,
		"42\n":                    42,
		`{"pid":7}`:               7,
		`{"pid":-3}`:              0,
		`{"pid":"x"}`:             0,
		strings.Repeat("9", 5000): 0,
	} {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := readHolder(f).PID; got != want {
			t.Errorf("readHolder(%.20q).PID = %d, want %d", content, got, want)
		}
		f.Close()
	}
}

// TestHelperHold is not a test on its own: run as a child process with
// envHoldDir set, it takes the lock, prints "locked" and holds it until its
// stdin closes or it is killed.
func TestHelperHold(t *testing.T) {
	dir := os.Getenv(envHoldDir)
	if dir == "" {
		t.Skip("helper process for TestStaleLockAfterKill")
	}
	l, err := Acquire(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
	_ = l.Release()
	os.Exit(0)
}

// TestStaleLockAfterKill: a child process holds the lock; the parent sees the
// child's PID; after kill -9 the lock is free again.
func TestStaleLockAfterKill(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHold$")
	cmd.Env = append(os.Environ(), envHoldDir+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // held open; closing it lets the child exit
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != "locked" {
			t.Fatalf("child said %q, want locked", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child did not take the lock within 30s")
	}

	child := cmd.Process.Pid
	_, err = Acquire(dir)
	wantHeld(t, err, child)
	if pid, held, err := Holder(dir); err != nil || !held || pid != child {
		t.Fatalf("Holder = %d, %v, %v; want %d, true, nil", pid, held, err, child)
	}

	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup in the child
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waited = true

	// The lock file still names the dead child, but the lock is free. The
	// kernel drops it at exit; Windows may take a moment, hence the poll.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := Acquire(dir)
		if err == nil {
			if err := l.Release(); err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, ErrHeld) || time.Now().After(deadline) {
			t.Fatalf("Acquire after the holder was killed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid, held, err := Holder(dir); err != nil || held || pid != 0 {
		t.Fatalf("Holder after kill = %d, %v, %v; want 0, false, nil", pid, held, err)
	}
}
