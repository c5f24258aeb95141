package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
)

// writeOverview prints the list of commands.
func writeOverview(w io.Writer) {
	fmt.Fprint(w, `ppsync keeps a practice's databases in sync, peer to peer.

Usage: ppsync COMMAND [flags] [arguments]

`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, cmd := range commands() {
		if cmd.sub != nil {
			for _, s := range cmd.sub {
				fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
			}
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\n", cmd.name, cmd.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
Run 'ppsync help COMMAND' for a command's flags and details.
Exit codes: 0 success, 1 error, 2 usage error, 3 the node is not running,
4 refused (wrong machine, wrong database, superseded or revoked certificate),
5 another ppsync already runs on this data directory.
`)
}

// writeCommandHelp prints a command's usage, details and flags.
func writeCommandHelp(w io.Writer, cmd *command) {
	if cmd.sub != nil {
		fmt.Fprintf(w, "Usage: ppsync %s SUBCOMMAND [flags]\n\n%s\n\n", cmd.name, cmd.summary)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, s := range cmd.sub {
			fmt.Fprintf(tw, "  ppsync %s %s\t%s\n", s.name, s.synopsis, s.summary)
		}
		tw.Flush()
		fmt.Fprintf(w, "\nRun 'ppsync help %s SUBCOMMAND' for details.\n", cmd.name)
		return
	}
	fmt.Fprintf(w, "Usage: ppsync %s %s\n\n%s\n", cmd.name, cmd.synopsis, cmd.summary)
	if cmd.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.detail))
	}
	fs := newFlagSet(cmd)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprint(w, "\nFlags:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if arg == "value" {
			arg = "VALUE"
		}
		name := "--" + f.Name
		if arg != "" {
			name += " " + arg
		}
		fmt.Fprintf(tw, "  %s\t%s\n", name, usage)
	})
	tw.Flush()
}

func helpCommand() *command {
	return &command{
		name:     "help",
		synopsis: "[COMMAND]",
		summary:  "show the commands, or one command's flags and details",
		run: func(c *cli, cmd *command, args []string) error {
			if len(args) == 0 {
				writeOverview(c.stdout)
				return nil
			}
			target := lookupCommand(args[0])
			if target == nil {
				return usageErrorf("", "unknown command %q", args[0])
			}
			if len(args) > 1 && target.sub != nil {
				sub := lookupSub(target, args[1])
				if sub == nil {
					return usageErrorf(target.name, "unknown subcommand %q (want one of %s)", args[1], subNames(target))
				}
				target = sub
			}
			writeCommandHelp(c.stdout, target)
			return nil
		},
	}
}

func versionCommand() *command {
	return &command{
		name:     "version",
		synopsis: "",
		summary:  "print the version (first line), then the Go version and platform",
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, version)
			fmt.Fprintf(c.stdout, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
