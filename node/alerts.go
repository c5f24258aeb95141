package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ppsync/ppsync/alert"
	"github.com/ppsync/ppsync/alert/alertdb"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/notify"
)

// Events of the alert monitor.
const (
	EvAlert      = "alert"       // a rule told of a problem: {rule, site, kind, what, since}
	EvAlertSent  = "alert-sent"  // a message went out: {rule, channel, id}
	EvAlertError = "alert-error" // a message could not be sent yet: {rule, channel, id, error, next}
)

// alertEvery is how often the monitor looks at every rule's site.
const alertEvery = time.Second

// alerter is the family's monitor: it evaluates each rule against what this
// node sees of the rule's site (alert.Evaluate decides), persists the state
// and the messages it decided on in one batch, and sends them from an outbox
// with retries. It runs no goroutine of its own: the node's scheduler calls
// tick every second (at a relay, one goroutine for every family's monitor,
// so that a site that stopped syncing, when none of its family is
// connected, is still told of on time), and a delivery, which may wait for
// a mail server, runs on a goroutine of the node's while it lasts. Only tick
// changes the states; the mutex guards them for readers and is never held
// across I/O.
type alerter struct {
	alerterDeps

	sent, failed atomic.Uint64

	mu         sync.Mutex
	rules      map[string]*alert.Rule
	states     map[string]*alert.State
	saved      map[string]time.Time // when each state was last saved
	up         time.Time
	passes     int  // evaluations run since start (tests wait on it)
	delivering bool // a delivery goroutine runs
}

// alerterDeps is what the monitor is given by the node.
type alerterDeps struct {
	db      alertdb.DB
	log     *slog.Logger
	now     func() time.Time // the monitor's clock
	nodeNow func() time.Time // the node's clock, which observations' contact times are in
	smtp    func() (notify.SMTP, error)
	client  *http.Client
	observe func(site string) alert.Observation
	context func() alert.Context
	emit    func(typ string, data any)
	sites   func() []string // the family's sites, to check a rule's --site
	// goTracked runs a delivery on a goroutine that the node's Close waits
	// for (false: the node is closing, nothing started).
	goTracked func(f func()) bool
	// poke asks for a tick at once (a new rule).
	poke func()
}

func newAlerter(deps alerterDeps) (*alerter, error) {
	a := &alerter{alerterDeps: deps}
	a.rules, a.states, a.saved = map[string]*alert.Rule{}, map[string]*alert.State{}, map[string]time.Time{}
	a.up = a.now()
	rules, err := a.db.Rules()
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		st, err := a.db.State(r.ID)
		if err != nil {
			return nil, err
		}
		a.rules[r.ID], a.states[r.ID], a.saved[r.ID] = &r, &st, a.up
	}
	return a, nil
}

// tick evaluates every rule and, when a message is due, starts delivering
// (one delivery goroutine at a time): the scheduler runs it every
// alertEvery, and at once when poked. It waits for no network: the outbox
// is read and states saved to the local store only.
func (a *alerter) tick(ctx context.Context) {
	a.evaluate()
	a.mu.Lock()
	busy := a.delivering
	a.mu.Unlock()
	if busy || !a.due() {
		return
	}
	a.mu.Lock()
	a.delivering = true
	a.mu.Unlock()
	started := a.goTracked(func() {
		a.deliver(ctx)
		a.mu.Lock()
		a.delivering = false
		a.mu.Unlock()
	})
	if !started {
		a.mu.Lock()
		a.delivering = false
		a.mu.Unlock()
	}
}

// due says whether a message of the outbox is due now.
func (a *alerter) due() bool {
	pending, err := a.db.Pending()
	if err != nil {
		a.log.Error("alert outbox not readable", "err", err)
		return false
	}
	now := a.now()
	for _, d := range pending {
		if d.Due(now) {
			return true
		}
	}
	return false
}

// saveAll saves every rule's state as the monitor stops, so that the next
// start counts outages from the last contact seen.
func (a *alerter) saveAll() {
	a.mu.Lock()
	states := make(map[string]alert.State, len(a.states))
	for id, st := range a.states {
		states[id] = cloneState(st)
	}
	a.mu.Unlock()
	for id, st := range states {
		if err := a.db.Decide(id, st, nil); err != nil {
			a.log.Warn("alert state not saved at stop", "rule", id, "err", err)
		}
	}
}

// evaluate runs the pure monitor for each rule and saves what changed.
func (a *alerter) evaluate() {
	now := a.now()
	c := a.context()
	c.Up = a.up
	a.mu.Lock()
	ids := make([]string, 0, len(a.rules))
	for id := range a.rules {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		rule, st, ok := a.snapshot(id)
		a.mu.Lock()
		last := a.saved[id]
		a.mu.Unlock()
		if !ok {
			continue // removed meanwhile
		}
		obs := a.observe(rule.Site)    // outside the lock: it reads the node
		if !obs.LastContact.IsZero() { // to the monitor's clock, by its age
			obs.LastContact = now.Add(-a.nodeNow().Sub(obs.LastContact))
		}
		msgs, changed := alert.Evaluate(&rule, &st, obs, c, now)
		var ds []alert.Delivery
		for _, m := range msgs {
			ds = append(ds, alert.Deliveries(&rule, m, now)...)
			a.log.Warn("alert: "+m.Subject, "rule", rule.ID, "site", rule.Site, "event", m.What, "kind", m.Kind)
			a.emit(EvAlert, map[string]any{"rule": rule.ID, "site": rule.Site, "kind": m.Kind, "what": m.What, "since": m.Since, "subject": m.Subject})
		}
		// The last contact is saved once a minute too, so that a restart
		// counts an outage from when the site was last heard.
		if changed || now.Sub(last) >= time.Minute {
			if err := a.db.Decide(id, st, ds); err != nil {
				a.log.Error("alert state not saved (decided again next second)", "rule", id, "err", err)
				continue
			}
			last = now
		}
		a.mu.Lock()
		if a.rules[id] != nil {
			a.states[id], a.saved[id] = &st, last
		}
		a.mu.Unlock()
	}
	a.mu.Lock()
	a.passes++
	a.mu.Unlock()
}

// snapshot copies a rule and its state, to use outside the lock.
func (a *alerter) snapshot(id string) (alert.Rule, alert.State, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.rules[id]
	if r == nil {
		return alert.Rule{}, alert.State{}, false
	}
	return *r, cloneState(a.states[id]), true
}

func cloneState(st *alert.State) alert.State {
	if st == nil {
		return alert.State{}
	}
	c := *st
	if st.Sync != nil {
		o := *st.Sync
		c.Sync = &o
	}
	if st.Urgent != nil {
		c.Urgent = make(map[string]*alert.Outage, len(st.Urgent))
		for k, v := range st.Urgent {
			o := *v
			c.Urgent[k] = &o
		}
	}
	return c
}

// deliver sends every delivery that is due, one at a time.
func (a *alerter) deliver(ctx context.Context) {
	pending, err := a.db.Pending()
	if err != nil {
		a.log.Error("alert outbox not readable", "err", err)
		return
	}
	for _, d := range pending {
		if ctx.Err() != nil {
			return
		}
		if !d.Due(a.now()) {
			continue
		}
		err := a.send(ctx, d)
		if ctx.Err() != nil {
			return // stopping: the delivery stays in the outbox as it was
		}
		d.Done(err, a.now())
		if serr := a.db.Attempted(d); serr != nil {
			a.log.Error("alert outbox not saved", "id", d.ID, "err", serr)
		}
		if err == nil {
			a.sent.Add(1)
			a.log.Info("alert message sent", "rule", d.Rule, "channel", d.Channel, "id", d.ID)
			a.emit(EvAlertSent, map[string]any{"rule": d.Rule, "channel": d.Channel, "id": d.ID, "event": d.Msg.What})
			continue
		}
		a.failed.Add(1)
		a.log.Warn("alert message not sent; it is retried", "rule", d.Rule, "channel", d.Channel, "attempts", d.Attempts, "next", d.Next.Format(time.RFC3339), "err", err)
		a.emit(EvAlertError, map[string]any{"rule": d.Rule, "channel": d.Channel, "id": d.ID, "error": err.Error(), "next": d.Next, "gave_up": d.GaveUp})
	}
}

// send delivers one message on one channel.
func (a *alerter) send(ctx context.Context, d alert.Delivery) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch d.Channel {
	case alert.ChannelEmail:
		cfg, err := a.smtp()
		if err != nil {
			return err
		}
		return notify.SendMail(ctx, cfg, notify.Mail{ID: d.ID, To: d.To, Subject: d.Msg.Subject, Text: d.Msg.Text, Date: d.Msg.At})
	case alert.ChannelWebhook:
		a.mu.Lock()
		secret := ""
		if r := a.rules[d.Rule]; r != nil {
			secret = r.Secret
		}
		a.mu.Unlock()
		return notify.PostWebhook(ctx, a.client, d.URL, secret, d.ID, alert.WebhookBody(d.Msg), a.now())
	}
	return fmt.Errorf("unknown channel %q", d.Channel)
}

// errNoRule answers a rule ID that does not exist.
func errNoRule(id string) error {
	return newAPIError(http.StatusNotFound, codeNotFound, nil, "no alert rule %q (`ppsync alerts list` shows the rules)", id)
}

// Add makes a rule from spec and starts watching.
func (a *alerter) Add(spec alert.RuleSpec) (api.AlertJSON, error) {
	r, err := alert.NewRule(spec, a.now())
	if err != nil {
		return api.AlertJSON{}, badRequest("%s", err.Error())
	}
	if sites := a.sites(); !slices.Contains(sites, r.Site) {
		return api.AlertJSON{}, badRequest("--site %q is not a site of this family (its sites: %v)", r.Site, sites)
	}
	if len(r.Emails) > 0 {
		if _, err := a.smtp(); err != nil {
			return api.AlertJSON{}, badRequest("the rule emails, but %v", err)
		}
	}
	if err := a.db.PutRule(r); err != nil {
		return api.AlertJSON{}, err
	}
	st := alert.State{}
	a.mu.Lock()
	a.rules[r.ID], a.states[r.ID], a.saved[r.ID] = &r, &st, time.Time{}
	a.mu.Unlock()
	a.poke()
	row := a.row(&r, &st, a.now())
	row.Secret = r.Secret
	return row, nil
}

// Remove deletes a rule, its state and its unsent messages.
func (a *alerter) Remove(id string) error {
	a.mu.Lock()
	_, ok := a.rules[id]
	a.mu.Unlock()
	if !ok {
		return errNoRule(id)
	}
	if err := a.db.RemoveRule(id); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.rules, id)
	delete(a.states, id)
	delete(a.saved, id)
	a.mu.Unlock()
	return nil
}

// Pause silences a rule's new alerts and reminders until the given time
// (recoveries of problems already told still go out).
func (a *alerter) Pause(id string, until time.Time) (api.AlertJSON, error) {
	a.mu.Lock()
	r := a.rules[id]
	var c alert.Rule
	if r != nil {
		c = *r
	}
	a.mu.Unlock()
	if r == nil {
		return api.AlertJSON{}, errNoRule(id)
	}
	c.Paused = until.UTC()
	if err := a.db.PutRule(c); err != nil {
		return api.AlertJSON{}, err
	}
	a.mu.Lock()
	if a.rules[id] != nil {
		a.rules[id] = &c
	}
	st := cloneState(a.states[id])
	a.mu.Unlock()
	return a.row(&c, &st, a.now()), nil
}

// Test sends a test message on every channel of the rule now and says how
// each went.
func (a *alerter) Test(ctx context.Context, id string) ([]api.AlertDeliveryRow, error) {
	rule, st, ok := a.snapshot(id)
	if !ok {
		return nil, errNoRule(id)
	}
	c := a.context()
	c.Up = a.up
	now := a.now()
	st.Last = a.observe(rule.Site)
	m := alert.TestMessage(&rule, &st, c, now)
	var out []api.AlertDeliveryRow
	var errs []error
	for _, d := range alert.Deliveries(&rule, m, now) {
		err := a.send(ctx, d)
		d.Done(err, a.now())
		if err == nil {
			if serr := a.db.Attempted(d); serr != nil {
				a.log.Error("alert outbox not saved", "id", d.ID, "err", serr)
			}
			a.sent.Add(1)
		} else {
			a.failed.Add(1)
			errs = append(errs, fmt.Errorf("%s: %w", d.Channel, err))
		}
		out = append(out, deliveryRow(d))
	}
	if len(errs) > 0 {
		return out, newAPIError(http.StatusBadGateway, codeSendFailed, errors.Join(errs...), "the test message was not delivered: %v", errors.Join(errs...))
	}
	return out, nil
}

// List returns every rule with its state, last message and pending ones.
func (a *alerter) List() ([]api.AlertJSON, error) {
	pending, err := a.db.Pending()
	if err != nil {
		return nil, err
	}
	now := a.now()
	a.mu.Lock()
	rules := make([]alert.Rule, 0, len(a.rules))
	states := map[string]alert.State{}
	for id, r := range a.rules {
		rules = append(rules, *r)
		states[id] = cloneState(a.states[id])
	}
	a.mu.Unlock()
	sort.Slice(rules, func(i, j int) bool { return rules[i].ID < rules[j].ID })
	out := make([]api.AlertJSON, 0, len(rules))
	for i := range rules {
		r := &rules[i]
		st := states[r.ID]
		row := a.row(r, &st, now)
		if last, ok, err := a.db.LastSent(r.ID); err == nil && ok {
			lr := deliveryRow(last)
			row.LastSent = &lr
		}
		for _, d := range pending {
			if d.Rule == r.ID {
				row.Pending = append(row.Pending, deliveryRow(d))
			}
		}
		out = append(out, row)
	}
	return out, nil
}

func (a *alerter) row(r *alert.Rule, st *alert.State, now time.Time) api.AlertJSON {
	row := api.AlertJSON{ID: r.ID, Site: r.Site, Emails: r.Emails, Webhook: r.Webhook, Hours: r.Schedule.String(), After: r.After.String(), State: "ok"}
	if r.Remind > 0 {
		row.Remind = r.Remind.String()
	}
	if r.PausedAt(now) {
		p := r.Paused
		row.Paused, row.State = &p, "paused"
	}
	add := func(o *alert.Outage) {
		row.Problems = append(row.Problems, api.AlertProblem{Kind: o.Kind, Since: o.Since, Alerted: !o.Alerted.IsZero()})
		if !o.Alerted.IsZero() && row.State != "paused" {
			row.State = "alerting"
		}
	}
	if st.Sync != nil {
		add(st.Sync)
	}
	for _, k := range []string{alert.KindFork, alert.KindRevoked, alert.KindVersion} {
		if o := st.Urgent[k]; o != nil {
			add(o)
		}
	}
	return row
}

func deliveryRow(d alert.Delivery) api.AlertDeliveryRow {
	row := api.AlertDeliveryRow{ID: d.ID, Channel: d.Channel, Event: d.Msg.What, Subject: d.Msg.Subject, Attempts: d.Attempts, Error: d.LastErr, GaveUp: d.GaveUp}
	if !d.Sent.IsZero() {
		s := d.Sent
		row.Sent = &s
	} else if !d.GaveUp {
		nx := d.Next
		row.Next = &nx
	}
	return row
}

// firing counts the rules with a problem told and not yet recovered.
func (a *alerter) firing() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, st := range a.states {
		if st.Sync != nil && !st.Sync.Alerted.IsZero() {
			n++
			continue
		}
		for _, o := range st.Urgent {
			if !o.Alerted.IsZero() {
				n++
				break
			}
		}
	}
	return n
}

// smtpSettings reads the [smtp] settings with the password (password_file,
// else PPSYNC_SMTP_PASSWORD) and the extra trusted certificates.
func smtpSettings(c SMTPConfig, env func(string) string) (notify.SMTP, error) {
	s := notify.SMTP{Server: c.Server, From: c.From, TLS: c.TLS, Username: c.Username}
	if c.Server == "" {
		return s, fmt.Errorf("%w: no mail server is set: add an [smtp] table with server and from to ppsync.toml", notify.ErrConfig)
	}
	switch {
	case c.PasswordFile != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return s, fmt.Errorf("%w: [smtp] password_file: %v", notify.ErrConfig, err)
		}
		s.Password = strings.TrimRight(string(b), "\r\n")
	case env != nil:
		s.Password = env("PPSYNC_SMTP_PASSWORD")
	}
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return s, fmt.Errorf("%w: [smtp] ca_file: %v", notify.ErrConfig, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(b) {
			return s, fmt.Errorf("%w: [smtp] ca_file %s holds no PEM certificate", notify.ErrConfig, c.CAFile)
		}
		s.RootCAs = pool
	}
	return s, s.Check()
}
