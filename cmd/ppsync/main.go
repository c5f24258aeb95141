// Command ppsync runs and administers a ppsync node: one site's member of a
// sync family. See docs/operations.md for every command; `ppsync help` lists them.
//
// The command-line contract (docs/operations.md, docs/api.md) fixes the forms,
// outputs and exit codes; this package maps flags to calls of package node
// (and package family for the offline `ppsync family` commands) and errors to
// exit codes with one plain-language line on stderr.
package main

import (
	"context"
	"io"
	"os"
	"time"
)

// version is stamped at build time: make build VERSION=1.2.3.
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// cli is one invocation: its streams, environment and clock.
type cli struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	now    func() time.Time
	// notify makes the context of `ppsync run`; tests replace it.
	notify func(context.Context) (context.Context, context.CancelFunc)
	// family is the --family ID the command line gave: the family its
	// requests address at a relay serving several ("": the relay's first).
	family string
}

// run executes one command line (without the program name) and returns the
// process exit code. It never calls os.Exit, so tests drive it directly.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	c := &cli{
		ctx:    context.Background(),
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		now:    time.Now,
		notify: signalContext,
	}
	return c.main(args)
}

// main dispatches args to a command and turns its error into an exit code.
func (c *cli) main(args []string) int {
	if len(args) == 0 {
		return c.fail(usageErrorf("", "no command given"))
	}
	name, rest := args[0], args[1:]
	switch name {
	case "--version", "-version", "-v":
		name = "version"
	case "--help", "-help", "-h":
		name = "help"
	}
	cmd := lookupCommand(name)
	if cmd == nil {
		return c.fail(usageErrorf("", "unknown command %q", name))
	}
	if cmd.sub != nil {
		if len(rest) == 0 {
			return c.fail(usageErrorf(cmd.name, "needs a subcommand (%s)", subNames(cmd)))
		}
		sub := lookupSub(cmd, rest[0])
		if sub == nil {
			if isHelpArg(rest[0]) {
				writeCommandHelp(c.stdout, cmd)
				return exitOK
			}
			return c.fail(usageErrorf(cmd.name, "unknown subcommand %q (want one of %s)", rest[0], subNames(cmd)))
		}
		cmd, rest = sub, rest[1:]
	}
	return c.fail(cmd.run(c, cmd, rest))
}

func isHelpArg(s string) bool {
	return s == "-h" || s == "--help" || s == "-help" || s == "help"
}
