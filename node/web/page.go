// Package web is the sync page: the node's local web dashboard at GET /, its
// files (embedded), its one-time login links and its sessions. The page's
// script reads and steers the node through the same HTTP API as every other
// client; this package only serves the page and decides what a page session
// may ask of that API. It depends on no storage or network library: it is
// given the API's address, an authorizer for the API key and a clock.
package web

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// The sync page: the node's local web dashboard at GET /. Its files are in
// web/ and embedded in the binary; it reads and steers the node through the
// same API as everything else.
//
// Logging in: `ppsync open` (or the link in the node's log at start-up) asks
// POST /v1/login-token, with the API key, for a link with a one-time token.
// GET /?token=T exchanges the token for a session cookie and redirects to /.
// A session may only call the endpoints the page uses (pageRoutes); a request
// that changes something must also carry the X-PPSync-Page header, which a
// cross-site form or image cannot send. The page checks the practice database
// but never repairs it: that stays with `ppsync db check --repair`.

//go:embed index.html login.html assets
var webFiles embed.FS

// Sync page limits.
const (
	LoginTokenTTL  = 2 * time.Minute // a login link works once, within this time
	SessionIdle    = 12 * time.Hour  // a session unused this long ends
	PageHeader     = "X-PPSync-Page" // must be "1" on a session's requests that change something
	maxSessions    = 64              // the least recently used ends first
	maxLoginTokens = 64              // the one expiring first goes first
	secretBytes    = 32
)

// pageRoutes are the requests a page session may make (method and path).
var pageRoutes = map[string]bool{
	"GET /v1/status":    true,
	"GET /v1/peers":     true,
	"GET /v1/settings":  true,
	"PUT /v1/settings":  true,
	"POST /v1/sync":     true,
	"GET /v1/activity":  true,
	"GET /v1/events":    true,
	"POST /v1/logout":   true,
	"GET /v1/db":        true,
	"POST /v1/db/check": true, // without repair only: see checkOnly
	"GET /v1/alerts":    true,
}

// pageMay reports whether a page session may make the request: one of
// pageRoutes, or the "send test" button of an alert rule.
func pageMay(method, path string) bool {
	if pageRoutes[method+" "+path] {
		return true
	}
	id, ok := strings.CutPrefix(path, "/v1/alerts/")
	id, ok2 := strings.CutSuffix(id, "/test")
	return method == http.MethodPost && ok && ok2 && id != "" && !strings.Contains(id, "/")
}

// Authorizer decides whether a request carries the API key.
type Authorizer interface {
	Authorized(r *http.Request) bool
}

// Options configure the sync page.
type Options struct {
	Addr    string           // the API's listening address (HOST:PORT): the base of login links, the name of the cookie
	TLS     bool             // the API serves HTTPS: links are https://, the cookie is Secure
	DataDir string           // named on the login page and in the logged link's advice
	Auth    Authorizer       // the API key: it opens the page without a session
	Now     func() time.Time // the clock of tokens and sessions; nil: time.Now
	Logger  *slog.Logger     // nil: discard
}

// Page holds the sync page's login tokens and sessions, in memory only: a
// restart ends every session. It is safe for concurrent use.
type Page struct {
	auth    Authorizer
	log     *slog.Logger
	dataDir string
	now     func() time.Time
	cookie  string // the cookie's name carries the port: browsers share cookies across the ports of a host
	base    string // "http://127.0.0.1:PORT" (https:// with TLS)
	secure  bool   // the API serves HTTPS

	mu       sync.Mutex
	tokens   map[[32]byte]time.Time // hash of a token -> when it expires
	sessions map[[32]byte]time.Time // hash of a session ID -> when it was last used
}

// New returns the sync page of the API listening at o.Addr.
func New(o Options) *Page {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	host, port, _ := net.SplitHostPort(o.Addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return &Page{
		auth: o.Auth, log: o.Logger, dataDir: o.DataDir, now: o.Now,
		cookie: "ppsync_session_" + port, base: scheme(o.TLS) + "://" + net.JoinHostPort(host, port), secure: o.TLS,
		tokens: map[[32]byte]time.Time{}, sessions: map[[32]byte]time.Time{},
	}
}

// Routes registers the page, its files and its endpoints (POST
// /v1/login-token, POST /v1/logout) on mux.
func (p *Page) Routes(mux *http.ServeMux) {
	assets, _ := fs.Sub(webFiles, "assets")
	mux.HandleFunc("GET /{$}", p.serveRoot)
	files := http.StripPrefix("/assets/", http.FileServerFS(assets))
	mux.HandleFunc("GET /assets/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		setPageHeaders(w)
		w.Header().Set("Cache-Control", "no-cache") // an upgraded node serves new files at once
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("POST /v1/login-token", p.postLoginToken)
	mux.HandleFunc("POST /v1/logout", p.postLogout)
}

// LogLink logs a login link, so that whoever starts the node can open the
// page without typing the key.
func (p *Page) LogLink() {
	l := p.Issue()
	p.log.Info("sync page: open this link in a browser on this machine within 2 minutes (it works once); for a new one, run `ppsync open --data "+p.dataDir+"`",
		"url", l.URL)
}

// Public reports whether r needs no authentication: the page itself (which
// shows how to log in without a session) and its static files.
func (p *Page) Public(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	return r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/assets/")
}

// Verdict says what a request without the API key may do.
type Verdict int

const (
	NoSession      Verdict = iota // 401
	SessionOK                     // serve it
	SessionRefused                // 403: a session, but not for this request
)

// Authorize checks a request's session cookie. It returns the verdict and,
// when refused, why.
func (p *Page) Authorize(r *http.Request) (Verdict, string) {
	if !p.validSession(r) {
		return NoSession, ""
	}
	if !pageMay(r.Method, r.URL.Path) {
		return SessionRefused, "the sync page's session may not make this request; use the API key (DATA/api.key)"
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if r.Header.Get(PageHeader) != "1" {
			return SessionRefused, "a request of the sync page that changes something must carry the header " + PageHeader + ": 1"
		}
		if o := r.Header.Get("Origin"); o != "" && o != scheme(r.TLS != nil)+"://"+r.Host {
			return SessionRefused, "this request comes from another web site"
		}
	}
	if r.Method == http.MethodPost && r.URL.Path == "/v1/db/check" && !checkOnly(r) {
		return SessionRefused, "the sync page only checks the practice database; to repair it, run `ppsync db check --data DATA --repair`"
	}
	return SessionOK, ""
}

// checkOnly reports whether a POST /v1/db/check asks for no repair. It reads
// the body as the handler will (the first JSON value of at most 4 KiB) and
// puts it back for the handler; a body the handler will refuse passes, to get
// the handler's own answer.
func checkOnly(r *http.Request) bool {
	if r.ContentLength == 0 || r.Body == nil {
		return true
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
	if err != nil {
		return false
	}
	var req struct {
		Repair bool `json:"repair"`
	}
	if json.NewDecoder(bytes.NewReader(b)).Decode(&req) != nil {
		return true // the handler answers 400 (it reads the same bytes)
	}
	return !req.Repair
}

func newSecret() string {
	b := make([]byte, secretBytes)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func secretHash(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// Issue makes a one-time login link.
func (p *Page) Issue() api.LoginLink {
	tok := newSecret()
	now := p.now()
	exp := now.Add(LoginTokenTTL)
	p.mu.Lock()
	makeRoom(p.tokens, maxLoginTokens, func(e time.Time) bool { return !now.Before(e) })
	p.tokens[secretHash(tok)] = exp
	p.mu.Unlock()
	return api.LoginLink{URL: p.base + "/?token=" + tok, Expires: exp.UTC().Truncate(time.Second)}
}

// redeem uses up a token: true when it was issued, unused and unexpired.
func (p *Page) redeem(tok string) bool {
	h := secretHash(tok)
	p.mu.Lock()
	defer p.mu.Unlock()
	exp, ok := p.tokens[h]
	delete(p.tokens, h)
	return ok && p.now().Before(exp)
}

// startSession returns a new session ID.
func (p *Page) startSession() string {
	id := newSecret()
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	makeRoom(p.sessions, maxSessions, func(used time.Time) bool { return now.Sub(used) >= SessionIdle })
	p.sessions[secretHash(id)] = now
	return id
}

// makeRoom readies m (secret hash -> time) for one more entry: it drops the
// entries that expired, then, when m still holds limit entries, the earliest one.
func makeRoom(m map[[32]byte]time.Time, limit int, expired func(time.Time) bool) {
	for h, t := range m {
		if expired(t) {
			delete(m, h)
		}
	}
	if len(m) < limit {
		return
	}
	var first [32]byte
	var at time.Time
	for h, t := range m {
		if at.IsZero() || t.Before(at) {
			first, at = h, t
		}
	}
	delete(m, first)
}

// validSession reports whether r carries a live session cookie, and marks
// the session used.
func (p *Page) validSession(r *http.Request) bool {
	c, err := r.Cookie(p.cookie)
	if err != nil || c.Value == "" {
		return false
	}
	h := secretHash(c.Value)
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	used, ok := p.sessions[h]
	if !ok {
		return false
	}
	if now.Sub(used) >= SessionIdle {
		delete(p.sessions, h)
		return false
	}
	p.sessions[h] = now
	return true
}

func (p *Page) endSession(r *http.Request) {
	if c, err := r.Cookie(p.cookie); err == nil {
		p.mu.Lock()
		delete(p.sessions, secretHash(c.Value))
		p.mu.Unlock()
	}
}

func (p *Page) sessionCookie(value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: p.cookie, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true, Secure: p.secure, SameSite: http.SameSiteStrictMode}
}

// setPageHeaders sets the headers every page response carries.
func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

var loginPage = template.Must(template.ParseFS(webFiles, "login.html"))

// serveRoot serves the dashboard to a session (or the API key), exchanges a
// login token for a session, and otherwise explains how to log in.
func (p *Page) serveRoot(w http.ResponseWriter, r *http.Request) {
	setPageHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if q := r.URL.Query(); q.Has("token") {
		if !p.redeem(q.Get("token")) {
			p.login(w, http.StatusUnauthorized, "This link was already used or has expired: each link works once, for 2 minutes.")
			return
		}
		http.SetCookie(w, p.sessionCookie(p.startSession(), 0))
		http.Redirect(w, r, "/", http.StatusSeeOther) // the token leaves the address bar and the history
		return
	}
	if !p.validSession(r) && !p.authorized(r) {
		p.login(w, http.StatusOK, "")
		return
	}
	b, err := webFiles.ReadFile("index.html")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b)
}

func (p *Page) login(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	loginPage.Execute(w, map[string]string{"Message": msg, "DataDir": p.dataDir})
}

func (p *Page) postLoginToken(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, p.Issue())
}

// authorized reports whether r carries the API key.
func (p *Page) authorized(r *http.Request) bool { return p.auth != nil && p.auth.Authorized(r) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away: nothing to do
}

func (p *Page) postLogout(w http.ResponseWriter, r *http.Request) {
	p.endSession(r)
	http.SetCookie(w, p.sessionCookie("", -1))
	writeJSON(w, http.StatusOK, map[string]bool{"logged_out": true})
}

// scheme is the URL scheme of the API: https with TLS.
func scheme(tls bool) string {
	if tls {
		return "https"
	}
	return "http"
}
