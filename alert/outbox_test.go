package alert

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestDeliveryBackoff(t *testing.T) {
	r, err := NewRule(RuleSpec{Site: "s", Emails: []string{"a@b.example"}, Webhook: "https://hooks.example/x", Days: "daily", Hours: []string{"00:00-24:00"}, Zone: "UTC"}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	m := TestMessage(&r, &State{}, Context{Family: "F"}, now)
	ds := Deliveries(&r, m, now)
	if len(ds) != 2 || ds[0].Channel != ChannelEmail || ds[1].Channel != ChannelWebhook || ds[0].ID == ds[1].ID {
		t.Fatalf("deliveries: %+v", ds)
	}
	d := ds[0]
	var waits []time.Duration
	for i := 0; i < 9; i++ {
		if !d.Due(now) {
			t.Fatalf("attempt %d not due at its time", i)
		}
		d.Done(errors.New("451 busy"), now)
		waits = append(waits, d.Next.Sub(now))
		if d.Due(now) {
			t.Fatal("due again right after a failure")
		}
		now = d.Next
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 320 * time.Second, 600 * time.Second, 600 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("backoff %v, want %v", waits, want)
		}
	}
	d.Done(nil, now)
	if d.Due(now.Add(time.Hour)) || d.LastErr != "" || d.Attempts != 10 {
		t.Fatalf("after success: %+v", d)
	}
	e := ds[1]
	e.Done(errors.New("refused"), e.Created.Add(GiveUpAfter))
	if !e.GaveUp || e.Due(e.Next) {
		t.Fatalf("not given up after %v: %+v", GiveUpAfter, e)
	}
	var body map[string]any
	if err := json.Unmarshal(WebhookBody(m), &body); err != nil || body["event"] != "test" || body["site"] != "s" {
		t.Fatalf("webhook body %v: %v", body, err)
	}
}
