// Package notify sends messages out of ppsync: email through an SMTP server
// (STARTTLS, implicit TLS, authentication, timeouts) and signed webhooks.
// It sends one message once per call; retries and their backoff belong to
// the caller's outbox.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// TLS modes of an SMTP server.
const (
	TLSStart = "starttls" // plain connection upgraded with STARTTLS (port 587); the default
	TLSWrap  = "tls"      // TLS from the first byte (port 465)
	TLSNone  = "none"     // no encryption: only to a server on this machine
)

// SMTP says how to reach the mail server ([smtp] in ppsync.toml).
type SMTP struct {
	Server   string // host:port
	From     string
	TLS      string
	Username string
	Password string         // never printed
	RootCAs  *x509.CertPool // nil: the system's
	Timeout  time.Duration  // per attempt; default 30 s
}

// ErrConfig is matched by every error about SMTP settings.
var ErrConfig = errors.New("smtp settings")

// Check reports the first problem with the settings, in plain words.
func (c SMTP) Check() error {
	if c.Server == "" {
		return fmt.Errorf("%w: [smtp] server is missing: give the mail server as server = \"host:port\" in ppsync.toml", ErrConfig)
	}
	host, port, err := net.SplitHostPort(c.Server)
	if err != nil || host == "" {
		return fmt.Errorf("%w: [smtp] server = %q is not host:port (like \"smtp.example.com:587\")", ErrConfig, c.Server)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("%w: [smtp] server = %q: %q is not a port number", ErrConfig, c.Server, port)
	}
	if c.From == "" {
		return fmt.Errorf("%w: [smtp] from is missing: give the sender's address, like from = \"ppsync@clinic.example\"", ErrConfig)
	}
	if a, err := mail.ParseAddress(c.From); err != nil || !strings.Contains(a.Address, "@") {
		return fmt.Errorf("%w: [smtp] from = %q is not an email address", ErrConfig, c.From)
	}
	switch c.TLS {
	case "", TLSStart, TLSWrap:
	case TLSNone:
		if !loopback(host) {
			return fmt.Errorf("%w: [smtp] tls = \"none\" sends passwords and messages unencrypted; it is allowed only to a mail server on this machine (127.0.0.1), not to %s: use tls = \"starttls\" or \"tls\"", ErrConfig, host)
		}
	default:
		return fmt.Errorf("%w: [smtp] tls = %q: use \"starttls\", \"tls\" or \"none\"", ErrConfig, c.TLS)
	}
	if c.Password != "" && c.Username == "" {
		return fmt.Errorf("%w: [smtp] a password is set but no username", ErrConfig)
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Mail is one email.
type Mail struct {
	ID      string // becomes the Message-ID: a resend is recognisably the same message
	To      []string
	Subject string
	Text    string
	Date    time.Time
}

// SendMail delivers m through the server, once.
func SendMail(ctx context.Context, c SMTP, m Mail) error {
	if err := c.Check(); err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(c.Server)
	p, _ := strconv.Atoi(port)
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	opts := []gomail.Option{gomail.WithPort(p), gomail.WithTimeout(timeout), gomail.WithHELO("ppsync"),
		gomail.WithTLSConfig(&tls.Config{ServerName: host, RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12})}
	switch c.TLS {
	case TLSWrap:
		opts = append(opts, gomail.WithSSL(), gomail.WithTLSPortPolicy(gomail.TLSMandatory))
	case TLSNone:
		opts = append(opts, gomail.WithTLSPortPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPortPolicy(gomail.TLSMandatory))
	}
	if c.Username != "" {
		auth := gomail.SMTPAuthAutoDiscover
		if c.TLS == TLSNone {
			auth = gomail.SMTPAuthPlainNoEnc // a server on this machine only (Check)
		}
		opts = append(opts, gomail.WithSMTPAuth(auth), gomail.WithUsername(c.Username), gomail.WithPassword(c.Password))
	}
	client, err := gomail.NewClient(host, opts...)
	if err != nil {
		return fmt.Errorf("notify: mail client for %s: %w", c.Server, err)
	}
	msg := gomail.NewMsg()
	if err := msg.From(c.From); err != nil {
		return fmt.Errorf("notify: from %q: %w", c.From, err)
	}
	if err := msg.To(m.To...); err != nil {
		return fmt.Errorf("notify: to %v: %w", m.To, err)
	}
	msg.Subject(m.Subject)
	msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	if m.ID != "" {
		msg.SetMessageIDWithValue(m.ID + "@ppsync")
	}
	if !m.Date.IsZero() {
		msg.SetDateWithValue(m.Date)
	}
	msg.SetGenHeader("X-PPSync-Message", m.ID)
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		return fmt.Errorf("notify: sending mail through %s: %w", c.Server, err)
	}
	return nil
}

// Signature returns the X-PPSync-Signature header's value for a webhook body
// sent at ts: "sha256=" and the hex HMAC-SHA256, keyed with the rule's secret,
// of the decimal Unix time, a dot and the body. Receivers recompute it and
// reject a stale timestamp.
func Signature(secret string, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "%d.", ts)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// PostWebhook POSTs the JSON body to url, once, signed with secret. The
// delivery's ID goes in X-PPSync-Delivery, so a receiver can drop a resend.
func PostWebhook(ctx context.Context, client *http.Client, url, secret, id string, body []byte, now time.Time) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("notify: webhook %s: %w", url, err)
	}
	ts := now.Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ppsync")
	req.Header.Set("X-PPSync-Delivery", id)
	req.Header.Set("X-PPSync-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("X-PPSync-Signature", Signature(secret, ts, body))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("notify: webhook %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("notify: webhook %s answered %s", url, resp.Status)
	}
	return nil
}
