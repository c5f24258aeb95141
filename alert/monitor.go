package alert

import (
	"fmt"
	"strings"
	"time"
)

// Kinds of problem a rule reports.
const (
	KindNotSynced = "not-synced" // no exchange with the site for After, inside opening hours
	KindStalled   = "stalled"    // connected, but its backlog has not shrunk for After
	KindFork      = "fork"       // two copies of the site wrote different entries (any hour)
	KindRevoked   = "revoked"    // a revoked copy of the site still tries to connect (any hour)
	KindVersion   = "version"    // the site runs another version than the monitor (any hour)
)

// What a message is.
const (
	WhatAlert    = "alert"
	WhatReminder = "reminder"
	WhatRecovery = "recovery"
	WhatTest     = "test"
)

// Observation is what the monitor sees of the rule's site at one moment.
type Observation struct {
	Known       bool      // the site is a member of the family
	Connected   bool      // connected now (the mesh's liveness check holds)
	LastContact time.Time // the last successful exchange (a heartbeat or a catch-up); zero: none since start
	Backlog     uint64    // entries not yet exchanged, in either direction
	// Frontier is what the site last reported holding (per site, the
	// highest seq), Local what the monitor holds. Progress is judged on
	// them: what either held when a round began must reach the other.
	Frontier map[string]uint64
	Local    map[string]uint64
	Version  string // the version the site last reported
	Forked   bool
	Revoked  bool // revoked and still trying to connect
	OtherVer bool // Version differs from the monitor's
}

// Context names the practice and the monitor in messages.
type Context struct {
	Family  string // the family's (practice's) name
	Monitor string // the site that runs the monitor
	Version string // the monitor's version
	Up      time.Time
	// Grace: after the monitor starts, sites get this long to reconnect
	// before an outage is reported (they were connected to a monitor that
	// was not running). Default: the smaller of the rule's After and 30 s.
	Grace time.Duration
}

// Outage is one open problem of a rule's site.
type Outage struct {
	Kind      string    `json:"kind"`
	Since     time.Time `json:"since"`
	Alerted   time.Time `json:"alerted,omitzero"` // zero: not (yet) told
	Reminded  time.Time `json:"reminded,omitzero"`
	Reminders int       `json:"reminders,omitempty"`
}

// State is what the monitor remembers of one rule, persisted so that a
// restart neither alerts twice for one outage nor misses a recovery.
type State struct {
	LastContact time.Time `json:"last_contact,omitzero"`
	// Connected is when the site last connected (zero while it is not).
	Connected time.Time `json:"connected,omitzero"`
	// A round of exchange: what the site held when it began must reach the
	// monitor (WantLocal) and what the monitor held must reach the site
	// (WantRemote). Caught is when a round last completed. A round that
	// does not complete within After (inside opening hours) is a stall; a
	// site that keeps writing completes rounds all the same.
	Round      time.Time          `json:"round,omitzero"`
	WantLocal  map[string]uint64  `json:"want_local,omitempty"`
	WantRemote map[string]uint64  `json:"want_remote,omitempty"`
	Caught     time.Time          `json:"caught,omitzero"`
	Sync       *Outage            `json:"sync,omitempty"`   // not-synced or stalled: one outage
	Urgent     map[string]*Outage `json:"urgent,omitempty"` // fork, revoked, version
	Last       Observation        `json:"last"`
}

// Message is one notice to send on the rule's channels.
type Message struct {
	ID      string        `json:"id"` // stable: sending it again is recognisably the same message
	Rule    string        `json:"rule"`
	Site    string        `json:"site"`
	Family  string        `json:"family"`
	What    string        `json:"event"` // alert, reminder, recovery, test
	Kind    string        `json:"kind"`
	Since   time.Time     `json:"since"`
	At      time.Time     `json:"at"`
	Lasted  time.Duration `json:"-"`
	Last    LastReport    `json:"last"`
	Subject string        `json:"subject"`
	Text    string        `json:"text"`
}

// LastReport is what the site last reported, as messages show it.
type LastReport struct {
	Version string `json:"version,omitempty"`
	Online  bool   `json:"online"`
	Backlog uint64 `json:"backlog"`
	Seen    string `json:"last_contact,omitempty"`
}

// Evaluate looks at the rule's site at now, updates the state and returns
// the messages to send. It returns changed when the state must be saved
// (an outage opened, was told or closed), not for every new contact time.
func Evaluate(r *Rule, st *State, obs Observation, c Context, now time.Time) (msgs []Message, changed bool) {
	frontier, local := obs.Frontier, obs.Local
	if obs.Connected {
		obs.LastContact = now // connected (the mesh's liveness check holds): in contact now
	}
	if obs.LastContact.After(st.LastContact) {
		st.LastContact = obs.LastContact
	}
	obs.Frontier, obs.Local = nil, nil // not kept in Last
	st.Last = obs
	paused := r.PausedAt(now)
	sched := &r.Schedule

	// Rounds of exchange while connected.
	if !obs.Connected {
		st.Connected, st.Round, st.WantLocal, st.WantRemote = time.Time{}, time.Time{}, nil, nil
	} else {
		if st.Connected.IsZero() {
			st.Connected = now
		}
		if st.Round.IsZero() {
			st.Round, st.WantLocal, st.WantRemote = now, clone(frontier), clone(local)
		}
		if covers(local, st.WantLocal) && covers(frontier, st.WantRemote) {
			st.Caught = now
			st.Round, st.WantLocal, st.WantRemote = now, clone(frontier), clone(local)
		}
	}
	// Everything either side held when the site (re)connected has reached
	// the other.
	delivered := obs.Connected && !st.Caught.Before(st.Connected)

	// Not synced, or stalled: one outage at a time.
	if o := st.Sync; o != nil {
		if delivered && st.Caught.After(o.Since) {
			if !o.Alerted.IsZero() {
				msgs = append(msgs, message(r, st, c, o, WhatRecovery, now))
			}
			st.Sync, changed = nil, true
		}
	} else {
		since := st.LastContact
		if since.IsZero() {
			since = r.Created // never seen: counted from the rule's making
		}
		grace := c.Grace
		if grace == 0 {
			grace = min(r.After, 30*time.Second)
		}
		settled := now.Sub(c.Up) >= grace
		switch {
		case !obs.Connected && settled && !now.Before(sched.Due(since, r.After)) && !sched.Due(since, r.After).IsZero():
			st.Sync, changed = &Outage{Kind: KindNotSynced, Since: since}, true
		case obs.Connected && !st.Round.IsZero() && !now.Before(sched.Due(st.Round, r.After)) && !sched.Due(st.Round, r.After).IsZero():
			st.Sync, changed = &Outage{Kind: KindStalled, Since: st.Round}, true
		}
	}
	if o := st.Sync; o != nil && !paused {
		switch {
		case o.Alerted.IsZero():
			o.Alerted, changed = now, true
			msgs = append(msgs, message(r, st, c, o, WhatAlert, now))
		case r.Remind > 0:
			last := o.Alerted
			if o.Reminded.After(last) {
				last = o.Reminded
			}
			if due := sched.Due(last, r.Remind); !due.IsZero() && !now.Before(due) {
				o.Reminded, o.Reminders, changed = now, o.Reminders+1, true
				msgs = append(msgs, message(r, st, c, o, WhatReminder, now))
			}
		}
	}

	// Problems that alert at any hour.
	for _, k := range []struct {
		kind string
		on   bool
	}{{KindFork, obs.Forked}, {KindRevoked, obs.Revoked}, {KindVersion, obs.OtherVer}} {
		o := st.Urgent[k.kind]
		switch {
		case k.on && o == nil:
			if st.Urgent == nil {
				st.Urgent = map[string]*Outage{}
			}
			o = &Outage{Kind: k.kind, Since: now}
			st.Urgent[k.kind], changed = o, true
		case !k.on && o != nil:
			if !o.Alerted.IsZero() {
				msgs = append(msgs, message(r, st, c, o, WhatRecovery, now))
			}
			delete(st.Urgent, k.kind)
			changed = true
			continue
		}
		if o != nil && o.Alerted.IsZero() && !paused {
			o.Alerted, changed = now, true
			msgs = append(msgs, message(r, st, c, o, WhatAlert, now))
		}
	}
	return msgs, changed
}

// TestMessage is what `ppsync alerts test` sends.
func TestMessage(r *Rule, st *State, c Context, now time.Time) Message {
	o := &Outage{Kind: "test", Since: now}
	return message(r, st, c, o, WhatTest, now)
}

func message(r *Rule, st *State, c Context, o *Outage, what string, now time.Time) Message {
	loc := r.Schedule.Location()
	m := Message{Rule: r.ID, Site: r.Site, Family: c.Family, What: what, Kind: o.Kind, Since: o.Since.UTC(), At: now.UTC(), Lasted: now.Sub(o.Since)}
	m.ID = fmt.Sprintf("%s.%s.%s.%d", r.ID, o.Kind, what, o.Since.Unix())
	if what == WhatReminder {
		m.ID += fmt.Sprintf(".%d", o.Reminders)
	}
	if what == WhatTest {
		m.ID = fmt.Sprintf("%s.test.%d", r.ID, now.UnixNano())
	}
	m.Last = LastReport{Version: st.Last.Version, Online: st.Last.Connected, Backlog: st.Last.Backlog}
	if !st.LastContact.IsZero() {
		m.Last.Seen = when(st.LastContact, loc)
	}
	practice := c.Family
	if practice == "" {
		practice = "your practice"
	}
	since := when(o.Since, loc)
	var subject string
	var b strings.Builder
	switch what {
	case WhatTest:
		subject = fmt.Sprintf("ppsync test message for %s (%s)", r.Site, practice)
		fmt.Fprintf(&b, "This is a test of the alert rule %s for site %s of %s. It works: messages of this rule reach you here.\n\n", r.ID, r.Site, practice)
		fmt.Fprintf(&b, "The rule alerts when %s has not synced for %s inside opening hours: %s.\n", r.Site, r.After, r.Schedule.String())
	case WhatRecovery:
		subject = fmt.Sprintf("ppsync: %s is syncing again (%s)", r.Site, practice)
		switch o.Kind {
		case KindNotSynced, KindStalled:
			fmt.Fprintf(&b, "Site %s of %s is syncing again. The problem began %s and lasted %s; the changes that were waiting have been delivered.\n", r.Site, practice, since, lasted(m.Lasted))
		default:
			fmt.Fprintf(&b, "The %s problem at site %s of %s, reported since %s, is resolved (it lasted %s).\n", kindWords(o.Kind), r.Site, practice, since, lasted(m.Lasted))
		}
	default:
		subject = problemText(&b, r, practice, since, o, what)
	}
	if what != WhatRecovery {
		fmt.Fprintf(&b, "\nWhat %s last reported: %s.\n", r.Site, lastWords(m.Last))
	}
	if what == WhatAlert || what == WhatReminder {
		b.WriteString(checkFirst(o.Kind, r.Site))
	}
	monitor := c.Monitor
	if monitor == "" {
		monitor = "the family's monitor"
	}
	fmt.Fprintf(&b, "\nThis message carries no patient data. Sent by ppsync at %s (rule %s, %s).\n", monitor, r.ID, r.Channels())
	m.Subject, m.Text = subject, b.String()
	return m
}

func problemText(b *strings.Builder, r *Rule, practice, since string, o *Outage, what string) string {
	prefix := ""
	if what == WhatReminder {
		prefix = "Reminder: "
	}
	var subject string
	switch o.Kind {
	case KindNotSynced:
		subject = fmt.Sprintf("%sppsync: %s has not synced since %s (%s)", prefix, r.Site, since, practice)
		fmt.Fprintf(b, "%sSite %s of %s has not synced with the family since %s, which is more than %s inside its opening hours (%s).\n", prefix, r.Site, practice, since, r.After, r.Schedule.String())
	case KindStalled:
		subject = fmt.Sprintf("%sppsync: %s is connected but not catching up (%s)", prefix, r.Site, practice)
		fmt.Fprintf(b, "%sSite %s of %s is connected, but the changes waiting to be exchanged with it have not gone down since %s (more than %s inside its opening hours).\n", prefix, r.Site, practice, since, r.After)
	case KindFork:
		subject = fmt.Sprintf("%sppsync: two copies of %s are writing (%s)", prefix, r.Site, practice)
		fmt.Fprintf(b, "%sTwo copies of site %s of %s have written different changes since %s. Its writes are stopped so that nothing is lost; support must resolve it.\n", prefix, r.Site, practice, since)
	case KindRevoked:
		subject = fmt.Sprintf("%sppsync: a removed copy of %s is trying to connect (%s)", prefix, r.Site, practice)
		fmt.Fprintf(b, "%sA copy of site %s of %s whose certificate was revoked has been trying to connect since %s. It is refused; changes made there do not reach the family.\n", prefix, r.Site, practice, since)
	case KindVersion:
		subject = fmt.Sprintf("%sppsync: %s runs another version (%s)", prefix, r.Site, practice)
		fmt.Fprintf(b, "%sSite %s of %s runs another ppsync version than the monitor since %s: systems are on different versions.\n", prefix, r.Site, practice, since)
	}
	return subject
}

func checkFirst(kind, site string) string {
	switch kind {
	case KindNotSynced:
		return fmt.Sprintf("\nWhat to check first:\n"+
			"1. Is the computer of %s that runs ppsync switched on and on the network?\n"+
			"2. Is ppsync running there? `ppsync status --data DIR` on that machine says whether sync runs and, if not, why.\n"+
			"3. Did a firewall or antivirus update block ppsync? Allow ppsync (ppsync.exe on Windows) to reach the network.\n", site)
	case KindStalled:
		return "\nWhat to check first:\n" +
			"1. `ppsync status --data DIR` at that site: a full disk, a stopped practice database or a refused change is named there.\n" +
			"2. `ppsync db status --data DIR` shows what waits to be written into the practice database.\n"
	case KindFork:
		return "\nWhat to check first: was the site's data directory copied to another machine, or a backup restored beside it? Stop the copy that should not run and call support.\n"
	case KindRevoked:
		return "\nWhat to check first: a machine that was replaced may still run the old copy of ppsync. Find it and stop it (`ppsync service stop`).\n"
	case KindVersion:
		return "\nWhat to check first: finish the update at every site (hosted systems are updated by the vendor's support).\n"
	}
	return ""
}

func kindWords(kind string) string {
	switch kind {
	case KindFork:
		return "two-copies (fork)"
	case KindRevoked:
		return "revoked-copy"
	case KindVersion:
		return "different-versions"
	}
	return kind
}

func lastWords(l LastReport) string {
	var parts []string
	if l.Version != "" {
		parts = append(parts, "version "+l.Version)
	}
	if l.Online {
		parts = append(parts, "online")
	} else {
		parts = append(parts, "offline")
	}
	parts = append(parts, fmt.Sprintf("%d changes waiting", l.Backlog))
	if l.Seen != "" {
		parts = append(parts, "last contact "+l.Seen)
	}
	return strings.Join(parts, ", ")
}

func when(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("Mon 2 Jan 2006 15:04 MST")
}

func lasted(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%d h %d min", int(d.Hours()), int(d.Minutes())%60)
	}
	days := int(d.Hours()) / 24
	unit := "days"
	if days == 1 {
		unit = "day"
	}
	return fmt.Sprintf("%d %s %d h %d min", days, unit, int(d.Hours())%24, int(d.Minutes())%60)
}

// covers reports whether have holds at least want of every site.
func covers(have, want map[string]uint64) bool {
	for site, seq := range want {
		if have[site] < seq {
			return false
		}
	}
	return true
}

func clone(m map[string]uint64) map[string]uint64 {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
