package alert

import (
	"encoding/json"
	"time"
)

// Channels a delivery goes through.
const (
	ChannelEmail   = "email"
	ChannelWebhook = "webhook"
)

// Delivery is one message on one channel, kept until it is sent. It is
// retried with backoff; its ID stays the same, so a resend after a crash
// (sent, but not yet marked) carries the same Message-ID or delivery ID.
type Delivery struct {
	ID       string    `json:"id"` // message ID + "/" + channel
	Rule     string    `json:"rule"`
	Channel  string    `json:"channel"`
	To       []string  `json:"to,omitempty"`  // email
	URL      string    `json:"url,omitempty"` // webhook
	Msg      Message   `json:"message"`
	Created  time.Time `json:"created"`
	Attempts int       `json:"attempts"`
	Next     time.Time `json:"next"`
	LastErr  string    `json:"last_error,omitempty"`
	Sent     time.Time `json:"sent,omitzero"`
	GaveUp   bool      `json:"gave_up,omitempty"`
}

// GiveUpAfter is how long a delivery is retried before it is dropped (and
// shown as failed).
const GiveUpAfter = 72 * time.Hour

// Deliveries returns the deliveries of m over the rule's channels.
func Deliveries(r *Rule, m Message, now time.Time) []Delivery {
	var out []Delivery
	if len(r.Emails) > 0 {
		out = append(out, Delivery{ID: m.ID + "/" + ChannelEmail, Rule: r.ID, Channel: ChannelEmail, To: r.Emails, Msg: m, Created: now, Next: now})
	}
	if r.Webhook != "" {
		out = append(out, Delivery{ID: m.ID + "/" + ChannelWebhook, Rule: r.ID, Channel: ChannelWebhook, URL: r.Webhook, Msg: m, Created: now, Next: now})
	}
	return out
}

// Due reports whether the delivery should be tried at now.
func (d *Delivery) Due(now time.Time) bool {
	return d.Sent.IsZero() && !d.GaveUp && !now.Before(d.Next)
}

// Done records an attempt: sent, or failed with err (the next try after a
// backoff of 5 s doubling to 10 min; given up after GiveUpAfter).
func (d *Delivery) Done(err error, now time.Time) {
	d.Attempts++
	if err == nil {
		d.Sent, d.LastErr = now, ""
		return
	}
	d.LastErr = err.Error()
	back := 5 * time.Second << min(d.Attempts-1, 10)
	d.Next = now.Add(min(back, 10*time.Minute))
	if now.Sub(d.Created) >= GiveUpAfter {
		d.GaveUp = true
	}
}

// WebhookBody is the JSON a webhook receives.
func WebhookBody(m Message) []byte {
	b, _ := json.Marshal(struct {
		Message
		LastedSeconds int64 `json:"lasted_seconds"`
	}{m, int64(m.Lasted / time.Second)})
	return b
}
