package node

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/web"
	_ "modernc.org/sqlite"
)

// The practice database on the sync page and in /metrics: a node set up with
// a SQLite file, written with plain SQL as the practice software writes it.

// practiceFile creates a SQLite practice database with a patients table in a
// temporary directory, plus the statements in extra, and returns its path and
// a connection to write to it.
func practiceFile(t testing.TB, extra ...string) (string, *sql.DB) {
	t.Helper()
	return practiceFileOf(t, append([]string{`CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT)`}, extra...)...)
}

// practiceFileOf is practiceFile with the statements given alone.
func practiceFileOf(t testing.TB, stmts ...string) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "practice.db")
	d, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, q := range stmts {
		sqlExec(t, d, q)
	}
	return path, d
}

func sqlExec(t testing.TB, d *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := d.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// addDB is testFamily.add for a site bound to a practice database (dbURL,
// like "sqlite:/path/practice.db"), as `ppsync init --db` sets it up.
func (tf *testFamily) addDB(site, dbURL string) *famNode {
	tf.t.Helper()
	return tf.addWith(site, "site", func(o *InitOptions) { o.DB = dbURL })
}

// waitUntil polls cond until it holds or the deadline passes; cond's string
// says what it saw, for the failure message.
func waitUntil(t testing.TB, what string, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s; saw %s", what, d, saw)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

// waitDB polls the node's DBStatus until cond holds.
func waitDB(t testing.TB, r *running, what string, cond func(api.DBStatus) bool) api.DBStatus {
	t.Helper()
	var st api.DBStatus
	waitUntil(t, what, 20*time.Second, func() (bool, string) {
		st, _ = r.n.DBStatus(context.Background())
		b, _ := json.Marshal(st)
		return cond(st), string(b)
	})
	return st
}

// dbReady reports whether the node read the database's tables and finished
// its initial load, with no problem.
func dbReady(st api.DBStatus) bool {
	return len(st.Tables) > 0 && !st.Loading && st.Problem == ""
}

// TestPageDBSession: a page session reads GET /v1/db and may check the
// database, with the page's header, but never repair it.
func TestPageDBSession(t *testing.T) {
	path, _ := practiceFile(t)
	tf := newTestFamily(t)
	tf.addDB("clinic-a", "sqlite:"+path)
	tf.add("clinic-b", "site")
	a := tf.start("clinic-a")
	b := tf.start("clinic-b")
	waitDB(t, a, "database ready", dbReady)

	session := func(r *running) *pageClientOf {
		c := pageClient(t)
		if code, _, _ := pageDo(t, c, "GET", loginLink(t, r).URL, "", nil); code != 303 {
			t.Fatalf("login: %d", code)
		}
		return &pageClientOf{t: t, c: c, base: r.base}
	}
	sa, sb := session(a), session(b)
	hdr := map[string]string{web.PageHeader: "1"}

	code, body := sa.do("GET", "/v1/db", "", nil)
	var st api.DBStatus
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Driver != "sqlite" || !strings.HasSuffix(st.Database, path) || len(st.PerTable) != 1 {
		t.Fatalf("GET /v1/db with a session: %d %s", code, body)
	}
	// A node without a database says so; the page hides the box.
	if code, body := sb.do("GET", "/v1/db", "", nil); code != 200 || !strings.Contains(body, `"driver":""`) {
		t.Fatalf("GET /v1/db without a database: %d %s", code, body)
	}

	for _, c := range []struct {
		body   string
		header map[string]string
		code   int
		says   string
	}{
		{`{"repair":false}`, nil, 403, web.PageHeader}, // no page header: maybe another site's form
		{`{"repair":false}`, map[string]string{web.PageHeader: "1", "Origin": "http://evil.example"}, 403, "another web site"},
		{`{"repair":true}`, hdr, 403, "--repair"},                                 // the page never repairs
		{`{"repair":false,"repair":true}`, hdr, 403, "--repair"},                  // read as the handler reads it: the last one counts
		{`{"Repair":true}`, hdr, 403, "--repair"},                                 // field names match as the handler matches them
		{`{"repair":false}` + strings.Repeat(" ", 5000), hdr, 200, `"checked":0`}, // the rest of the body reaches the handler
		{`{"repair":false}`, hdr, 200, `"checked":0`},
		{"", hdr, 200, `"checked":0`},
		{`{"repair":`, hdr, 400, "bad_request"}, // the handler's own answer
	} {
		code, body := sa.do("POST", "/v1/db/check", c.body, c.header)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("POST /v1/db/check %.40q with %v: %d %s; want %d and %q", c.body, c.header, code, body, c.code, c.says)
		}
	}
	// The API key may still repair.
	var res api.DBCheckResult
	if code := a.call(t, "POST", "/v1/db/check", `{"repair":true}`, &res); code != 200 {
		t.Fatalf("repair with the key: %d", code)
	}
}

// pageClientOf is a page session on one node.
type pageClientOf struct {
	t    *testing.T
	c    *http.Client
	base string
}

func (p *pageClientOf) do(method, path, body string, header map[string]string) (int, string) {
	p.t.Helper()
	code, b, _ := pageDo(p.t, p.c, method, p.base+path, body, header)
	return code, b
}

// TestBrowserDatabaseBox opens the sync page of a site bound to a SQLite
// file: the Database box shows the database and its table, a row inserted
// with plain SQL as captured, a row the database refuses, a check, and a
// problem; a node without a database shows no box.
func TestBrowserDatabaseBox(t *testing.T) {
	needChromium(t)
	start := time.Now()
	path, d := practiceFile(t, `CREATE TABLE codes(id INTEGER PRIMARY KEY, code TEXT UNIQUE)`, `INSERT INTO codes VALUES (1, 'A')`)
	for i := 1; i <= 3; i++ { // rows from before ppsync: the initial load
		sqlExec(t, d, `INSERT INTO patients(name) VALUES (?)`, fmt.Sprintf("patient %d", i))
	}
	tf := newTestFamily(t)
	tf.addDB("clinic-a", "sqlite:"+path)
	a := tf.start("clinic-a")
	waitDB(t, a, "database ready", dbReady)
	ctx := newBrowser(t, 1280, 900)
	t.Logf("node and browser ready in %s", time.Since(start).Round(time.Millisecond))

	do(t, ctx, "open the link", chromedp.Navigate(loginLink(t, a).URL), chromedp.WaitVisible(chromedp.CSS("#db-card")))
	waitJS(t, ctx, "the database and its tables", `(() => {
		const rows = [...document.querySelectorAll("#db-tables-body tr")].map(tr => tr.dataset.table);
		return document.getElementById("db-name").textContent === "SQLite"+`+strconv.Quote(path)+` &&
			rows.join() === "codes,patients" && document.getElementById("db-captured").textContent === "0" &&
			document.getElementById("db-pending-capture").textContent === "Nothing waiting" &&
			document.getElementById("db-problem").hidden && document.getElementById("db-loading").hidden &&
			document.getElementById("db-refused").hidden })()`, 10*time.Second)

	// The practice software inserts a row: the box shows it captured.
	sqlExec(t, d, `INSERT INTO patients(name) VALUES ('Ada')`)
	waitJS(t, ctx, "the row captured", `(() => {
		const row = document.querySelector('#db-tables-body tr[data-table="patients"]');
		return row && row.cells[1].textContent === "1" && row.cells[2].textContent === "0" && row.cells[3].textContent === "0" &&
			document.getElementById("db-captured").textContent === "1" &&
			document.getElementById("db-pending-capture").textContent === "Nothing waiting" })()`, 15*time.Second)

	// A merged row the database refuses (its code is taken): table, key, why.
	if code := a.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"codes","key":"2","fields":{"code":"A"}}]}`, nil); code != 200 {
		t.Fatalf("write: %d", code)
	}
	waitJS(t, ctx, "the refused row", `(() => {
		const li = document.querySelector('#db-refused-list li[data-table="codes"]');
		return !document.getElementById("db-refused").hidden && li && li.dataset.key === "2" &&
			li.textContent.startsWith("codes 2: the database refused it: a unique constraint") &&
			document.getElementById("h-db-refused").textContent === "Rows the database refused (1)" })()`, 15*time.Second)

	// Check database: the refused row is missing from the database.
	do(t, ctx, "press Check database", chromedp.Click(chromedp.CSS("#db-check")))
	waitJS(t, ctx, "the check's result", `(() => { const m = document.getElementById("db-check-msg").textContent;
		return m.startsWith("Checked 6 rows in 2 tables: 1 row differs (1 missing from the database)") &&
			m.includes("ppsync db check --data `+tf.nodes["clinic-a"].data+` --repair") })()`, 15*time.Second)

	// While the initial load runs (too brief here to catch), the box says how
	// far it is: the page is given such an answer.
	evalJS[bool](t, ctx, `(() => { const real = window.fetch; window.fetch = async (path, opts) => {
		const resp = await real(path, opts);
		if (path !== "/v1/db") return resp;
		const st = await resp.json();
		return new Response(JSON.stringify(Object.assign(st, {loading: true, load_rows: 3000})), {status: 200});
	}; window.realFetch = real; return true })()`)
	do(t, ctx, "press Check database", chromedp.Click(chromedp.CSS("#db-check"))) // it reads /v1/db when done
	waitJS(t, ctx, "the load's progress", `(() => { const p = document.getElementById("db-loading");
		return !p.hidden && p.textContent === "Loading existing rows: 3000 published" && p.getAttribute("role") === "status" })()`, 15*time.Second)
	evalJS[bool](t, ctx, `(window.fetch = window.realFetch, true)`)

	// A problem shows at the top of the box, as an alert. (Here the change
	// table the triggers write to is gone.)
	sqlExec(t, d, `DROP TABLE _ppsync_changes`)
	waitJS(t, ctx, "the problem", `(() => { const p = document.getElementById("db-problem");
		return !p.hidden && p.getAttribute("role") === "alert" && p.textContent.startsWith("The practice database has a problem: ") &&
			p.textContent.includes("_ppsync_changes") && document.getElementById("db-loading").hidden })()`, 20*time.Second)
	t.Logf("browser test took %s", time.Since(start).Round(time.Millisecond))
}
