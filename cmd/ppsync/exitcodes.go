package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

// Exit codes of the command-line contract.
const (
	exitOK         = 0
	exitError      = 1
	exitUsage      = 2
	exitNotRunning = 3 // the node is not running
	exitRefused    = 4 // refused by the machine lock, the account or the database binding
	exitLocked     = 5 // another node process runs on this data directory
)

// usageError is a command line that does not parse: exit 2.
type usageError struct {
	cmd string // "put", "family admit"; "" when the command is unknown
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// notRunningError: no node runs on the data directory: exit 3.
type notRunningError struct {
	data    string
	missing bool // the data directory does not exist
	reason  error
}

func (e *notRunningError) Error() string {
	if e.missing {
		return fmt.Sprintf("ppsync is not running on %s, which does not exist; set up a node there with `ppsync init --data %s ...`", e.data, e.data)
	}
	if errors.Is(e.reason, api.ErrNotTheNode) {
		return fmt.Sprintf("ppsync is not running on %s: %v; start it with `ppsync run --data %s`", e.data, e.reason, e.data)
	}
	return fmt.Sprintf("ppsync is not running on %s; start it with `ppsync run --data %s`", e.data, e.data)
}

func (e *notRunningError) Unwrap() error { return e.reason }

// exitCodeError exits with code after its message (msg may be "" when the
// command already said everything on stdout and stderr).
type exitCodeError struct {
	code int
	msg  string
}

func (e *exitCodeError) Error() string { return e.msg }

// errHelpShown: the command printed its help because of -h; exit 0.
var errHelpShown = errors.New("help shown")

// fail prints err as one line on stderr and returns its exit code; nil is 0.
func (c *cli) fail(err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, errHelpShown) {
		return exitOK
	}
	code := exitCode(err)
	var ue *usageError
	var nr *notRunningError
	switch {
	case errors.As(err, &nr):
		fmt.Fprintln(c.stderr, oneLine(nr.Error())) // it starts with "ppsync is not running"
	case errors.As(err, &ue):
		help := "ppsync help"
		if ue.cmd != "" {
			help += " " + ue.cmd
		}
		prefix := "ppsync"
		if ue.cmd != "" {
			prefix += " " + ue.cmd
		}
		fmt.Fprintf(c.stderr, "%s: %s; run `%s`\n", prefix, oneLine(ue.msg), help)
	default:
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(c.stderr, "ppsync: %s\n", oneLine(msg))
		}
	}
	return code
}

// exitCode maps an error to the contract's exit code.
func exitCode(err error) int {
	var ue *usageError
	var nr *notRunningError
	var ec *exitCodeError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return ec.code
	case errors.As(err, &ue), errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.As(err, &nr), errors.Is(err, api.ErrNotRunning):
		return exitNotRunning
	case errors.Is(err, node.ErrLocked):
		return exitLocked
	case errors.Is(err, node.ErrRefused):
		return exitRefused
	}
	return exitError
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
