package notify

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/mailsink"
)

func sink(t *testing.T, o mailsink.Options) (*mailsink.Server, *x509.CertPool) {
	t.Helper()
	s, err := mailsink.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	pool := x509.NewCertPool()
	if o.TLS != "none" && !pool.AppendCertsFromPEM(s.CertPEM()) {
		t.Fatal("cannot load the sink's certificate")
	}
	return s, pool
}

func TestSendMail(t *testing.T) {
	for _, mode := range []string{TLSStart, TLSWrap, TLSNone} {
		t.Run(mode, func(t *testing.T) {
			s, pool := sink(t, mailsink.Options{TLS: mode, Username: "ppsync", Password: "s3cret"})
			c := SMTP{Server: s.Addr(), From: "ppsync@clinic.example", TLS: mode, Username: "ppsync", Password: "s3cret", RootCAs: pool, Timeout: 10 * time.Second}
			m := Mail{ID: "a1.not-synced.alert.1", To: []string{"manager@clinic.example", "it@clinic.example"}, Subject: "ppsync: clinic-north has not synced", Text: "Site clinic-north has not synced.\nWhat to check first: ppsync status", Date: time.Date(2026, 12, 7, 8, 30, 0, 0, time.UTC)}
			if err := SendMail(context.Background(), c, m); err != nil {
				t.Fatal(err)
			}
			got := s.Messages()
			if len(got) != 1 {
				t.Fatalf("%d messages arrived, want 1", len(got))
			}
			g := got[0]
			if g.Subject != m.Subject || !strings.Contains(g.Body, "What to check first") || g.From != "ppsync@clinic.example" || len(g.To) != 2 || g.User != "ppsync" {
				t.Fatalf("arrived: %+v", g)
			}
			if g.TLS != (mode != TLSNone) && mode != TLSStart {
				t.Fatalf("encrypted = %v with tls = %s", g.TLS, mode)
			}
			if id := g.Header.Get("Message-Id"); !strings.Contains(id, "a1.not-synced.alert.1") {
				t.Fatalf("Message-ID %q does not carry the message's ID", id)
			}
		})
	}
}

func TestSendMailRefusals(t *testing.T) {
	s, pool := sink(t, mailsink.Options{TLS: TLSStart, Username: "ppsync", Password: "s3cret"})
	base := SMTP{Server: s.Addr(), From: "ppsync@clinic.example", TLS: TLSStart, Username: "ppsync", Password: "s3cret", RootCAs: pool, Timeout: 5 * time.Second}
	m := Mail{ID: "x", To: []string{"manager@clinic.example"}, Subject: "s", Text: "t"}

	wrong := base
	wrong.Password = "wrong-password-xyz"
	err := SendMail(context.Background(), wrong, m)
	if err == nil || strings.Contains(err.Error(), "wrong-password-xyz") {
		t.Fatalf("a wrong password: %v (want an error that does not print it)", err)
	}
	untrusted := base
	untrusted.RootCAs = x509.NewCertPool()
	if err := SendMail(context.Background(), untrusted, m); err == nil {
		t.Fatal("a server whose certificate is not trusted took the mail")
	}
	if len(s.Messages()) != 0 {
		t.Fatalf("%d messages arrived through refused sends", len(s.Messages()))
	}
	busy, pool2 := sink(t, mailsink.Options{TLS: TLSStart, Fail: 1})
	c := SMTP{Server: busy.Addr(), From: "ppsync@clinic.example", RootCAs: pool2, Timeout: 5 * time.Second}
	if err := SendMail(context.Background(), c, m); err == nil {
		t.Fatal("a busy server's 451 was taken as delivered")
	}
	if err := SendMail(context.Background(), c, m); err != nil {
		t.Fatalf("second try: %v", err)
	}
	if len(busy.Messages()) != 1 {
		t.Fatalf("%d messages, want 1", len(busy.Messages()))
	}
}

func TestSMTPCheck(t *testing.T) {
	for _, c := range []struct {
		cfg  SMTP
		want string
	}{
		{SMTP{From: "a@b.c"}, "server is missing"},
		{SMTP{Server: "mail.example.com", From: "a@b.c"}, "not host:port"},
		{SMTP{Server: "mail.example.com:smtp", From: "a@b.c"}, "not a port"},
		{SMTP{Server: "mail.example.com:587"}, "from is missing"},
		{SMTP{Server: "mail.example.com:587", From: "nobody"}, "not an email address"},
		{SMTP{Server: "mail.example.com:25", From: "a@b.c", TLS: "none"}, "only to a mail server on this machine"},
		{SMTP{Server: "mail.example.com:25", From: "a@b.c", TLS: "ssl"}, `use "starttls"`},
		{SMTP{Server: "mail.example.com:25", From: "a@b.c", Password: "p"}, "no username"},
	} {
		err := c.cfg.Check()
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
	if err := (SMTP{Server: "127.0.0.1:25", From: "a@b.c", TLS: "none"}).Check(); err != nil {
		t.Errorf("tls none to 127.0.0.1: %v", err)
	}
}

func TestPostWebhook(t *testing.T) {
	type got struct {
		body             []byte
		sig, id, tsValue string
	}
	ch := make(chan got, 4)
	fail := 1
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if fail > 0 {
			fail--
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		ch <- got{b, r.Header.Get("X-PPSync-Signature"), r.Header.Get("X-PPSync-Delivery"), r.Header.Get("X-PPSync-Timestamp")}
	}))
	defer srv.Close()
	body := []byte(`{"event":"alert","site":"clinic-north"}`)
	now := time.Unix(1796600000, 0)
	err := PostWebhook(context.Background(), srv.Client(), srv.URL, "secret", "d1", body, now)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a 503 answer: %v", err)
	}
	if err := PostWebhook(context.Background(), srv.Client(), srv.URL, "secret", "d1", body, now); err != nil {
		t.Fatal(err)
	}
	g := <-ch
	ts, _ := strconv.ParseInt(g.tsValue, 10, 64)
	if string(g.body) != string(body) || g.id != "d1" || ts != now.Unix() || g.sig != Signature("secret", ts, g.body) {
		t.Fatalf("received %+v", g)
	}
	if Signature("other", ts, g.body) == g.sig || Signature("secret", ts+1, g.body) == g.sig {
		t.Fatal("the signature does not depend on the secret and the time")
	}
}
