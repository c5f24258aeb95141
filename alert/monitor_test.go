package alert

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

const london = "Europe/London"

func weekdayRule(t *testing.T, after, remind string, holidays ...string) Rule {
	t.Helper()
	r, err := NewRule(RuleSpec{Site: "clinic-north", Emails: []string{"manager@clinic.example"}, Days: "mon-fri",
		Hours: []string{"08:00-18:00"}, Zone: london, After: after, Remind: remind, Holidays: holidays}, at(t, london, "2026-11-01 00:00"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// world is a site as the monitor sees it over time: down in the given
// windows, with a backlog while it is down that drains when it is back.
type world struct {
	down    [][2]time.Time
	stalled [][2]time.Time // connected, backlog stuck at 7
	forked  [][2]time.Time
}

func in(ws [][2]time.Time, now time.Time) bool {
	for _, w := range ws {
		if !now.Before(w[0]) && now.Before(w[1]) {
			return true
		}
	}
	return false
}

func (w world) observe(now time.Time, last *time.Time) Observation {
	o := Observation{Known: true, Version: "1.0.0"}
	if in(w.down, now) {
		o.Backlog = 3
		for _, d := range w.down { // in contact until the moment it went down
			if !now.Before(d[0]) && now.Before(d[1]) && d[0].After(*last) {
				*last = d[0]
			}
		}
	} else {
		o.Connected = true
		*last = now
	}
	o.Local, o.Frontier = map[string]uint64{"s": 10}, map[string]uint64{"s": 10}
	if in(w.stalled, now) {
		o.Backlog = 7
		o.Frontier = map[string]uint64{"s": 3}
	}
	o.Forked = in(w.forked, now)
	o.LastContact = *last
	return o
}

type sent struct {
	what, kind string
	at         time.Time
}

// run evaluates the rule every step from start to end and returns what it
// sent; restarts (times) round-trip the state through JSON and restart the
// monitor, as a relay restart does.
func run(t *testing.T, r Rule, w world, start, end time.Time, step time.Duration, restarts ...time.Time) []sent {
	t.Helper()
	var st State
	c := Context{Family: "Smith Dental", Monitor: "relay", Up: start.Add(-time.Hour)}
	var out []sent
	last := start.Add(-time.Minute)
	var lastSaved []byte
	for now := start; now.Before(end); now = now.Add(step) {
		for _, rs := range restarts {
			if now.Equal(rs) {
				st = State{}
				if err := json.Unmarshal(lastSaved, &st); err != nil {
					t.Fatalf("restart: %v", err)
				}
				c.Up = now
			}
		}
		obs := w.observe(now, &last)
		if in(w.down, now) && restartedWithin(restarts, now) {
			obs.LastContact = time.Time{} // a new monitor process has not seen the site
		}
		msgs, changed := Evaluate(&r, &st, obs, c, now)
		for _, m := range msgs {
			out = append(out, sent{m.What, m.Kind, now})
			if strings.Contains(m.Text, "patient") && !strings.Contains(m.Text, "no patient data") {
				t.Fatalf("message mentions patients: %s", m.Text)
			}
		}
		if changed || lastSaved == nil || now.Minute() == 0 {
			b, err := json.Marshal(&st)
			if err != nil {
				t.Fatal(err)
			}
			lastSaved = b
		}
	}
	return out
}

func restartedWithin(restarts []time.Time, now time.Time) bool {
	for _, r := range restarts {
		if !now.Before(r) {
			return true
		}
	}
	return false
}

func describe(ss []sent, loc *time.Location) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprintf("%s/%s@%s", s.what, s.kind, s.at.In(loc).Format("Mon 15:04")))
	}
	return strings.Join(parts, " ")
}

func TestMonitorOutages(t *testing.T) {
	L := func(s string) time.Time { return at(t, london, s) }
	win := func(a, b string) [2]time.Time { return [2]time.Time{L(a), L(b)} }
	cases := []struct {
		name     string
		rule     Rule
		world    world
		from, to string
		restarts []string
		want     string
	}{
		{"the issue's example: down Friday 17:30, alert Monday 08:30, recovery at 10:00",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-04 17:30", "2026-12-07 10:00")}},
			"2026-12-04 12:00", "2026-12-07 12:00", nil, "alert/not-synced@Mon 08:30 recovery/not-synced@Mon 10:00"},
		{"shorter than the threshold inside hours: nothing",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-02 10:00", "2026-12-02 10:59")}},
			"2026-12-02 08:00", "2026-12-02 18:00", nil, ""},
		{"long, but all outside hours: nothing",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-04 18:00", "2026-12-07 08:00")}},
			"2026-12-04 12:00", "2026-12-07 12:00", nil, ""},
		{"across closing time: 40 min before, 20 min after opening",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-02 17:20", "2026-12-03 08:30")}},
			"2026-12-02 12:00", "2026-12-03 12:00", nil, "alert/not-synced@Thu 08:20 recovery/not-synced@Thu 08:30"},
		{"a holiday does not count",
			weekdayRule(t, "1h", "", "2026-12-25"), world{down: [][2]time.Time{win("2026-12-24 17:30", "2026-12-28 12:00")}},
			"2026-12-24 12:00", "2026-12-28 13:00", nil, "alert/not-synced@Mon 08:30 recovery/not-synced@Mon 12:00"},
		{"reminders every 2 hours of opening time",
			weekdayRule(t, "1h", "2h"), world{down: [][2]time.Time{win("2026-12-02 09:00", "2026-12-03 10:00")}},
			"2026-12-02 08:00", "2026-12-03 12:00", nil,
			"alert/not-synced@Wed 10:00 reminder/not-synced@Wed 12:00 reminder/not-synced@Wed 14:00 reminder/not-synced@Wed 16:00 reminder/not-synced@Wed 18:00 recovery/not-synced@Thu 10:00"},
		{"monitor restarted mid-outage after the alert: no second alert, recovery still sent",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-02 09:00", "2026-12-02 15:00")}},
			"2026-12-02 08:00", "2026-12-02 16:00", []string{"2026-12-02 12:07"}, "alert/not-synced@Wed 10:00 recovery/not-synced@Wed 15:00"},
		{"monitor restarted mid-outage before the alert: counted from the last contact it saved",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-02 09:00", "2026-12-02 15:00")}},
			"2026-12-02 08:00", "2026-12-02 16:00", []string{"2026-12-02 09:40"}, "alert/not-synced@Wed 10:00 recovery/not-synced@Wed 15:00"},
		{"connected but the backlog is stuck",
			weekdayRule(t, "30m", ""), world{stalled: [][2]time.Time{win("2026-12-02 09:00", "2026-12-02 11:00")}},
			"2026-12-02 08:00", "2026-12-02 12:00", nil, "alert/stalled@Wed 09:29 recovery/stalled@Wed 11:00"},
		{"a fork alerts at any hour, at once",
			weekdayRule(t, "1h", ""), world{forked: [][2]time.Time{win("2026-12-05 03:00", "2026-12-05 04:00")}},
			"2026-12-05 00:00", "2026-12-05 06:00", nil, "alert/fork@Sat 03:00 recovery/fork@Sat 04:00"},
		{"two outages, one alert each",
			weekdayRule(t, "1h", ""), world{down: [][2]time.Time{win("2026-12-02 09:00", "2026-12-02 10:30"), win("2026-12-02 13:00", "2026-12-02 14:05")}},
			"2026-12-02 08:00", "2026-12-02 16:00", nil, "alert/not-synced@Wed 10:00 recovery/not-synced@Wed 10:30 alert/not-synced@Wed 14:00 recovery/not-synced@Wed 14:05"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var restarts []time.Time
			for _, r := range c.restarts {
				restarts = append(restarts, L(r))
			}
			got := describe(run(t, c.rule, c.world, L(c.from), L(c.to), time.Minute, restarts...), c.rule.Schedule.Location())
			if got != c.want {
				t.Fatalf("sent:\n  %s\nwant:\n  %s", got, c.want)
			}
		})
	}
}

func TestMonitorPause(t *testing.T) {
	L := func(s string) time.Time { return at(t, london, s) }
	r := weekdayRule(t, "1h", "")
	r.Paused = L("2026-12-02 12:00")
	w := world{down: [][2]time.Time{{L("2026-12-02 09:00"), L("2026-12-02 15:00")}}}
	got := describe(run(t, r, w, L("2026-12-02 08:00"), L("2026-12-02 16:00"), time.Minute), r.Schedule.Location())
	if want := "alert/not-synced@Wed 12:00 recovery/not-synced@Wed 15:00"; got != want {
		t.Fatalf("paused until 12:00: sent %s, want %s (the alert waits for the pause to end)", got, want)
	}
}

func TestMonitorGraceAfterStart(t *testing.T) {
	L := func(s string) time.Time { return at(t, london, s) }
	r := weekdayRule(t, "1h", "")
	st := State{LastContact: L("2026-12-02 08:00")} // saved hours ago by the last run
	c := Context{Family: "Smith Dental", Up: L("2026-12-02 12:00")}
	obs := Observation{Known: true} // not connected yet
	if msgs, _ := Evaluate(&r, &st, obs, c, L("2026-12-02 12:00")); len(msgs) != 0 {
		t.Fatalf("the moment the monitor starts it alerted: %v", msgs[0].Subject)
	}
	msgs, _ := Evaluate(&r, &st, obs, c, L("2026-12-02 12:00").Add(31*time.Second))
	if len(msgs) != 1 || msgs[0].Kind != KindNotSynced || !msgs[0].Since.Equal(L("2026-12-02 08:00")) {
		t.Fatalf("after the grace: %+v, want one not-synced alert since 08:00", msgs)
	}
}

func TestMessageText(t *testing.T) {
	L := func(s string) time.Time { return at(t, london, s) }
	r := weekdayRule(t, "1h", "")
	st := State{LastContact: L("2026-12-04 17:30")}
	c := Context{Family: "Smith Dental", Monitor: "relay", Up: L("2026-12-01 00:00")}
	msgs, _ := Evaluate(&r, &st, Observation{Known: true, Version: "1.4.0", Backlog: 12, LastContact: L("2026-12-04 17:30")}, c, L("2026-12-07 08:30"))
	if len(msgs) != 1 {
		t.Fatalf("want one alert, got %d", len(msgs))
	}
	m := msgs[0]
	for _, want := range []string{"clinic-north", "Smith Dental", "Fri 4 Dec 2026 17:30 GMT", "version 1.4.0", "offline", "12 changes waiting", "ppsync status", "firewall or antivirus", "no patient data"} {
		if !strings.Contains(m.Subject+"\n"+m.Text, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, m.Subject, m.Text)
		}
	}
	if m.ID != r.ID+".not-synced.alert."+fmt.Sprint(L("2026-12-04 17:30").Unix()) {
		t.Errorf("message ID %q is not stable", m.ID)
	}
	msgs, _ = Evaluate(&r, &st, Observation{Known: true, Connected: true, LastContact: L("2026-12-07 09:15")}, c, L("2026-12-07 09:15"))
	if len(msgs) != 1 || msgs[0].What != WhatRecovery || !strings.Contains(msgs[0].Text, "lasted 2 days 15 h 45 min") || !strings.Contains(msgs[0].Text, "delivered") {
		t.Fatalf("recovery: %+v", msgs)
	}
}

// A site that keeps writing while connected always has a backlog, but every
// round of exchange completes: no stall.
func TestMonitorBusySiteIsNotStalled(t *testing.T) {
	L := func(s string) time.Time { return at(t, london, s) }
	r := weekdayRule(t, "30m", "")
	var st State
	c := Context{Family: "F", Up: L("2026-12-01 00:00")}
	for i := 0; i < 240; i++ {
		now := L("2026-12-02 09:00").Add(time.Duration(i) * time.Minute)
		// Each minute the site has written 5 more than the monitor holds,
		// and holds what the monitor held a minute ago.
		obs := Observation{Known: true, Connected: true, Backlog: 5,
			Frontier: map[string]uint64{"site": uint64(5*i + 5), "other": uint64(i)},
			Local:    map[string]uint64{"site": uint64(5 * i), "other": uint64(i + 1)}}
		if msgs, _ := Evaluate(&r, &st, obs, c, now); len(msgs) > 0 {
			t.Fatalf("at %s: %s", now.Format("15:04"), msgs[0].Subject)
		}
	}
}
