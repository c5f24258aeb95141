package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one `ppsync` command (or `ppsync family` subcommand).
type command struct {
	name     string // "put", "family admit"
	synopsis string // the arguments: "--data DATA TABLE KEY JSON_OBJECT"
	summary  string // one line for `ppsync help`
	detail   string // paragraphs for `ppsync help COMMAND`
	// flags defines the command's flags on fs, bound to variables the run
	// function closes over (commands() builds fresh ones for each use).
	flags func(fs *flag.FlagSet)
	run   func(c *cli, cmd *command, args []string) error
	sub   []*command // subcommands (family)
	// family is --family ID, which every command that talks to a running
	// node through --data takes: the family addressed at a relay serving
	// several (newFlagSet defines it).
	family string
}

// takesFamilyID reports whether a command with --data takes --family ID:
// those that address one family of a running relay (for init and relay join
// --family is a file; the others do not address one family).
func takesFamilyID(name string) bool {
	switch name {
	case "run", "init", "install", "verify", "demo", "relay join", "relay families", "relay remove-family", "open":
		return false
	}
	return true
}

// commands lists every command in the order `ppsync help` shows them. It is
// built by a function, not a package variable, so that the run functions can
// refer to the list (help) without an initialization cycle.
func commands() []*command {
	return []*command{
		familyCommand(),
		initCommand(), installCommand(), runCommand(),
		putCommand(), deleteCommand(), importCommand(), getCommand(), listCommand(), digestCommand(),
		statusCommand(), peersCommand(), logCommand(), syncNowCommand(), setCommand(), openCommand(), conflictsCommand(),
		dbCommand(), alertsCommand(), relayCommand(), verifyCommand(), versionCommand(), demoCommand(), serviceCommand(), helpCommand(),
	}
}

func lookupCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

func lookupSub(parent *command, name string) *command {
	for _, s := range parent.sub {
		if s.name == parent.name+" "+name {
			return s
		}
	}
	return nil
}

func subNames(parent *command) string {
	names := make([]string, len(parent.sub))
	for i, s := range parent.sub {
		names[i] = strings.TrimPrefix(s.name, parent.name+" ")
	}
	return strings.Join(names, ", ")
}

// newFlagSet returns a silent flag set for cmd with cmd's flags defined.
func newFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if fs.Lookup("data") != nil && fs.Lookup("family") == nil && takesFamilyID(cmd.name) {
		fs.StringVar(&cmd.family, "family", "", "the `FAMILY_ID` to address at a relay that serves several (default: the one it was set up for)")
	}
	return fs
}

// parseArgs parses args with fs and returns the positional arguments, of
// which there must be between min and max (max < 0: no limit); names says
// what they are for the usage error. Flags come before the positional
// arguments, as the contract writes them; a flag that fs defines is also
// accepted after them (`ppsync list patients --data D`), while anything else
// after the first positional argument, even starting with "-", is
// positional. "--" ends the flags. -h or --help shows the command's help.
func (c *cli) parseArgs(cmd *command, fs *flag.FlagSet, args []string, min, max int, names string) ([]string, error) {
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			writeCommandHelp(c.stdout, cmd)
			return nil, errHelpShown
		}
		if err != nil {
			return nil, usageErrorf(cmd.name, "%s", err)
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		rest = rest[1:]
		// Only a flag fs knows continues flag parsing after a positional.
		i := 0
		for i < len(rest) && !isDefinedFlag(fs, rest[i]) {
			i++
		}
		pos = append(pos, rest[:i]...)
		args = rest[i:]
		if len(args) == 0 {
			break
		}
	}
	c.family = cmd.family
	switch {
	case len(pos) < min && names != "":
		return nil, usageErrorf(cmd.name, "needs %s (got %s)", names, countArgs(len(pos)))
	case len(pos) < min:
		return nil, usageErrorf(cmd.name, "needs %d arguments, got %d", min, len(pos))
	case max >= 0 && len(pos) > max:
		if max == 0 {
			return nil, usageErrorf(cmd.name, "takes no arguments, got %q", pos[0])
		}
		return nil, usageErrorf(cmd.name, "takes %s; %q is one argument too many", names, pos[max])
	}
	return pos, nil
}

func countArgs(n int) string {
	switch n {
	case 0:
		return "no arguments"
	case 1:
		return "1 argument"
	}
	return fmt.Sprintf("%d arguments", n)
}

// isDefinedFlag reports whether arg is -NAME, --NAME or --NAME=V for a flag
// defined on fs (or -h/--help).
func isDefinedFlag(fs *flag.FlagSet, arg string) bool {
	if len(arg) < 2 || arg[0] != '-' || arg == "--" {
		return false
	}
	name := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		name = name[:i]
	}
	return fs.Lookup(name) != nil || name == "h" || name == "help"
}

// dataDir returns the --data value or, when it was not given, $PPSYNC_DATA.
func (c *cli) dataDir(cmd *command, flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if v := c.getenv("PPSYNC_DATA"); v != "" {
		return v, nil
	}
	return "", usageErrorf(cmd.name, "needs --data DATA (the node's data directory)")
}

// listFlag collects a repeatable flag's values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			given = true
		}
	})
	return given
}

// Flag definitions shared by several commands.

func dataFlag(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "data", "", "`DATA` directory of the node (default $PPSYNC_DATA)")
}

func jsonFlag(fs *flag.FlagSet, p *bool) {
	fs.BoolVar(p, "json", false, "print JSON instead of text")
}
