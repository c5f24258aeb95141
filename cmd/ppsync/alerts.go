package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Alerts: tell the practice when a site stops syncing.

func alertsCommand() *command {
	return &command{
		name:    "alerts",
		summary: "email or webhook alerts when a site stops syncing during opening hours",
		sub:     []*command{alertsAddCommand(), alertsListCommand(), alertsRemoveCommand(), alertsTestCommand(), alertsPauseCommand()},
	}
}

func alertsAddCommand() *command {
	var data, site, webhook, days, tz, after, remind string
	var emails, hours, holidays listFlag
	return &command{
		name:     "alerts add",
		synopsis: "--data DATA --site SITE (--email ADDR | --webhook URL)... --days mon-fri --hours 08:00-18:00 [--hours sat=09:00-13:00] --tz ZONE [--after 1h] [--remind DURATION] [--holiday YYYY-MM-DD]...",
		summary:  "alert when SITE has not synced for --after inside opening hours",
		detail: `The node at DATA (usually the family's relay, which sees every site) watches SITE.
A site "has not synced" when this node has had no exchange with it for --after, counting
only time inside the opening hours; or when it is connected but what waits to be exchanged
has not gone down for --after. One alert per outage, a reminder every --remind (default
none), and a recovery notice. Forks, a revoked copy still connecting and different versions
alert at any hour. Email goes through the [smtp] server of DATA/ppsync.toml.
Prints {"id":"..."} (and the webhook's signing secret, shown only here).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.StringVar(&site, "site", "", "the `SITE` to watch")
			fs.Var(&emails, "email", "an `ADDRESS` to email (repeatable)")
			fs.StringVar(&webhook, "webhook", "", "a `URL` to POST signed JSON to")
			fs.StringVar(&days, "days", "", "opening `DAYS`: mon-fri, mon,wed,fri, daily")
			fs.Var(&hours, "hours", "opening `HOURS` of those days (08:00-18:00), or of one day (sat=09:00-13:00); repeatable")
			fs.StringVar(&tz, "tz", "", "the clinic's time `ZONE`, like Europe/London")
			fs.StringVar(&after, "after", "1h", "alert after this `DURATION` inside opening hours (1s or more)")
			fs.StringVar(&remind, "remind", "", "remind every `DURATION` of opening hours while it lasts (default: no reminders)")
			fs.Var(&holidays, "holiday", "a closed `DATE` (YYYY-MM-DD; repeatable)")
		},
		run: func(c *cli, cmd *command, args []string) error {
			req := api.AlertRequest{Site: site, Emails: emails, Webhook: webhook, Days: days, Hours: hours, TZ: tz, After: after, Remind: remind, Holidays: holidays}
			row, err := askNode(c, cmd, &data, args, func(cl *api.Client, ctx context.Context) (api.AlertJSON, error) {
				return cl.AddAlert(ctx, req)
			})
			if err != nil {
				return err
			}
			out := map[string]string{"id": row.ID}
			if row.Secret != "" {
				out["webhook_secret"] = row.Secret
			}
			return writeJSONLine(c.stdout, out)
		},
	}
}

func alertsListCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "alerts list",
		synopsis: "--data DATA [--json]",
		summary:  "the alert rules: whom they tell, when, their state and the last message sent",
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			res, err := askNode(c, cmd, &data, args, (*api.Client).Alerts)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			printAlerts(c, res)
			return nil
		},
	}
}

func printAlerts(c *cli, res api.AlertsResult) {
	fmt.Fprintf(c.stdout, "Mail server: %s\n", res.SMTP)
	if len(res.Alerts) == 0 {
		fmt.Fprintln(c.stdout, "No alert rules. Add one with `ppsync alerts add`.")
		return
	}
	for _, a := range res.Alerts {
		fmt.Fprintln(c.stdout)
		tw := newTable(c.stdout)
		row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
		row("Rule", "%s", a.ID)
		row("Site", "%s", a.Site)
		var to []string
		to = append(to, a.Emails...)
		if a.Webhook != "" {
			to = append(to, "webhook "+a.Webhook)
		}
		row("Tells", "%s", strings.Join(to, ", "))
		row("Hours", "%s", a.Hours)
		row("After", "%s inside opening hours", a.After)
		if a.Remind != "" {
			row("Reminders", "every %s", a.Remind)
		}
		state := a.State
		if a.Paused != nil {
			state += " until " + formatTime(*a.Paused)
		}
		row("State", "%s", state)
		for _, p := range a.Problems {
			told := "not told yet"
			if p.Alerted {
				told = "told"
			}
			row("Problem", "%s since %s (%s)", p.Kind, formatTime(p.Since), told)
		}
		if a.LastSent != nil && a.LastSent.Sent != nil {
			row("Last sent", "%s %s by %s: %s", formatTime(*a.LastSent.Sent), a.LastSent.Event, a.LastSent.Channel, a.LastSent.Subject)
		}
		for _, p := range a.Pending {
			switch {
			case p.GaveUp:
				row("Not sent", "%s by %s, gave up after %d tries: %s", p.Event, p.Channel, p.Attempts, p.Error)
			case p.Error != "":
				row("Not sent yet", "%s by %s, %d tries, next %s: %s", p.Event, p.Channel, p.Attempts, formatTime(*p.Next), p.Error)
			default:
				row("Sending", "%s by %s", p.Event, p.Channel)
			}
		}
		tw.Flush()
	}
}

func alertsIDCommand(name, summary string, run func(c *cli, cl *api.Client, dir, id string) error) *command {
	var data string
	return &command{
		name:     "alerts " + name,
		synopsis: "--data DATA ID",
		summary:  summary,
		flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "ID")
			if err != nil {
				return err
			}
			dir, cl, err := c.dataClient(cmd, data)
			if err != nil {
				return err
			}
			defer cl.Close()
			return run(c, cl, dir, pos[0])
		},
	}
}

func alertsRemoveCommand() *command {
	return alertsIDCommand("remove", "delete an alert rule", func(c *cli, cl *api.Client, dir, id string) error {
		if err := cl.RemoveAlert(c.ctx, id); err != nil {
			return apiError(dir, err)
		}
		fmt.Fprintf(c.stdout, "removed alert rule %s\n", id)
		return nil
	})
}

func alertsTestCommand() *command {
	return alertsIDCommand("test", "send a test message of a rule now, on every channel", func(c *cli, cl *api.Client, dir, id string) error {
		res, err := cl.TestAlert(c.ctx, id)
		if err != nil {
			return apiError(dir, err)
		}
		for _, d := range res.Deliveries {
			fmt.Fprintf(c.stdout, "sent by %s: %s\n", d.Channel, d.Subject)
		}
		return nil
	})
}

func alertsPauseCommand() *command {
	var data, until string
	return &command{
		name:     "alerts pause",
		synopsis: "--data DATA ID --until (YYYY-MM-DD[THH:MM] | DURATION | now)",
		summary:  "silence a rule's alerts and reminders until then (--until now resumes it)",
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.StringVar(&until, "until", "", "a date (2026-12-28, local midnight), a time (2026-12-28T08:00), a duration from now (4h), or now")
		},
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "ID")
			if err != nil {
				return err
			}
			t, err := parseUntil(until, time.Now())
			if err != nil {
				return usageErrorf(cmd.name, "%v", err)
			}
			dir, cl, err := c.dataClient(cmd, data)
			if err != nil {
				return err
			}
			defer cl.Close()
			row, err := cl.PauseAlert(c.ctx, pos[0], t)
			if err != nil {
				return apiError(dir, err)
			}
			if row.Paused == nil {
				fmt.Fprintf(c.stdout, "alert rule %s is active\n", row.ID)
				return nil
			}
			fmt.Fprintf(c.stdout, "alert rule %s is paused until %s\n", row.ID, formatTime(*row.Paused))
			return nil
		},
	}
}

// parseUntil reads --until: now, a duration from now, a date (local
// midnight) or a local date and time.
func parseUntil(v string, now time.Time) (time.Time, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return time.Time{}, fmt.Errorf("--until is missing: give a date (2026-12-28), a time (2026-12-28T08:00), a duration (4h) or now")
	case v == "now":
		return now, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02 15:04", time.DateOnly} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--until %q is not a date (2026-12-28), a time (2026-12-28T08:00), a duration (4h) or now", v)
}
