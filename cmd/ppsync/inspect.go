package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ppsync/ppsync/node/api"
)

// Inspection commands: status, log, conflicts.

func statusCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "status",
		synopsis: "--data DATA [--json]",
		summary:  "show the running node's status; exit 3 when no node runs on DATA",
		detail: `Exit 0 when the node runs, 3 when it does not (the practice software uses this to offer to
start sync). --json prints the object of GET /v1/status (see docs/api.md).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			st, err := askNode(c, cmd, &data, args, (*api.Client).Status)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, st)
			}
			c.writeStatus(st)
			return nil
		},
	}
}

// writeStatus prints the status for people: warnings first, then aligned rows.
func (c *cli) writeStatus(st api.Status) {
	w := c.stdout
	warns := statusWarnings(st)
	for _, msg := range warns {
		fmt.Fprintf(w, "!! %s\n", oneLine(msg))
	}
	if len(warns) > 0 {
		fmt.Fprintln(w)
	}
	tw := newTable(w)
	site := st.Site
	if site == "" {
		site = "-"
	}
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("Site", "%s", site)
	row("Role", "%s", st.Role)
	family := st.FamilyName
	if st.FamilyID != "" {
		family += " (" + short(st.FamilyID) + ")"
	}
	row("Family", "%s", strings.TrimSpace(family))
	row("Peer ID", "%s", st.PeerID)
	row("Epoch", "%d", st.Epoch)
	row("Version", "%s", st.Version)
	online := yesNo(st.Online)
	if !st.Online && st.OfflineReason != "" {
		online += " (" + st.OfflineReason + ")"
	}
	row("Online", "%s", online)
	row("Peers", "%d connected", st.Peers)
	for i, b := range st.Bootstrap {
		label := ""
		if i == 0 {
			label = "Bootstrap"
		}
		state := b.State
		if b.Site != "" {
			state += " (" + b.Site + ")"
		}
		if b.Detail != "" && b.State != "connected" {
			state += ": " + b.Detail
		}
		row(label, "%s  %s", b.Addr, state)
	}
	row("Pending", "%d entries no other node is known to hold", st.Pending)
	if st.LastSync == nil {
		row("Last sync", "never")
	} else {
		row("Last sync", "%s (%s)", formatTime(*st.LastSync), ago(c.now(), *st.LastSync))
	}
	row("Sync interval", "%s", st.SyncInterval)
	sites := make([]string, 0, len(st.Frontier))
	for s := range st.Frontier {
		sites = append(sites, s)
	}
	slices.Sort(sites)
	if len(sites) == 0 {
		row("Frontier", "no entries yet")
	}
	for i, s := range sites {
		label := ""
		if i == 0 {
			label = "Frontier"
		}
		row(label, "%s  seq %d", s, st.Frontier[s])
	}
	forks := "none"
	if n := len(st.Forks); n > 0 {
		forks = fmt.Sprintf("%d (see above)", n)
	}
	row("Forks", "%s", forks)
	row("Conflicts", "%d (ppsync conflicts --data %s)", st.Conflicts, st.DataDir)
	row("Records", "%d", st.Records)
	row("Writable", "%s", yesNo(st.Writable))
	row("API", "%s", st.API)
	row("Running since", "%s", formatTime(st.StartedAt))
	tw.Flush()
}

func logCommand() *command {
	var data, site string
	var limit int
	var asJSON bool
	return &command{
		name:     "log",
		synopsis: "--data DATA [--site SITE] [--limit N] [--json]",
		summary:  "show log entries, newest last, one per line",
		detail: `Without --site, the newest entries of every site ordered by their hybrid logical clock.
--json prints one EntryJSON object per line (see docs/api.md).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.StringVar(&site, "site", "", "only the entries of `SITE`")
			fs.IntVar(&limit, "limit", 100, "at most `N` entries (the newest)")
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
			if limit < 1 {
				return usageErrorf(cmd.name, "--limit must be at least 1")
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.Log(c.ctx, site, limit)
			if err != nil {
				return apiError(dir, err)
			}
			w := bufio.NewWriter(c.stdout)
			if asJSON {
				for _, e := range res.Entries {
					if err := writeJSONLine(w, e); err != nil {
						return err
					}
				}
				return flushOutput(w)
			}
			tw := newTable(w)
			for _, e := range res.Entries {
				fmt.Fprintf(tw, "%s\t%s#%d\t%s\t%s\n", formatTime(e.Time), e.Site, e.Seq, short(e.Hash), opsSummary(e.Ops))
			}
			tw.Flush()
			return flushOutput(w)
		},
	}
}

func flushOutput(w *bufio.Writer) error {
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// opsSummary renders operations briefly: "put patients/p1 {dob,name}; delete patients/p2".
func opsSummary(ops []api.OpJSON) string {
	const show = 3
	var b strings.Builder
	for i, op := range ops {
		if i == show {
			fmt.Fprintf(&b, "; … %d more", len(ops)-show)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %s/%s", op.Op, op.Table, op.Key)
		if op.Op == "put" {
			names := make([]string, 0, len(op.Fields))
			for k := range op.Fields {
				names = append(names, k)
			}
			slices.Sort(names)
			b.WriteString(" {" + truncate(strings.Join(names, ","), 60) + "}")
		}
	}
	return b.String()
}

func conflictsCommand() *command {
	var data string
	var limit int
	var asJSON bool
	return &command{
		name:     "conflicts",
		synopsis: "--data DATA [--limit N] [--json]",
		summary:  "show concurrent writes to the same field, with both sides and the winner",
		detail: `Newest first. A conflict is two writes to one field by different sites where neither had seen
the other; the newer (by hybrid logical clock, then site ID) wins everywhere. FIELD "-" is a
delete that raced a write of the record. Rows the practice database refused (a foreign key, a
unique constraint) come first, with the family's merged row and the database's own; they are
tried again after every change. --json prints one ConflictJSON object per line (refused rows
have "refused" set).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.IntVar(&limit, "limit", 100, "at most `N` conflicts (the newest)")
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
			if limit < 1 {
				return usageErrorf(cmd.name, "--limit must be at least 1")
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.Conflicts(c.ctx, limit)
			if err != nil {
				return apiError(dir, err)
			}
			w := bufio.NewWriter(c.stdout)
			if asJSON {
				for _, cf := range res.Conflicts {
					if err := writeJSONLine(w, cf); err != nil {
						return err
					}
				}
				return flushOutput(w)
			}
			if len(res.Conflicts) == 0 {
				fmt.Fprintln(w, "No conflicts.")
				return flushOutput(w)
			}
			writeConflicts(w, res.Conflicts)
			return flushOutput(w)
		},
	}
}

func writeConflicts(w io.Writer, cs []api.ConflictJSON) {
	var refused, concurrent []api.ConflictJSON
	for _, cf := range cs {
		if cf.Refused != "" {
			refused = append(refused, cf)
		} else {
			concurrent = append(concurrent, cf)
		}
	}
	if len(refused) > 0 {
		fmt.Fprintf(w, "Rows the practice database refused (%d): each is tried again after every change; fix the cause in the practice software, then run `ppsync db check --data DATA --repair`.\n", len(refused))
		for _, cf := range refused {
			fmt.Fprintf(w, "  %s/%s: %s\n", cf.Table, cf.Key, cf.Refused)
			fmt.Fprintf(w, "    family:   %s\n", refusedSide(cf.Incoming))
			fmt.Fprintf(w, "    database: %s\n", refusedSide(cf.Existing))
		}
		if len(concurrent) == 0 {
			return
		}
		fmt.Fprintln(w)
	}
	// Several fields of one record written by the same two entries (two
	// sites inserting the same key at the same time, typically) are shown
	// as two whole rows, each as its site wrote it.
	rows, single := rowConflicts(concurrent)
	for _, rc := range rows {
		fmt.Fprintf(w, "%s/%s: written at %s and %s at the same time; the family keeps %s's version of each field below\n",
			rc.table, rc.key, rc.a.site, rc.b.site, rc.winner)
		for _, side := range []rowSide{rc.a, rc.b} {
			fmt.Fprintf(w, "  %s#%d: %s\n", side.site, side.seq, compactJSON(side.fields))
		}
	}
	if len(single) == 0 {
		return
	}
	if len(rows) > 0 {
		fmt.Fprintln(w)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tRECORD\tWINNER\tINCOMING\tEXISTING")
	for _, cf := range single {
		field := cf.Field
		if field == "" {
			field = "-"
		}
		t := cf.Incoming.Time
		if cf.Existing.Time.After(t) {
			t = cf.Existing.Time
		}
		fmt.Fprintf(tw, "%s\t%s/%s.%s\t%s\t%s\t%s\n", formatTime(t), cf.Table, cf.Key, field, cf.Winner,
			conflictSide(cf.Incoming), conflictSide(cf.Existing))
	}
	tw.Flush()
}

// rowSide is one site's version of the fields of a row conflict.
type rowSide struct {
	site   string
	seq    uint64
	fields map[string]any
}

// rowConflict is two entries that wrote several fields of one record
// concurrently.
type rowConflict struct {
	table, key string
	winner     string
	a, b       rowSide // a: the winner's side
}

// rowConflicts gathers the field conflicts of one record between the same
// two entries (two or more fields) into row conflicts, in the order of their
// first field; the others are returned as they are.
func rowConflicts(cs []api.ConflictJSON) ([]rowConflict, []api.ConflictJSON) {
	type pair struct {
		table, key, is, es string
		iq, eq             uint64
	}
	groups := map[pair][]api.ConflictJSON{}
	var order []pair
	for _, cf := range cs {
		if cf.Field == "" || cf.Incoming.Deleted || cf.Existing.Deleted {
			continue
		}
		p := pair{cf.Table, cf.Key, cf.Incoming.Site, cf.Existing.Site, cf.Incoming.Seq, cf.Existing.Seq}
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], cf)
	}
	var rows []rowConflict
	inRow := map[uint64]bool{}
	for _, p := range order {
		g := groups[p]
		if len(g) < 2 {
			continue
		}
		in := rowSide{site: p.is, seq: p.iq, fields: map[string]any{}}
		ex := rowSide{site: p.es, seq: p.eq, fields: map[string]any{}}
		for _, cf := range g {
			in.fields[cf.Field] = cf.Incoming.Value
			ex.fields[cf.Field] = cf.Existing.Value
			inRow[cf.ID] = true
		}
		rc := rowConflict{table: p.table, key: p.key, winner: g[0].Winner, a: in, b: ex}
		if g[0].Winner == fmt.Sprintf("%s#%d", ex.site, ex.seq) {
			rc.a, rc.b = ex, in
		}
		rc.winner = rc.a.site
		rows = append(rows, rc)
	}
	var rest []api.ConflictJSON
	for _, cf := range cs {
		if !inRow[cf.ID] {
			rest = append(rest, cf)
		}
	}
	return rows, rest
}

func refusedSide(s api.ConflictSideJSON) string {
	if s.Deleted {
		return "(no row)"
	}
	v := compactJSON(s.Value)
	if s.Site != "" && s.Site != "database" {
		v += fmt.Sprintf("  (%s#%d)", s.Site, s.Seq)
	}
	return v
}

func conflictSide(s api.ConflictSideJSON) string {
	v := "deleted"
	if !s.Deleted {
		v = truncate(compactJSON(s.Value), 40)
	}
	return fmt.Sprintf("%s#%d %s", s.Site, s.Seq, v)
}

// statusWarnings returns what status shows above everything else: the node's
// own warnings (or, from a node that sends none, ones derived from the
// status), then why writes are refused and what waits for an upgrade.
func statusWarnings(st api.Status) []string {
	warns := slices.Clone(st.Warnings)
	if len(warns) == 0 {
		for _, f := range st.Forks {
			warns = append(warns, fmt.Sprintf("fork: site %s wrote two different entries at seq %d (held %s, offered %s); its later entries are quarantined: call support, and do not restore or copy data directories",
				f.Site, f.Seq, short(f.Held), short(f.Offered)))
		}
		if st.VersionMismatch {
			warns = append(warns, "family members run different ppsync versions; upgrade them all to the same one")
		}
	}
	if st.WriteBlocked != "" && st.Role != "relay" { // a relay never writes: no news
		warns = append(warns, "writes are refused: "+st.WriteBlocked)
	}
	if st.Held > 0 {
		warns = append(warns, fmt.Sprintf("%d entries wait for a newer ppsync; upgrade this node to apply them", st.Held))
	}
	return warns
}
