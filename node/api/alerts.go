package api

import "time"

// The alert monitor's API types (GET/POST /v1/alerts, `ppsync alerts`).

// AlertRequest is the body of POST /v1/alerts: a rule as `ppsync alerts add`
// takes it.
type AlertRequest struct {
	Site     string   `json:"site"`
	Emails   []string `json:"emails,omitempty"`
	Webhook  string   `json:"webhook,omitempty"`
	Days     string   `json:"days"`
	Hours    []string `json:"hours"`
	TZ       string   `json:"tz"`
	After    string   `json:"after,omitempty"`
	Remind   string   `json:"remind,omitempty"`
	Holidays []string `json:"holidays,omitempty"`
}

// AlertsResult is the answer of GET /v1/alerts.
type AlertsResult struct {
	Alerts []AlertJSON `json:"alerts"`
	SMTP   string      `json:"smtp"` // the mail server used, or why email cannot be sent
}

// AlertTestResult is the answer of POST /v1/alerts/ID/test.
type AlertTestResult struct {
	Deliveries []AlertDeliveryRow `json:"deliveries"`
}

// AlertJSON is one rule as `ppsync alerts list --json` and GET /v1/alerts
// show it.
type AlertJSON struct {
	ID       string             `json:"id"`
	Site     string             `json:"site"`
	Emails   []string           `json:"emails,omitempty"`
	Webhook  string             `json:"webhook,omitempty"`
	Hours    string             `json:"hours"`
	After    string             `json:"after"`
	Remind   string             `json:"remind,omitempty"`
	Paused   *time.Time         `json:"paused_until,omitempty"`
	State    string             `json:"state"` // ok, alerting, waiting (an outage below the threshold), paused
	Problems []AlertProblem     `json:"problems,omitempty"`
	LastSent *AlertDeliveryRow  `json:"last_sent,omitempty"`
	Pending  []AlertDeliveryRow `json:"pending,omitempty"`        // messages not delivered yet (retrying)
	Secret   string             `json:"webhook_secret,omitempty"` // only in the answer of add
}

// AlertProblem is one open problem of a rule's site.
type AlertProblem struct {
	Kind    string    `json:"kind"`
	Since   time.Time `json:"since"`
	Alerted bool      `json:"alerted"`
}

// AlertDeliveryRow is one message on one channel.
type AlertDeliveryRow struct {
	ID       string     `json:"id"`
	Channel  string     `json:"channel"`
	Event    string     `json:"event"`
	Subject  string     `json:"subject"`
	Sent     *time.Time `json:"sent,omitempty"`
	Attempts int        `json:"attempts"`
	Error    string     `json:"error,omitempty"`
	Next     *time.Time `json:"next_try,omitempty"`
	GaveUp   bool       `json:"gave_up,omitempty"`
}
