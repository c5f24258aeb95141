package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
)

// Setting up and running a node: init, install, run.

// initResult is the --json output of `ppsync init`.
type initResult struct {
	DataDir     string   `json:"data_dir"`
	Site        string   `json:"site"`
	Role        string   `json:"role"`
	JoinRequest string   `json:"join_request"`
	PeerID      string   `json:"peer_id"`
	DatabaseID  string   `json:"database_id"`
	Fingerprint string   `json:"fingerprint"`
	DB          string   `json:"db,omitempty"`         // the practice database bound
	DBTables    []string `json:"db_tables,omitempty"`  // the tables that will be synced
	DBSkipped   []string `json:"db_skipped,omitempty"` // tables that will not, and why
}

func initCommand() *command {
	var data, familyFile, site, role, dbURL, dbPasswordFile string
	var tables, exclude listFlag
	var asJSON bool
	return &command{
		name:     "init",
		synopsis: "--data DATA --family FAMILY_JSON --site SITE [--role site|relay] [--db URL [--db-table T]... [--db-exclude T]...] [--json]",
		summary:  "create a node's identity, database and join request in DATA",
		detail: `Creates DATA (if needed) with the node's key, the API key, the database and its ID, the machine
fingerprint, ppsync.toml and a copy of the family file, and writes DATA/join-request.json.
Send the join request to the family's administrator (support): they sign it with
` + "`ppsync family admit`" + ` and send back a certificate, which you install with
` + "`ppsync install --data DATA CERT`" + `. Site IDs are 1-64 characters of a-z 0-9 - _ .
--db sqlite:/path/to/practice.db (or postgres://USER@HOST:PORT/DBNAME) binds the node to the practice's database (the certificate names it) and
syncs every table with a primary key (--db-table names the only ones, --db-exclude leaves some out).
On a directory that already holds a node, ` + "`ppsync init --data DATA`" + ` (no other flag) makes its keys and
database readable by this account only (chmod 600/700; on Windows an access control list for this
account and Administrators), which ` + "`ppsync run`" + ` requires.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.StringVar(&familyFile, "family", "", "the family's `FAMILY_JSON` file (family.json)")
			fs.StringVar(&site, "site", "", "this node's `SITE` ID")
			fs.StringVar(&role, "role", "site", "`ROLE`: site (a practice system) or relay (the vendor's always-on node)")
			fs.StringVar(&dbURL, "db", "", "the practice database to sync: sqlite:PATH or postgres://USER@HOST:PORT/DBNAME (`URL`)")
			fs.StringVar(&dbPasswordFile, "db-password-file", "", "PostgreSQL: a `FILE` holding the password (else PPSYNC_DB_PASSWORD)")
			fs.Var(&tables, "db-table", "sync only this `TABLE` (repeatable)")
			fs.Var(&exclude, "db-exclude", "never sync this `TABLE` (repeatable)")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			if familyFile == "" && site == "" && isNodeDir(dir) {
				return c.tightenExisting(dir, asJSON)
			}
			if err := required(cmd, "family", familyFile, "site", site); err != nil {
				return err
			}
			if role != string(family.RoleSite) && role != string(family.RoleRelay) {
				return usageErrorf(cmd.name, "--role is %q; it must be site or relay", role)
			}
			if dbURL != "" && role == string(family.RoleRelay) {
				return usageErrorf(cmd.name, "a relay syncs no practice database: leave out --db")
			}
			res, err := node.Init(node.InitOptions{DataDir: dir, FamilyFile: familyFile, Site: site, Role: role, Env: c.getenv, Now: c.now,
				DB: dbURL, DBTables: tables, DBExclude: exclude, DBPasswordFile: dbPasswordFile})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, initResult{DataDir: dir, Site: site, Role: role, JoinRequest: res.JoinRequest,
					PeerID: res.PeerID, DatabaseID: res.DatabaseID, Fingerprint: res.Fingerprint, DB: res.DB, DBTables: res.DBTables, DBSkipped: res.DBSkip})
			}
			fmt.Fprintf(c.stdout, "Created the node of %s %q in %s.\n", role, site, dir)
			tw := newTable(c.stdout)
			fmt.Fprintf(tw, "  Peer ID\t%s\n", res.PeerID)
			fmt.Fprintf(tw, "  Database ID\t%s\n", res.DatabaseID)
			fmt.Fprintf(tw, "  Machine fingerprint\t%s\n", res.Fingerprint)
			fmt.Fprintf(tw, "  Join request\t%s\n", res.JoinRequest)
			if res.DB != "" {
				fmt.Fprintf(tw, "  Practice database\t%s\n", res.DB)
				fmt.Fprintf(tw, "  Tables synced\t%s\n", strings.Join(res.DBTables, ", "))
				for _, k := range res.DBSkip {
					fmt.Fprintf(tw, "  Not synced\t%s\n", k)
				}
			}
			tw.Flush()
			fmt.Fprintf(c.stdout, "Next: send %s to support; install the certificate they return with\n  ppsync install --data %s CERT\nthen start the node with `ppsync run --data %s`.\n",
				filepath.Base(res.JoinRequest), dir, dir)
			return nil
		},
	}
}

// isNodeDir reports whether dir already holds a node (its node.json).
func isNodeDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, datadir.NodeFile))
	return err == nil
}

// tightenExisting is `ppsync init --data DATA` on an existing node.
func (c *cli) tightenExisting(dir string, asJSON bool) error {
	res, err := node.TightenExisting(dir)
	if err != nil {
		return err
	}
	if asJSON {
		if res.Changed == nil {
			res.Changed = []string{}
		}
		return writeJSONLine(c.stdout, res)
	}
	if len(res.Changed) == 0 {
		fmt.Fprintf(c.stdout, "The node of site %q in %s is already readable by this account only; nothing changed.\n", res.Site, dir)
		return nil
	}
	fmt.Fprintf(c.stdout, "Made the node of site %q in %s readable by this account only:\n", res.Site, dir)
	for _, p := range res.Changed {
		fmt.Fprintf(c.stdout, "  %s\n", p)
	}
	return nil
}

func installCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "install",
		synopsis: "--data DATA FILE [--json]",
		summary:  "install a certificate or revocation into a node (running or not)",
		detail: `Installs a member certificate (from ` + "`ppsync family admit`/`move`" + `) or a revocation (from
` + "`ppsync family revoke`" + `) into the node of DATA. A running node takes it through its API and
gossips it to the family; a stopped node stores it for its next start. FILE - reads stdin.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "FILE")
			if err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			file, err := c.readSmallFile(pos[0], family.MaxFileBytes)
			if err != nil {
				return err
			}
			var res api.InstallResult
			client, err := api.NewClient(dir)
			switch {
			case err == nil:
				defer client.Close()
				res, err = client.Install(c.ctx, file)
				if err != nil {
					return apiError(dir, err)
				}
			case errors.Is(err, api.ErrNotRunning):
				if _, serr := os.Stat(dir); serr != nil {
					return fmt.Errorf("%s does not exist; set up the node first with `ppsync init --data %s ...`", dir, dir)
				}
				res, err = node.InstallAt(dir, file)
				if err != nil {
					return err
				}
			default:
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			what := "the certificate"
			if res.Installed == "revocation" {
				what = "the revocation"
			}
			where := "into the stopped node; it takes effect at its next start"
			if res.Running {
				where = "into the running node, which passes it on to the family"
			}
			if !res.Changed {
				fmt.Fprintf(c.stdout, "%s of site %q (epoch %d) was already installed; nothing changed.\n", capitalize(what), res.Site, res.Epoch)
				return nil
			}
			fmt.Fprintf(c.stdout, "Installed %s of site %q (epoch %d) %s.\n", what, res.Site, res.Epoch, where)
			return nil
		},
	}
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

func runCommand() *command {
	var data, api, logFormat, logLevel, logFile string
	var listen, bootstrap listFlag
	var headless bool
	return &command{
		name:     "run",
		synopsis: "--data DATA [--listen MULTIADDR]... [--api HOST:PORT] [--bootstrap MULTIADDR]... [--headless]",
		summary:  "run the node in the foreground until SIGINT/SIGTERM",
		detail: `Runs the node of DATA until it is interrupted (Ctrl-C, SIGTERM), then stops cleanly.
Settings come from DATA/ppsync.toml, then these flags. Once ready the node writes
DATA/runtime.json (its PID, API address, peer ID and addresses), which the other commands use.
--listen /ip4/127.0.0.1/tcp/0 and --api 127.0.0.1:0 pick free ports. Exit 4 when this node
may not run here (another machine, account or database, a superseded or revoked certificate), 5 when
another ppsync already runs on DATA.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.Var(&listen, "listen", "a libp2p `MULTIADDR` to listen on (repeatable; replaces ppsync.toml's)")
			fs.StringVar(&api, "api", "", "the local API's `HOST:PORT` (default from ppsync.toml, 127.0.0.1:7474)")
			fs.Var(&bootstrap, "bootstrap", "a family member's `MULTIADDR` to dial (repeatable; replaces ppsync.toml's)")
			fs.BoolVar(&headless, "headless", false, "do not open the sync page in a browser")
			fs.StringVar(&logFormat, "log-format", "text", "log `FORMAT` on stderr: text or json")
			fs.StringVar(&logLevel, "log-level", "", "log `LEVEL`: debug, info, warn or error (default from ppsync.toml)")
			fs.StringVar(&logFile, "log-file", "", "also log as JSON to `FILE`, size-capped and rotated (what a service uses)")
		},
		run: func(c *cli, cmd *command, args []string) error {
			fs := newFlagSet(cmd)
			if _, err := c.parseArgs(cmd, fs, args, 0, 0, ""); err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			if logFormat != "text" && logFormat != "json" {
				return usageErrorf(cmd.name, "--log-format is %q; it must be text or json", logFormat)
			}
			if flagGiven(fs, "log-level") {
				if _, err := parseLevel(logLevel); err != nil {
					return usageErrorf(cmd.name, "--log-level is %q; it must be debug, info, warn or error", logLevel)
				}
			}
			_ = headless // the sync page is not opened by this build; nothing to suppress
			cfg, err := node.LoadConfig(dir)
			if err != nil {
				return err
			}
			if flagGiven(fs, "listen") {
				cfg.Listen = listen
			}
			if flagGiven(fs, "api") {
				cfg.API = api
			}
			if flagGiven(fs, "bootstrap") {
				cfg.Bootstrap = bootstrap
			}
			if flagGiven(fs, "log-level") {
				cfg.LogLevel = logLevel
			}
			if v := c.getenv("PPSYNC_MEMORY_LIMIT"); v != "" {
				lim, err := node.ParseByteSize(v)
				if err != nil {
					return &exitCodeError{code: exitUsage, msg: fmt.Sprintf("PPSYNC_MEMORY_LIMIT: %v", err)}
				}
				cfg.MemoryLimit = lim
			}
			level, err := parseLevel(cfg.LogLevel)
			if err != nil {
				level = slog.LevelInfo // Open's Validate names the bad setting
			}
			cfg.Version = version
			cfg.Level = new(slog.LevelVar) // `ppsync set log-level` changes it while the node runs
			cfg.Level.Set(level)
			cfg.Logger = newLogger(c.stderr, logFormat, cfg.Level)
			if logFile != "" {
				if err := os.MkdirAll(filepath.Dir(logFile), 0o700); err != nil {
					return fmt.Errorf("cannot create the log directory for %s: %w", logFile, err)
				}
				rot := &lumberjack.Logger{Filename: logFile, MaxSize: 10, MaxBackups: 5, Compress: true}
				defer rot.Close()
				cfg.Logger = slog.New(fanout{cfg.Logger.Handler(), slog.NewJSONHandler(rot, &slog.HandlerOptions{Level: cfg.Level})})
			}
			cfg.Env = c.getenv
			cfg.Now = c.now
			// PPSYNC_CLOCK_OFFSET (a duration like -3m) shifts this node's clock:
			// for fault tests of clock skew only.
			if v := c.getenv("PPSYNC_CLOCK_OFFSET"); v != "" {
				off, err := time.ParseDuration(v)
				if err != nil {
					return &exitCodeError{code: exitUsage, msg: fmt.Sprintf("PPSYNC_CLOCK_OFFSET=%q is not a duration (like -3m)", v)}
				}
				now := c.now
				cfg.Now = func() time.Time { return now().Add(off) }
			}
			// PPSYNC_ALERT_CLOCK=TIME[@UNIX] (RFC 3339; UNIX seconds, default
			// now) sets the alert monitor's clock to read TIME at the instant
			// UNIX, running from there: for fault tests of opening hours only.
			if v := c.getenv("PPSYNC_ALERT_CLOCK"); v != "" {
				off, err := alertClockOffset(v, c.now())
				if err != nil {
					return &exitCodeError{code: exitUsage, msg: err.Error()}
				}
				now := c.now
				cfg.AlertNow = func() time.Time { return now().Add(off) }
			}

			// PPSYNC_CPU_PROFILE=FILE writes a CPU profile of the whole run to
			// FILE (go tool pprof): for benchmarks and performance work.
			if f := c.getenv("PPSYNC_CPU_PROFILE"); f != "" {
				stopProfile, err := startCPUProfile(f)
				if err != nil {
					return &exitCodeError{code: exitUsage, msg: fmt.Sprintf("PPSYNC_CPU_PROFILE: %v", err)}
				}
				defer stopProfile()
			}
			// The one node of this process: its memory limit is the process's.
			defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(cfg.Memory())))
			ctx, stop := c.notify(c.ctx)
			defer stop()
			n, err := node.Open(ctx, cfg)
			if err != nil {
				return err
			}
			runErr := runService(ctx, n.Run)
			closeErr := n.Close()
			if runErr != nil {
				return runErr
			}
			if closeErr != nil {
				return fmt.Errorf("the node stopped, but not cleanly: %w", closeErr)
			}
			return nil
		},
	}
}

// fanout sends every log record to two handlers (the terminal and the file).
type fanout struct{ a, b slog.Handler }

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	return f.a.Enabled(ctx, l) || f.b.Enabled(ctx, l)
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	if f.a.Enabled(ctx, r.Level) {
		errs = append(errs, f.a.Handle(ctx, r.Clone()))
	}
	if f.b.Enabled(ctx, r.Level) {
		errs = append(errs, f.b.Handle(ctx, r))
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(as []slog.Attr) slog.Handler {
	return fanout{f.a.WithAttrs(as), f.b.WithAttrs(as)}
}

func (f fanout) WithGroup(name string) slog.Handler {
	return fanout{f.a.WithGroup(name), f.b.WithGroup(name)}
}

// signalContext is cancelled on SIGINT or SIGTERM.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch s {
	case "debug", "info", "warn", "error":
		return l, l.UnmarshalText([]byte(s))
	}
	return l, fmt.Errorf("unknown log level %q", s)
}

func newLogger(w io.Writer, format string, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// apiError turns a client error into the CLI's: a node that stopped answering
// is "not running" (exit 3); anything else is printed as it is.
func apiError(dataDir string, err error) error {
	if errors.Is(err, api.ErrNotRunning) {
		return &notRunningError{data: dataDir, reason: err}
	}
	return err
}

// dataClient resolves the --data directory and connects to the node running
// there: the start of every command that talks to a running node.
func (c *cli) dataClient(cmd *command, flagValue string) (string, *api.Client, error) {
	dir, err := c.dataDir(cmd, flagValue)
	if err != nil {
		return "", nil, err
	}
	cl, err := c.client(dir)
	if err != nil {
		return "", nil, err
	}
	return dir, cl, nil
}

// noArgsClient reads the flags of a command that takes no arguments and
// returns its data directory and a client of the node running there.
func (c *cli) noArgsClient(cmd *command, data *string, args []string) (string, *api.Client, error) {
	if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
		return "", nil, err
	}
	return c.dataClient(cmd, *data) // data is set by parsing the flags
}

// askNode answers a command that takes no arguments with one request to
// the node running on *data (set by parsing args): it connects, asks and
// closes. An error of the request names the data directory (apiError).
func askNode[T any](c *cli, cmd *command, data *string, args []string, ask func(*api.Client, context.Context) (T, error)) (T, error) {
	var none T
	dir, cl, err := c.noArgsClient(cmd, data, args)
	if err != nil {
		return none, err
	}
	defer cl.Close()
	res, err := ask(cl, c.ctx)
	if err != nil {
		return none, apiError(dir, err)
	}
	return res, nil
}

// client returns a client of the node running on dataDir, or the
// not-running error (exit 3).
func (c *cli) client(dataDir string) (*api.Client, error) {
	cl, err := api.NewClient(dataDir)
	if err == nil && c.family != "" {
		cl.SetFamily(c.family)
	}
	if err != nil {
		if errors.Is(err, api.ErrNotRunning) {
			if _, serr := os.Stat(dataDir); serr != nil {
				return nil, &notRunningError{data: dataDir, missing: true, reason: err}
			}
		}
		return nil, apiError(dataDir, err)
	}
	return cl, nil
}

// alertClockOffset reads PPSYNC_ALERT_CLOCK: TIME[@UNIX].
func alertClockOffset(v string, now time.Time) (time.Duration, error) {
	at, ref, hasRef := strings.Cut(v, "@")
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return 0, fmt.Errorf("PPSYNC_ALERT_CLOCK=%q is not a time like 2026-12-04T17:59:00Z (optionally @UNIX_SECONDS)", v)
	}
	if hasRef {
		secs, err := strconv.ParseFloat(ref, 64)
		if err != nil {
			return 0, fmt.Errorf("PPSYNC_ALERT_CLOCK=%q: %q is not Unix seconds", v, ref)
		}
		now = time.Unix(0, int64(secs*1e9))
	}
	return t.Sub(now), nil
}
