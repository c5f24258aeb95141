package main

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

// Control commands: set, verify, and the mesh commands this build does not
// have yet (peers, sync-now, demo).

// settingNames lists what `ppsync set` changes, in help order.
const settingNames = "sync-interval DURATION, connectivity-check on|off, log-level debug|info|warn|error"

func setCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "set",
		synopsis: "--data DATA SETTING VALUE",
		summary:  "change a setting of the running node and save it to ppsync.toml",
		detail: `Settings:
  sync-interval DURATION     how often the node runs a sync round (like 30s, 5m, 1h)
  connectivity-check on|off  whether the node probes the network to judge itself online
  log-level LEVEL            debug, info, warn or error
--json prints every setting after the change (the answer of PUT /v1/settings).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 2, 2, "SETTING VALUE")
			if err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			change, show, err := parseSetting(cmd, pos[0], pos[1])
			if err != nil {
				return err
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			got, err := cl.UpdateSettings(c.ctx, change)
			if err != nil {
				return apiError(dir, err)
			}
			if asJSON {
				return writeJSONLine(c.stdout, got)
			}
			fmt.Fprintf(c.stdout, "%s = %s (saved to ppsync.toml)\n", pos[0], show(got))
			return nil
		},
	}
}

// parseSetting checks a setting and its value, and returns the change to
// send and how to show the setting's new value.
func parseSetting(cmd *command, name, value string) (api.Settings, func(api.Settings) string, error) {
	switch name {
	case "sync-interval":
		d, err := time.ParseDuration(value)
		if err != nil || d <= 0 {
			return api.Settings{}, nil, usageErrorf(cmd.name, "sync-interval %q is not a positive duration (write it like 30s, 5m or 1h)", value)
		}
		return api.Settings{SyncInterval: d.String()}, func(s api.Settings) string { return s.SyncInterval }, nil
	case "connectivity-check":
		var on bool
		switch value {
		case "on", "true", "yes":
			on = true
		case "off", "false", "no":
		default:
			return api.Settings{}, nil, usageErrorf(cmd.name, "connectivity-check is %q; it must be on or off", value)
		}
		return api.Settings{ConnectivityCheck: &on}, func(s api.Settings) string {
			if s.ConnectivityCheck == nil {
				return "?"
			}
			if *s.ConnectivityCheck {
				return "on"
			}
			return "off"
		}, nil
	case "log-level":
		if _, err := parseLevel(value); err != nil {
			return api.Settings{}, nil, usageErrorf(cmd.name, "log-level is %q; it must be debug, info, warn or error", value)
		}
		return api.Settings{LogLevel: value}, func(s api.Settings) string { return s.LogLevel }, nil
	}
	return api.Settings{}, nil, usageErrorf(cmd.name, "unknown setting %q; the settings are %s", name, settingNames)
}

func verifyCommand() *command {
	var data string
	var asJSON, progress bool
	return &command{
		name:     "verify",
		synopsis: "--data DATA [--json]",
		summary:  "re-check every chain and signature and rebuild the state (node stopped); exit 1 on damage",
		detail: `The maintenance "re-index": with the node stopped, re-checks every site's log end to end
(decoding, gaps, hash links, signatures, heads), rebuilds the records from the logs and
compares the state digest before and after. Prints what it found; exit 1 on any damage,
5 when the node is running (stop it first). Progress is shown on stderr when it is a terminal,
or with --progress.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
			fs.BoolVar(&progress, "progress", false, "show progress on stderr even when it is not a terminal")
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			p := &progressLine{w: c.stderr, tty: isTerminal(c.stderr), now: c.now}
			var report func(string, uint64, uint64)
			if p.tty || progress {
				report = p.update
			}
			rep, err := node.Verify(c.ctx, dir, report)
			p.finish()
			if err != nil {
				return err
			}
			if rep.Damage == nil {
				rep.Damage = []string{}
			}
			if asJSON {
				if err := writeJSONLine(c.stdout, rep); err != nil {
					return err
				}
			} else {
				writeVerify(c.stdout, rep)
			}
			if len(rep.Damage) > 0 {
				return &exitCodeError{code: exitError, msg: fmt.Sprintf("verify found %d problems in %s (listed above); keep a copy of the directory and call support", len(rep.Damage), dir)}
			}
			return nil
		},
	}
}

func writeVerify(w io.Writer, r node.VerifyReport) {
	tw := newTable(w)
	fmt.Fprintf(tw, "Sites\t%d\n", r.Sites)
	fmt.Fprintf(tw, "Entries\t%d checked\n", r.Entries)
	fmt.Fprintf(tw, "Digest before\t%s\n", r.DigestBefore)
	after := r.DigestAfter
	if r.DigestAfter == r.DigestBefore {
		after += " (unchanged)"
	}
	fmt.Fprintf(tw, "Digest after\t%s\n", after)
	fmt.Fprintf(tw, "State rebuilt\t%s\n", yesNo(r.Rebuilt))
	if r.Repaired {
		fmt.Fprintf(tw, "Repaired\tyes: the rebuilt state differs from what was stored\n")
	}
	if len(r.Damage) == 0 {
		fmt.Fprintf(tw, "Damage\tnone\n")
	}
	tw.Flush()
	if len(r.Damage) > 0 {
		fmt.Fprintf(w, "Damage (%d):\n", len(r.Damage))
		for _, d := range r.Damage {
			fmt.Fprintf(w, "  - %s\n", oneLine(d))
		}
	}
}

// progressLine shows a long operation's progress on stderr: rewritten in
// place on a terminal, otherwise one line per stage and at most every 2 s.
type progressLine struct {
	w     io.Writer
	tty   bool
	now   func() time.Time
	mu    sync.Mutex // the callback may come from another goroutine
	stage string
	last  time.Time
	shown bool
}

func (p *progressLine) update(stage string, done, total uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	every := 2 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	if stage == p.stage && now.Sub(p.last) < every && done != total {
		return
	}
	p.stage, p.last = stage, now
	text := fmt.Sprintf("verify: %s %d", stage, done)
	if total > 0 {
		text = fmt.Sprintf("verify: %s %d/%d (%d%%)", stage, done, total, done*100/total)
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", text)
	} else {
		fmt.Fprintln(p.w, text)
	}
	p.shown = true
}

func (p *progressLine) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.shown {
		fmt.Fprintln(p.w)
	}
}

func peersCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "peers",
		synopsis: "--data DATA [--json]",
		summary:  "show every family member: connected or not, via, version, lag, last seen",
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			res, err := askNode(c, cmd, &data, args, (*api.Client).Peers)
			if err != nil {
				return err
			}
			if asJSON {
				for _, p := range res.Peers {
					if err := writeJSONLine(c.stdout, p); err != nil {
						return err
					}
				}
				return nil
			}
			tw := newTable(c.stdout)
			fmt.Fprintln(tw, "SITE\tROLE\tPEER ID\tCONNECTED\tVIA\tVERSION\tLAG\tLAST SEEN\tFRONTIER")
			for _, p := range res.Peers {
				seen := "never"
				if p.LastSeen != nil {
					seen = p.LastSeen.Local().Format("2006-01-02 15:04:05")
				}
				conn, via, ver := "no", "-", p.Version
				if p.Connected {
					conn, via = "yes", p.Via
				}
				if ver == "" {
					ver = "?"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Site, p.Role, short(p.PeerID), conn, via, ver, p.Lag, seen, frontierText(p.Frontier))
			}
			return tw.Flush()
		},
	}
}

func frontierText(f map[string]uint64) string {
	if len(f) == 0 {
		return "-"
	}
	sites := make([]string, 0, len(f))
	for s := range f {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	parts := make([]string, len(sites))
	for i, s := range sites {
		parts[i] = fmt.Sprintf("%s:%d", s, f[s])
	}
	return strings.Join(parts, " ")
}

func syncNowCommand() *command {
	var data string
	var wait time.Duration
	var asJSON bool
	return &command{
		name:     "sync-now",
		synopsis: "--data DATA [--wait DURATION] [--json]",
		summary:  "sync now; with --wait, wait until every reachable member holds everything",
		detail: `Starts a sync round at once. With --wait, waits until every member holds everything this node
holds (or the time runs out) and prints a receipt naming, per member, caught up or why not.
Exit 0 when all are caught up, 1 otherwise.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.DurationVar(&wait, "wait", 0, "wait up to `DURATION` for every reachable member to catch up")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			if wait < 0 || wait > time.Hour {
				return &exitCodeError{code: exitUsage, msg: "--wait must be between 0 and 1h (for example --wait 30s)"}
			}
			dir, cl, err := c.dataClient(cmd, data)
			if err != nil {
				return err
			}
			defer cl.Close()
			rc, err := cl.SyncNow(c.ctx, wait)
			if err != nil {
				return apiError(dir, err)
			}
			if asJSON {
				if err := writeJSONLine(c.stdout, rc); err != nil {
					return err
				}
			} else if wait == 0 {
				fmt.Fprintln(c.stdout, "sync round started")
			} else {
				tw := newTable(c.stdout)
				for _, m := range rc.Members {
					state := "caught up"
					if !m.CaughtUp {
						state = m.Reason
					}
					fmt.Fprintf(tw, "%s\t%s\n", m.Site, state)
				}
				tw.Flush()
				if rc.CaughtUp {
					fmt.Fprintf(c.stdout, "all members hold everything this node holds (waited %s)\n", rc.Waited)
				}
			}
			if wait > 0 && !rc.CaughtUp {
				return &exitCodeError{code: exitError, msg: "not every member caught up within " + wait.String() + " (see the receipt above)"}
			}
			return nil
		},
	}
}

func demoCommand() *command {
	var dir string
	var noWait bool
	return &command{
		name:     "demo",
		synopsis: "[--dir DIR] [--no-wait]",
		summary:  "a relay and three clinic sites syncing on this machine",
		detail: `Creates a family with a relay and three clinic sites in DIR (default: a new temporary
directory), starts them on 127.0.0.1, writes realistic clinic data at each site, takes one site
offline while the others write, brings it back and shows it catching up, then prints the converged
digests and each node's address. It keeps running until Ctrl-C; with --no-wait it exits 0 once the
sites have converged (1 if they do not).`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the demo's working directory `DIR` (default: a temporary one)")
			fs.BoolVar(&noWait, "no-wait", false, "exit once the sites have converged (0) or not (1)")
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			ctx, stop := c.notify(c.ctx) // Ctrl-C ends the demo cleanly
			defer stop()
			if err := runDemo(ctx, demoOptions{Dir: dir, NoWait: noWait, Out: c.stdout, Version: version, Env: c.getenv}); err != nil {
				return err
			}
			return nil
		},
	}
}
