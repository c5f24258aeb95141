package alertdb

import (
	"errors"
	"testing"
	"time"

	"github.com/ppsync/ppsync/alert"
	"github.com/ppsync/ppsync/internal/store"
)

func TestRoundTripAndReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := New(db)
	now := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	r, err := alert.NewRule(alert.RuleSpec{Site: "clinic-north", Emails: []string{"m@clinic.example"}, Webhook: "http://127.0.0.1:9/x", Days: "mon-fri", Hours: []string{"08:00-18:00"}, Zone: "Europe/London", After: "1h"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PutRule(r); err != nil {
		t.Fatal(err)
	}
	st := alert.State{LastContact: now, Sync: &alert.Outage{Kind: alert.KindNotSynced, Since: now, Alerted: now.Add(time.Hour)}}
	m := alert.TestMessage(&r, &st, alert.Context{Family: "F"}, now)
	ds := alert.Deliveries(&r, m, now)
	if err := a.Decide(r.ID, st, ds); err != nil {
		t.Fatal(err)
	}
	ds[0].Done(nil, now.Add(time.Second))
	ds[1].Done(errors.New("connection refused"), now.Add(time.Second))
	for _, d := range ds {
		if err := a.Attempted(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a = New(db)
	rules, err := a.Rules()
	if err != nil || len(rules) != 1 || rules[0].ID != r.ID || rules[0].Schedule.String() != r.Schedule.String() || rules[0].After != time.Hour {
		t.Fatalf("rules after reopen: %+v %v", rules, err)
	}
	got, err := a.State(r.ID)
	if err != nil || got.Sync == nil || !got.Sync.Alerted.Equal(now.Add(time.Hour)) {
		t.Fatalf("state after reopen: %+v %v", got, err)
	}
	pending, err := a.Pending()
	if err != nil || len(pending) != 1 || pending[0].Channel != alert.ChannelWebhook || pending[0].LastErr != "connection refused" {
		t.Fatalf("pending after reopen: %+v %v", pending, err)
	}
	last, ok, err := a.LastSent(r.ID)
	if err != nil || !ok || last.Channel != alert.ChannelEmail {
		t.Fatalf("last sent: %+v %v %v", last, ok, err)
	}
	if err := a.RemoveRule(r.ID); err != nil {
		t.Fatal(err)
	}
	rules, _ = a.Rules()
	pending, _ = a.Pending()
	if _, ok, _ := a.LastSent(r.ID); len(rules) != 0 || len(pending) != 0 || ok {
		t.Fatalf("after remove: rules %d pending %d last %v", len(rules), len(pending), ok)
	}
}
