package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the practice software's driver in the demo

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/mailsink"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
)

// The demo: a family on this machine, set up and run with the node package's
// Init, Open and Run, and watched through each node's local API (the client),
// as any program using ppsync would.

// demoOptions configure the demo: a family with a relay and three clinic
// sites running on this machine, each clinic with its own SQLite practice
// database.
type demoOptions struct {
	Dir     string    // where the family and the nodes live ("" = a new temporary directory)
	NoWait  bool      // exit once the sites converged instead of waiting for Ctrl-C
	Out     io.Writer // progress and results
	Version string
	Records int                 // patients per clinic (default 100)
	Env     func(string) string // the environment; nil: empty
}

var demoSites = []string{"clinic-north", "clinic-south", "clinic-east"}

// demoTables are the practice database's tables, parents first.
var demoTables = []string{"patients", "appointments", "clinical_notes", "invoices"}

// demoSchema is the practice software's database: integer IDs, foreign keys
// from every record to its patient, as practice software has them.
const demoSchema = `
PRAGMA journal_mode = WAL;
PRAGMA user_version = 1;
CREATE TABLE patients (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	name          TEXT NOT NULL,
	date_of_birth TEXT NOT NULL,          -- YYYY-MM-DD
	phone         TEXT,
	email         TEXT,
	registered_at TEXT NOT NULL           -- the clinic that registered the patient
);
CREATE TABLE appointments (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	patient_id INTEGER NOT NULL REFERENCES patients(id),
	starts_at  TEXT NOT NULL,             -- YYYY-MM-DD HH:MM, local time
	minutes    INTEGER NOT NULL,
	reason     TEXT NOT NULL,
	clinic     TEXT NOT NULL,
	status     TEXT NOT NULL DEFAULT 'booked' CHECK (status IN ('booked', 'done', 'cancelled'))
);
CREATE INDEX appointments_patient ON appointments(patient_id);
CREATE TABLE clinical_notes (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	patient_id INTEGER NOT NULL REFERENCES patients(id),
	written_at TEXT NOT NULL,
	author     TEXT NOT NULL,
	text       TEXT NOT NULL
);
CREATE INDEX clinical_notes_patient ON clinical_notes(patient_id);
CREATE TABLE invoices (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	patient_id   INTEGER NOT NULL REFERENCES patients(id),
	issued_on    TEXT NOT NULL,
	amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
	currency     TEXT NOT NULL DEFAULT 'CHF',
	status       TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'cancelled')),
	paid_on      TEXT
);
CREATE INDEX invoices_patient ON invoices(patient_id);
`

// demoIDRange is the size of each clinic's ID range.
//
// ppsync does not yet give each site its own ID range: two clinics that
// insert with plain AUTOINCREMENT at the same time would both create
// "patient 17", and the merge would make one row of two patients. So in the
// demo each clinic takes the IDs of its new rows from its own range
// (clinic-north 1000001…, clinic-south 2000001…, clinic-east 3000001…).
// Setting each clinic's sqlite_sequence start (INSERT OR REPLACE INTO
// sqlite_sequence(name, seq) VALUES ('patients', 1000000)) is not enough on
// its own: SQLite gives a new AUTOINCREMENT row max(seq, largest id in the
// table) + 1, and once ppsync writes the other clinics' rows back the largest
// id is clinic-east's (at clinic-north, after clinic-east's 3000200 the next
// id is 3000201, in clinic-east's range, and clinic-south picks the same).
// The demo's practice software therefore names the next free ID of its own
// range in the INSERT itself (see demoDB.insert).
const demoIDRange = 1_000_000

// demoDB is one clinic's SQLite practice database as the practice
// software uses it: plain SQL through database/sql.
type demoDB struct {
	site string
	path string
	base int64   // IDs of new rows are base+1 … base+demoIDRange-1
	w    *sql.DB // writes: BEGIN IMMEDIATE, so a transaction waits for the lock instead of failing
	r    *sql.DB // reads

	stmts map[string]*sql.Stmt // the prepared inserts, by table
}

func openDemoDB(site, path string, base int64) (*demoDB, error) {
	dsn := func(lock string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "foreign_keys(1)")
		q.Set("_txlock", lock)
		return "file:" + path + "?" + q.Encode()
	}
	p := &demoDB{site: site, path: path, base: base, stmts: map[string]*sql.Stmt{}}
	var err error
	if p.w, err = sql.Open("sqlite", dsn("immediate")); err != nil {
		return nil, fmt.Errorf("demo: open %s: %w", path, err)
	}
	p.w.SetMaxOpenConns(1)
	if p.r, err = sql.Open("sqlite", dsn("deferred")); err != nil {
		p.w.Close()
		return nil, fmt.Errorf("demo: open %s: %w", path, err)
	}
	return p, nil
}

func (p *demoDB) close() {
	for _, st := range p.stmts {
		st.Close()
	}
	p.w.Close()
	p.r.Close()
}

// demoColumns are the columns the practice software fills when it adds a
// row (the id comes from insert).
var demoColumns = map[string][]string{
	"patients":       {"name", "date_of_birth", "phone", "email", "registered_at"},
	"appointments":   {"patient_id", "starts_at", "minutes", "reason", "clinic"},
	"clinical_notes": {"patient_id", "written_at", "author", "text"},
	"invoices":       {"patient_id", "issued_on", "amount_cents"},
}

// prepare prepares the inserts once, as practice software does.
func (p *demoDB) prepare(ctx context.Context) error {
	for table, cols := range demoColumns {
		q := fmt.Sprintf(`INSERT INTO %s (id, %s) VALUES ((SELECT coalesce(max(id), %d) + 1 FROM %s WHERE id > %d AND id < %d), %s)`,
			table, strings.Join(cols, ", "), p.base, table, p.base, p.base+demoIDRange, strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", "))
		st, err := p.w.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", p.path, err)
		}
		p.stmts[table] = st
	}
	return nil
}

// insert adds one row to table with the next free ID of this clinic's range
// (see demoIDRange) and returns its ID.
func (p *demoDB) insert(ctx context.Context, tx *sql.Tx, table string, args ...any) (int64, error) {
	res, err := tx.StmtContext(ctx, p.stmts[table]).ExecContext(ctx, args...)
	if err != nil {
		return 0, fmt.Errorf("demo: %s: insert into %s: %w", p.site, table, err)
	}
	return res.LastInsertId()
}

var (
	demoFirst   = []string{"Ada", "Ben", "Chloé", "David", "Elif", "Farah", "Giulia", "Hugo", "Ines", "Jonas", "Kenji", "Lea", "Mateo", "Noor", "Olga", "Pedro"}
	demoLast    = []string{"Meier", "Rossi", "Keller", "Novak", "Schmid", "Dubois", "Weber", "Costa", "Huber", "Brunner"}
	demoReasons = []struct {
		what  string
		cents int64
	}{{"check-up", 12000}, {"hygiene", 15500}, {"filling", 28000}, {"x-ray", 9500}, {"crown preparation", 95000}, {"root canal follow-up", 32000}, {"toothache (emergency)", 18000}}
	demoNotes = []string{"no findings", "filling upper left 6", "hygiene appointment booked", "x-ray taken, review next visit", "patient reports sensitivity", "crown prep, temporary fitted", "allergic to penicillin"}
)

// addPatients is the practice software registering count patients, each in
// one transaction with their appointments, a clinical note and an invoice.
// It returns the first patient's ID.
func (p *demoDB) addPatients(ctx context.Context, rng *rand.Rand, count int) (first int64, err error) {
	for i := 0; i < count; i++ {
		pid, err := p.addPatient(ctx, rng)
		if err != nil {
			return 0, err
		}
		if i == 0 {
			first = pid
		}
	}
	return first, nil
}

func (p *demoDB) addPatient(ctx context.Context, rng *rand.Rand) (int64, error) {
	tx, err := p.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("demo: %s: begin: %w", p.site, err)
	}
	defer tx.Rollback()
	first, last := demoFirst[rng.IntN(len(demoFirst))], demoLast[rng.IntN(len(demoLast))]
	pid, err := p.insert(ctx, tx, "patients",
		first+" "+last, fmt.Sprintf("19%02d-%02d-%02d", 40+rng.IntN(60), 1+rng.IntN(12), 1+rng.IntN(28)),
		fmt.Sprintf("+41 31 %03d %02d %02d", rng.IntN(1000), rng.IntN(100), rng.IntN(100)),
		strings.ToLower(fmt.Sprintf("%s.%s%d@example.ch", first, last, rng.IntN(100))), p.site)
	if err != nil {
		return 0, err
	}
	var total int64
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for a := 0; a < 1+rng.IntN(2); a++ {
		r := demoReasons[rng.IntN(len(demoReasons))]
		total += r.cents
		at := day.AddDate(0, 0, rng.IntN(28)).Add(time.Duration(8*60+15*rng.IntN(36)) * time.Minute)
		if _, err := p.insert(ctx, tx, "appointments",
			pid, at.Format("2006-01-02 15:04"), int64(30+15*rng.IntN(3)), r.what, p.site); err != nil {
			return 0, err
		}
	}
	if _, err := p.insert(ctx, tx, "clinical_notes",
		pid, time.Now().UTC().Format(time.DateTime), "Dr. "+demoLast[rng.IntN(len(demoLast))], demoNotes[rng.IntN(len(demoNotes))]); err != nil {
		return 0, err
	}
	if _, err := p.insert(ctx, tx, "invoices",
		pid, time.Now().UTC().Format(time.DateOnly), total); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("demo: %s: commit: %w", p.site, err)
	}
	return pid, nil
}

// payInvoices is the practice software booking payments: the oldest open
// invoices of this clinic's patients are marked paid (updates).
func (p *demoDB) payInvoices(ctx context.Context, count int) (int64, error) {
	res, err := p.w.ExecContext(ctx, `UPDATE invoices SET status = 'paid', paid_on = ?
		WHERE id IN (SELECT id FROM invoices WHERE status = 'open' AND id > ? AND id < ? ORDER BY id LIMIT ?)`,
		time.Now().UTC().Format(time.DateOnly), p.base, p.base+demoIDRange, count)
	if err != nil {
		return 0, fmt.Errorf("demo: %s: pay invoices: %w", p.site, err)
	}
	return res.RowsAffected()
}

// quickSum is a cheap summary of every table (count, sum and largest id):
// databases that differ in it differ; a full dump compares the rows.
func (p *demoDB) quickSum(ctx context.Context) (string, error) {
	var q []string
	for _, t := range demoTables {
		q = append(q, `SELECT count(*) || '/' || total(id) || '/' || coalesce(max(id), 0) FROM `+t)
	}
	rows, err := p.r.QueryContext(ctx, strings.Join(q, " UNION ALL "))
	if err != nil {
		return "", fmt.Errorf("demo: read %s: %w", p.path, err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return "", fmt.Errorf("demo: read %s: %w", p.path, err)
		}
		b.WriteString(s + " ")
	}
	return b.String(), rows.Err()
}

// dump reads every table, ordered by primary key, in one read transaction:
// a hash of all rows (each value as SQL's quote() writes it, so 7, 7.0, '7'
// and NULL differ) and the number of rows of each table.
func (p *demoDB) dump(ctx context.Context) (sum [32]byte, counts map[string]int, err error) {
	tx, err := p.r.BeginTx(ctx, nil)
	if err != nil {
		return sum, nil, fmt.Errorf("demo: read %s: %w", p.path, err)
	}
	defer tx.Rollback()
	h := sha256.New()
	counts = map[string]int{}
	for _, t := range demoTables {
		var cols []string
		rows, err := tx.QueryContext(ctx, `SELECT name FROM pragma_table_info(?) ORDER BY cid`, t)
		if err != nil {
			return sum, nil, fmt.Errorf("demo: read %s of %s: %w", t, p.path, err)
		}
		for rows.Next() {
			var c string
			if err := rows.Scan(&c); err != nil {
				rows.Close()
				return sum, nil, fmt.Errorf("demo: read %s of %s: %w", t, p.path, err)
			}
			cols = append(cols, "quote("+c+")")
		}
		rows.Close()
		var n int
		var all string
		if err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(string_agg(`+strings.Join(cols, ` || ',' || `)+`, char(10) ORDER BY id), '') FROM `+t).Scan(&n, &all); err != nil {
			return sum, nil, fmt.Errorf("demo: read %s of %s: %w", t, p.path, err)
		}
		fmt.Fprintf(h, "table %s %d\n%s\n", t, n, all)
		counts[t] = n
	}
	copy(sum[:], h.Sum(nil))
	return sum, counts, nil
}

// createDemoDB creates a clinic's practice database with its schema.
func createDemoDB(site, path string, base int64) (*demoDB, error) {
	p, err := openDemoDB(site, path, base)
	if err != nil {
		return nil, err
	}
	if _, err := p.w.Exec(demoSchema); err != nil {
		p.close()
		return nil, fmt.Errorf("demo: create %s: %w", path, err)
	}
	if err := p.prepare(context.Background()); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

type demoNode struct {
	site string
	data string
	n    *node.Node
	c    *api.Client // its local API
	stop context.CancelFunc
	done chan error
	db   *demoDB // the clinic's practice database; nil for the relay
}

// runDemo runs the demo until ctx ends (or, with NoWait, until the sites
// converged). It returns an error if they do not converge.
func runDemo(ctx context.Context, o demoOptions) error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Records <= 0 {
		o.Records = 100
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ppsync-demo-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		o.Dir = d
	}
	if entries, _ := os.ReadDir(o.Dir); len(entries) > 0 {
		return fmt.Errorf("demo: %s is not empty; give an empty or new directory with --dir", o.Dir)
	}
	if abs, err := filepath.Abs(o.Dir); err == nil {
		o.Dir = abs
	}
	say := func(format string, a ...any) { fmt.Fprintf(o.Out, format+"\n", a...) }
	say("ppsync demo in %s", o.Dir)

	authDir := filepath.Join(o.Dir, "authority")
	auth, _, err := family.CreateFamily(authDir, "Demo Dental Practice", time.Now())
	if err != nil {
		return err
	}
	env := func(k string) string {
		if k == "PPSYNC_MACHINE_ID" {
			return "ppsync-demo-machine" // all four nodes share this machine
		}
		if o.Env != nil {
			return o.Env(k)
		}
		return ""
	}
	say("1. created the family %q (authority key in %s)", "Demo Dental Practice", authDir)

	// A mail server on this machine, for the alert the relay sends when a
	// clinic goes offline.
	mail, err := mailsink.Start(mailsink.Options{TLS: "none"})
	if err != nil {
		return fmt.Errorf("demo: a local mail server: %w", err)
	}
	defer mail.Close()

	all := append([]string{"relay"}, demoSites...)
	nodes := map[string]*demoNode{}
	defer func() {
		for _, dn := range nodes {
			if dn.db != nil {
				dn.db.close()
			}
		}
	}()
	familyFile := filepath.Join(authDir, family.InfoFile)
	// setUp does what the README's "Setting up a real family" does for one
	// node: init with the family.json as it is now (and, for a clinic, its
	// practice database), support admits the join request, the node
	// installs its own certificate, nothing else. The rest of the family it
	// learns through the relay.
	setUp := func(s, role string, pdb *demoDB) error {
		dn := &demoNode{site: s, data: filepath.Join(o.Dir, s), db: pdb}
		opts := node.InitOptions{DataDir: dn.data, FamilyFile: familyFile, Site: s, Role: role, Env: env}
		if pdb != nil {
			opts.DB = "sqlite:" + pdb.path
		}
		res, err := node.Init(opts)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(res.JoinRequest)
		if err != nil {
			return err
		}
		req, err := family.ParseJoinRequest(b)
		if err != nil {
			return err
		}
		c, err := auth.Admit(authDir, req, time.Now())
		if err != nil {
			return err
		}
		cb, err := c.Marshal()
		if err != nil {
			return err
		}
		if _, err := datadir.InstallOffline(dn.data, cb); err != nil {
			return err
		}
		nodes[s] = dn
		return nil
	}

	start := func(s string) error {
		dn := nodes[s]
		cfg, err := node.LoadConfig(dn.data)
		if err != nil {
			return err
		}
		cfg.API, cfg.Listen, cfg.MDNS, cfg.Env, cfg.Version = "127.0.0.1:0", []string{"/ip4/127.0.0.1/tcp/0"}, false, env, o.Version
		cfg.HeartbeatInterval = time.Second
		cfg.SyncInterval = node.Duration(5 * time.Second)
		if s == "relay" {
			cfg.SMTP = node.SMTPConfig{Server: mail.Addr(), From: "monitor@ppsync-demo.example", TLS: "none"}
		}
		n, err := node.Open(ctx, cfg)
		if err != nil {
			return fmt.Errorf("demo: start %s: %w", s, err)
		}
		rctx, cancel := context.WithCancel(ctx)
		dn.n, dn.stop, dn.done = n, cancel, make(chan error, 1)
		go func() { dn.done <- n.Run(rctx) }()
		if dn.c, err = demoClient(ctx, dn); err != nil {
			return fmt.Errorf("demo: start %s: %w", s, err)
		}
		return nil
	}
	stop := func(s string) {
		dn := nodes[s]
		if dn == nil || dn.n == nil {
			return
		}
		dn.stop()
		<-dn.done
		dn.c.Close()
		dn.n.Close()
		dn.n, dn.c = nil, nil
	}
	defer func() {
		for _, s := range all {
			stop(s)
		}
	}()
	// The relay first: it must run for its address to be known.
	if err := setUp("relay", "relay", nil); err != nil {
		return err
	}
	if err := start("relay"); err != nil {
		return err
	}
	rt, err := demoRuntime(nodes["relay"].data)
	if err != nil {
		return err
	}
	if len(rt.Addrs) == 0 {
		return errors.New("demo: the relay listens on no address")
	}
	relayAddr := rt.Addrs[0]
	// Support adds the relay's address to family.json (`ppsync family
	// bootstrap --add`), then the clinics are set up with that family.json.
	info, err := family.LoadInfo(familyFile)
	if err != nil {
		return err
	}
	if err := info.AddBootstrap(relayAddr); err != nil {
		return err
	}
	if err := family.SaveInfo(familyFile, info); err != nil {
		return err
	}
	say("2. set up and started the relay; support added its address %s to family.json", relayAddr)

	dbDir := filepath.Join(o.Dir, "databases")
	if err := os.MkdirAll(dbDir, 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for i, s := range demoSites {
		pdb, err := createDemoDB(s, filepath.Join(dbDir, s+".db"), int64(i+1)*demoIDRange)
		if err != nil {
			return err
		}
		if err := setUp(s, "site", pdb); err != nil {
			pdb.close()
			return err
		}
	}
	say("3. each clinic has its practice database (SQLite: patients, appointments, clinical_notes, invoices,")
	say("   integer IDs, foreign keys) in %s/<clinic>.db", dbDir)
	say("   set up three clinics with `init --db sqlite:<file>`, each with family.json and its own certificate only")
	for _, s := range demoSites {
		if err := start(s); err != nil {
			return err
		}
	}
	say("   started them; each clinic dials the relay named in family.json and learns the rest of the family there")

	// write runs the practice software at the clinics at the same time.
	rngs := map[string]*rand.Rand{}
	for i, s := range demoSites {
		rngs[s] = rand.New(rand.NewPCG(7, uint64(11+i)))
	}
	write := func(sites []string, f func(*demoDB, *rand.Rand) error) error {
		errs := make([]error, len(sites))
		var wg sync.WaitGroup
		for i, s := range sites {
			wg.Go(func() {
				errs[i] = f(nodes[s].db, rngs[s])
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	if err := write(demoSites, func(p *demoDB, rng *rand.Rand) error {
		_, err := p.addPatients(ctx, rng, o.Records)
		return err
	}); err != nil {
		return err
	}
	say("4. at the same time, each clinic's practice software registered %d patients with plain SQL, one", o.Records)
	say("   transaction each: the patient, their appointments, a clinical note and an invoice")
	say("   each node captures its database's commits and writes the other clinics' rows into it:")
	if _, err := demoConverge(ctx, o.Out, nodes, all, 60*time.Second); err != nil {
		return err
	}

	offline := demoSites[2]
	rule, err := nodes["relay"].c.AddAlert(ctx, api.AlertRequest{Site: offline, Emails: []string{"manager@" + offline + ".example"},
		Days: "daily", Hours: []string{"00:00-24:00"}, TZ: "UTC", After: "3s"})
	if err != nil {
		return fmt.Errorf("demo: alert rule: %w", err)
	}
	say("   the relay watches %s: `ppsync alerts add --site %s --email manager@%s.example --days daily", offline, offline, offline)
	say("   --hours 00:00-24:00 --tz UTC --after 3s` (rule %s; a real rule has opening hours and --after 1h),", rule.ID)
	say("   emailing through a mail server the demo runs at %s", mail.Addr())
	stop(offline)
	say("5. %s went offline (machine switched off); the other clinics keep working", offline)
	firstOffline := map[string]int64{}
	var mu sync.Mutex
	var paid int64
	if err := write(demoSites[:2], func(p *demoDB, rng *rand.Rand) error {
		id, err := p.addPatients(ctx, rng, o.Records*2)
		if err != nil {
			return err
		}
		k, err := p.payInvoices(ctx, o.Records/2)
		mu.Lock()
		firstOffline[p.site], paid = id, paid+k
		mu.Unlock()
		return err
	}); err != nil {
		return err
	}
	say("   the others registered %d more patients each and marked %d invoices paid meanwhile", o.Records*2, paid)
	if _, err := demoConverge(ctx, o.Out, nodes, []string{"relay", demoSites[0], demoSites[1]}, 60*time.Second); err != nil {
		return err
	}
	if err := demoShowMail(ctx, o.Out, mail, offline+" has not synced", "   the relay's alert arrived by email"); err != nil {
		return err
	}
	if err := start(offline); err != nil {
		return err
	}
	say("6. %s is back online and catches up:", offline)
	rows, err := demoConverge(ctx, o.Out, nodes, all, 120*time.Second)
	if err != nil {
		return err
	}
	if err := demoShowMail(ctx, nil, mail, offline+" is syncing again", ""); err != nil {
		return err
	}
	for _, m := range mail.Messages() {
		if strings.Contains(m.Subject, "syncing again") {
			say("   and the recovery notice: %q", m.Subject)
		}
	}

	say("")
	say("All four nodes hold the same data (the relay holds it sealed, without a key to open it):")
	for _, s := range all {
		st, _ := nodes[s].c.Status(ctx)
		if nodes[s].db == nil {
			say("  %-13s entries %d  readable records 0: a relay holds every entry sealed, and no key to open one", s, sumFrontier(st.Frontier))
			continue
		}
		d, _ := nodes[s].c.Digest(ctx)
		say("  %-13s entries %d  digest %s  records %d  (%s)", s, sumFrontier(st.Frontier), shortDigest(d), st.Records, st.Encryption.Detail)
	}
	say("The three practice databases hold the same rows (every table compared row by row, ordered by id):")
	for _, s := range demoSites {
		r := rows[nodes[s].db]
		var parts []string
		for _, t := range demoTables {
			parts = append(parts, fmt.Sprintf("%s %d", t, r.counts[t]))
		}
		say("  %-13s rows %x  %s", s, r.sum[:6], strings.Join(parts, ", "))
	}
	for _, s := range demoSites {
		res, err := nodes[s].c.DBCheck(ctx, false)
		if err != nil {
			return err
		}
		if len(res.Differences) > 0 || res.Problem != "" {
			return fmt.Errorf("demo: %s: the practice database differs from the merged state in %d rows %s", s, len(res.Differences), res.Problem)
		}
		st, err := nodes[s].c.DBStatus(ctx)
		if err != nil {
			return err
		}
		if len(st.Refused) > 0 {
			return fmt.Errorf("demo: %s: the practice database refused %d merged rows (first: %s/%s: %s)", s, len(st.Refused), st.Refused[0].Table, st.Refused[0].Key, st.Refused[0].Reason)
		}
	}
	say("  and each equals its node's merged state (ppsync db check: no differences)")
	if err := demoReadBack(ctx, o.Out, nodes[demoSites[0]].db, nodes[offline].db, firstOffline[demoSites[0]]); err != nil {
		return err
	}

	say("")
	say("Look inside the practice databases with the sqlite3 tool or any SQLite browser (DB Browser for SQLite, ...):")
	south, north := shellQuote(nodes[demoSites[1]].db.path), shellQuote(nodes[demoSites[0]].db.path)
	say("  sqlite3 %s 'SELECT * FROM patients LIMIT 5'", south)
	say("While the demo runs (without --no-wait), a row inserted at one clinic is in the others' databases within a second:")
	say(`  sqlite3 %s "INSERT INTO patients(name, date_of_birth, registered_at) VALUES ('Test Patient', '1980-01-01', 'clinic-south')"`, south)
	say(`  sqlite3 %s "SELECT * FROM patients WHERE name = 'Test Patient'"`, north)
	say("(IDs: ppsync does not give each clinic its own ID range yet; the demo's writes take theirs from each clinic's")
	say("range: clinic-north 1000001…, clinic-south 2000001…, clinic-east 3000001…)")
	say("")
	say("Sync pages (each link works once, within 2 minutes; for a new one: ppsync open --data DIR):")
	for _, s := range all {
		l, err := nodes[s].c.LoginLink(ctx)
		if err != nil {
			return err
		}
		say("  %-13s %s", s, l.URL)
	}
	say("Data directories: %s/<site>; the API key of each is in its api.key. Practice databases: %s/<clinic>.db", o.Dir, dbDir)
	if o.NoWait {
		return nil
	}
	say("")
	say("The family keeps running; press Ctrl-C to stop.")
	<-ctx.Done()
	return nil
}

// demoShowMail waits for a message whose subject holds subject and, with
// out, prints it under title.
func demoShowMail(ctx context.Context, out io.Writer, mail *mailsink.Server, subject, title string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	msgs, err := mail.Wait(ctx, func(ms []mailsink.Message) bool {
		return slices.ContainsFunc(ms, func(m mailsink.Message) bool { return strings.Contains(m.Subject, subject) })
	})
	if err != nil {
		return fmt.Errorf("demo: no email %q: %w", subject, err)
	}
	if out == nil {
		return nil
	}
	for _, m := range msgs {
		if !strings.Contains(m.Subject, subject) {
			continue
		}
		fmt.Fprintf(out, "%s (to %s):\n", title, strings.Join(m.To, ", "))
		fmt.Fprintf(out, "   | Subject: %s\n", m.Subject)
		for _, l := range strings.Split(strings.TrimRight(strings.ReplaceAll(m.Body, "\r\n", "\n"), "\n"), "\n") {
			fmt.Fprintf(out, "   | %s\n", l)
		}
		return nil
	}
	return nil
}

// demoReadBack shows a patient written with SQL at one clinic while another
// was offline, read back from the other clinic's database file.
func demoReadBack(ctx context.Context, out io.Writer, from, at *demoDB, pid int64) error {
	var name, dob, reg string
	if err := at.r.QueryRowContext(ctx, `SELECT name, date_of_birth, registered_at FROM patients WHERE id = ?`, pid).Scan(&name, &dob, &reg); err != nil {
		return fmt.Errorf("demo: patient %d in %s: %w", pid, at.path, err)
	}
	fmt.Fprintf(out, "Patient %d, registered with SQL at %s while %s was off, read from %s:\n", pid, from.site, at.site, filepath.Base(at.path))
	fmt.Fprintf(out, "  patients        %d  %s, born %s, registered at %s\n", pid, name, dob, reg)
	rows, err := at.r.QueryContext(ctx, `SELECT 'appointments', id, starts_at || '  ' || reason || ' (' || clinic || ')' FROM appointments WHERE patient_id = ?1
		UNION ALL SELECT 'clinical_notes', id, author || ': ' || text FROM clinical_notes WHERE patient_id = ?1
		UNION ALL SELECT 'invoices', id, printf('%s %d.%02d %s', currency, amount_cents / 100, amount_cents % 100, status) FROM invoices WHERE patient_id = ?1`, pid)
	if err != nil {
		return fmt.Errorf("demo: read %s: %w", at.path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var t, what string
		var id int64
		if err := rows.Scan(&t, &id, &what); err != nil {
			return fmt.Errorf("demo: read %s: %w", at.path, err)
		}
		fmt.Fprintf(out, "  %-15s %d  %s\n", t, id, what)
	}
	return rows.Err()
}

// shellQuote quotes a path for a shell command line when it needs it.
func shellQuote(s string) string {
	if !strings.ContainsAny(s, " '\"$`\\!*?&;|<>()[]{}#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// demoExplain says what each node and database holds when they did not
// converge.
func demoExplain(ctx context.Context, out io.Writer, nodes map[string]*demoNode, sites []string) {
	for _, s := range sites {
		c := nodes[s].c
		d, err := c.Digest(ctx)
		if err != nil {
			d = "(blind)"
		}
		st, _ := c.Status(ctx)
		fmt.Fprintf(out, "   %-13s digest %s  records %d  held %d  frontier %v\n", s, shortDigest(d), st.Records, st.Held, st.Frontier)
		if p := nodes[s].db; p != nil {
			sum, _ := p.quickSum(ctx)
			ds, _ := c.DBStatus(ctx)
			fmt.Fprintf(out, "   %-13s database %s  captured %d  applied %d  refused %d  %s\n", "", sum, ds.Captured, ds.Applied, len(ds.Refused), ds.Problem)
		}
	}
}

// demoRows is what a dump found in a practice database.
type demoRows struct {
	sum    [32]byte
	counts map[string]int
}

// demoSameRows reports whether f gives the same for every database.
func demoSameRows[T comparable](ctx context.Context, dbs []*demoDB, f func(*demoDB, context.Context) (T, error)) (bool, error) {
	var first T
	for i, p := range dbs {
		v, err := f(p, ctx)
		if err != nil {
			return false, err
		}
		if i == 0 {
			first = v
		} else if v != first {
			return false, nil
		}
	}
	return true, nil
}

// demoConverge waits until the named nodes hold the same entries and state,
// and their practice databases the same rows, drawing a progress bar of the
// entries still missing.
func demoConverge(ctx context.Context, out io.Writer, nodes map[string]*demoNode, sites []string, limit time.Duration) (map[*demoDB]demoRows, error) {
	deadline := time.Now().Add(limit)
	last := ""
	var rows map[*demoDB]demoRows
	draw := func(line string) {
		if line != last {
			fmt.Fprintf(out, "\r%-*s", len(last), line)
			last = line
		}
	}
	for {
		frontiers := map[string]map[string]uint64{}
		want := map[string]uint64{}
		for _, s := range sites {
			st, err := nodes[s].c.Status(ctx)
			if err != nil {
				return nil, err
			}
			frontiers[s] = st.Frontier
			for site, n := range st.Frontier {
				want[site] = max(want[site], n)
			}
		}
		var total, lacking uint64
		for _, s := range sites {
			for _, n := range want {
				total += n
			}
			lacking += demoMissing(want, frontiers[s])
		}
		have := total - lacking
		same := have == total
		if same {
			var first string
			for _, s := range sites {
				if nodes[s].db == nil {
					continue // the relay: blind, its frontier is compared above
				}
				d, err := nodes[s].c.Digest(ctx)
				if err != nil {
					return nil, err
				}
				if first == "" {
					first = d
				} else if d != first {
					same = false
				}
			}
		}
		status := ""
		if same {
			// The nodes agree: the databases must hold the same rows too
			// (a clinic's last commits may not be captured yet, or the
			// other clinics' rows not written into it yet). A cheap summary
			// first, then every row.
			var dbs []*demoDB
			for _, s := range sites {
				if p := nodes[s].db; p != nil {
					dbs = append(dbs, p)
				}
			}
			var err error
			if same, err = demoSameRows(ctx, dbs, (*demoDB).quickSum); err != nil {
				return nil, err
			}
			if same {
				rows = map[*demoDB]demoRows{}
				if same, err = demoSameRows(ctx, dbs, func(p *demoDB, ctx context.Context) ([32]byte, error) {
					sum, counts, err := p.dump(ctx)
					rows[p] = demoRows{sum, counts}
					return sum, err
				}); err != nil {
					return nil, err
				}
			}
			status = "  databases: writing rows…"
		}
		width := 30
		done := width
		if total > 0 {
			done = int(uint64(width) * have / total)
		}
		bar := fmt.Sprintf("   [%s%s] %d/%d entries held", strings.Repeat("#", done), strings.Repeat(".", width-done), have, total)
		if same {
			draw(bar + "  converged: same rows in every database")
			fmt.Fprintln(out)
			return rows, nil
		}
		draw(bar + status)
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(out)
			demoExplain(ctx, out, nodes, sites)
			return nil, errors.New("demo: the sites did not converge in time")
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// demoMissing counts the entries the frontier have holds that of lacks.
func demoMissing(have, of map[string]uint64) uint64 {
	var n uint64
	for site, seq := range have {
		if seq > of[site] {
			n += seq - of[site]
		}
	}
	return n
}

func sumFrontier(f map[string]uint64) uint64 {
	var n uint64
	for _, v := range f {
		n += v
	}
	return n
}

// shortDigest is the start of a digest, enough to tell two apart by eye.
func shortDigest(d string) string { return d[:min(len(d), 12)] }

// demoRuntime reads a running node's runtime.json: its API address and the
// addresses it listens on for the family (what support gives the family).
func demoRuntime(data string) (api.Runtime, error) {
	var rt api.Runtime
	b, err := os.ReadFile(filepath.Join(data, node.RuntimeFile))
	if err != nil {
		return rt, fmt.Errorf("demo: %w", err)
	}
	if err := json.Unmarshal(b, &rt); err != nil {
		return rt, fmt.Errorf("demo: %s: %w", filepath.Join(data, node.RuntimeFile), err)
	}
	return rt, nil
}

// demoClient waits until the node started on dn.data answers its API (Run
// writes runtime.json once it serves) and returns a client for it.
func demoClient(ctx context.Context, dn *demoNode) (*api.Client, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := api.NewClient(dn.data)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, api.ErrNotRunning) || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case err := <-dn.done:
			dn.done <- err // stop reads it again
			return nil, fmt.Errorf("the node stopped: %v", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
