package alert

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"slices"
	"strings"
	"time"
)

// DefaultAfter is how long a site may go without syncing, inside opening
// hours, before the rule alerts.
const DefaultAfter = time.Hour

// Rule is one alert rule: which site, whom to tell, and when it counts.
type Rule struct {
	ID       string        `json:"id"`
	Site     string        `json:"site"`
	Emails   []string      `json:"emails,omitempty"`
	Webhook  string        `json:"webhook,omitempty"`
	Secret   string        `json:"secret,omitempty"` // the webhook's HMAC-SHA256 key (hex)
	Schedule Schedule      `json:"schedule"`
	After    time.Duration `json:"after"`
	Remind   time.Duration `json:"remind,omitempty"` // 0: no reminders
	Paused   time.Time     `json:"paused_until,omitzero"`
	Created  time.Time     `json:"created"`
}

// RuleSpec is what `ppsync alerts add` (and POST /v1/alerts) takes.
type RuleSpec struct {
	Site     string   `json:"site"`
	Emails   []string `json:"emails,omitempty"`
	Webhook  string   `json:"webhook,omitempty"`
	Days     string   `json:"days"`
	Hours    []string `json:"hours"`
	Zone     string   `json:"tz"`
	After    string   `json:"after,omitempty"`  // a duration, default 1h
	Remind   string   `json:"remind,omitempty"` // a duration, default none
	Holidays []string `json:"holidays,omitempty"`
}

// ErrRule is matched by every error about a rule people typed.
var ErrRule = errors.New("alert rule")

func ruleErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRule, fmt.Sprintf(format, args...))
}

// NewRule checks a spec and makes the rule, with a fresh ID and, for a
// webhook, a fresh signing secret.
func NewRule(spec RuleSpec, now time.Time) (Rule, error) {
	r := Rule{Site: strings.TrimSpace(spec.Site), Webhook: strings.TrimSpace(spec.Webhook), After: DefaultAfter, Created: now.UTC()}
	if r.Site == "" {
		return r, ruleErr("--site is missing: give the site to watch, like --site clinic-north")
	}
	for _, e := range spec.Emails {
		a, err := mail.ParseAddress(strings.TrimSpace(e))
		if err != nil || a.Name != "" || !strings.Contains(a.Address, "@") {
			return r, ruleErr("--email %q is not an email address like manager@clinic.example", e)
		}
		if !slices.Contains(r.Emails, a.Address) {
			r.Emails = append(r.Emails, a.Address)
		}
	}
	if r.Webhook != "" {
		u, err := url.Parse(r.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return r, ruleErr("--webhook %q is not an http:// or https:// address", spec.Webhook)
		}
		r.Secret = randomHex(32)
	}
	if len(r.Emails) == 0 && r.Webhook == "" {
		return r, ruleErr("say whom to tell: --email ADDRESS (any number) or --webhook URL")
	}
	var err error
	if r.Schedule, err = NewSchedule(spec.Days, spec.Hours, spec.Zone, spec.Holidays); err != nil {
		return r, err
	}
	if spec.After != "" {
		if r.After, err = time.ParseDuration(spec.After); err != nil || r.After < time.Second {
			return r, ruleErr("--after %q is not a duration of 1s or more, like 1h or 30m", spec.After)
		}
	}
	if spec.Remind != "" {
		if r.Remind, err = time.ParseDuration(spec.Remind); err != nil || r.Remind < time.Second {
			return r, ruleErr("--remind %q is not a duration of 1s or more, like 4h", spec.Remind)
		}
	}
	r.ID = "a" + randomHex(4)
	return r, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// PausedAt reports whether the rule is paused at now.
func (r *Rule) PausedAt(now time.Time) bool { return now.Before(r.Paused) }

// Channels describes whom the rule tells: "manager@clinic.example, webhook".
func (r *Rule) Channels() string {
	out := slices.Clone(r.Emails)
	if r.Webhook != "" {
		out = append(out, "webhook "+r.Webhook)
	}
	return strings.Join(out, ", ")
}
