package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/web"
)

// pageClient is a browser stand-in: it keeps cookies and does not follow
// redirects.
func pageClient(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// pageDo sends a request with the client's cookies (and no API key) and
// returns the status and body.
func pageDo(t *testing.T, c *http.Client, method, u, body string, header map[string]string) (int, string, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, u, rd)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// loginLink asks the node for a one-time link with the API key, through the
// client `ppsync open` uses.
func loginLink(t *testing.T, r *running) api.LoginLink {
	t.Helper()
	cl, err := api.NewClientFor(r.base, r.key)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	l, err := cl.LoginLink(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLoginTokenAndSession(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	c := pageClient(t)
	page := map[string]string{web.PageHeader: "1"}

	// Without a session or the key: the API refuses, the page explains.
	if code, _, _ := pageDo(t, c, "GET", r.base+"/v1/status", "", nil); code != 401 {
		t.Fatalf("status without session: %d", code)
	}
	if code, body, _ := pageDo(t, c, "GET", r.base+"/", "", nil); code != 200 || !strings.Contains(body, "ppsync open --data "+f.data) || strings.Contains(body, `id="sync-now"`) {
		t.Fatalf("page without session: %d %s", code, body)
	}
	if code, _, _ := pageDo(t, c, "POST", r.base+"/v1/login-token", "", nil); code != 401 {
		t.Fatalf("login-token without key: %d", code)
	}

	l := loginLink(t, r)
	u, err := url.Parse(l.URL)
	if err != nil || u.Host != strings.TrimPrefix(r.base, "http://") || u.Path != "/" || len(u.Query().Get("token")) != 43 {
		t.Fatalf("link %q", l.URL)
	}
	if d := time.Until(l.Expires); d < web.LoginTokenTTL-5*time.Second || d > web.LoginTokenTTL+time.Second {
		t.Fatalf("link expires in %s", d)
	}
	if l2 := loginLink(t, r); l2.URL == l.URL {
		t.Fatal("two links share a token")
	}

	// The token becomes a session cookie and leaves the address bar.
	code, _, h := pageDo(t, c, "GET", l.URL, "", nil)
	if code != http.StatusSeeOther || h.Get("Location") != "/" {
		t.Fatalf("token exchange: %d %q", code, h.Get("Location"))
	}
	sc := h.Get("Set-Cookie")
	for _, want := range []string{"ppsync_session_", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(sc, want) {
			t.Fatalf("cookie %q lacks %s", sc, want)
		}
	}
	if v := strings.SplitN(strings.SplitN(sc, ";", 2)[0], "=", 2)[1]; len(v) != 43 {
		t.Fatalf("session id %q is not 32 random bytes", v)
	}
	// A used token is refused, even to a fresh browser.
	code, body, h := pageDo(t, pageClient(t), "GET", l.URL, "", nil)
	if code != 401 || h.Get("Set-Cookie") != "" || !strings.Contains(body, "already used or has expired") {
		t.Fatalf("reused token: %d %q %s", code, h.Get("Set-Cookie"), body)
	}
	if code, _, _ := pageDo(t, pageClient(t), "GET", r.base+"/?token=forged", "", nil); code != 401 {
		t.Fatalf("forged token: %d", code)
	}

	// The session reads what the page shows.
	if code, body, _ := pageDo(t, c, "GET", r.base+"/", "", nil); code != 200 || !strings.Contains(body, `id="sync-now"`) {
		t.Fatalf("dashboard: %d", code)
	}
	for _, p := range []string{"/v1/status", "/v1/peers", "/v1/settings", "/v1/activity?limit=5"} {
		if code, body, _ := pageDo(t, c, "GET", r.base+p, "", nil); code != 200 {
			t.Fatalf("GET %s with session: %d %s", p, code, body)
		}
	}
	// Changing something needs the page's header (CSRF), and the same origin.
	if code, _, _ := pageDo(t, c, "PUT", r.base+"/v1/settings", `{"sync_interval":"2m"}`, nil); code != 403 {
		t.Fatalf("PUT without the page header: %d", code)
	}
	if code, _, _ := pageDo(t, c, "PUT", r.base+"/v1/settings", `{"sync_interval":"2m"}`, map[string]string{web.PageHeader: "1", "Origin": "http://evil.example"}); code != 403 {
		t.Fatalf("PUT from another origin: %d", code)
	}
	if code, body, _ := pageDo(t, c, "PUT", r.base+"/v1/settings", `{"sync_interval":"2m"}`, map[string]string{web.PageHeader: "1", "Origin": r.base}); code != 200 || !strings.Contains(body, `"2m0s"`) {
		t.Fatalf("PUT with the page header: %d %s", code, body)
	}
	// A session reaches only the page's endpoints: no records, no writes, no new links.
	for _, rq := range [][2]string{{"GET", "/v1/records/patients/p1"}, {"POST", "/v1/transactions"}, {"POST", "/v1/login-token"}, {"GET", "/v1/digest"}} {
		if code, _, _ := pageDo(t, c, rq[0], r.base+rq[1], `{}`, page); code != 403 {
			t.Fatalf("%s %s with a session: %d", rq[0], rq[1], code)
		}
	}
	// Static files are public and carry the page's security headers.
	code, _, h = pageDo(t, pageClient(t), "GET", r.base+"/assets/app.js", "", nil)
	if code != 200 || !strings.Contains(h.Get("Content-Type"), "javascript") || !strings.Contains(h.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("app.js: %d %v", code, h)
	}
	if code, _, _ := pageDo(t, pageClient(t), "GET", r.base+"/assets/", "", nil); code != 404 {
		t.Fatalf("assets listing: %d", code)
	}
	// Signing out ends the session.
	if code, _, _ := pageDo(t, c, "POST", r.base+"/v1/logout", "", page); code != 200 {
		t.Fatalf("logout: %d", code)
	}
	if code, _, _ := pageDo(t, c, "GET", r.base+"/v1/status", "", nil); code != 401 {
		t.Fatalf("status after logout: %d", code)
	}
	// The API key still works as before.
	if code := r.call(t, "GET", "/v1/status", nil, &api.Status{}); code != 200 {
		t.Fatalf("bearer: %d", code)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLoginLinkInStartupLog(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	cfg := f.config()
	var out syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&out, nil))
	n, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done; n.Close() }()
	m := regexp.MustCompile(`msg="sync page: [^"]*ppsync open --data ` + regexp.QuoteMeta(f.data) + `[^"]*" url="?(http://[^"\s]+/\?token=[^"\s]+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no link in the log:\n%s", out.String())
	}
	if code, _, h := pageDo(t, pageClient(t), "GET", m[1], "", nil); code != http.StatusSeeOther || h.Get("Set-Cookie") == "" {
		t.Fatalf("the logged link: %d", code)
	}
}

// ---- browser tests: Debian's chromium, driven by chromedp ----

const chromiumPath = "/usr/bin/chromium"

// needChromium skips the test when Chromium is not installed.
func needChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("the browser tests need Chromium at %s (Debian: apt-get install chromium; .ci/run installs it)", chromiumPath)
	}
}

// newBrowser starts headless Chromium for one test and returns a tab. Start
// it after the nodes: it closes first, so no event stream holds up their
// stopping.
func newBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	needChromium(t)
	profile := t.TempDir()
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(width, height),
	)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser; no timeout on this first run
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs browser actions with a deadline.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v\npage: %s", what, err, pageText(ctx))
	}
}

// waitJS evaluates a JavaScript expression until it is true or the deadline
// passes. (chromedp.Poll builds its predicate with new Function, which the
// page's Content-Security-Policy forbids, so the poll loop is here.)
func waitJS(t *testing.T, ctx context.Context, what, expr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := chromedp.Run(c, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s (%v)\npage: %s", what, d, err, pageText(ctx))
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

// selectAll selects the text of an input, so that typing replaces it.
func selectAll(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](fmt.Sprintf("(document.querySelector(%q).select(), true)", sel))(ctx, tg)
		return err
	})
}

func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func pageText(ctx context.Context) string {
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(c, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return s
}

// startVersion starts a family node that reports the given version.
func startVersion(tf *testFamily, site, version string) *running {
	tf.t.Helper()
	return tf.startWith(site, func(c *Config) { c.Version = version })
}

// browserFamily starts a relay (1.0.0), clinic-a (1.0.0) and clinic-b
// (1.1.0), and waits until clinic-a sees both, with their versions. The
// sites know each other's certificates from the start, so that they connect
// at once (through the relay) instead of after a probation.
func browserFamily(t *testing.T) *testFamily { return browserFamilyDB(t, "") }

// browserFamilyDB is browserFamily with clinic-a bound to the practice
// database dbURL (none when empty).
func browserFamilyDB(t *testing.T, dbURL string) *testFamily {
	t.Helper()
	tf := newTestFamily(t)
	tf.add("relay", "relay")
	if dbURL != "" {
		tf.addDB("clinic-a", dbURL)
	} else {
		tf.add("clinic-a", "site")
	}
	tf.add("clinic-b", "site")
	tf.install(tf.nodes["clinic-a"], tf.nodes["clinic-b"].cert)
	startVersion(tf, "relay", "1.0.0")
	startVersion(tf, "clinic-a", "1.0.0")
	startVersion(tf, "clinic-b", "1.1.0")
	a := tf.nodes["clinic-a"].r.n
	deadline := time.Now().Add(20 * time.Second)
	for {
		peers := a.sync.peers()
		ready := len(peers) == 2
		for _, p := range peers {
			ready = ready && p.Connected && p.Version != ""
		}
		if st, err := a.Status(context.Background()); err == nil && ready && st.VersionMismatch {
			return tf
		}
		if time.Now().After(deadline) {
			t.Fatalf("clinic-a does not see both members: %+v", peers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBrowserSyncPage(t *testing.T) {
	needChromium(t)
	start := time.Now()
	tf := browserFamily(t)
	a := tf.nodes["clinic-a"].r
	tf.write("clinic-a", 60, "patients") // more activity than one page of the feed
	ctx := newBrowser(t, 1280, 900)
	t.Logf("family and browser ready in %s", time.Since(start).Round(time.Millisecond))

	// A one-time link opens the dashboard; the token leaves the address bar.
	l := loginLink(t, a)
	do(t, ctx, "open the link", chromedp.Navigate(l.URL), chromedp.WaitVisible(chromedp.CSS("#sync-now")))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || loc != a.base+"/" {
		t.Fatalf("address after login %q (%v)", loc, err)
	}

	// Status, both peers, and the version warning.
	waitJS(t, ctx, "status shown", `document.getElementById("st-running").textContent.startsWith("Running, every 1s") &&
		document.getElementById("st-online").textContent.includes("Online") &&
		document.getElementById("site-name").textContent === "clinic-a"`, 10*time.Second)
	waitJS(t, ctx, "two peers", `(() => { const rows = [...document.querySelectorAll("#members-body tr")];
		return rows.length === 2 && rows[0].dataset.site === "clinic-b" && rows[1].dataset.site === "relay" &&
			/Direct|Via the relay/.test(rows[0].textContent) && rows[1].textContent.includes("Direct") &&
			rows[0].textContent.includes("1.1.0") && rows[0].textContent.includes("differs") })()`, 15*time.Second)
	waitJS(t, ctx, "version warning", `[...document.querySelectorAll("#warnings [role=alert]")].some(e =>
		e.textContent.includes("systems are on different versions") && e.textContent.includes("clinic-b runs 1.1.0"))`, 15*time.Second)

	// Sync Now gives a receipt per member.
	do(t, ctx, "press Sync Now", chromedp.Click(chromedp.CSS("#sync-now")))
	waitJS(t, ctx, "receipt", `(() => { const items = [...document.querySelectorAll("#receipt-members li")];
		return !document.getElementById("receipt").hidden && items.length === 2 &&
			items.every(li => li.textContent.endsWith(": caught up")) &&
			document.getElementById("receipt-summary").textContent.startsWith("Every member holds everything") })()`, 25*time.Second)
	if !evalJS[bool](t, ctx, `fetch("/v1/db").then(r => r.json()).then(d => d.driver === "" && document.getElementById("db-card").hidden)`) {
		t.Fatal("the Database box shows on a node that syncs no database")
	}

	// The interval: checked in the page, then saved, shown, and kept.
	do(t, ctx, "type a bad interval", chromedp.Focus(chromedp.CSS("#interval")), selectAll("#interval"),
		chromedp.SendKeys(chromedp.CSS("#interval"), "5 minutes"), chromedp.Click(chromedp.CSS("#interval-save")))
	waitJS(t, ctx, "validation message", `document.getElementById("interval").getAttribute("aria-invalid") === "true" &&
		document.getElementById("interval-msg").textContent.includes("is not a duration")`, 5*time.Second)
	do(t, ctx, "type a good interval and press Enter", chromedp.Focus(chromedp.CSS("#interval")), selectAll("#interval"),
		chromedp.SendKeys(chromedp.CSS("#interval"), "7m"+kb.Enter))
	waitJS(t, ctx, "saved", `document.getElementById("interval-msg").textContent === "Saved: this site now syncs every 7m." &&
		document.getElementById("interval-current").textContent === "7m"`, 10*time.Second)
	do(t, ctx, "reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#sync-now")))
	waitJS(t, ctx, "interval after reload", `document.getElementById("interval-current").textContent === "7m" &&
		document.getElementById("interval").value === "7m" && document.getElementById("st-running").textContent === "Running, every 7m"`, 10*time.Second)
	if cfg, err := LoadConfig(tf.nodes["clinic-a"].data); err != nil || time.Duration(cfg.SyncInterval) != 7*time.Minute {
		t.Fatalf("ppsync.toml holds %v (%v)", cfg.SyncInterval, err)
	}

	// More details: the feed in plain words, newest first, paged, and live.
	do(t, ctx, "open More details", chromedp.Click(chromedp.CSS("#more > summary")), chromedp.WaitVisible(chromedp.CSS("#activity li")))
	waitJS(t, ctx, "first page", `(() => { const ids = [...document.querySelectorAll("#activity li")].map(li => +li.dataset.id);
		return ids.length === 50 && ids.every((id, i) => i === 0 || id < ids[i-1]) })()`, 10*time.Second)
	for _, want := range []string{"Settings changed: sync every 7m", "Sync Now pressed (waiting up to 20s)", "Saved 1 change at this site (entry 60)"} {
		waitJS(t, ctx, "activity says "+want, `document.getElementById("activity").textContent.includes(`+strconv.Quote(want)+`)`, 5*time.Second)
	}
	do(t, ctx, "older", chromedp.Click(chromedp.CSS("#older")))
	waitJS(t, ctx, "older page", `(() => { const ids = [...document.querySelectorAll("#activity li")].map(li => +li.dataset.id);
		return ids.length > 50 && ids.every((id, i) => i === 0 || id < ids[i-1]) })()`, 10*time.Second)
	newest := evalJS[int](t, ctx, `+document.querySelector("#activity li").dataset.id`)
	tf.write("clinic-b", 1, "notes")
	waitJS(t, ctx, "a live event", fmt.Sprintf(`[...document.querySelectorAll("#activity li[data-type=received]")].some(li => +li.dataset.id > %d &&
		/Received 1 change (from clinic-b|of clinic-b through relay)/.test(li.textContent))`, newest), 10*time.Second)

	// Signing out: the API refuses the browser, and the used link stays used.
	do(t, ctx, "sign out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login")))
	if code := evalJS[int](t, ctx, `fetch("/v1/status").then(r => r.status)`); code != 401 {
		t.Fatalf("status after signing out: %d", code)
	}
	do(t, ctx, "the used link again", chromedp.Navigate(l.URL), chromedp.WaitVisible(chromedp.CSS("#login [role=alert]")))
	if txt := pageText(ctx); !strings.Contains(txt, "already used or has expired") || !strings.Contains(txt, "ppsync open --data") {
		t.Fatalf("used link shows %q", txt)
	}
	t.Logf("browser test took %s", time.Since(start).Round(time.Millisecond))
}

// TestBrowserScreenshots writes the README's pictures of the sync page, at a
// desktop and a phone width: PPSYNC_SCREENSHOTS=1 go test ./node/ -run Screenshots
func TestBrowserScreenshots(t *testing.T) {
	if os.Getenv("PPSYNC_SCREENSHOTS") != "1" {
		t.Skip("set PPSYNC_SCREENSHOTS=1 to write docs/screenshots/*.png")
	}
	needChromium(t)
	// clinic-a syncs the practice's database: rows from before ppsync, rows
	// the practice software inserts, rows of clinic-b written into it.
	path, pdb := practiceFileOf(t, `CREATE TABLE patients(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)`,
		`CREATE TABLE appointments(id INTEGER PRIMARY KEY AUTOINCREMENT, patient INTEGER, at TEXT)`)
	for i, name := range []string{"Ada Lovelace", "Grace Hopper", "Alan Turing"} {
		sqlExec(t, pdb, `INSERT INTO patients(id, name) VALUES (?, ?)`, i+1, name)
	}
	tf := browserFamilyDB(t, "sqlite:"+path)
	a := tf.nodes["clinic-a"].r
	b := tf.nodes["clinic-b"].r
	waitDB(t, a, "database ready", dbReady)
	sqlExec(t, pdb, `INSERT INTO appointments(patient, at) VALUES (1, '2026-11-27 09:00'), (2, '2026-11-27 10:30')`)
	sqlExec(t, pdb, `UPDATE patients SET name = 'Ada King' WHERE id = 1`)
	for i, name := range []string{"Edsger Dijkstra", "Barbara Liskov"} {
		if code := b.call(t, "POST", "/v1/transactions", fmt.Sprintf(`{"ops":[{"op":"put","table":"patients","key":"%d","fields":{"name":%q}}]}`, 101+i, name), nil); code != 200 {
			t.Fatalf("write at clinic-b: %d", code)
		}
	}
	waitDB(t, a, "captured and applied", func(st api.DBStatus) bool {
		return st.Captured == 3 && st.Applied == 2 && st.PendingCapture == 0
	})
	a.call(t, "PUT", "/v1/settings", `{"sync_interval":"30s"}`, nil)
	ctx := newBrowser(t, 1280, 900)
	l := loginLink(t, a)
	do(t, ctx, "open the link", chromedp.Navigate(l.URL), chromedp.WaitVisible(chromedp.CSS("#sync-now")))
	waitJS(t, ctx, "dashboard filled in", `document.querySelectorAll("#members-body tr").length === 2 &&
		document.querySelector("#warnings [role=alert]") !== null && document.getElementById("live").textContent === "Live" &&
		document.getElementById("db-applied").textContent === "2"`, 15*time.Second)
	do(t, ctx, "Sync Now", chromedp.Click(chromedp.CSS("#sync-now")))
	waitJS(t, ctx, "receipt", `!document.getElementById("receipt").hidden`, 25*time.Second)
	do(t, ctx, "More details", chromedp.Click(chromedp.CSS("#more > summary")), chromedp.WaitVisible(chromedp.CSS("#activity li")))
	dir := filepath.Join("..", "docs", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shoot := func(name string, width, height int64, scale float64) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(c, chromedp.EmulateViewport(width, height, chromedp.EmulateScale(scale))); err != nil {
			t.Fatal(err)
		}
		waitJS(t, ctx, "layout at "+name, fmt.Sprintf("document.documentElement.clientWidth === %d", width), 5*time.Second)
		png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d KB", p, len(png)>>10)
		if len(png) > 300<<10 {
			t.Errorf("%s is %d KB, over 300 KB", p, len(png)>>10)
		}
	}
	shoot("sync-page-desktop.png", 1100, 900, 1)
	do(t, ctx, "close More details", chromedp.Click(chromedp.CSS("#more > summary")))
	shoot("sync-page-phone.png", 390, 844, 1)
}
