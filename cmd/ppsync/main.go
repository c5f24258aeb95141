// Command ppsync runs and administers a ppsync node: one site's member of a
// sync family. See the README for every command.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is stamped at build time: make build VERSION=1.2.3.
var version = "dev"

// Exit codes of the command-line contract.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, version)
		return exitOK
	case "help", "--help", "-h":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "ppsync: unknown command %q; run 'ppsync help' for the list of commands\n", args[0])
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `ppsync keeps a practice's databases in sync, peer to peer.

Usage: ppsync COMMAND [flags]

  version    print the version
  help       this text
`)
}
