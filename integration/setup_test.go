//go:build unix

package integration

// A family set up the way users set it up (issue 10): every node holds
// family.json and its OWN certificate, nothing else. The relay's address
// reaches the sites through family.json (`ppsync family bootstrap --add`) or
// `ppsync run --bootstrap`; the rest of the roster spreads in the hello
// exchange. No test here installs another member's certificate into a node:
// that shortcut is what hid the bug.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	syncTimeout    = 60 * time.Second // a put until it shows at another node; convergence
	verdictTimeout = 30 * time.Second // a bad bootstrap address until status says why
	pollEvery      = 50 * time.Millisecond
)

// support is a family's authority directory (authority.key, family.json),
// driven only through `ppsync family ...`.
type support struct {
	dir  string // where certificates are written
	auth string // AUTH
}

// newSupport runs `ppsync family create --dir DIR/AUTH --name NAME`.
func newSupport(tb testing.TB, dir, name string) *support {
	tb.Helper()
	s := &support{dir: dir, auth: filepath.Join(dir, "AUTH")}
	ppsync(tb, "family", "create", "--dir", s.auth, "--name", name).want(tb, exitOK)
	return s
}

func (s *support) familyFile() string { return filepath.Join(s.auth, "family.json") }

// addBootstrap runs `ppsync family bootstrap --dir AUTH --add ADDR` and
// checks that family.json lists the address.
func (s *support) addBootstrap(tb testing.TB, addr string) {
	tb.Helper()
	ppsync(tb, "family", "bootstrap", "--dir", s.auth, "--add", addr).want(tb, exitOK)
	if got := bootstrapList(tb, s.familyFile()); !slices.ContainsFunc(got, func(a string) bool { return peerOf(a) == peerOf(addr) }) {
		tb.Fatalf("family.json lists %v after `family bootstrap --add %s`", got, addr)
	}
}

// join sets up one node as the README says: `ppsync init` with the
// family.json the site was given (extra: --role relay, --json), `family
// admit` of its join request, and `install` of its own certificate, nothing
// else. LAN discovery is turned off (initNode). It returns the data
// directory and what init printed.
func (s *support) join(tb testing.TB, site, familyFile string, extra ...string) (string, result) {
	tb.Helper()
	data := filepath.Join(s.dir, site)
	r := initNode(tb, data, familyFile, site, extra...)
	cert := filepath.Join(s.dir, site+".cert")
	ppsync(tb, "family", "admit", "--dir", s.auth, "--request", filepath.Join(data, "join-request.json"), "--out", cert).want(tb, exitOK)
	ppsync(tb, "install", "--data", data, cert).want(tb, exitOK)
	return data, r
}

// bootstrapList reads the bootstrap addresses of a family.json.
func bootstrapList(tb testing.TB, path string) []string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var info struct {
		Bootstrap []string `json:"bootstrap"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return info.Bootstrap
}

// peerOf is the PEER_ID of a multiaddr ending in /p2p/PEER_ID.
func peerOf(addr string) string {
	if i := strings.LastIndex(addr, "/p2p/"); i >= 0 {
		return addr[i+len("/p2p/"):]
	}
	return ""
}

// put runs `ppsync put` and checks the acknowledgement.
func put(tb testing.TB, data, table, key, fields string) {
	tb.Helper()
	ppsync(tb, "put", "--data", data, table, key, fields).want(tb, exitOK)
}

// waitGet polls `ppsync get` on data until table/key holds fields (a JSON
// object), and returns how long that took.
func waitGet(tb testing.TB, data, table, key, fields string) time.Duration {
	tb.Helper()
	var want map[string]any
	if err := json.Unmarshal([]byte(fields), &want); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(syncTimeout)
	var last result
	for {
		last = ppsync(tb, "get", "--data", data, table, key)
		if last.code == exitOK {
			var got map[string]any
			if err := json.Unmarshal([]byte(last.stdout), &got); err != nil {
				tb.Fatalf("get printed no JSON object: %s", last)
			}
			if reflect.DeepEqual(got, want) {
				return time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s/%s did not reach %s within %s; last: %s\nstatus: %s", table, key, filepath.Base(data), syncTimeout, last, rawStatus(tb, data))
		}
		time.Sleep(pollEvery)
	}
}

// waitConverged polls `ppsync digest` on every node until all print the
// same digest, and returns it.
func waitConverged(tb testing.TB, datas ...string) string {
	tb.Helper()
	deadline := time.Now().Add(syncTimeout)
	for {
		// A relay holds no readable data (`ppsync digest` says so): its
		// frontier must match the sites', and the sites' digests each other.
		digests := make([]string, len(datas))
		fronts := make([]string, len(datas))
		var site string
		same := true
		for i, d := range datas {
			st := nodeStatus(tb, d)
			fronts[i] = fmt.Sprint(st.Frontier)
			if st.Role == "relay" {
				r := ppsync(tb, "digest", "--data", d).want(tb, exitError)
				if !strings.Contains(r.stderr, "a relay holds no readable data") {
					tb.Fatalf("`ppsync digest` at the relay: %s", r)
				}
				digests[i] = "(relay)"
			} else {
				digests[i] = strings.TrimSpace(ppsync(tb, "digest", "--data", d).want(tb, exitOK).stdout)
				if site == "" {
					site = digests[i]
				}
				same = same && digests[i] == site
			}
			same = same && fronts[i] == fronts[0]
		}
		if same && site != "" {
			return site
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for i, d := range datas {
				fmt.Fprintf(&b, "\n%s: digest %s, status %s", filepath.Base(d), digests[i], rawStatus(tb, d))
			}
			tb.Fatalf("the nodes did not converge within %s:%s", syncTimeout, b.String())
		}
		time.Sleep(pollEvery)
	}
}

// waitRelayHolds polls until the relay holds everything the site's own log
// holds (a relay cannot show a record: it holds them sealed).
func waitRelayHolds(tb testing.TB, relay, site string) {
	tb.Helper()
	deadline := time.Now().Add(syncTimeout)
	for {
		want := nodeStatus(tb, site)
		got := nodeStatus(tb, relay)
		if got.Frontier[want.Site] >= want.Frontier[want.Site] {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the relay holds %v, the site %v", got.Frontier, want.Frontier)
		}
		time.Sleep(pollEvery)
	}
}

// waitStatus polls `ppsync status --json` until ok holds, and returns that
// status and how long it took.
func waitStatus(tb testing.TB, data string, timeout time.Duration, what string, ok func(status) bool) (status, time.Duration) {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		st := nodeStatus(tb, data)
		if ok(st) {
			return st, time.Since(start)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not %s within %s; status: %s", filepath.Base(data), what, timeout, rawStatus(tb, data))
		}
		time.Sleep(pollEvery)
	}
}

// rawStatus is `ppsync status --json` as printed, for failure messages.
func rawStatus(tb testing.TB, data string) string {
	tb.Helper()
	r := ppsync(tb, "status", "--data", data, "--json")
	if r.code != exitOK {
		return r.String()
	}
	return strings.TrimSpace(r.stdout)
}

// bootstrapEntry is the status's bootstrap entry for the peer of addr.
func (st status) bootstrapEntry(addr string) (bootstrapStatus, bool) {
	for _, b := range st.Bootstrap {
		if b.PeerID == peerOf(addr) || peerOf(b.Addr) == peerOf(addr) {
			return b, true
		}
	}
	return bootstrapStatus{}, false
}

func online(st status) bool { return st.Online != nil && *st.Online }

// TestReadmeSetup runs the README's "Setting up a real family" as written,
// in its order, each node holding only family.json and its own
// certificate: support creates the family; the relay is set up and runs;
// support adds its address to family.json; two sites set up with that
// family.json sync through the relay; a third site admitted later catches
// up and all converge.
//
// This test mirrors README.md's "Setting up a real family": when that
// section changes, change this test with it.
func TestReadmeSetup(t *testing.T) {
	t.Parallel()
	began := time.Now()
	sup := newSupport(t, t.TempDir(), "Smith Dental")

	// The relay: init --role relay, admit, install its own certificate, run.
	relay, _ := sup.join(t, "relay", sup.familyFile(), "--role", "relay")
	relayProc := startNode(t, relay)
	relayAddr := relayProc.loopbackAddr()
	// Support adds the relay's address to family.json.
	sup.addBootstrap(t, relayAddr)

	// Two sites, given the updated family.json: init, admit, install their
	// own certificate, run (no --bootstrap: family.json carries it).
	north, _ := sup.join(t, "clinic-north", sup.familyFile())
	south, _ := sup.join(t, "clinic-south", sup.familyFile())
	northProc, southProc := startNode(t, north), startNode(t, south)

	put(t, north, "patients", "n-1", `{"name":"Ada Meier","clinic":"north"}`)
	d := waitGet(t, south, "patients", "n-1", `{"name":"Ada Meier","clinic":"north"}`)
	t.Logf("north's put showed at south after %s", d.Round(time.Millisecond))
	put(t, south, "patients", "s-1", `{"name":"Ben Rossi","clinic":"south"}`)
	waitGet(t, north, "patients", "s-1", `{"name":"Ben Rossi","clinic":"south"}`)

	// A third site admitted later, set up the same way.
	east, _ := sup.join(t, "clinic-east", sup.familyFile())
	eastProc := startNode(t, east)
	put(t, east, "patients", "e-1", `{"name":"Chloé Keller","clinic":"east"}`)
	waitGet(t, east, "patients", "n-1", `{"name":"Ada Meier","clinic":"north"}`)
	waitGet(t, east, "patients", "s-1", `{"name":"Ben Rossi","clinic":"south"}`)
	waitGet(t, north, "patients", "e-1", `{"name":"Chloé Keller","clinic":"east"}`)
	waitGet(t, south, "patients", "e-1", `{"name":"Chloé Keller","clinic":"east"}`)
	digest := waitConverged(t, relay, north, south, east)
	t.Logf("relay and three sites converged on digest %.16s", digest)

	for _, data := range []string{north, south, east} {
		st, _ := waitStatus(t, data, syncTimeout, "online with the relay connected", func(st status) bool {
			b, ok := st.bootstrapEntry(relayAddr)
			return online(st) && ok && b.State == "connected"
		})
		if st.OfflineReason != "" {
			t.Errorf("%s is online but says offline_reason %q", st.Site, st.OfflineReason)
		}
	}
	for _, p := range []*proc{eastProc, southProc, northProc, relayProc} {
		p.stopClean()
	}
	t.Logf("README setup took %s", time.Since(began).Round(time.Millisecond))
}

// TestBootstrapFlagOldFamilyFile: a site whose family.json was copied before
// support added the relay's address joins with `ppsync run --bootstrap
// RELAY_ADDR` and syncs both ways with a site set up from the new
// family.json.
func TestBootstrapFlagOldFamilyFile(t *testing.T) {
	t.Parallel()
	sup := newSupport(t, t.TempDir(), "Old Copy Dental")
	oldFamily := filepath.Join(sup.dir, "family-before-bootstrap.json")
	b, err := os.ReadFile(sup.familyFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(oldFamily, b, 0o644); err != nil {
		t.Fatal(err)
	}

	relay, _ := sup.join(t, "relay", sup.familyFile(), "--role", "relay")
	relayProc := startNode(t, relay)
	relayAddr := relayProc.loopbackAddr()
	sup.addBootstrap(t, relayAddr)
	if got := bootstrapList(t, oldFamily); len(got) != 0 {
		t.Fatalf("the old copy of family.json already lists bootstrap addresses %v", got)
	}

	old, _ := sup.join(t, "clinic-old", oldFamily)
	if got := bootstrapList(t, filepath.Join(old, "family.json")); len(got) != 0 {
		t.Fatalf("the old site's family.json lists bootstrap addresses %v", got)
	}
	fresh, _ := sup.join(t, "clinic-new", sup.familyFile())
	oldProc := startNode(t, old, "--bootstrap", relayAddr)
	freshProc := startNode(t, fresh)

	put(t, old, "patients", "o-1", `{"name":"Giulia Novak"}`)
	d := waitGet(t, fresh, "patients", "o-1", `{"name":"Giulia Novak"}`)
	t.Logf("the old-family.json site's put showed at the other site after %s", d.Round(time.Millisecond))
	put(t, fresh, "patients", "f-1", `{"name":"Hugo Schmid"}`)
	waitGet(t, old, "patients", "f-1", `{"name":"Hugo Schmid"}`)
	waitConverged(t, relay, old, fresh)
	waitStatus(t, old, syncTimeout, "online with the relay connected", func(st status) bool {
		b, ok := st.bootstrapEntry(relayAddr)
		return online(st) && ok && b.State == "connected"
	})
	for _, p := range []*proc{freshProc, oldProc, relayProc} {
		p.stopClean()
	}
}

// TestBootstrapOtherFamily: a site given the address of another family's
// relay reports that it is not a member of this family, and no data crosses
// between the families in either direction.
func TestBootstrapOtherFamily(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	// Family B: its relay and one site, set up as the README says.
	supB := newSupport(t, filepath.Join(dir, "B"), "Other Practice")
	relayB, _ := supB.join(t, "relay-b", supB.familyFile(), "--role", "relay")
	relayBProc := startNode(t, relayB)
	relayBAddr := relayBProc.loopbackAddr()
	supB.addBootstrap(t, relayBAddr)
	siteB, _ := supB.join(t, "clinic-b", supB.familyFile())
	siteBProc := startNode(t, siteB)
	put(t, siteB, "patients", "b-1", `{"name":"Family B patient"}`)
	waitRelayHolds(t, relayB, siteB)

	// Family A: one site pointed at family B's relay.
	supA := newSupport(t, filepath.Join(dir, "A"), "This Practice")
	siteA, _ := supA.join(t, "clinic-a", supA.familyFile())
	siteAProc := startNode(t, siteA, "--bootstrap", relayBAddr)
	put(t, siteA, "patients", "a-1", `{"name":"Family A patient"}`)

	st, d := waitStatus(t, siteA, verdictTimeout, `offline, "is not a member of this family"`, func(st status) bool {
		return st.Online != nil && !*st.Online && strings.Contains(st.OfflineReason, "is not a member of this family")
	})
	t.Logf("after %s: offline_reason %q", d.Round(time.Millisecond), st.OfflineReason)
	if b, ok := st.bootstrapEntry(relayBAddr); !ok || b.State != "not-member" {
		t.Errorf("status's bootstrap entry for the other family's relay: %+v (found %v), want state not-member; status %s", b, ok, rawStatus(t, siteA))
	}

	// Family B keeps working meanwhile: a second put reaches its relay, so
	// the relay had every chance to pass data on.
	put(t, siteB, "patients", "b-2", `{"name":"Family B patient 2"}`)
	waitRelayHolds(t, relayB, siteB)

	for _, key := range []string{"b-1", "b-2"} {
		ppsync(t, "get", "--data", siteA, "patients", key).want(t, exitError)
	}
	if st := nodeStatus(t, siteA); len(st.Frontier) != 1 || st.Frontier["clinic-a"] != 1 || (st.Peers != nil && *st.Peers != 0) || online(st) {
		t.Errorf("family A's site holds %v, peers %v, online %v; want only its own entry, no peers, offline", st.Frontier, deref(st.Peers), deref(st.Online))
	}
	for _, data := range []string{relayB, siteB} {
		ppsync(t, "get", "--data", data, "patients", "a-1").want(t, exitError)
		if st := nodeStatus(t, data); st.Frontier["clinic-a"] != 0 {
			t.Errorf("family B's %s holds family A's entries: frontier %v", st.Site, st.Frontier)
		}
	}
	for _, p := range []*proc{siteAProc, siteBProc, relayBProc} {
		p.stopClean()
	}
}

// TestBootstrapUnreachable: a bootstrap address in family.json where nothing
// listens makes the site say, within about 20 s, that it is offline and
// cannot reach that address.
func TestBootstrapUnreachable(t *testing.T) {
	t.Parallel()
	sup := newSupport(t, t.TempDir(), "Unreachable Dental")
	// A relay that is set up but never runs gives a real peer ID.
	_, r := sup.join(t, "relay", sup.familyFile(), "--role", "relay", "--json")
	var ir struct {
		PeerID string `json:"peer_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ir); err != nil || ir.PeerID == "" {
		t.Fatalf("init --json printed no peer_id: %s", r)
	}
	addr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", freePort(t), ir.PeerID)
	sup.addBootstrap(t, addr)

	site, _ := sup.join(t, "clinic-alone", sup.familyFile())
	p := startNode(t, site)
	st, d := waitStatus(t, site, 20*time.Second, `offline, "cannot reach"`, func(st status) bool {
		return st.Online != nil && !*st.Online && strings.Contains(st.OfflineReason, "cannot reach")
	})
	t.Logf("after %s: offline_reason %q", d.Round(time.Millisecond), st.OfflineReason)
	if b, ok := st.bootstrapEntry(addr); !ok || b.State != "unreachable" {
		t.Errorf("status's bootstrap entry for %s: %+v (found %v), want state unreachable; status %s", addr, b, ok, rawStatus(t, site))
	}
	// The node still serves its own writes.
	put(t, site, "patients", "x-1", `{"name":"Kenji Huber"}`)
	waitGet(t, site, "patients", "x-1", `{"name":"Kenji Huber"}`)
	p.stopClean()
}

// freePort is a loopback TCP port nothing listens on (it was free a moment
// ago).
func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		tb.Fatal(err)
	}
	return port
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
