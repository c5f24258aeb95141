//go:build linux

package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ppsync/ppsync/internal/mailsink"
)

// The alert scenario's rule and the monitor's clock. Every site has the same
// rule: Monday to Friday 08:00-18:00 in London (GMT in December), after 20 s
// of opening time. The relay's monitor clock reads Friday 17:58:00 at the
// scenario's reference instant, so closing time comes two minutes later.
const (
	alertAfter    = 20 * time.Second
	alertZone     = "Europe/London"
	alertFriday   = "2026-12-04T17:58:00Z"
	alertMonday   = "2026-12-07T07:59:30Z" // the monitor restarts here, mid-outage
	alertMondayAt = "2026-12-07T08:00:20Z" // when the weekend outage is due
)

// Alerts runs the relay as the family's monitor with a real SMTP server
// (STARTTLS and AUTH, listening in the relay's network namespace) and puts
// each site through outages inside and outside opening hours:
//
//   - clinic-1 is killed for 45 s inside hours: one alert, one recovery;
//   - clinic-2 is frozen (SIGSTOP) for 6 s, shorter than the threshold and
//     than the mesh's liveness check: nothing;
//   - clinic-3 is cut off from every node (killed, without namespaces) for
//     45 s inside hours: one alert, one recovery;
//   - clinic-2 is killed 5 s before closing and comes back 20 s after it:
//     5 s of opening time, below the threshold: nothing;
//   - clinic-1 is frozen for 25 s after closing: nothing;
//   - clinic-3 is killed after closing on Friday and the monitor is stopped
//     and restarted on Monday at 07:59:30 (its state from the store): one
//     alert at 08:00:20, when 20 s of Monday's opening time have passed, and
//     one recovery when clinic-3 returns. clinic-1 and clinic-2 reconnect to
//     the restarted monitor in time: nothing for them.
//
// The write load runs throughout; at the end every acknowledged write must
// be everywhere, as in every scenario.
func Alerts(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "alerts", Seed: seed}
	var sink *mailsink.Server
	var ref time.Time
	h, load, err := start(ctx, env, seed, 3, lightLoad, func(h *Harness) error {
		ln, err := h.Relay.ns.listen("127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("a mail server in the relay's namespace: %w", err)
		}
		if sink, err = mailsink.StartOn(ln, mailsink.Options{TLS: "starttls", Username: "monitor", Password: "smtp-secret-42"}); err != nil {
			return err
		}
		ca := filepath.Join(h.dir, "mail-ca.pem")
		pw := filepath.Join(h.dir, "smtp-password")
		if err := os.WriteFile(ca, sink.CertPEM(), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(pw, []byte("smtp-secret-42\n"), 0o600); err != nil {
			return err
		}
		for k, v := range map[string]string{"server": fmt.Sprintf("%q", sink.Addr()), "from": `"monitor@vendor.example"`,
			"tls": `"starttls"`, "username": `"monitor"`, "password_file": fmt.Sprintf("%q", pw), "ca_file": fmt.Sprintf("%q", ca)} {
			if err := SetConfig(h.Relay.Data, k, v); err != nil {
				return err
			}
		}
		// The monitor's clock reads Friday 17:59:00 at ref, the moment the
		// schedule below starts (the family is up well before).
		ref = time.Now().Add(60 * time.Second).Truncate(time.Second)
		h.Relay.SetEnv("PPSYNC_ALERT_CLOCK", fmt.Sprintf("%s@%d", alertFriday, ref.Unix()))
		return nil
	})
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	defer sink.Close()
	if _, err := h.waitMesh(ctx, h.Nodes()); err != nil {
		h.Violate("membership", "%v", err)
		return res, nil
	}
	for _, s := range h.Sites {
		out, stderr, code, err := h.Relay.CLI(ctx, "alerts", "add", "--data", h.Relay.Data, "--site", s.Site, "--email", "manager@"+s.Site+".example",
			"--days", "mon-fri", "--hours", "08:00-18:00", "--tz", alertZone, "--after", alertAfter.String())
		var added struct{ ID string }
		if err != nil || code != 0 || json.Unmarshal([]byte(out), &added) != nil || added.ID == "" {
			h.Violate("harness", "alerts add for %s: exit %d %v: %s %s", s.Site, code, err, out, stderr)
			return res, nil
		}
		if s == h.Sites[0] {
			if _, stderr, code, err := h.Relay.CLI(ctx, "alerts", "test", "--data", h.Relay.Data, added.ID); err != nil || code != 0 {
				h.Violate("alerts", "alerts test: exit %d %v: %s", code, err, stderr)
			}
		}
	}
	if time.Now().After(ref) {
		h.Violate("harness", "the family took too long to start: the schedule's reference time has passed")
		return res, nil
	}
	at := func(d time.Duration) error { return pause(ctx, time.Until(ref.Add(d))) }
	c1, c2, c3 := h.Sites[0], h.Sites[1], h.Sites[2]
	ambiguous := map[string]bool{}
	step := func(what string, f func() error) {
		if err := f(); err != nil {
			h.Violate("harness", "%s: %v", what, err)
		}
	}
	type event struct {
		at   time.Duration
		what string
		do   func() error
	}
	// clinic-3's partition: its links cut when the nodes have namespaces,
	// else the process killed (isolate would stop the monitor too).
	cut, heal := c3.Kill, func() error { return c3.Start(ctx) }
	if h.Net.Isolated() {
		var undo func() error
		cut = func() (err error) { undo, err = h.isolate(ctx, c3); return err }
		heal = func() error { return undo() }
	}
	plan := []event{
		{5 * time.Second, "kill clinic-1 (inside hours)", c1.Kill},
		{5 * time.Second, "freeze clinic-2 for 6 s", c2.Freeze},
		{11 * time.Second, "thaw clinic-2", c2.Thaw},
		{50 * time.Second, "start clinic-1", func() error { return c1.Start(ctx) }},
		{55 * time.Second, "cut clinic-3 off (inside hours)", cut},
		{100 * time.Second, "heal clinic-3", heal},
		{115 * time.Second, "kill clinic-2 5 s before closing", c2.Kill},
		{125 * time.Second, "freeze clinic-1 after closing", c1.Freeze},
		{140 * time.Second, "start clinic-2 after closing", func() error { return c2.Start(ctx) }},
		{150 * time.Second, "thaw clinic-1", c1.Thaw},
		{155 * time.Second, "kill clinic-3 on Friday evening", c3.Kill},
	}
	// began is when each step really began: a harness starved of CPU (the
	// race detector on a 2-core machine) can run one late, and what an outage
	// deserves is judged on its real length, not the planned one.
	began := map[string]time.Time{}
	for _, e := range plan {
		if err := at(e.at); err != nil {
			return res, err
		}
		now := time.Now()
		began[e.what] = now
		late := ""
		if l := now.Sub(ref.Add(e.at)); l > time.Second {
			late = fmt.Sprintf(", %s late", l.Round(100*time.Millisecond))
		}
		h.Logf("alerts: %s (monitor clock %s; %s%s)", e.what, mustTime(alertFriday).Add(e.at).Format("Mon 15:04:05"), now.UTC().Format("15:04:05.000"), late)
		h.countFault("alerts-" + strings.Fields(e.what)[0])
		step(e.what, e.do)
		if d := time.Since(now); d > 2*time.Second {
			h.Logf("alerts: %s took %s", e.what, d.Round(100*time.Millisecond))
		}
	}
	// An outage this close to the threshold may or may not be told.
	const margin = 5 * time.Second
	expect := func(site, from, to string, want int) {
		lasted := began[to].Sub(began[from])
		switch {
		case want == 1 && lasted < alertAfter+margin, want == 0 && lasted > alertAfter-margin:
			h.Logf("alerts: %s's outage lasted %s against a threshold of %s: either outcome is right", site, lasted.Round(100*time.Millisecond), alertAfter)
			ambiguous[site] = true
		}
	}
	expect(c1.Site, plan[0].what, plan[3].what, 1)
	expect(c2.Site, plan[1].what, plan[2].what, 0)
	expect(c3.Site, plan[4].what, plan[5].what, 1)
	// The weekend passes while the monitor is down: it restarts on Monday
	// at 07:59:30 by its clock.
	if _, err := h.Relay.Stop(); err != nil {
		h.Violate("harness", "stop the relay: %v", err)
	}
	monday := time.Now().Add(2 * time.Second).Truncate(time.Second)
	h.Relay.SetEnv("PPSYNC_ALERT_CLOCK", fmt.Sprintf("%s@%d", alertMonday, monday.Unix()))
	step("restart the monitor on Monday", func() error { return h.Relay.Start(ctx) })
	due := monday.Add(mustTime(alertMondayAt).Sub(mustTime(alertMonday)))
	wctx, cancel := context.WithTimeout(ctx, time.Until(due)+45*time.Second)
	defer cancel()
	if _, err := sink.Wait(wctx, func(ms []mailsink.Message) bool { return len(alertMails(ms, c3.Site, "has not synced")) >= 2 }); err != nil {
		h.Violate("alerts", "no alert for clinic-3's weekend outage by Monday 08:00:20: %v", err)
	}
	step("start clinic-3 on Monday", func() error { return c3.Start(ctx) })
	if _, err := sink.Wait(wctx, func(ms []mailsink.Message) bool { return len(alertMails(ms, c3.Site, "syncing again")) >= 2 }); err != nil {
		h.Violate("alerts", "no recovery for clinic-3's weekend outage: %v", err)
	}
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})

	// Exactly what each outage deserved, no more.
	msgs := sink.Messages()
	want := map[string][2]int{c1.Site: {1, 1}, c2.Site: {0, 0}, c3.Site: {2, 2}}
	for site, w := range want {
		a, r := len(alertMails(msgs, site, "has not synced")), len(alertMails(msgs, site, "syncing again"))
		if ambiguous[site] && a == r && (a == w[0] || a == w[0]-1 || a == w[0]+1) {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: %d alerts and %d recoveries (an outage near the threshold, as the harness ran it)", site, a, r))
			continue
		}
		if a != w[0] || r != w[1] {
			h.Violate("alerts", "%s: %d alerts and %d recoveries, want %d and %d", site, a, r, w[0], w[1])
			if out, _, _, err := h.Relay.CLI(ctx, "alerts", "list", "--data", h.Relay.Data, "--json"); err == nil {
				h.Logf("alerts: the monitor's rules and state:\n%s", out)
			}
		}
	}
	if len(alertMails(msgs, c1.Site, "test message")) != 1 {
		h.Violate("alerts", "the test message of `alerts test` did not arrive")
	}
	for _, m := range msgs {
		if !m.TLS || m.User != "monitor" {
			h.Violate("alerts", "a message went without STARTTLS or AUTH: %q", m.Subject)
		}
		if strings.Contains(m.Body, "smtp-secret-42") {
			h.Violate("alerts", "a message carries the SMTP password")
		}
	}
	if ws := alertMails(msgs, c3.Site, "has not synced"); len(ws) == 2 {
		// The weekend outage: due at 08:00:20 on Monday by the monitor's clock.
		date, err := ws[1].Header.Date()
		due := mustTime(alertMondayAt)
		if err != nil || date.Before(due.Add(-time.Second)) || date.After(due.Add(10*time.Second)) {
			h.Violate("alerts", "the weekend outage was told at %v, want 08:00:20 on Monday (20 s of opening time)", date)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("weekend outage told at %s by the monitor's clock (due 08:00:20)", date.UTC().Format("Mon 15:04:05")))
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%d messages through a real SMTP server (STARTTLS, AUTH)", len(msgs)))
	h.finish(&res)
	return res, ctx.Err()
}

func alertMails(ms []mailsink.Message, site, subject string) []mailsink.Message {
	var out []mailsink.Message
	for _, m := range ms {
		if strings.Contains(m.Subject, subject) && strings.Contains(m.Subject, site+" ") {
			out = append(out, m)
		}
	}
	return out
}

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}
