//go:build unix

package integration

// The practice's own database (issue 11): SQLite files written with plain
// SQL, as the practice software writes them, synced by nodes set up with
// `ppsync init --db sqlite:PATH` as the README says.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

const practiceSchema = `
CREATE TABLE patients (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, dob TEXT, balance REAL, photo BLOB, a INTEGER, b INTEGER);
CREATE TABLE appointments (id INTEGER PRIMARY KEY AUTOINCREMENT, patient INTEGER NOT NULL REFERENCES patients(id), at TEXT NOT NULL);
CREATE TABLE notes (patient INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT, PRIMARY KEY (patient, n));
CREATE TABLE scratch (x TEXT);
`

// practiceDB creates a SQLite practice database with the schema above.
func practiceDB(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	d, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	if _, err := d.Exec(practiceSchema); err != nil {
		tb.Fatal(err)
	}
	return d
}

func mustExec(tb testing.TB, d *sql.DB, q string, args ...any) {
	tb.Helper()
	if _, err := d.Exec(q, args...); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
}

// dump reads every synced table as text, each value with its storage class.
func dump(tb testing.TB, d *sql.DB) string {
	tb.Helper()
	var out string
	for _, q := range []string{
		`SELECT id, name, typeof(dob), dob, typeof(balance), printf('%.17g', balance), hex(photo), a, b FROM patients ORDER BY id`,
		`SELECT id, patient, at FROM appointments ORDER BY id`,
		`SELECT patient, n, body FROM notes ORDER BY patient, n`,
	} {
		rows, err := d.Query(q)
		if err != nil {
			tb.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				tb.Fatal(err)
			}
			out += fmt.Sprintln(vals...)
		}
		rows.Close()
	}
	return out
}

// waitSameRows polls until every database holds the same rows, and returns
// them.
func waitSameRows(tb testing.TB, dbs ...*sql.DB) string {
	tb.Helper()
	deadline := time.Now().Add(syncTimeout)
	for {
		first := dump(tb, dbs[0])
		same := true
		for _, d := range dbs[1:] {
			if dump(tb, d) != first {
				same = false
			}
		}
		if same {
			return first
		}
		if time.Now().After(deadline) {
			for i, d := range dbs {
				tb.Logf("database %d:\n%s", i, dump(tb, d))
			}
			tb.Fatalf("the databases did not converge within %s", syncTimeout)
		}
		time.Sleep(pollEvery)
	}
}

// dbFamily sets up a relay and sites whose nodes sync the SQLite files
// given, as the README says, and starts them.
func dbFamily(tb testing.TB, sites map[string]string) (sup *support, data map[string]string, procs map[string]*proc) {
	tb.Helper()
	dir := tb.TempDir()
	sup = newSupport(tb, dir, "Practice DB")
	relay, _ := sup.join(tb, "relay", sup.familyFile(), "--role", "relay")
	rp := startNode(tb, relay)
	sup.addBootstrap(tb, rp.loopbackAddr())
	data = map[string]string{}
	for site, path := range sites {
		d, _ := sup.join(tb, site, sup.familyFile(), "--db", "sqlite:"+path)
		data[site] = d
	}
	procs = map[string]*proc{}
	for site, d := range data {
		procs[site] = startNode(tb, d)
	}
	return sup, data, procs
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func TestDatabaseSync(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south := practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	// Years of rows at north before ppsync arrives: the initial load.
	for i := 1; i <= 50; i++ {
		mustExec(t, north, `INSERT INTO patients(name, dob, balance, photo) VALUES (?, ?, ?, ?)`,
			fmt.Sprintf("patient %d", i), fmt.Sprintf("19%02d-01-02", i), float64(i)+0.1, []byte{0, byte(i), 0xff})
	}
	_, data, _ := dbFamily(t, paths)
	waitSameRows(t, north, south)

	// Plain SQL at both sites: inserts with foreign keys, updates of
	// different columns of one row, a composite key, a delete.
	mustExec(t, south, `INSERT INTO patients(id, name) VALUES (1000, 'new at south')`)
	mustExec(t, south, `INSERT INTO appointments(patient, at) VALUES (1000, '2026-12-03 09:00')`)
	mustExec(t, north, `INSERT INTO notes VALUES (1, 1, 'first note'), (1, 2, 'second')`)
	mustExec(t, north, `UPDATE patients SET balance = 12.75 WHERE id = 7`)
	mustExec(t, south, `UPDATE patients SET name = 'renamed at south' WHERE id = 7`)
	mustExec(t, north, `DELETE FROM patients WHERE id = 50`)
	rows := waitSameRows(t, north, south)

	var name string
	var balance float64
	if err := north.QueryRow(`SELECT name, balance FROM patients WHERE id = 7`).Scan(&name, &balance); err != nil {
		t.Fatal(err)
	}
	if name != "renamed at south" || balance != 12.75 {
		t.Errorf("row 7 is %q %v: both sites' changes of different columns must survive", name, balance)
	}
	var n int
	if err := south.QueryRow(`SELECT count(*) FROM patients WHERE id = 50`).Scan(&n); err != nil || n != 0 {
		t.Errorf("the delete at north did not reach south (%d rows, %v)", n, err)
	}
	// The databases equal the merged state.
	got := ppsync(t, "get", "--data", data["south"], "patients", "7").want(t, exitOK).stdout
	var rec map[string]any
	if err := json.Unmarshal([]byte(got), &rec); err != nil || rec["name"] != "renamed at south" || rec["balance"] != 12.75 {
		t.Errorf("ppsync get patients 7 = %s", got)
	}
	for _, d := range data {
		ppsync(t, "db", "check", "--data", d).want(t, exitOK)
	}
	var st struct {
		Driver         string   `json:"driver"`
		Tables         []string `json:"tables"`
		Skipped        []string `json:"skipped"`
		Captured       uint64   `json:"captured"`
		Applied        uint64   `json:"applied"`
		PendingCapture uint64   `json:"pending_capture"`
		PendingApply   uint64   `json:"pending_apply"`
	}
	out := ppsync(t, "db", "status", "--data", data["north"], "--json").want(t, exitOK).stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Driver != "sqlite" || !reflect.DeepEqual(st.Tables, []string{"appointments", "notes", "patients"}) || len(st.Skipped) != 1 || st.Captured == 0 || st.Applied == 0 {
		t.Errorf("db status: %s", out)
	}
	t.Logf("converged rows:\n%.400s", rows)
}

// Both sites write the same rows continuously, each its own column, while
// the other's changes are applied: no local change may be overwritten by an
// older merged value, so in the end every row holds each site's last write.
func TestDatabaseLocalWritesNeverLost(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south := practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	const rowsN = 20
	for i := 1; i <= rowsN; i++ {
		mustExec(t, north, `INSERT INTO patients(id, name, a, b) VALUES (?, 'p', 0, 0)`, i)
	}
	dbFamily(t, paths)
	waitSameRows(t, north, south)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	last := map[string]int{}
	var mu sync.Mutex
	writer := func(d *sql.DB, col, site string) {
		defer wg.Done()
		v := 0
		for ctx.Err() == nil {
			v++
			// One transaction touches every row: the other site's changes
			// of the other column are applied in between.
			tx, err := d.Begin()
			if err != nil {
				t.Error(err)
				return
			}
			for i := 1; i <= rowsN; i++ {
				if _, err := tx.Exec(`UPDATE patients SET `+col+` = ? WHERE id = ?`, v, i); err != nil {
					tx.Rollback()
					t.Error(err)
					return
				}
			}
			if err := tx.Commit(); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			last[site] = v
			mu.Unlock()
		}
	}
	wg.Add(2)
	go writer(north, "a", "north")
	go writer(south, "b", "south")
	wg.Wait()
	waitSameRows(t, north, south)
	for _, d := range []*sql.DB{north, south} {
		rows, err := d.Query(`SELECT id, a, b FROM patients ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, a, b int
			if err := rows.Scan(&id, &a, &b); err != nil {
				t.Fatal(err)
			}
			if a != last["north"] || b != last["south"] {
				t.Errorf("row %d holds a=%d b=%d; the last writes were a=%d (north) b=%d (south)", id, a, b, last["north"], last["south"])
			}
		}
		rows.Close()
	}
	t.Logf("north wrote %d versions, south %d", last["north"], last["south"])
}

// kill -9 of the nodes while the practice software keeps writing: every
// committed database transaction is captured exactly once (north's log holds
// each insert once) and applied exactly once (south's database holds every
// row), whatever instant the kills hit (during capture at north, during
// apply at south).
func TestDatabaseExactlyOnceUnderKill(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south := practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	_, data, procs := dbFamily(t, paths)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	written := make(chan int, 1)
	go func() {
		n := 0
		defer func() { written <- n }()
		for ctx.Err() == nil && n < 3000 {
			tx, err := north.Begin()
			if err != nil {
				t.Error(err)
				return
			}
			for range 3 { // three rows per transaction
				n++
				if _, err := tx.Exec(`INSERT INTO patients(id, name) VALUES (?, ?)`, n, fmt.Sprintf("p%d", n)); err != nil {
					tx.Rollback()
					t.Error(err)
					return
				}
			}
			if err := tx.Commit(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	// Kill and restart each node a few times while the writes go on.
	for round := range 6 {
		site := []string{"north", "south"}[round%2]
		p := procs[site]
		var rows int
		deadline := time.Now().Add(10 * time.Second)
		for rows < (round+1)*150 && time.Now().Before(deadline) {
			_ = south.QueryRow(`SELECT count(*) FROM patients`).Scan(&rows)
			time.Sleep(pollEvery)
		}
		p.kill()
		procs[site] = startNode(t, data[site])
	}
	cancel()
	n := <-written
	rows := waitSameRows(t, north, south)
	var count int
	if err := south.QueryRow(`SELECT count(*) FROM patients`).Scan(&count); err != nil || count != n {
		t.Fatalf("south holds %d patients, north wrote %d (%v)", count, n, err)
	}
	// Exactly once in north's log.
	out := ppsync(t, "log", "--data", data["north"], "--site", "north", "--json", "--limit", "10000").want(t, exitOK).stdout
	puts := map[string]int{}
	for _, line := range splitLines(out) {
		var e struct {
			Ops []struct {
				Op, Table, Key string
			} `json:"ops"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		for _, op := range e.Ops {
			if op.Table == "patients" && op.Op == "put" {
				puts[op.Key]++
			}
		}
	}
	for k, c := range puts {
		if c != 1 {
			t.Errorf("patient %s was captured %d times", k, c)
		}
	}
	if len(puts) != n {
		t.Errorf("north's log holds %d patients, north wrote %d", len(puts), n)
	}
	t.Logf("%d rows written in %d-row transactions across 6 kills; %d bytes of rows converged", n, 3, len(rows))
}

// A practice database restored from an older backup under the same identity
// is noticed (its positions are behind the node's), nothing syncs until
// `ppsync db check --repair`, which brings back the rows the backup lacks;
// changes made afterwards are captured, not mistaken for ones already sent.
func TestDatabaseRestoredBackup(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south := practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	_, data, procs := dbFamily(t, paths)
	for i := 1; i <= 10; i++ {
		mustExec(t, north, `INSERT INTO patients(id, name) VALUES (?, 'before the backup')`, i)
	}
	waitSameRows(t, north, south)
	backup := filepath.Join(dir, "backup.db")
	mustExec(t, north, `VACUUM INTO '`+backup+`'`)
	for i := 11; i <= 20; i++ {
		mustExec(t, north, `INSERT INTO patients(id, name) VALUES (?, 'after the backup')`, i)
	}
	waitSameRows(t, north, south)

	// Restore the backup with the node stopped.
	procs["north"].stopClean()
	north.Close()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(paths["north"] + suffix)
	}
	if err := os.Rename(backup, paths["north"]); err != nil {
		t.Fatal(err)
	}
	north = reopen(t, paths["north"])
	startNode(t, data["north"])
	deadline := time.Now().Add(syncTimeout)
	for {
		out := ppsync(t, "db", "status", "--data", data["north"], "--json").want(t, exitOK).stdout
		if strings.Contains(out, "restored from an older backup") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("db status does not report the restored database: %s", out)
		}
		time.Sleep(pollEvery)
	}
	var n int
	_ = north.QueryRow(`SELECT count(*) FROM patients`).Scan(&n)
	if n != 10 {
		t.Fatalf("the restored database holds %d patients before the repair, want the backup's 10", n)
	}
	ppsync(t, "db", "check", "--data", data["north"]).want(t, exitError)
	ppsync(t, "db", "check", "--data", data["north"], "--repair").want(t, exitOK)
	mustExec(t, north, `INSERT INTO patients(id, name) VALUES (21, 'after the repair')`)
	waitSameRows(t, north, south)
	_ = south.QueryRow(`SELECT count(*) FROM patients`).Scan(&n)
	if n != 21 {
		t.Fatalf("south holds %d patients after the repair, want 21", n)
	}
	ppsync(t, "db", "check", "--data", data["north"]).want(t, exitOK)
}

func reopen(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	d, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// Two clinics insert a patient under the same integer ID while they cannot
// see each other (SQLite takes the highest ID + 1 at both): the collision is
// detected and listed as a conflict with both sides, and both databases end
// with the same row.
func TestDatabaseInsertCollisionIsAConflict(t *testing.T) {
	north, south, data, procs := twoClinics(t)
	procs["south"].stopClean()
	mustExec(t, north, `INSERT INTO patients(name, dob) VALUES ('Alice North', '1970-01-01')`)
	mustExec(t, south, `INSERT INTO patients(name, dob) VALUES ('Bob South', '1980-02-02')`)
	startNode(t, data["south"])
	waitSameRows(t, north, south)
	for _, d := range data {
		out := ppsync(t, "conflicts", "--data", d, "--json").want(t, exitOK).stdout
		if !strings.Contains(out, "Alice North") || !strings.Contains(out, "Bob South") {
			t.Errorf("conflicts at %s do not show both sides of patient 1: %s", filepath.Base(d), out)
		}
		// The text output shows the two rows whole, each as its site wrote it.
		text := ppsync(t, "conflicts", "--data", d).want(t, exitOK).stdout
		whole := 0
		for _, l := range splitLines(text) {
			if (strings.Contains(l, "Alice North") && strings.Contains(l, "1970-01-01")) || (strings.Contains(l, "Bob South") && strings.Contains(l, "1980-02-02")) {
				whole++
			}
		}
		if !strings.Contains(text, "patients/1: written at") || whole != 2 {
			t.Errorf("conflicts at %s do not show both rows whole:\n%s", filepath.Base(d), text)
		}
		// db check names the collision too (the databases match the merged row).
		out = ppsync(t, "db", "check", "--data", d).want(t, exitOK).stdout
		if !strings.Contains(out, "conflict  patients/1  column name") {
			t.Errorf("db check at %s does not name the collision: %s", filepath.Base(d), out)
		}
	}
}

// waitDBReady polls `ppsync db status` until the node has read the
// database's tables and installed its triggers and ID ranges.
func waitDBReady(tb testing.TB, data string) {
	tb.Helper()
	deadline := time.Now().Add(syncTimeout)
	for {
		var st struct {
			Tables  []string `json:"tables"`
			Loading bool     `json:"loading"`
		}
		out := ppsync(tb, "db", "status", "--data", data, "--json").want(tb, exitOK).stdout
		if json.Unmarshal([]byte(out), &st) == nil && len(st.Tables) > 0 && !st.Loading {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the practice database of %s is not ready: %s", data, out)
		}
		time.Sleep(pollEvery)
	}
}

// A site whose practice software is older (user_version 3) holds the
// entries written at a site with a newer one (user_version 4, a new column):
// they are stored and forwarded but not applied, status says why, and they
// are applied once this site's database is upgraded, without a restart.
func TestDatabaseNewerPracticeSchemaIsHeld(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south := practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	mustExec(t, north, `PRAGMA user_version = 4`)
	mustExec(t, north, `ALTER TABLE patients ADD COLUMN allergies TEXT`)
	mustExec(t, south, `PRAGMA user_version = 3`)
	_, data, _ := dbFamily(t, paths)
	for _, d := range data {
		waitDBReady(t, d)
	}
	mustExec(t, north, `INSERT INTO patients(id, name, allergies) VALUES (1, 'Ann', 'penicillin')`)
	deadline := time.Now().Add(syncTimeout)
	for {
		st := nodeStatus(t, data["south"])
		if st.Held > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("south holds no entry of the newer practice software: %+v", st)
		}
		time.Sleep(pollEvery)
	}
	var n int
	if err := south.QueryRow(`SELECT count(*) FROM patients`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("south applied an entry of a newer practice software: %d rows (%v)", n, err)
	}
	if out := ppsync(t, "status", "--data", data["south"], "--json").want(t, exitOK).stdout; !strings.Contains(out, "newer version of the practice software") {
		t.Errorf("status does not say why entries wait: %s", out)
	}
	// The practice software at south is upgraded.
	mustExec(t, south, `ALTER TABLE patients ADD COLUMN allergies TEXT`)
	mustExec(t, south, `PRAGMA user_version = 4`)
	rows := waitSameRows(t, north, south)
	var allergies string
	if err := south.QueryRow(`SELECT allergies FROM patients WHERE id = 1`).Scan(&allergies); err != nil || allergies != "penicillin" {
		t.Fatalf("after the upgrade south holds allergies %q (%v); rows:\n%s", allergies, err, rows)
	}
}

// The initial load of a large database, cut by kill -9, goes on where it
// stopped: every row is published, none more than once but for the batch
// that was being written.
func TestDatabaseInitialLoadResumes(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db")}
	north := practiceDB(t, paths["north"])
	const rows = 50_000
	tx, err := north.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= rows; i++ {
		if _, err := tx.Exec(`INSERT INTO patients(id, name, dob) VALUES (?, ?, '1980-01-01')`, i, fmt.Sprintf("patient %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	_, data, procs := dbFamily(t, paths)
	deadline := time.Now().Add(syncTimeout)
	var loaded uint64
	for {
		var st struct {
			Loading  bool   `json:"loading"`
			LoadRows uint64 `json:"load_rows"`
		}
		out := ppsync(t, "db", "status", "--data", data["north"], "--json").want(t, exitOK).stdout
		if json.Unmarshal([]byte(out), &st) == nil && st.Loading && st.LoadRows >= 2000 {
			loaded = st.LoadRows
			break
		}
		if time.Now().After(deadline) || (!st.Loading && st.LoadRows > 0) {
			t.Fatalf("could not catch the load running: %s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	procs["north"].kill()
	startNode(t, data["north"])
	waitDBReady(t, data["north"])
	var total int
	out := ppsync(t, "log", "--data", data["north"], "--site", "north", "--json", "--limit", "10000").want(t, exitOK).stdout
	keys := map[string]int{}
	for _, line := range splitLines(out) {
		var e struct {
			Ops []struct{ Key string } `json:"ops"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		for _, op := range e.Ops {
			keys[op.Key]++
			total++
		}
	}
	if len(keys) != rows {
		t.Fatalf("the log holds %d of the %d rows", len(keys), rows)
	}
	if total > rows+2000 {
		t.Fatalf("the load published %d row changes for %d rows: it started over instead of resuming", total, rows)
	}
	t.Logf("killed after %d rows; %d row changes published in all for %d rows", loaded, total, rows)
}

// A copy of the bound database (same random ID, another file) is refused
// with exit 4, naming the database the node expects.
func TestDatabaseCopyRefused(t *testing.T) {
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db")}
	north := practiceDB(t, paths["north"])
	_, data, procs := dbFamily(t, paths)
	waitDBReady(t, data["north"])
	procs["north"].stopClean()
	cp := filepath.Join(dir, "copy.db")
	mustExec(t, north, `VACUUM INTO '`+cp+`'`)
	cfg := filepath.Join(data["north"], "ppsync.toml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(string(b), "sqlite:"+paths["north"], "sqlite:"+cp)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := launch(t, data["north"], e2eMachine)
	if code := p.wait(syncTimeout); code != exitRefused {
		t.Fatalf("a copy of the database: exit %d, want %d: %s", code, exitRefused, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "expected sqlite:"+paths["north"]) {
		t.Fatalf("the refusal does not name the expected database: %s", p.stderr.String())
	}
}
