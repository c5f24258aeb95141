package node

import (
	"context"
	"net/http"
	"time"

	"github.com/ppsync/ppsync/alert"
	"github.com/ppsync/ppsync/alert/alertdb"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/notify"
)

// startAlerts opens the alert monitor over the node's store and schedules
// it every second on the node's scheduler. It runs on any node that has
// rules (the family's relay, usually); without rules it finds none.
func (n *Node) startAlerts() error {
	adb := alertdb.New(n.db)
	if n.shared != nil {
		adb = alertdb.NewIn(n.db, n.shared.space) // a relay's further family: its own key space
	}
	a, err := newAlerter(alerterDeps{
		db:      adb,
		log:     n.log.With("component", "alerts"),
		now:     n.alertNow(),
		nodeNow: n.cfg.Now,
		smtp: func() (notify.SMTP, error) {
			cfg := n.currentConfig()
			return smtpSettings(cfg.SMTP, n.cfg.Env)
		},
		client:  &http.Client{Timeout: time.Minute},
		observe: n.alertObservation,
		context: func() alert.Context {
			return alert.Context{Family: n.roster.Info().Name, Monitor: n.id.Site, Version: n.cfg.Version}
		},
		emit: n.events.emit,
		sites: func() []string {
			var out []string
			for _, m := range n.roster.Members() {
				out = append(out, m.Site)
			}
			return out
		},
		goTracked: n.goTracked,
	})
	if err != nil {
		return err
	}
	var j *job
	j = n.schedule(func() {
		j.reset(alertEvery)
		a.tick(n.ctx)
	})
	a.poke = func() { j.reset(0) }
	n.alerts = a
	j.reset(0)
	return nil
}

// alertNow is the monitor's clock: the node's, or Config.AlertNow.
func (n *Node) alertNow() func() time.Time {
	if n.cfg.AlertNow != nil {
		return n.cfg.AlertNow
	}
	return n.cfg.Now
}

// revokedRecent is how long after its last try a revoked copy of a site
// still counts as trying to connect.
const revokedRecent = 10 * time.Minute

// alertObservation is what this node sees of a site for the alert monitor:
// whether it is connected, when it was last heard, the entries not yet
// exchanged with it in either direction, its version, a fork, and a revoked
// copy still trying to connect.
func (n *Node) alertObservation(site string) alert.Observation {
	now := n.cfg.Now()
	var obs alert.Observation
	_, obs.Known = n.roster.Site(site)
	if site == n.id.Site {
		obs.Connected, obs.LastContact, obs.Version = true, now, n.cfg.Version
	} else {
		local := n.txlog.Frontier()
		for _, p := range n.sync.peers() {
			if p.Site != site {
				continue
			}
			obs.Connected = obs.Connected || p.Connected
			if p.LastSeen != nil && p.LastSeen.After(obs.LastContact) {
				obs.LastContact = *p.LastSeen
				obs.Version = p.Version
				obs.Backlog = missing(local, p.Frontier) + missing(p.Frontier, local)
				obs.Frontier, obs.Local = p.Frontier, local
			}
		}
	}
	for _, f := range n.txlog.Forks() {
		if f.Site == site {
			obs.Forked = true
		}
	}
	for p, at := range n.mesh.BannedTries() {
		if s, ok := n.roster.SiteOf(p); ok && s == site && now.Sub(at) < revokedRecent {
			obs.Revoked = true
		}
	}
	obs.OtherVer = obs.Version != "" && obs.Version != n.cfg.Version
	return obs
}

// Alerts lists the alert rules with their state and messages.
func (n *Node) Alerts(context.Context) (api.AlertsResult, error) {
	rows, err := n.alerts.List()
	if err != nil {
		return api.AlertsResult{}, err
	}
	res := api.AlertsResult{Alerts: rows}
	if s, err := smtpSettings(n.currentConfig().SMTP, n.cfg.Env); err != nil {
		res.SMTP = err.Error()
	} else {
		res.SMTP = s.Server + " (" + tlsName(s.TLS) + ")"
	}
	return res, nil
}

func tlsName(t string) string {
	if t == "" {
		return "starttls"
	}
	return t
}

// AddAlert makes an alert rule; the answer carries the webhook's signing
// secret, shown this once.
func (n *Node) AddAlert(_ context.Context, req api.AlertRequest) (api.AlertJSON, error) {
	return n.alerts.Add(alert.RuleSpec{Site: req.Site, Emails: req.Emails, Webhook: req.Webhook, Days: req.Days, Hours: req.Hours,
		Zone: req.TZ, After: req.After, Remind: req.Remind, Holidays: req.Holidays})
}

// RemoveAlert deletes a rule with its state and unsent messages.
func (n *Node) RemoveAlert(_ context.Context, id string) error { return n.alerts.Remove(id) }

// PauseAlert silences a rule's alerts and reminders until the given time
// (the zero time resumes it).
func (n *Node) PauseAlert(_ context.Context, id string, until time.Time) (api.AlertJSON, error) {
	return n.alerts.Pause(id, until)
}

// TestAlert sends a test message on every channel of a rule now.
func (n *Node) TestAlert(ctx context.Context, id string) (api.AlertTestResult, error) {
	rows, err := n.alerts.Test(ctx, id)
	return api.AlertTestResult{Deliveries: rows}, err
}

// The HTTP side: thin handlers over the methods above.

func (n *Node) getAlerts(w http.ResponseWriter, r *http.Request) {
	res, err := n.Alerts(r.Context())
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) postAlert(w http.ResponseWriter, r *http.Request) {
	var req api.AlertRequest
	if err := decodeBody(w, r, 64<<10, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	row, err := n.AddAlert(r.Context(), req)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, row)
}

func (n *Node) deleteAlert(w http.ResponseWriter, r *http.Request) {
	if err := n.RemoveAlert(r.Context(), r.PathValue("id")); err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": r.PathValue("id")})
}

func (n *Node) postAlertPause(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Until time.Time `json:"until"`
	}
	if err := decodeBody(w, r, 4<<10, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	row, err := n.PauseAlert(r.Context(), r.PathValue("id"), req.Until)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, row)
}

func (n *Node) postAlertTest(w http.ResponseWriter, r *http.Request) {
	res, err := n.TestAlert(r.Context(), r.PathValue("id"))
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// AlertStats are the alert monitor's figures (/metrics, the sync page).
type AlertStats struct {
	Rules, Firing, Pending int
	Sent, Failed           uint64
}

// AlertStats returns the alert monitor's figures.
func (n *Node) AlertStats() AlertStats {
	a := n.alerts
	s := AlertStats{Firing: a.firing(), Sent: a.sent.Load(), Failed: a.failed.Load()}
	a.mu.Lock()
	s.Rules = len(a.rules)
	a.mu.Unlock()
	if p, err := a.db.Pending(); err == nil {
		for _, d := range p {
			if d.Sent.IsZero() && !d.GaveUp {
				s.Pending++
			}
		}
	}
	return s
}
