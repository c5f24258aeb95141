package node

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ppsync/ppsync/internal/mailsink"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/notify"
)

// hookSink is a real HTTP server that keeps the webhook calls it receives.
type hookSink struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []hookCall
}

type hookCall struct {
	body              []byte
	sig, ts, delivery string
}

func newHookSink(t *testing.T) *hookSink {
	h := &hookSink{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.calls = append(h.calls, hookCall{b, r.Header.Get("X-PPSync-Signature"), r.Header.Get("X-PPSync-Timestamp"), r.Header.Get("X-PPSync-Delivery")})
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookSink) events() []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, c := range h.calls {
		var m map[string]any
		_ = json.Unmarshal(c.body, &m)
		out = append(out, m)
	}
	return out
}

// alertFamily is a relay that monitors, with a real SMTP server (STARTTLS,
// AUTH) and a webhook receiver, and two sites.
func alertFamily(t *testing.T, fail int) (tf *testFamily, sink *mailsink.Server, hooks *hookSink, startRelay func() *running) {
	t.Helper()
	sink, err := mailsink.Start(mailsink.Options{TLS: "starttls", Username: "ppsync", Password: "mail-pass-123", Fail: fail})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close() })
	ca := filepath.Join(t.TempDir(), "mail-ca.pem")
	if err := os.WriteFile(ca, sink.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	tf = newTestFamily(t)
	tf.env["PPSYNC_SMTP_PASSWORD"] = "mail-pass-123"
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	tf.add("clinic-b", "site")
	startRelay = func() *running {
		return tf.startWith("relay", func(c *Config) {
			c.SMTP = SMTPConfig{Server: sink.Addr(), From: "ppsync@vendor.example", TLS: "starttls", Username: "ppsync", CAFile: ca}
		})
	}
	startRelay()
	tf.start("clinic-a")
	tf.start("clinic-b")
	return tf, sink, newHookSink(t), startRelay
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mailsWith(sink *mailsink.Server, sub string) []mailsink.Message {
	var out []mailsink.Message
	for _, m := range sink.Messages() {
		if strings.Contains(m.Subject, sub) {
			out = append(out, m)
		}
	}
	return out
}

func siteConnected(r *running, site string) bool {
	for _, p := range r.n.sync.peers() {
		if p.Site == site && p.Connected && p.LastSeen != nil {
			return true
		}
	}
	return false
}

func TestAlertsOutageEmailWebhookRecoveryAndRestart(t *testing.T) {
	tf, sink, hooks, startRelay := alertFamily(t, 0)
	relay := tf.nodes["relay"].r
	waitFor(t, 20*time.Second, "the relay to see clinic-b", func() bool { return siteConnected(relay, "clinic-b") })

	var added api.AlertJSON
	req := api.AlertRequest{Site: "clinic-b", Emails: []string{"manager@clinic.example"}, Webhook: hooks.srv.URL, Days: "daily", Hours: []string{"00:00-24:00"}, TZ: "Europe/London", After: "2s"}
	if code := relay.call(t, "POST", "/v1/alerts", req, &added); code != http.StatusCreated || added.ID == "" || added.Secret == "" {
		t.Fatalf("add: %d %+v", code, added)
	}

	// Up and syncing: nothing is sent.
	tf.write("clinic-b", 3, "patients")
	tf.waitConverged(20*time.Second, "relay", "clinic-a", "clinic-b")

	tf.stop("clinic-b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := sink.Wait(ctx, func(ms []mailsink.Message) bool { return len(ms) >= 1 }); err != nil {
		t.Fatal(err)
	}
	alerts := mailsWith(sink, "has not synced")
	if len(alerts) != 1 {
		t.Fatalf("mails: %+v", sink.Messages())
	}
	m := alerts[0]
	for _, want := range []string{"clinic-b", "Test Practice", "ppsync status", "no patient data"} {
		if !strings.Contains(m.Subject+m.Body, want) {
			t.Errorf("the alert lacks %q:\n%s\n%s", want, m.Subject, m.Body)
		}
	}
	if !m.TLS || m.User != "ppsync" || m.To[0] != "manager@clinic.example" {
		t.Errorf("sent without STARTTLS or AUTH: tls=%v user=%q to=%v", m.TLS, m.User, m.To)
	}
	// The webhook got the same alert, signed with the rule's secret.
	waitFor(t, 10*time.Second, "the webhook's alert", func() bool { return len(hooks.events()) >= 1 })
	hooks.mu.Lock()
	c := hooks.calls[0]
	hooks.mu.Unlock()
	ts, _ := strconv.ParseInt(c.ts, 10, 64)
	if c.sig != notify.Signature(added.Secret, ts, c.body) {
		t.Fatalf("webhook signature %q does not verify with the rule's secret", c.sig)
	}
	if ev := hooks.events()[0]; ev["event"] != "alert" || ev["kind"] != "not-synced" || ev["site"] != "clinic-b" {
		t.Fatalf("webhook body: %v", ev)
	}

	// The monitor restarts mid-outage: it remembers the outage (no second
	// alert) and still sends the recovery.
	tf.stop("relay")
	relay = startRelay()
	waitFor(t, 20*time.Second, "the restarted monitor to run past its grace", func() bool {
		relay.n.alerts.mu.Lock()
		defer relay.n.alerts.mu.Unlock()
		return relay.n.alerts.passes >= 6
	})
	var list api.AlertsResult
	relay.call(t, "GET", "/v1/alerts", nil, &list)
	if len(list.Alerts) != 1 || list.Alerts[0].State != "alerting" || list.Alerts[0].LastSent == nil {
		t.Fatalf("after the restart: %+v", list)
	}
	tf.start("clinic-b")
	if _, err := sink.Wait(ctx, func(ms []mailsink.Message) bool { return len(mailsWith(sink, "syncing again")) == 1 }); err != nil {
		t.Fatal(err)
	}
	if n := len(mailsWith(sink, "has not synced")); n != 1 {
		t.Fatalf("%d alerts for one outage (the restart alerted again)", n)
	}
	rec := mailsWith(sink, "syncing again")[0]
	if !strings.Contains(rec.Body, "lasted") || !strings.Contains(rec.Body, "delivered") {
		t.Fatalf("recovery text: %s", rec.Body)
	}
	// Webhooks are delivered at least once: an alert whose delivery was
	// under way as the monitor stopped may come again, with the same id.
	waitFor(t, 10*time.Second, "the webhook's recovery", func() bool {
		return slices.ContainsFunc(hooks.events(), func(ev map[string]any) bool { return ev["event"] == "recovery" })
	})
	for _, ev := range hooks.events() {
		if ev["event"] == "alert" && ev["id"] != hooks.events()[0]["id"] {
			t.Fatalf("a second alert for one outage by webhook: %v", ev)
		}
	}

	// alerts test sends now, on both channels.
	var tr api.AlertTestResult
	if code := relay.call(t, "POST", "/v1/alerts/"+added.ID+"/test", nil, &tr); code != 200 || len(tr.Deliveries) != 2 {
		t.Fatalf("test: %d %+v", code, tr)
	}
	if n := len(mailsWith(sink, "test message")); n != 1 {
		t.Fatalf("%d test mails", n)
	}
}

func TestAlertsRetryWhileTheMailServerRefuses(t *testing.T) {
	tf, sink, _, _ := alertFamily(t, 1)
	relay := tf.nodes["relay"].r
	var added api.AlertJSON
	req := api.AlertRequest{Site: "clinic-a", Emails: []string{"it@clinic.example"}, Days: "daily", Hours: []string{"00:00-24:00"}, TZ: "UTC", After: "1s"}
	if code := relay.call(t, "POST", "/v1/alerts", req, &added); code != http.StatusCreated {
		t.Fatalf("add: %d", code)
	}
	waitFor(t, 20*time.Second, "the relay to see clinic-a", func() bool { return siteConnected(relay, "clinic-a") })
	tf.stop("clinic-a")
	// The first try is refused (451): the list shows it, then the retry
	// delivers it, once.
	waitFor(t, 30*time.Second, "a refused try in the list", func() bool {
		var list api.AlertsResult
		relay.call(t, "GET", "/v1/alerts", nil, &list)
		return len(list.Alerts) == 1 && len(list.Alerts[0].Pending) == 1 && strings.Contains(list.Alerts[0].Pending[0].Error, "busy")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := sink.Wait(ctx, func(ms []mailsink.Message) bool { return len(ms) == 1 }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the delivery to be recorded", func() bool { return relay.n.alerts.sent.Load() == 1 })
	if sink.Refusals() != 1 || relay.n.alerts.failed.Load() != 1 || len(sink.Messages()) != 1 {
		t.Fatalf("refusals %d, failed %d, sent %d", sink.Refusals(), relay.n.alerts.failed.Load(), relay.n.alerts.sent.Load())
	}
	var list api.AlertsResult
	relay.call(t, "GET", "/v1/alerts", nil, &list)
	if len(list.Alerts[0].Pending) != 0 || list.Alerts[0].LastSent == nil {
		t.Fatalf("after the retry: %+v", list.Alerts[0])
	}
	metrics := metricsText(t, relay)
	for _, want := range []string{"ppsync_alert_rules 1", "ppsync_alerts_firing 1", `ppsync_alert_messages_total{result="sent"} 1`, `ppsync_alert_messages_total{result="failed"} 1`, "ppsync_alert_messages_pending 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestAlertsBadInput(t *testing.T) {
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	tf.add("clinic-a", "site")
	relay := tf.start("relay")
	tf.start("clinic-a")
	waitFor(t, 20*time.Second, "the relay to learn clinic-a", func() bool { _, ok := relay.n.roster.Site("clinic-a"); return ok })
	good := api.AlertRequest{Site: "clinic-a", Webhook: "http://127.0.0.1:9/hook", Days: "mon-fri", Hours: []string{"08:00-18:00"}, TZ: "Europe/London"}
	for _, c := range []struct {
		mod  func(*api.AlertRequest)
		want string
	}{
		{func(r *api.AlertRequest) { r.Site = "clinic-x" }, `"clinic-x" is not a site of this family`},
		{func(r *api.AlertRequest) { r.TZ = "Mars/Base" }, "not a time zone"},
		{func(r *api.AlertRequest) { r.Hours = []string{"18:00-08:00"} }, "ends before it starts"},
		{func(r *api.AlertRequest) { r.After = "0.5s" }, "1s or more"},
		{func(r *api.AlertRequest) { r.Webhook = ""; r.Emails = []string{"m@clinic.example"} }, "no mail server is set"},
		{func(r *api.AlertRequest) { r.Webhook = "" }, "say whom to tell"},
	} {
		req := good
		c.mod(&req)
		var e api.APIError
		if code := relay.call(t, "POST", "/v1/alerts", req, &e); code != 400 || !strings.Contains(e.Error, c.want) {
			t.Errorf("%+v: %d %q, want 400 saying %q", req, code, e.Error, c.want)
		}
	}
	var list api.AlertsResult
	relay.call(t, "GET", "/v1/alerts", nil, &list)
	if len(list.Alerts) != 0 || !strings.Contains(list.SMTP, "no mail server") {
		t.Fatalf("refused rules were kept: %+v", list)
	}
	var e api.APIError
	if code := relay.call(t, "DELETE", "/v1/alerts/a123", nil, &e); code != 404 || !strings.Contains(e.Error, "alerts list") {
		t.Fatalf("remove unknown: %d %+v", code, e)
	}
}

func TestBrowserAlertsBox(t *testing.T) {
	needChromium(t)
	tf, sink, _, _ := alertFamily(t, 0)
	relay := tf.nodes["relay"].r
	waitFor(t, 20*time.Second, "the relay to see clinic-b", func() bool { return siteConnected(relay, "clinic-b") })
	var added api.AlertJSON
	req := api.AlertRequest{Site: "clinic-b", Emails: []string{"manager@clinic.example"}, Days: "daily", Hours: []string{"00:00-24:00"}, TZ: "UTC", After: "1s"}
	if code := relay.call(t, "POST", "/v1/alerts", req, &added); code != http.StatusCreated {
		t.Fatalf("add: %d", code)
	}
	tf.stop("clinic-b")
	ctx := newBrowser(t, 1280, 900)
	do(t, ctx, "open the relay's page", chromedp.Navigate(loginLink(t, relay).URL), chromedp.WaitVisible(chromedp.CSS("#alerts-card")))
	waitJS(t, ctx, "the rule alerting", `(() => { const li = document.querySelector("#alerts-list li");
		return li && li.textContent.includes("clinic-b: tells manager@clinic.example") &&
			li.querySelector(".state-alerting") && li.textContent.includes("has not synced since") &&
			li.textContent.includes("Last message: ppsync: clinic-b has not synced") })()`, 30*time.Second)
	do(t, ctx, "press Send test", chromedp.Click(chromedp.CSS("#alerts-list li button")))
	waitJS(t, ctx, "the test sent", `document.querySelector("#alerts-list [role=status]").textContent === "Sent by email."`, 15*time.Second)
	if n := len(mailsWith(sink, "test message")); n != 1 {
		t.Fatalf("%d test mails arrived", n)
	}
	// The alert is in the activity feed too.
	do(t, ctx, "open More details", chromedp.Click(chromedp.CSS("#more > summary")), chromedp.WaitVisible(chromedp.CSS("#activity li")))
	waitJS(t, ctx, "the alert in the feed", `document.getElementById("activity").textContent.includes("Alert for clinic-b: ppsync: clinic-b has not synced")`, 10*time.Second)
}
