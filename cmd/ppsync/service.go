package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
)

// serviceSpec is what the platform service runs: `ppsync run` of one data
// directory, headless, logging to a size-capped rotating file in it.
type serviceSpec struct {
	Name        string   // service name, e.g. ppsync-clinic-north
	DisplayName string   // for people
	Description string   //
	Executable  string   // absolute path of this ppsync binary
	Args        []string // run --data ... --headless --log-file ...
	DataDir     string   // absolute
	// User is the account the service runs as: the one that set the node
	// up (node.json's account), which the node requires. Empty when not
	// known: the service manager's default (root, LocalSystem).
	User string
}

var serviceNameUnsafe = regexp.MustCompile(`[^a-z0-9._-]+`)

// newServiceSpec derives the service for a data directory from its node.json.
func newServiceSpec(dataDir string) (serviceSpec, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return serviceSpec{}, fmt.Errorf("data directory %s: %w", dataDir, err)
	}
	site, user := "", ""
	if b, err := os.ReadFile(filepath.Join(abs, "node.json")); err == nil {
		if m := regexp.MustCompile(`"site":\s*"([^"]*)"`).FindSubmatch(b); m != nil {
			site = string(m[1])
		}
		user = accountOf(b)
	}
	if user == "" {
		user = dirOwner(abs) // set up by an older ppsync: whoever owns the directory
	}
	if site == "" {
		return serviceSpec{}, fmt.Errorf("%s is not a ppsync data directory (no node.json); set it up with `ppsync init --data %s ...` first", abs, abs)
	}
	exe, err := os.Executable()
	if err != nil {
		return serviceSpec{}, fmt.Errorf("cannot find the ppsync program's path: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	name := "ppsync-" + strings.Trim(serviceNameUnsafe.ReplaceAllString(strings.ToLower(site), "-"), "-")
	return serviceSpec{
		Name:        name,
		DisplayName: "ppsync (" + site + ")",
		Description: "ppsync keeps this site's practice database in sync with its family (site " + site + ", data " + abs + ")",
		Executable:  exe,
		Args:        []string{"run", "--data", abs, "--headless", "--log-file", filepath.Join(abs, "logs", "ppsync.log")},
		DataDir:     abs,
		User:        user,
	}, nil
}

// accountOf is the name of the account node.json records ("" when none).
func accountOf(nodeJSON []byte) string {
	var id struct {
		Account struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"account"`
	}
	if json.Unmarshal(nodeJSON, &id) != nil {
		return ""
	}
	if id.Account.Name != "" {
		return id.Account.Name
	}
	return id.Account.ID
}

func serviceCommand() *command {
	parent := &command{
		name:     "service",
		synopsis: "install|uninstall|start|stop|unit --data DATA",
		summary:  "run the node as a system service (systemd, Windows service, launchd)",
		detail: `install registers ` + "`ppsync run --data DATA --headless`" + ` as a system service that starts with the
machine (systemd on Linux, a Windows service, launchd on macOS) and logs to DATA/logs/ppsync.log
(size-capped, rotated). uninstall removes it; start and stop control it; unit prints the systemd
unit that install writes on Linux. Needs administrator rights (root, sudo).`,
	}
	sub := func(name, summary string, act func(c *cli, spec serviceSpec) error) *command {
		var data string
		return &command{
			name:     "service " + name,
			synopsis: "--data DATA",
			summary:  summary,
			flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
			run: func(c *cli, cmd *command, args []string) error {
				if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
					return err
				}
				dir, err := c.dataDir(cmd, data)
				if err != nil {
					return err
				}
				spec, err := newServiceSpec(dir)
				if err != nil {
					return err
				}
				return act(c, spec)
			},
		}
	}
	parent.sub = []*command{
		sub("install", "install the node as a service that starts with the machine", func(c *cli, s serviceSpec) error {
			if err := serviceInstall(s); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "installed the service %s; start it with `ppsync service start --data %s`\n", s.Name, s.DataDir)
			if runtime.GOOS == "windows" && s.User != "" {
				fmt.Fprintf(c.stdout, "It is installed to run as LocalSystem, but this node runs only as %s, who set it up: first set the service's Log On account to %s (services.msc, or `sc.exe config %s obj= .\\%s password= PASSWORD`)\n", s.User, s.User, s.Name, s.User)
			}
			return nil
		}),
		sub("uninstall", "remove the service", func(c *cli, s serviceSpec) error {
			if err := serviceControl(s, "uninstall"); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "removed the service %s\n", s.Name)
			return nil
		}),
		sub("start", "start the service", func(c *cli, s serviceSpec) error {
			if err := serviceControl(s, "start"); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "started %s\n", s.Name)
			return nil
		}),
		sub("stop", "stop the service", func(c *cli, s serviceSpec) error {
			if err := serviceControl(s, "stop"); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "stopped %s\n", s.Name)
			return nil
		}),
		sub("unit", "print the systemd unit install writes (Linux)", func(c *cli, s serviceSpec) error {
			_, err := fmt.Fprint(c.stdout, systemdUnit(s))
			return err
		}),
	}
	return parent
}

var errNoServiceManager = errors.New("no service manager")

// makeLogDir creates DATA/logs, where the service writes its log file.
// `service install` runs as an administrator (sudo) while the service runs as
// the account that set the node up: the directory is given to the owner of
// the data directory, or the node could not create its log file there.
func makeLogDir(dataDir string) error {
	dir := filepath.Join(dataDir, "logs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the log directory: %w", err)
	}
	if err := ownLike(dir, dataDir); err != nil {
		return fmt.Errorf("give the log directory %s to the owner of %s: %w", dir, dataDir, err)
	}
	return nil
}

// systemdUnit renders the unit file for s. Exit codes 4 (refused by the lock
// or binding) and 5 (already running) are not fixed by restarting, so systemd
// does not restart on them.
func systemdUnit(s serviceSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[Unit]\nDescription=%s\nAfter=network-online.target\nWants=network-online.target\n\n", s.Description)
	b.WriteString("[Service]\nType=simple\n")
	if s.User != "" {
		// The node runs only as the account that set it up.
		fmt.Fprintf(&b, "User=%s\n", s.User)
	}
	fmt.Fprintf(&b, "ExecStart=%s", systemdQuote(s.Executable))
	for _, a := range s.Args {
		fmt.Fprintf(&b, " %s", systemdQuote(a))
	}
	b.WriteString("\nRestart=on-failure\nRestartSec=5\nRestartPreventExitStatus=4 5\nKillSignal=SIGTERM\nTimeoutStopSec=60\n")
	b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	return b.String()
}

// systemdQuote quotes an argument for a unit file's ExecStart.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$%;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `$$`, `%`, `%%`)
	return `"` + r.Replace(s) + `"`
}
