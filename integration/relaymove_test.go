//go:build unix

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// moveSection is the README's heading of the walkthrough this file runs.
const moveSection = "### Moving a family from one relay process to another"

// readmeSteps walks through the lines of a README section in order: each
// step names the line it runs, and the test fails when the README no longer
// has it there, so the walkthrough and the test cannot drift apart.
type readmeSteps struct {
	tb   testing.TB
	text string // the section, from its heading to the next heading
	at   int
}

func newReadmeSteps(tb testing.TB, heading string) *readmeSteps {
	tb.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		tb.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		tb.Fatalf("README.md has no section %q", heading)
	}
	s = s[i+1:]
	if j := regexp.MustCompile(`\n#{2,3} `).FindStringIndex(s[len(heading):]); j != nil {
		s = s[:len(heading)+j[0]]
	}
	return &readmeSteps{tb: tb, text: s}
}

// step checks that line is the next of the README's lines used so far (it
// may be followed by a comment) and returns it.
func (r *readmeSteps) step(line string) string {
	r.tb.Helper()
	i := strings.Index(r.text[r.at:], line)
	if i < 0 {
		r.tb.Fatalf("the README's %q no longer says, after what this test ran so far:\n  %s", moveSection, line)
	}
	r.at += i + len(line)
	return line
}

// peerRow is one line of `ppsync peers --json`.
type peerRow struct {
	Site      string `json:"site"`
	Connected bool   `json:"connected"`
	Lag       uint64 `json:"lag"`
}

func peerRows(tb testing.TB, data string) []peerRow {
	tb.Helper()
	r := ppsync(tb, "peers", "--data", data, "--json").want(tb, exitOK)
	var rows []peerRow
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var p peerRow
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			tb.Fatalf("peers --json printed %q: %v", l, err)
		}
		rows = append(rows, p)
	}
	return rows
}

// setBootstrap puts line (`bootstrap = [...]`) in place of the bootstrap
// line of DATA/ppsync.toml, as a site's administrator does in an editor.
func setBootstrap(tb testing.TB, data, line string) {
	tb.Helper()
	path := filepath.Join(data, "ppsync.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^bootstrap = .*$`)
	if !re.Match(b) {
		tb.Fatalf("%s has no bootstrap line:\n%s", path, b)
	}
	if err := os.WriteFile(path, re.ReplaceAll(b, []byte(line)), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// TestReadmeMoveRelay runs the README's "Moving a family from one relay
// process to another" as written, in its order, on a family set up as
// "Setting up a real family" says (a relay and two sites), while one site
// writes throughout. Where the README says `sudo ppsync service stop/start`
// the test stops `ppsync run` with SIGTERM and runs it again (the README's
// alternative); `service uninstall` has nothing to remove here.
//
// Afterwards the family has kept its data and syncs through the new relay
// alone: every write acknowledged before, during and after the move is at
// both sites and the new relay (equal frontiers, equal digests), and with
// the old relay gone, a write made while the other site is off reaches it
// when it comes back, although the writer is off by then: the new relay
// stored and forwarded it. Last, a site set up with support's family.json
// while both sites are off gets the family's whole history from the new
// relay alone.
//
// This test mirrors README.md's walkthrough (readmeSteps checks each line):
// when that section changes, change this test with it.
func TestReadmeMoveRelay(t *testing.T) {
	t.Parallel()
	began := time.Now()
	sup := newSupport(t, t.TempDir(), "Move Dental")

	// The family as "Setting up a real family" has it.
	oldRelay, _ := sup.join(t, "relay", sup.familyFile(), "--role", "relay")
	oldRelayProc := startNode(t, oldRelay)
	oldAddr := oldRelayProc.loopbackAddr()
	sup.addBootstrap(t, oldAddr)
	north, _ := sup.join(t, "clinic-north", sup.familyFile())
	south, _ := sup.join(t, "clinic-south", sup.familyFile())
	northProc, southProc := startNode(t, north), startNode(t, south)
	put(t, north, "patients", "n-1", `{"name":"Ada Meier"}`)
	put(t, south, "patients", "s-1", `{"name":"Ben Rossi"}`)
	waitGet(t, south, "patients", "n-1", `{"name":"Ada Meier"}`)
	waitGet(t, north, "patients", "s-1", `{"name":"Ben Rossi"}`)
	waitConverged(t, oldRelay, north, south)

	// North writes throughout the move.
	load := startPutLoad(north, "visits", "move", 1)
	load.waitAcks(t, 20, syncTimeout)

	rd := newReadmeSteps(t, moveSection)
	// 1. The new relay, set up with the family.json support gives out now
	// (it names the old relay).
	rd.step("ppsync init --data /var/lib/ppsync --family family.json --site relay-b --role relay")
	newRelay := filepath.Join(sup.dir, "relay-b")
	initNode(t, newRelay, sup.familyFile(), "relay-b", "--role", "relay")
	rd.step("ppsync family admit --dir AUTH --request join-request.json --out relay-b.cert")
	cert := filepath.Join(sup.dir, "relay-b.cert")
	ppsync(t, "family", "admit", "--dir", sup.auth, "--request", filepath.Join(newRelay, "join-request.json"), "--out", cert).want(t, exitOK)
	rd.step("ppsync install --data /var/lib/ppsync relay-b.cert")
	ppsync(t, "install", "--data", newRelay, cert).want(t, exitOK)
	rd.step("ppsync run --data /var/lib/ppsync --listen /ip4/0.0.0.0/tcp/7475")
	newRelayProc := startNode(t, newRelay)
	newAddr := newRelayProc.loopbackAddr()

	// 2. At the old relay: the sync-now receipt says relay-b caught up.
	rd.step("ppsync sync-now --data /var/lib/ppsync --wait 1m")
	caughtUp := regexp.MustCompile(`(?m)^relay-b\s+caught up$`)
	took := waitFor(t, syncTimeout, "the old relay's sync-now receipt saying relay-b caught up", func() (bool, string) {
		r := ppsync(t, "sync-now", "--data", oldRelay, "--wait", "5s")
		if r.code != exitOK && r.code != exitError {
			t.Fatalf("sync-now exited %d: %s", r.code, r)
		}
		return caughtUp.MatchString(r.stdout), r.String()
	})
	t.Logf("the new relay held everything the old one holds %s after its start", took.Round(time.Millisecond))
	rd.step("ppsync peers --data /var/lib/ppsync")
	rows := peerRows(t, oldRelay)
	if !slices.ContainsFunc(rows, func(p peerRow) bool { return p.Site == "relay-b" && p.Connected }) {
		t.Fatalf("the old relay's peers do not show relay-b connected: %+v", rows)
	}

	// 3. The new relay's address: in family.json for new sites, and in each
	// site's ppsync.toml, then the site restarts.
	rd.step("ppsync family bootstrap --dir AUTH --add /dns4/relay-b.example/tcp/7475/p2p/12D3KooW...")
	sup.addBootstrap(t, newAddr)
	tomlLine := rd.step(`bootstrap = ["/dns4/relay-b.example/tcp/7475/p2p/12D3KooW..."]`)
	tomlLine = strings.Replace(tomlLine, "/dns4/relay-b.example/tcp/7475/p2p/12D3KooW...", newAddr, 1)
	load.waitAcks(t, load.count()+10, syncTimeout)
	for _, data := range []string{north, south} {
		setBootstrap(t, data, tomlLine)
	}
	// North's puts fail (exit 3) while it restarts: those are not
	// acknowledged, and the load tries again.
	rd.step("sudo ppsync service stop --data /var/lib/ppsync")
	rd.step("sudo ppsync service start --data /var/lib/ppsync")
	for _, s := range []struct {
		data string
		p    **proc
	}{{north, &northProc}, {south, &southProc}} {
		(*s.p).stopClean()
		*s.p = startNode(t, s.data)
	}
	rd.step("ppsync status --data /var/lib/ppsync")
	for _, data := range []string{north, south} {
		waitStatus(t, data, syncTimeout, "connected to the new relay", func(st status) bool {
			b, ok := st.bootstrapEntry(newAddr)
			return ok && b.State == "connected"
		})
		if r := ppsync(t, "status", "--data", data).want(t, exitOK); !strings.Contains(r.stdout, newAddr+"  connected (relay-b)") {
			t.Fatalf("%s's status has no Bootstrap line `%s  connected (relay-b)`: %s", filepath.Base(data), newAddr, r)
		}
	}
	load.waitAcks(t, load.count()+10, syncTimeout)

	// 4. Retire the old relay.
	rd.step("ppsync family revoke --dir AUTH --site relay --out relay-revoked.json")
	rev := filepath.Join(sup.dir, "relay-revoked.json")
	ppsync(t, "family", "revoke", "--dir", sup.auth, "--site", "relay", "--out", rev).want(t, exitOK)
	rd.step("ppsync install --data /var/lib/ppsync relay-revoked.json")
	ppsync(t, "install", "--data", newRelay, rev).want(t, exitOK)
	rd.step("sudo ppsync service stop --data /var/lib/ppsync")
	if !oldRelayProc.exited() {
		if code := oldRelayProc.stop(); code != exitOK && code != 4 {
			t.Fatalf("the old relay exited %d on SIGTERM after its revocation:\n%s", code, clip(oldRelayProc.stderr.String()))
		}
	}
	t.Logf("the old relay exited %d (revoked, then stopped)", oldRelayProc.code)
	rd.step("sudo ppsync service uninstall --data /var/lib/ppsync")
	rd.step("rm -rf /var/lib/ppsync")
	if err := os.RemoveAll(oldRelay); err != nil {
		t.Fatal(err)
	}

	// The family syncs through the new relay alone. North keeps writing a
	// while; then everything acknowledged is everywhere.
	load.waitAcks(t, load.count()+20, syncTimeout)
	acks := load.finish(t)
	put(t, south, "patients", "s-2", `{"name":"Carla Vogt"}`)
	waitGet(t, north, "patients", "s-2", `{"name":"Carla Vogt"}`)
	digest := waitConverged(t, newRelay, north, south)
	for _, data := range []string{north, south} {
		got := map[string]bool{}
		r := ppsync(t, "list", "--data", data, "visits").want(t, exitOK)
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var rec struct {
				Key string `json:"key"`
			}
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("list printed %q: %v", l, err)
			}
			got[rec.Key] = true
		}
		for _, a := range acks {
			if !got[a.key] {
				t.Fatalf("LOST: %s's put of visits/%s was acknowledged as seq %d but is not at %s", a.Site, a.key, a.Seq, filepath.Base(data))
			}
		}
		for key, fields := range map[string]string{"n-1": `{"name":"Ada Meier"}`, "s-1": `{"name":"Ben Rossi"}`} {
			waitGet(t, data, "patients", key, fields)
		}
	}
	t.Logf("%d puts acknowledged during the move, all at both sites and the new relay (digest %.16s)", len(acks), digest)

	// Store and forward through the new relay alone: south is off while
	// north writes; north goes off; south comes back and gets the write.
	southProc.stopClean()
	put(t, north, "patients", "n-2", `{"name":"Dario Conti"}`)
	waitRelayHolds(t, newRelay, north)
	northProc.stopClean()
	southProc = startNode(t, south)
	d := waitGet(t, south, "patients", "n-2", `{"name":"Dario Conti"}`)
	t.Logf("with the writer off, south got its write from the new relay %s after its start", d.Round(time.Millisecond))
	if st := nodeStatus(t, south); st.Peers == nil || *st.Peers != 1 {
		t.Errorf("south counts %v peers, want 1 (the new relay): %s", deref(st.Peers), rawStatus(t, south))
	}
	// Its family.json still names the old relay: unreachable, and harmless.
	waitStatus(t, south, verdictTimeout, "online, the old relay's bootstrap line unreachable", func(st status) bool {
		b, ok := st.bootstrapEntry(oldAddr)
		return online(st) && ok && b.State == "unreachable"
	})
	// A site set up now, with support's family.json (which names both
	// relays), while every other site is off: it gets the family's whole
	// history from the new relay alone.
	southProc.stopClean()
	east, _ := sup.join(t, "clinic-east", sup.familyFile())
	eastProc := startNode(t, east)
	want := nodeStatus(t, newRelay).Frontier
	waitStatus(t, east, syncTimeout, fmt.Sprintf("holding the new relay's %v", want), func(st status) bool {
		return st.Frontier["clinic-north"] == want["clinic-north"] && st.Frontier["clinic-south"] == want["clinic-south"]
	})
	for _, p := range []*proc{eastProc, newRelayProc} {
		p.stopClean()
	}
	t.Logf("moving the family to the new relay took %s", time.Since(began).Round(time.Millisecond))
}

// waitFor polls cond until it holds or timeout passes, and returns how long
// it took; cond's second result says what it saw last.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not %s within %s: %s", what, timeout, last)
		}
		time.Sleep(pollEvery)
	}
}
