package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/ppsync/ppsync/node/api"
)

func dbCommand() *command {
	return &command{
		name:    "db",
		summary: "the practice database: what is captured and applied; compare and repair",
		sub:     []*command{dbStatusCommand(), dbCheckCommand()},
	}
}

func dbStatusCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "db status",
		synopsis: "--data DATA [--json]",
		summary:  "the practice database's sync: tables, changes captured and applied, waiting, problems",
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			st, err := askNode(c, cmd, &data, args, (*api.Client).DBStatus)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, st)
			}
			printDBStatus(c, st)
			return nil
		},
	}
}

func printDBStatus(c *cli, st api.DBStatus) {
	tw := newTable(c.stdout)
	defer tw.Flush()
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	if st.Driver == "" {
		row("Database", "none (%s)", st.Problem)
		return
	}
	row("Database", "%s (%s)", st.Database, st.Driver)
	if st.Problem != "" {
		row("Problem", "%s", st.Problem)
	}
	if st.Loading {
		row("Initial load", "running: %d rows published", st.LoadedRows)
	}
	row("Captured", "%d changes since start (%d waiting)", st.Captured, st.PendingCapture)
	row("Applied", "%d rows since start (%d changes waiting)", st.Applied, st.PendingApply)
	if st.LastCapture != nil {
		row("Last capture", "%s", formatTime(*st.LastCapture))
	}
	if st.LastApply != nil {
		row("Last apply", "%s", formatTime(*st.LastApply))
	}
	row("Schema version", "%d", st.SchemaVersion)
	for i, t := range st.PerTable {
		label := ""
		if i == 0 {
			label = "Tables"
		}
		line := fmt.Sprintf("%s  captured %d (%d waiting), applied %d (%d waiting)", t.Table, t.Captured, t.PendingCapture, t.Applied, t.PendingApply)
		if t.LastCapture != nil {
			line += ", last capture " + formatTime(*t.LastCapture)
		}
		if t.LastApply != nil {
			line += ", last apply " + formatTime(*t.LastApply)
		}
		if t.Problem != "" {
			line += ": " + t.Problem
		}
		row(label, "%s", line)
	}
	for i, s := range st.Skipped {
		label := ""
		if i == 0 {
			label = "Not synced"
		}
		row(label, "%s", s)
	}
	for i, r := range st.Refused {
		label := ""
		if i == 0 {
			label = "Refused rows"
		}
		row(label, "%s/%s: %s", r.Table, r.Key, r.Reason)
	}
}

func dbCheckCommand() *command {
	var data string
	var repair, asJSON bool
	return &command{
		name:     "db check",
		synopsis: "--data DATA [--repair] [--json]",
		summary:  "list rows that differ between the practice database and the merged state; --repair fixes them",
		detail: `Compares every synced table's rows with the merged state of the family: rows missing from the
database, rows the family deleted that the database still has, rows whose columns differ, and rows
the family never saw. --repair makes the database match through the same path as sync (capture
suppressed) and captures the never-seen rows as this site's. Run it after restoring a backup or
after editing the database while the node was stopped. Exit 0 when nothing differs (with --repair:
when everything was repaired), 1 otherwise.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.BoolVar(&repair, "repair", false, "make the database match the merged state")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			dir, cl, err := c.noArgsClient(cmd, &data, args)
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.DBCheck(c.ctx, repair)
			if err != nil {
				return apiError(dir, err)
			}
			if asJSON {
				if err := writeJSONLine(c.stdout, res); err != nil {
					return err
				}
			} else {
				for _, d := range res.Differences {
					line := fmt.Sprintf("%-9s %s/%s", d.Kind, d.Table, d.Key)
					if len(d.Columns) > 0 {
						line += "  columns " + strings.Join(d.Columns, ", ")
					}
					fmt.Fprintln(c.stdout, line)
				}
				for _, k := range res.Conflicts {
					what := "column " + k.Column
					if k.Column == "" {
						what = "deleted at one site, changed at the other"
					}
					fmt.Fprintf(c.stdout, "conflict  %s/%s  %s: written by %s at once; %s's value kept (ppsync conflicts shows both)\n", k.Table, k.Key, what, strings.Join(k.Sites, " and "), k.Winner)
				}
				fmt.Fprintf(c.stdout, "%d rows compared in %d tables (%s): %d differ, %d conflicts", res.Checked, len(res.Tables), res.Elapsed, len(res.Differences), len(res.Conflicts))
				if repair {
					fmt.Fprintf(c.stdout, ", %d repaired", res.Repaired)
				}
				fmt.Fprintln(c.stdout)
			}
			if len(res.Differences) == 0 || (repair && res.Repaired >= len(res.Differences) && res.Complete) {
				return nil
			}
			if repair {
				return &exitCodeError{code: exitError, msg: "not every difference could be repaired (see above)"}
			}
			return &exitCodeError{code: exitError, msg: fmt.Sprintf("%d rows differ; run `ppsync db check --data %s --repair` to make the database match", len(res.Differences), dir)}
		},
	}
}
