//go:build linux

package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestHelperPPSync is not a test: run by TestRunAsAnotherAccount as another
// account, it is the ppsync command line (arguments after --).
func TestHelperPPSync(t *testing.T) {
	if os.Getenv("PPSYNC_TEST_HELPER") != "1" {
		t.Skip("helper for TestRunAsAnotherAccount")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// TestRunAsAnotherAccount runs `ppsync run` as the account nobody on a node
// root set up: refused with exit 4 and a plain message, whether nobody can
// read the data directory or not.
func TestRunAsAnotherAccount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a process as nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no account nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	data, env := certifiedNode(t)
	// nobody must reach the program and the data directory's parent.
	shared, err := os.MkdirTemp("", "ppsync-account-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	exe := filepath.Join(shared, "ppsync.test")
	copyExecutable(t, exe)
	dir := filepath.Join(shared, "data")
	if err := os.Rename(data, dir); err != nil {
		t.Fatal(err)
	}
	runAsNobody := func() (int, string) {
		cmd := exec.Command(exe, "-test.run=^TestHelperPPSync$", "--", "run", "--data", dir, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--headless")
		cmd.Env = []string{"PPSYNC_TEST_HELPER=1", "PPSYNC_MACHINE_ID=" + env["PPSYNC_MACHINE_ID"], "HOME=/"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("run as nobody: %v", err)
		}
		return cmd.ProcessState.ExitCode(), stderr.String()
	}
	// The data directory is private (0700): nobody cannot even read node.json.
	code, stderr := runAsNobody()
	if code != exitRefused || !strings.Contains(stderr, "cannot read "+dir+"/") || !strings.Contains(stderr, "run ppsync as the account that owns") {
		t.Fatalf("nobody on a private directory: exit %d, %s", code, stderr)
	}
	// A directory nobody can read: refused by the recorded account.
	os.Chmod(dir, 0o755)
	code, stderr = runAsNobody()
	if code != exitRefused || !strings.Contains(stderr, "set up by the account root (0)") || !strings.Contains(stderr, "this is the account nobody ("+nobody.Uid+")") {
		t.Fatalf("nobody on a readable directory: exit %d, %s", code, stderr)
	}
}

func copyExecutable(t *testing.T, to string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
