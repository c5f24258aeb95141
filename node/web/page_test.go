package web

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestLoginTokensAndSessionsExpire(t *testing.T) {
	now := time.Now()
	pg := New(Options{Addr: "127.0.0.1:8080", Now: func() time.Time { return now }})

	l := pg.Issue()
	tok := strings.TrimPrefix(l.URL, pg.base+"/?token=")
	now = now.Add(LoginTokenTTL)
	if pg.redeem(tok) {
		t.Fatal("a token worked after 2 minutes")
	}
	l = pg.Issue()
	tok = strings.TrimPrefix(l.URL, pg.base+"/?token=")
	if !pg.redeem(tok) || pg.redeem(tok) {
		t.Fatal("a fresh token must work exactly once")
	}

	id := pg.startSession()
	req := func() *http.Request {
		hr, _ := http.NewRequest("GET", "/v1/status", nil)
		hr.AddCookie(&http.Cookie{Name: pg.cookie, Value: id})
		return hr
	}
	now = now.Add(SessionIdle - time.Minute)
	if !pg.validSession(req()) {
		t.Fatal("session ended before 12 h idle")
	}
	now = now.Add(SessionIdle - time.Minute) // used a minute ago: still idle less than 12 h
	if !pg.validSession(req()) {
		t.Fatal("using a session must keep it alive")
	}
	now = now.Add(SessionIdle)
	if pg.validSession(req()) {
		t.Fatal("session survived 12 h idle")
	}

	// Memory stays bounded whatever a client does.
	for i := 0; i < 3*maxLoginTokens; i++ {
		pg.Issue()
		pg.startSession()
	}
	if len(pg.tokens) > maxLoginTokens || len(pg.sessions) > maxSessions {
		t.Fatalf("%d tokens, %d sessions kept", len(pg.tokens), len(pg.sessions))
	}
}

func TestPageSessionAlertRoutes(t *testing.T) {
	for _, c := range []struct {
		method, path string
		ok           bool
	}{
		{"GET", "/v1/alerts", true},
		{"POST", "/v1/alerts/a1b2/test", true},
		{"POST", "/v1/alerts", false},
		{"DELETE", "/v1/alerts/a1b2", false},
		{"POST", "/v1/alerts/a1b2/pause", false},
		{"POST", "/v1/alerts//test", false},
		{"POST", "/v1/alerts/a/b/test", false},
		{"GET", "/v1/alerts/a1b2/test", false},
	} {
		if got := pageMay(c.method, c.path); got != c.ok {
			t.Errorf("a page session may %s %s: %v, want %v", c.method, c.path, got, c.ok)
		}
	}
}
