package alertdb

import (
	"errors"
	"strings"
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

// Several families in one database: each space sees only its own rules,
// outbox and state, and the primary family's keys are those of a database
// serving one family.
func TestSpacesAreSeparate(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s1, err := store.FamilySpace(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := store.FamilySpace(strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	dbs := map[string]DB{"primary": New(db), "one": NewIn(db, s1), "two": NewIn(db, s2)}
	ids := map[string]string{}
	for name, a := range dbs {
		r, err := alert.NewRule(alert.RuleSpec{Site: "clinic-" + name, Emails: []string{"m@clinic.example"}, Days: "mon-fri", Hours: []string{"08:00-18:00"}, Zone: "Europe/London", After: "1h"}, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.PutRule(r); err != nil {
			t.Fatal(err)
		}
		st := alert.State{LastContact: now}
		m := alert.TestMessage(&r, &st, alert.Context{Family: name}, now)
		if err := a.Decide(r.ID, st, alert.Deliveries(&r, m, now)); err != nil {
			t.Fatal(err)
		}
		ids[name] = r.ID
	}
	for name, a := range dbs {
		rules, err := a.Rules()
		if err != nil || len(rules) != 1 || rules[0].ID != ids[name] || rules[0].Site != "clinic-"+name {
			t.Fatalf("%s: rules %+v %v", name, rules, err)
		}
		pending, err := a.Pending()
		if err != nil || len(pending) != 1 || pending[0].Rule != ids[name] {
			t.Fatalf("%s: pending %+v %v", name, pending, err)
		}
		for other, id := range ids {
			if _, ok, err := a.Rule(id); err != nil || ok != (other == name) {
				t.Fatalf("%s sees rule of %s: %v %v", name, other, ok, err)
			}
		}
	}
	// The primary family's rule is where a one-family database keeps it.
	v, c, err := db.Get(append([]byte{'a', 'r'}, ids["primary"]...))
	if err != nil {
		t.Fatalf("primary rule not at its one-family key: %v", err)
	}
	c.Close()
	if !strings.Contains(string(v), "clinic-primary") {
		t.Fatalf("primary rule key holds %s", v)
	}
	// Removing a rule in one space leaves the others.
	if err := dbs["one"].RemoveRule(ids["one"]); err != nil {
		t.Fatal(err)
	}
	for name, a := range dbs {
		rules, err := a.Rules()
		if want := map[bool]int{true: 0, false: 1}[name == "one"]; err != nil || len(rules) != want {
			t.Fatalf("%s after removing in one: %d rules (want %d) %v", name, len(rules), want, err)
		}
	}
}
