// Package mailsink is a small real SMTP server that keeps the messages it
// receives in memory: `ppsync demo` starts one to show the email an alert
// sends, and tests start one to check the messages. It speaks SMTP with
// STARTTLS or implicit TLS and AUTH PLAIN, on 127.0.0.1 only.
package mailsink

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message as received.
type Message struct {
	From    string
	To      []string
	Subject string
	Header  mail.Header
	Body    string // the decoded plain-text body
	Raw     []byte
	TLS     bool   // the session was encrypted
	User    string // who authenticated ("" when nobody did)
}

// Options choose how the server talks.
type Options struct {
	// TLS: "starttls" (offers STARTTLS), "tls" (implicit TLS from the first
	// byte) or "none".
	TLS string
	// Username and Password, when set, are required (AUTH PLAIN).
	Username, Password string
	// Fail makes the next Fail messages be refused with a temporary error
	// (451), as a mail server that is busy does.
	Fail int
}

// Server is a running mail sink.
type Server struct {
	srv  *smtp.Server
	ln   net.Listener
	cert []byte // PEM of the server's self-signed certificate

	mu       sync.Mutex
	msgs     []Message
	fail     int
	changed  chan struct{}
	refusals int
}

// Start listens on 127.0.0.1 on a free port.
func Start(o Options) (*Server, error) { return StartOn(nil, o) }

// StartOn serves on ln (a listener made in another network namespace, say),
// or on a new one on 127.0.0.1 when ln is nil. With TLS "tls" it wraps ln.
func StartOn(ln net.Listener, o Options) (*Server, error) {
	s := &Server{fail: o.Fail, changed: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, isTLS := c.TLSConnectionState()
		return &session{s: s, o: o, tls: isTLS}, nil
	}))
	s.srv.Domain = "localhost"
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	s.srv.MaxMessageBytes = 1 << 20
	s.srv.MaxRecipients = 50
	s.srv.AllowInsecureAuth = o.TLS == "none"
	var err error
	if o.TLS != "none" {
		var cfg *tls.Config
		if cfg, s.cert, err = selfSigned(); err != nil {
			return nil, err
		}
		s.srv.TLSConfig = cfg
	}
	if ln == nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("mailsink: listen: %w", err)
		}
	}
	if o.TLS == "tls" {
		ln = tls.NewListener(ln, s.srv.TLSConfig)
	}
	s.ln = ln
	go func() { _ = s.srv.Serve(s.ln) }()
	return s, nil
}

// Addr is the host:port to send to.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// CertPEM is the server's certificate, to trust it (ca_file).
func (s *Server) CertPEM() []byte { return s.cert }

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

// Messages returns what arrived so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Refusals counts the messages refused with a temporary error (Options.Fail).
func (s *Server) Refusals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusals
}

// Wait returns the messages once match accepts them, or an error when ctx
// ends first.
func (s *Server) Wait(ctx context.Context, match func([]Message) bool) ([]Message, error) {
	for {
		s.mu.Lock()
		msgs, ch := append([]Message(nil), s.msgs...), s.changed
		s.mu.Unlock()
		if match(msgs) {
			return msgs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msgs, fmt.Errorf("mailsink: waiting for mail: %w (have %d messages)", ctx.Err(), len(msgs))
		}
	}
}

func (s *Server) add(m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		s.refusals++
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy, try again later"}
	}
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

type session struct {
	s    *Server
	o    Options
	tls  bool
	user string
	from string
	to   []string
}

func (x *session) AuthMechanisms() []string {
	if x.o.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (x *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnsupported
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != x.o.Username || pass != x.o.Password {
			return errors.New("invalid username or password")
		}
		x.user = user
		return nil
	}), nil
}

func (x *session) Mail(from string, _ *smtp.MailOptions) error {
	if x.o.Username != "" && x.user == "" {
		return smtp.ErrAuthRequired
	}
	x.from = from
	return nil
}

func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	x.to = append(x.to, to)
	return nil
}

func (x *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Message{From: x.from, To: x.to, Raw: raw, TLS: x.tls, User: x.user}
	if pm, err := mail.ReadMessage(strings.NewReader(string(raw))); err == nil {
		m.Header = pm.Header
		m.Subject = decodeHeader(pm.Header.Get("Subject"))
		body, _ := io.ReadAll(pm.Body)
		m.Body = decodeBody(pm.Header.Get("Content-Transfer-Encoding"), body)
	}
	return x.s.add(m)
}

func (x *session) Reset()        { x.from, x.to = "", nil }
func (x *session) Logout() error { return nil }

// selfSigned makes a certificate for 127.0.0.1 and localhost.
func selfSigned() (*tls.Config, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "mailsink"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("mailsink: certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		return nil, nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, certPEM, nil
}

func decodeHeader(v string) string {
	out, err := new(mime.WordDecoder).DecodeHeader(v)
	if err != nil {
		return v
	}
	return out
}

func decodeBody(enc string, body []byte) string {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "quoted-printable":
		if b, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(string(body)))); err == nil {
			return string(b)
		}
	case "base64":
		if b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), "")); err == nil {
			return string(b)
		}
	}
	return string(body)
}
