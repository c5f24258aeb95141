//go:build unix

package integration

import (
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A site back after a stop has more merged rows to write than one apply
// batch, and a parent's newest change lies past the batch of its child: the
// child is refused by its foreign key in the first batch and written after
// its parent arrives in a later one, not skipped for good (found by the
// fault suite: "db-apply-fk-across-batches").
func TestDatabaseForeignKeyAcrossApplyBatches(t *testing.T) {
	north, south, data, procs := twoClinics(t)
	procs["south"].stopClean()
	mustExec(t, north, `INSERT INTO patients(id, name) VALUES (1, 'Ada')`)
	mustExec(t, north, `INSERT INTO appointments(id, patient, at) VALUES (1, 1, '2026-12-03T09:00')`)
	tx, err := north.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 5201; i++ {
		if _, err := tx.Exec(`INSERT INTO patients(id, name) VALUES (?, ?)`, i, "patient"); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, north, `UPDATE patients SET name = 'Ada Lovelace' WHERE id = 1`)
	startNode(t, data["south"])
	waitSameRows(t, north, south)
	var n int
	if err := south.QueryRow(`SELECT count(*) FROM appointments WHERE patient = 1`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("south holds %d appointments of patient 1 (%v), want 1", n, err)
	}
	waitNoRefused(t, data["south"])
	// db status per table: what was applied, when, and nothing waiting.
	var st struct {
		PerTable []struct {
			Table          string     `json:"table"`
			Applied        uint64     `json:"applied"`
			PendingCapture uint64     `json:"pending_capture"`
			PendingApply   uint64     `json:"pending_apply"`
			LastApply      *time.Time `json:"last_apply"`
		} `json:"per_table"`
	}
	raw := ppsync(t, "db", "status", "--data", data["south"], "--json").want(t, exitOK).stdout
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatal(err)
	}
	for _, ts := range st.PerTable {
		if ts.Table == "appointments" && (ts.Applied == 0 || ts.LastApply == nil || ts.PendingApply != 0 || ts.PendingCapture != 0) {
			t.Errorf("db status of appointments at south: %+v", ts)
		}
	}
	if text := ppsync(t, "db", "status", "--data", data["south"]).want(t, exitOK).stdout; !strings.Contains(text, "appointments  captured 0 (0 waiting), applied 1 (0 waiting), last apply") {
		t.Errorf("db status at south:\n%s", text)
	}
	out := ppsync(t, "db", "check", "--data", data["south"]).want(t, exitOK).stdout
	if strings.Contains(out, "missing") || strings.Contains(out, "different") {
		t.Fatalf("db check at south after the catch-up:\n%s", out)
	}
}

// A remote delete of a patient that a local appointment still refers to is
// refused by the database: not half-applied, shown by `ppsync conflicts`
// with both sides and by `db status`, kept across a restart, and written
// once the local appointment is gone, without a repair.
func TestDatabaseRefusedRowIsTriedAgain(t *testing.T) {
	north, south, data, procs := twoClinics(t)
	mustExec(t, north, `INSERT INTO patients(id, name) VALUES (7, 'Grace')`)
	waitSameRows(t, north, south)
	procs["south"].stopClean()
	mustExec(t, south, `INSERT INTO appointments(id, patient, at) VALUES (70, 7, '2026-12-04T10:00')`) // the node is stopped: captured at its start
	mustExec(t, north, `DELETE FROM patients WHERE id = 7`)
	// North has no appointment 70 yet when it deletes; south has, and
	// refuses the delete. (North then receives appointment 70 and refuses
	// it in turn: its patient is gone there.)
	procs["south"] = startNode(t, data["south"])
	deadline := time.Now().Add(syncTimeout)
	var out string
	for {
		out = ppsync(t, "conflicts", "--data", data["south"], "--json").want(t, exitOK).stdout
		if strings.Contains(out, `"refused"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("south never lists the refused delete of patient 7: %s", out)
		}
		time.Sleep(pollEvery)
	}
	var refused struct {
		Table    string `json:"table"`
		Key      string `json:"key"`
		Refused  string `json:"refused"`
		Incoming struct {
			Deleted bool `json:"deleted"`
		} `json:"incoming"`
		Existing struct {
			Deleted bool           `json:"deleted"`
			Value   map[string]any `json:"value"`
		} `json:"existing"`
	}
	for _, l := range splitLines(out) {
		if strings.Contains(l, `"refused"`) && json.Unmarshal([]byte(l), &refused) == nil && refused.Table == "patients" {
			break
		}
	}
	if refused.Table != "patients" || refused.Key != "7" || !strings.Contains(refused.Refused, "foreign key") ||
		!refused.Incoming.Deleted || refused.Existing.Deleted || refused.Existing.Value["name"] != "Grace" {
		t.Fatalf("the refused delete is not shown with both sides: %+v\n%s", refused, out)
	}
	text := ppsync(t, "conflicts", "--data", data["south"]).want(t, exitOK).stdout
	if !strings.Contains(text, "patients/7") || !strings.Contains(text, "database:") || !strings.Contains(text, "Grace") {
		t.Fatalf("ppsync conflicts does not show the refused row with both sides:\n%s", text)
	}
	var n int
	if err := south.QueryRow(`SELECT count(*) FROM patients WHERE id = 7`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("south holds %d patients 7 (%v): the refused delete was half-applied", n, err)
	}
	// Kept across a restart.
	procs["south"].stopClean()
	procs["south"] = startNode(t, data["south"])
	if st := dbStatusOf(t, data["south"]); len(st.Refused) == 0 {
		t.Fatalf("the refused row was forgotten across a restart: %+v", st)
	}
	// The practice removes the appointment at south: the delete of the
	// patient is tried again and written, everywhere.
	mustExec(t, south, `DELETE FROM appointments WHERE id = 70`)
	waitSameRows(t, north, south)
	if err := south.QueryRow(`SELECT count(*) FROM patients WHERE id = 7`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("south still holds patient 7 (%d, %v)", n, err)
	}
	for _, d := range data {
		waitNoRefused(t, d)
	}
}

type dbStatusJSON struct {
	Refused []struct {
		Table, Key, Reason string
	} `json:"refused"`
}

func dbStatusOf(tb testing.TB, data string) dbStatusJSON {
	tb.Helper()
	var st dbStatusJSON
	out := ppsync(tb, "db", "status", "--data", data, "--json").want(tb, exitOK).stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		tb.Fatalf("db status --json: %v: %s", err, out)
	}
	return st
}

// waitNoRefused polls until the node's database holds no refused row.
func waitNoRefused(tb testing.TB, data string) {
	tb.Helper()
	deadline := time.Now().Add(syncTimeout)
	for {
		st := dbStatusOf(tb, data)
		if len(st.Refused) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s still has refused rows: %+v", filepath.Base(data), st.Refused)
		}
		time.Sleep(pollEvery)
	}
}

// twoClinics sets up a relay and the sites north and south with SQLite
// practice databases as the README says, started and ready.
func twoClinics(t *testing.T) (north, south *sql.DB, data map[string]string, procs map[string]*proc) {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{"north": filepath.Join(dir, "north.db"), "south": filepath.Join(dir, "south.db")}
	north, south = practiceDB(t, paths["north"]), practiceDB(t, paths["south"])
	_, data, procs = dbFamily(t, paths)
	for _, d := range data {
		waitDBReady(t, d)
	}
	return north, south, data, procs
}
