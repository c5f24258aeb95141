//go:build unix

package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// familyRow is one row of `ppsync relay families --json`.
type familyRow struct {
	FamilyID    string            `json:"family_id"`
	Name        string            `json:"name"`
	State       string            `json:"state"`
	Sites       []string          `json:"sites"`
	Frontier    map[string]uint64 `json:"frontier"`
	BytesStored uint64            `json:"bytes_stored"`
	LastContact *time.Time        `json:"last_contact"`
}

func relayFamilies(tb testing.TB, relay string) []familyRow {
	tb.Helper()
	r := ppsync(tb, "relay", "families", "--data", relay, "--json").want(tb, exitOK)
	var rows []familyRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		tb.Fatalf("relay families --json: %v\n%s", err, r)
	}
	return rows
}

// familyStatus is `ppsync status --data DATA --family ID --json`.
func familyStatus(tb testing.TB, data, familyID string) status {
	tb.Helper()
	r := ppsync(tb, "status", "--data", data, "--family", familyID, "--json").want(tb, exitOK)
	var st status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		tb.Fatalf("status --family: %v\n%s", err, r)
	}
	return st
}

// TestRelayServesSeveralFamilies runs the README's "One relay for many
// families" as written: a relay set up for one family joins a second
// (relay join, the second family's support admits it, install while it
// runs); both families' sites sync through the one relay process, on its one
// address; `relay families` lists them; after a restart both are served
// again; `relay remove-family` stops serving one and erases it.
//
// This test mirrors README.md's "One relay for many families": when that
// section changes, change this test with it.
// nodeMetrics returns what GET path (/metrics, with a query) of a running
// node says, asked with the node's API key as a scraper is given it.
func nodeMetrics(tb testing.TB, p *proc, path string) string {
	tb.Helper()
	key, err := os.ReadFile(filepath.Join(p.data, "api.key"))
	if err != nil {
		tb.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodGet, p.runtime().API+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %s: %s\n%s", path, resp.Status, text)
	}
	return string(text)
}

// metricValue returns the value of the sample that series (a regular
// expression of the name and labels) matches in text, and whether one does.
func metricValue(text, series string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + series + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func TestRelayServesSeveralFamilies(t *testing.T) {
	t.Parallel()
	smith := newSupport(t, t.TempDir(), "Smith Dental")
	jones := newSupport(t, t.TempDir(), "Jones Physio")

	relay, _ := smith.join(t, "relay", smith.familyFile(), "--role", "relay")
	relayProc := startNode(t, relay)
	relayAddr := relayProc.loopbackAddr()
	smith.addBootstrap(t, relayAddr)

	// The running relay joins Jones Physio.
	r := ppsync(t, "relay", "join", "--data", relay, "--family", jones.familyFile(), "--json").want(t, exitOK)
	var joined struct {
		FamilyID    string `json:"family_id"`
		JoinRequest string `json:"join_request"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &joined); err != nil {
		t.Fatalf("relay join --json: %v\n%s", err, r)
	}
	if filepath.Base(joined.JoinRequest) != "join-request-"+joined.FamilyID+".json" {
		t.Errorf("the join request is %s, want it named after the family", joined.JoinRequest)
	}
	rows := relayFamilies(t, relay)
	if len(rows) != 2 || rows[1].State != "waiting for its certificate" {
		t.Fatalf("before its certificate the relay lists %+v", rows)
	}
	cert := filepath.Join(jones.dir, "relay.cert")
	ppsync(t, "family", "admit", "--dir", jones.auth, "--request", joined.JoinRequest, "--out", cert).want(t, exitOK)
	ppsync(t, "install", "--data", relay, cert).want(t, exitOK)
	jones.addBootstrap(t, relayAddr) // the same address: one process, one port

	north, _ := smith.join(t, "clinic-north", smith.familyFile())
	south, _ := smith.join(t, "clinic-south", smith.familyFile())
	physioA, _ := jones.join(t, "physio-a", jones.familyFile())
	physioB, _ := jones.join(t, "physio-b", jones.familyFile())
	// physio-a keeps an audit copy of every byte it sends and receives on
	// the mesh (PPSYNC_MESH_TAP): nothing of Smith Dental may be in it.
	tap := filepath.Join(t.TempDir(), "physio-a.tap")
	physioAProc := launchEnv(t, physioA, append(env(e2eMachine), "PPSYNC_MESH_TAP="+tap))
	physioAProc.waitReady(readyTimeout, 5*time.Millisecond)
	procs := []*proc{startNode(t, north), startNode(t, south), physioAProc, startNode(t, physioB)}

	put(t, north, "patients", "n-1", `{"name":"Ada Meier"}`)
	put(t, physioA, "patients", "p-1", `{"name":"Ben Rossi"}`)
	waitGet(t, south, "patients", "n-1", `{"name":"Ada Meier"}`)
	waitGet(t, physioB, "patients", "p-1", `{"name":"Ben Rossi"}`)
	// Each family's data stays in it.
	ppsync(t, "get", "--data", south, "patients", "p-1").want(t, exitError)
	ppsync(t, "get", "--data", physioB, "patients", "n-1").want(t, exitError)

	// The relay holds both families' logs, each under its own family.
	deadline := time.Now().Add(syncTimeout)
	for familyStatus(t, relay, joined.FamilyID).Frontier["physio-a"] < nodeStatus(t, physioA).Frontier["physio-a"] {
		if time.Now().After(deadline) {
			t.Fatalf("the relay does not hold physio-a's log: %s", rawStatus(t, relay))
		}
		time.Sleep(pollEvery)
	}
	if st := familyStatus(t, relay, joined.FamilyID); st.Frontier["clinic-north"] != 0 {
		t.Errorf("Jones Physio's status at the relay shows Smith Dental's sites: %v", st.Frontier)
	}
	rows = relayFamilies(t, relay)
	if len(rows) != 2 {
		t.Fatalf("relay families lists %d families, want 2: %+v", len(rows), rows)
	}
	for _, row := range rows {
		if row.State != "serving" || row.BytesStored == 0 {
			t.Errorf("family %s: %+v", row.Name, row)
		}
	}
	if !slices.Contains(rows[1].Sites, "physio-a") || slices.Contains(rows[1].Sites, "clinic-north") {
		t.Errorf("the second family's sites: %v", rows[1].Sites)
	}

	// One scrape of the relay gives both families' figures, each under
	// its family's ID, beside the process's own once.
	smithID := nodeStatus(t, north).FamilyID
	for familyStatus(t, relay, smithID).Frontier["clinic-north"] < nodeStatus(t, north).Frontier["clinic-north"] {
		if time.Now().After(deadline) {
			t.Fatalf("the relay does not hold clinic-north's log: %s", rawStatus(t, relay))
		}
		time.Sleep(pollEvery)
	}
	all := nodeMetrics(t, relayProc, "/metrics?family=all")
	for _, c := range []struct {
		family, site string
		held         uint64
	}{
		{smithID, "clinic-north", familyStatus(t, relay, smithID).Frontier["clinic-north"]},
		{joined.FamilyID, "physio-a", familyStatus(t, relay, joined.FamilyID).Frontier["physio-a"]},
	} {
		series := `ppsync_frontier_seq\{family="` + c.family + `",site="` + c.site + `"\}`
		if v, ok := metricValue(all, series); !ok || v < 1 || uint64(v) > c.held {
			t.Errorf("%s: %v, %v (the relay holds %d)", series, v, ok, c.held)
		}
		synced := `ppsync_disk_synced_entries_total\{family="` + c.family + `"\}`
		if v, ok := metricValue(all, synced); !ok || v < 1 {
			t.Errorf("%s: %v, %v", synced, v, ok)
		}
	}
	if _, ok := metricValue(all, `ppsync_frontier_seq\{family="`+joined.FamilyID+`",site="clinic-north"\}`); ok {
		t.Error("Jones Physio's figures name a site of Smith Dental")
	}
	if v, ok := metricValue(all, `ppsync_relay_families`); !ok || v != 2 {
		t.Errorf("ppsync_relay_families: %v, %v", v, ok)
	}
	if n := strings.Count(all, "\nprocess_resident_memory_bytes "); n != 1 {
		t.Errorf("the process's RSS appears %d times", n)
	}
	// ?family=ID is one family's, as the family header asks.
	one := nodeMetrics(t, relayProc, "/metrics?family="+joined.FamilyID)
	if _, ok := metricValue(one, `ppsync_frontier_seq\{site="physio-a"\}`); !ok || strings.Contains(one, "clinic-north") {
		t.Errorf("GET /metrics?family=%s:\n%s", joined.FamilyID, one)
	}

	// What a member of one family was given on the mesh names nothing of
	// the other: not its ID, not its name, not its sites, not its data.
	tapped, err := os.ReadFile(tap)
	if err != nil || len(tapped) == 0 {
		t.Fatalf("physio-a's tap is empty: %v", err)
	}
	for _, secret := range []string{smithID, "Smith Dental", "clinic-north", "clinic-south", "Ada Meier"} {
		if strings.Contains(string(tapped), secret) {
			t.Errorf("physio-a was told %q on the mesh", secret)
		}
	}
	if !strings.Contains(string(tapped), joined.FamilyID) {
		t.Error("physio-a's tap does not even show its own family: it copies nothing")
	}

	// A restart serves both again, on the same address.
	relayProc.stopClean()
	relayProc = startNode(t, relay)
	put(t, physioB, "patients", "p-2", `{"name":"Chloé Keller"}`)
	waitGet(t, physioA, "patients", "p-2", `{"name":"Chloé Keller"}`)
	put(t, south, "patients", "s-1", `{"name":"Dan Weber"}`)
	waitGet(t, north, "patients", "s-1", `{"name":"Dan Weber"}`)
	waitConverged(t, physioA, physioB)

	// Removing Jones Physio from this relay erases it there; Smith Dental
	// goes on.
	ppsync(t, "relay", "remove-family", "--data", relay, joined.FamilyID).want(t, exitOK)
	if rows := relayFamilies(t, relay); len(rows) != 1 || rows[0].Name != "Smith Dental" {
		t.Errorf("after remove-family the relay lists %+v", rows)
	}
	r = ppsync(t, "status", "--data", relay, "--family", joined.FamilyID, "--json").want(t, exitError)
	if !strings.Contains(r.stderr, "serves no family") {
		t.Errorf("status of a removed family: %s", r)
	}
	put(t, north, "patients", "n-2", `{"name":"Eva Roth"}`)
	waitGet(t, south, "patients", "n-2", `{"name":"Eva Roth"}`)
	for _, p := range append(procs, relayProc) {
		p.stopClean()
	}
}
