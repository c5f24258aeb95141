//go:build linux

package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/engine"
)

// BenchmarkRelayFamilies: one `ppsync run` relay process serving many
// families of three sites each. The sites are light clients in this
// process that speak the real protocol (a mesh.Mesh each, with a real
// certificate, signed entries and an in-memory log, catching up on a gap,
// a heartbeat that shows it behind, a connection, and as a node does on
// its own: every 30 s a sync round with each connected member, every 5 s a
// probe of each); they run in batches of
// PPSYNC_SCALE_ACTIVE families while every family stays joined (a batch's
// sites come up 100 families at a time). Each site
// writes one entry every PPSYNC_SCALE_EVERY with a burst of five every fifth
// time: by default every 6 s, a clinic's 1 tx/min with bursts ten times
// faster, so that 100 families active at once give the relay the load of
// 1,000 families at the real rate (EVERY=1s: six times that). It prints the relay's RSS per
// family (idle and active), goroutines, open files, CPU per thousand
// entries, the p50/p99 delay from a write at one site to its arrival at
// each other site of its family, and the time to take back a restart of the
// relay (every active site reconnected, a write at each reaching the others).
//
//	PPSYNC_SCALE_FAMILIES (1000), PPSYNC_SCALE_ACTIVE (100), PPSYNC_SCALE_BATCH (30s), PPSYNC_SCALE_EVERY (6s)
func BenchmarkRelayFamilies(b *testing.B) {
	families := envInt("PPSYNC_SCALE_FAMILIES", 1000)
	active := min(envInt("PPSYNC_SCALE_ACTIVE", 100), families)
	batchFor := envDuration(b, "PPSYNC_SCALE_BATCH", 30*time.Second)
	every := envDuration(b, "PPSYNC_SCALE_EVERY", 6*time.Second)
	for range b.N {
		runRelayScale(b, families, active, batchFor, every)
	}
}

func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return d
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// scaleFamily is one family as its support holds it.
type scaleFamily struct {
	dir  string
	auth *family.Authority
	info *family.Info
}

func runRelayScale(b *testing.B, families, active int, batchFor, every time.Duration) {
	dir := b.TempDir()
	ctx := context.Background()
	began := time.Now()

	// The relay, set up as the README says, on a fixed port so that a
	// restart keeps its address.
	first := newSupport(b, dir, "Family 0")
	relay, _ := first.join(b, "relay", first.familyFile(), "--role", "relay")
	port := freePort(b)
	listen := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)
	relayArgs := []string{"--listen", listen}
	if lv := os.Getenv("PPSYNC_SCALE_RELAY_LEVEL"); lv != "" {
		relayArgs = append(relayArgs, "--log-level", lv) // debug: every family's waking and sleeping
	}
	environ := env(e2eMachine)
	if f := os.Getenv("PPSYNC_SCALE_PROFILE"); f != "" {
		environ = append(environ, "PPSYNC_CPU_PROFILE="+f) // the first run of the relay, until its restart
	}
	relayProc := launchEnv(b, relay, environ, relayArgs...)
	// saveRelayLog writes the running relay's log to PPSYNC_SCALE_RELAY_LOG,
	// after a goroutine dump (SIGQUIT, which ends it) when the run failed.
	saveRelayLog := func(failed bool) {
		f := os.Getenv("PPSYNC_SCALE_RELAY_LOG")
		if f == "" {
			return
		}
		if failed {
			_ = relayProc.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-relayProc.done:
			case <-time.After(10 * time.Second):
			}
		}
		_ = os.WriteFile(f, []byte(relayProc.stderr.String()), 0o644)
	}
	if os.Getenv("PPSYNC_SCALE_PROFILE") != "" || os.Getenv("PPSYNC_SCALE_RELAY_LOG") != "" {
		// A run that fails still writes the relay's profile and log: it
		// stops cleanly (the profile is written as it exits), if it still
		// runs.
		b.Cleanup(func() {
			if b.Failed() && !relayProc.exited() {
				_ = relayProc.stop()
				saveRelayLog(false) // stopped already: no goroutine dump
			}
		})
	}
	relayProc.waitReady(readyTimeout, 5*time.Millisecond)
	relayAddr := listen + "/p2p/" + relayProc.runtime().PeerID
	base := sampleProc(b, relayProc)

	// Every further family joins it (relay join, admit, install).
	auth0, info0, err := family.LoadAuthority(first.auth)
	if err != nil {
		b.Fatal(err)
	}
	fams := []scaleFamily{{dir: first.auth, auth: auth0, info: info0}}
	cl, err := api.NewClient(relay)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	machine := func(k string) string {
		if k == "PPSYNC_MACHINE_ID" {
			return e2eMachine
		}
		return ""
	}
	joinStart := time.Now()
	for i := 1; i < families; i++ {
		fdir := filepath.Join(dir, fmt.Sprintf("fam-%04d", i))
		auth, info, err := family.CreateFamily(fdir, fmt.Sprintf("Family %d", i), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		res, err := node.RelayJoin(relay, filepath.Join(fdir, "family.json"), "", machine, time.Now)
		if err != nil {
			b.Fatal(err)
		}
		raw, err := os.ReadFile(res.JoinRequest)
		if err != nil {
			b.Fatal(err)
		}
		req, err := family.ParseJoinRequest(raw)
		if err != nil {
			b.Fatal(err)
		}
		cert, err := auth.Admit(fdir, req, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		cb, err := cert.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cl.Install(ctx, cb); err != nil {
			b.Fatalf("install family %d at the relay: %v", i, err)
		}
		fams = append(fams, scaleFamily{dir: fdir, auth: auth, info: info})
		if i%100 == 0 {
			b.Logf("%d families joined (%s)", i, time.Since(joinStart).Round(time.Second))
		}
	}
	joined := time.Since(joinStart)
	idle := settleSample(b, relayProc)
	perFamilyIdle := float64(idle.rss-base.rss) / float64(max(1, families-1))
	// One scrape of every family's metrics, as the vendor's Prometheus
	// takes it.
	scrapeAt := time.Now()
	scraped := nodeMetrics(b, relayProc, "/metrics?family=all")
	scrapeTook := time.Since(scrapeAt)
	if v, ok := metricValue(scraped, "ppsync_relay_families"); !ok || int(v) != families {
		b.Fatalf("GET /metrics?family=all counts %v families (%v), want %d", v, ok, families)
	}
	series := strings.Count(scraped, "\nppsync_")
	// And the vendor's list of them.
	listAt := time.Now()
	listed := relayFamilies(b, relay)
	listTook := time.Since(listAt)
	if len(listed) != families {
		b.Fatalf("relay families lists %d families, want %d", len(listed), families)
	}

	// Batches of active families.
	delays := &delayLog{}
	var entries, cpu float64
	var peak procSample
	var last []*lightSite
	for start := 0; start < families; start += active {
		end := min(start+active, families)
		// Warm up: a write at each site reaches the others (gossip meshes
		// formed, or caught up), before the batch is measured.
		warm := &delayLog{}
		// A batch's sites come up 100 families at a time, each wave
		// connected before the next starts, as clinics open over a
		// morning: 3,000 libp2p hosts dialling at once in this process,
		// on the relay's 2 cores, took both cores for minutes and left
		// some sites retrying for longer than the wait (a relay restart,
		// below, is where every site reconnects at once).
		var sites []*lightSite
		for w := start; w < end; w += startWave {
			ws := startLightSites(b, fams[w:min(w+startWave, end)], relayAddr, warm)
			sites = append(sites, ws...)
			waitLightConnected(b, ws, settleFor(len(sites))) // the relay serves every site up so far
			if end-start > startWave {
				b.Logf("families %d-%d connected (%s)", w, min(w+startWave, end)-1, time.Since(began).Round(time.Second))
			}
		}
		settle := settleFor(len(sites))
		waitLightConnected(b, sites, settle)
		for _, s := range sites {
			s.write(1)
		}
		if !warm.waitFor(2*len(sites), settle) {
			missing := lightMissing(ctx, cl, sites) // before the relay stops for its goroutine dump
			saveRelayLog(true)
			b.Fatalf("warm-up of families %d-%d: %d of %d writes arrived within %s; %s", start, end-1, warm.count(), 2*len(sites), settle, missing)
		}
		for _, s := range sites {
			s.setDelays(delays)
		}
		before := sampleProc(b, relayProc)
		if os.Getenv("PPSYNC_SCALE_TRACE") != "" {
			fmt.Printf("%s batch %d-%d writes\n", time.Now().Format("15:04:05.000"), start, end-1)
		}
		n := runWriters(sites, batchFor, every)
		after := sampleProc(b, relayProc)
		entries += float64(n)
		cpu += after.cpu - before.cpu
		peak = peak.max(after)
		if end < families {
			closeLightSites(sites)
		} else {
			last = sites
		}
		sessions := 0
		for _, s := range sites {
			s.mu.Lock()
			sessions += s.fetches
			s.mu.Unlock()
		}
		b.Logf("families %d-%d: %d entries, %d catch-up sessions (sync rounds, gaps, connections), relay RSS %.0f MB, goroutines %d, open files %d",
			start, end-1, n, sessions, after.rss/1e6, after.goro, after.fds)
	}

	// A relay restart, with the last batch connected and writing on.
	stopAt := time.Now()
	relayProc.stopClean()
	restartAt := time.Now()
	stopFor := restartAt.Sub(stopAt)
	relayProc = startNode(b, relay, relayArgs...)
	relayBack := time.Since(restartAt)
	back := max(2*time.Minute, settleFor(len(last)))
	waitLightReconnected(b, last, restartAt, back)
	reconnected := time.Since(restartAt)
	probe := time.Now()
	probeDelays := &delayLog{}
	// Every site counts into the probe's log before any writes: a write
	// can reach another site within a millisecond, before that site would
	// have been switched over.
	for _, s := range last {
		s.setDelays(probeDelays)
	}
	for _, s := range last {
		s.write(1)
	}
	if !probeDelays.waitFor(2*len(last), back) {
		var missing string
		if cl, err := api.NewClient(relay); err != nil { // its new address
			missing = "the restarted relay's API: " + err.Error()
		} else {
			missing = lightMissing(ctx, cl, last)
		}
		saveRelayLog(true)
		b.Fatalf("after the relay's restart, %d of %d writes arrived within %s; %s", probeDelays.count(), 2*len(last), back, missing)
	}
	takenBack := time.Since(restartAt)
	saveRelayLog(false) // the restarted relay's
	closeLightSites(last)
	b.StopTimer()

	p50, p99 := delays.quantiles()
	fmt.Printf("relay serving %d families (3 light sites each, %d families active at once, %s per batch, each site writing every %s with a burst of 5 every fifth time: %.0f entries/s; set up in %s):\n",
		families, active, batchFor, every, entries/(batchFor.Seconds()*float64((families+active-1)/active)), joined.Round(time.Second))
	fmt.Printf("  RSS: %.0f MB empty, %.0f MB with every family joined and idle (%.0f KB per family), peak %.0f MB active (target < 2048 MB)\n",
		base.rss/1e6, idle.rss/1e6, perFamilyIdle/1e3, peak.rss/1e6)
	fmt.Printf("  of it the Go heap's spans in use / idle and not yet returned to the OS: %.0f / %.0f MB empty, %.0f / %.0f MB joined and idle, %.0f / %.0f MB at the peak\n",
		base.heapInuse/1e6, base.heapUnreturned/1e6, idle.heapInuse/1e6, idle.heapUnreturned/1e6, peak.heapInuse/1e6, peak.heapUnreturned/1e6)
	fmt.Printf("  goroutines: %d empty, %d idle (%.1f per family), %d at peak; open files: %d empty, %d idle, %d at peak\n",
		base.goro, idle.goro, float64(idle.goro-base.goro)/float64(max(1, families-1)), peak.goro, base.fds, idle.fds, peak.fds)
	fmt.Printf("  CPU: %.2f s per thousand entries (%.0f entries relayed)\n", cpu/max(entries/1000, 1e-9), entries)
	fmt.Printf("  one scrape of every family's metrics (GET /metrics?family=all, all joined and idle): %s, %.1f MB, %d ppsync series (%.0f per family)\n",
		scrapeTook.Round(time.Millisecond), float64(len(scraped))/1e6, series, float64(series)/float64(families))
	fmt.Printf("  ppsync relay families --json (all joined and idle): %s for %d families\n", listTook.Round(time.Millisecond), len(listed))
	fmt.Printf("  delay from a write at one site to its arrival at another: p50 %s, p99 %s over %d arrivals, %.1f %% by catch-up (target p99 < 1s)\n",
		p50.Round(time.Millisecond), p99.Round(time.Millisecond), delays.count(), 100*delays.byCatchUp())
	fmt.Printf("  relay restart taken back in %s (the relay stopped in %s and was ready again %s later, its %d sites reconnected after %s, a write at each at the others %s after the probe)\n",
		takenBack.Round(time.Millisecond), stopFor.Round(time.Millisecond), relayBack.Round(time.Millisecond), len(last), reconnected.Round(time.Millisecond), time.Since(probe).Round(time.Millisecond))
	b.ReportMetric(float64(p99.Milliseconds()), "p99-ms")
	b.ReportMetric(peak.rss/1e6, "peak-rss-MB")
	b.Logf("whole run %s", time.Since(began).Round(time.Second))
}

// procSample is what the OS (and the relay's metrics) say of the relay.
type procSample struct {
	rss  float64 // bytes
	cpu  float64 // seconds of user and system time
	fds  int
	goro int // go_goroutines of its metrics
	// What of the RSS is the Go heap, from its metrics: spans in use (live
	// objects and garbage not yet swept), and spans idle that the runtime
	// has not yet returned to the OS.
	heapInuse, heapUnreturned float64
}

func sampleProc(tb testing.TB, p *proc) procSample {
	tb.Helper()
	pid := p.cmd.Process.Pid
	mem, err := readProcMem(pid)
	if err != nil {
		tb.Fatal(err)
	}
	cpu, err := procCPU(pid)
	if err != nil {
		tb.Fatal(err)
	}
	metrics := nodeMetrics(tb, p, "/metrics")
	goro, _ := metricValue(metrics, "go_goroutines")
	inuse, _ := metricValue(metrics, "go_memstats_heap_inuse_bytes")
	idle, _ := metricValue(metrics, "go_memstats_heap_idle_bytes")
	released, _ := metricValue(metrics, "go_memstats_heap_released_bytes")
	s := procSample{goro: int(goro), rss: float64(mem.rss), cpu: cpu.Seconds(), heapInuse: inuse, heapUnreturned: idle - released}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(ents)
	}
	return s
}

// settleSample samples the relay after letting it settle for 10 s.
func settleSample(tb testing.TB, p *proc) procSample {
	tb.Helper()
	time.Sleep(10 * time.Second) // a benchmark's measurement window, not a wait for an event
	return sampleProc(tb, p)
}

func (s procSample) max(o procSample) procSample {
	if o.rss > s.rss {
		s.rss, s.heapInuse, s.heapUnreturned = o.rss, o.heapInuse, o.heapUnreturned
	}
	if o.fds > s.fds {
		s.fds = o.fds
	}
	if o.goro > s.goro {
		s.goro = o.goro
	}
	return s
}

// delayLog collects write-to-arrival delays.
type delayLog struct {
	mu      sync.Mutex
	d       []time.Duration
	catchUp int // arrivals by catch-up rather than gossip
}

func (l *delayLog) add(d time.Duration, gossip bool) {
	l.mu.Lock()
	l.d = append(l.d, d)
	if !gossip {
		l.catchUp++
	}
	l.mu.Unlock()
}

// byCatchUp is the share of arrivals that came by catch-up.
func (l *delayLog) byCatchUp() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return float64(l.catchUp) / float64(max(1, len(l.d)))
}

func (l *delayLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

func (l *delayLog) quantiles() (p50, p99 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0, 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*99/100]
}

// waitFor polls until n delays are in, or timeout passes (false).
func (l *delayLog) waitFor(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for l.count() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// lightMissing says which sites lack which other sites' entries, with what
// the relay holds of those families and whether it has them awake.
func lightMissing(ctx context.Context, cl *api.Client, sites []*lightSite) string {
	want := map[string]map[string]uint64{} // family -> site -> seq written
	for _, s := range sites {
		s.mu.Lock()
		if want[s.fam] == nil {
			want[s.fam] = map[string]uint64{}
		}
		want[s.fam][s.site] = s.seq
		s.mu.Unlock()
	}
	var out, relayOut []string
	bad := map[string]bool{}
	for _, s := range sites {
		have := lightLog{s}.Frontier()
		for site, seq := range want[s.fam] {
			if site != s.site && have[site] < seq {
				out = append(out, fmt.Sprintf("%s/%s lacks %s (%d of %d)", s.fam[:8], s.site, site, have[site], seq))
				bad[s.fam] = true
			}
		}
	}
	// What each site of a short family saw: heartbeats by site, catch-ups,
	// and its mesh's view of the relay.
	var seen []string
	for _, s := range sites {
		if !bad[s.fam] || len(seen) >= 30 {
			continue
		}
		s.mu.Lock()
		hbs := map[string]int{}
		for p, n := range s.hbs {
			if m, ok := s.roster.Member(p); ok {
				hbs[m.Site] = n
			}
		}
		line := fmt.Sprintf("%s/%s: heartbeats %v, catch-ups %d (skipped %d, last error %q)", s.fam[:8], s.site, hbs, s.fetches, s.skipped, s.fetchErr)
		s.mu.Unlock()
		for _, pi := range s.m.Peers() {
			if pi.Member.PeerID == s.relay {
				line += fmt.Sprintf(", relay connected %v via %q, last seen %s ago", pi.Connected, pi.Via, time.Since(pi.LastSeen).Round(time.Millisecond))
			}
		}
		seen = append(seen, line)
	}
	if fr, err := cl.Families(ctx); err != nil {
		relayOut = append(relayOut, fmt.Sprintf("relay families: %v", err))
	} else {
		for _, f := range fr.Families {
			if bad[f.FamilyID] {
				relayOut = append(relayOut, fmt.Sprintf("%s: relay holds %v, peers %d", f.FamilyID[:8], f.Frontier, f.Peers))
			}
		}
	}
	if len(relayOut) > 20 {
		relayOut = append(relayOut[:20], fmt.Sprintf("... %d more", len(relayOut)-20))
	}
	if len(out) > 30 {
		out = append(out[:30], fmt.Sprintf("... %d more", len(out)-30))
	}
	return fmt.Sprintf("%d families short:\n%s\n%s\n%s", len(bad), strings.Join(relayOut, "\n"), strings.Join(out, "; "), strings.Join(seen, "\n"))
}

// lightSite is one site of a family, in this process: a real mesh with a
// real certificate, an in-memory log of every entry it holds, and signed
// entries of its own.
type lightSite struct {
	site   string
	fam    string
	key    ed25519.PrivateKey
	roster *family.Roster
	m      *mesh.Mesh
	relay  peer.ID
	delays *delayLog

	mu      sync.Mutex
	logs    map[string][][]byte // site -> envelopes by seq-1
	prev    wire.Hash
	seq     uint64
	relayUp time.Time // when the relay last connected
	sentAt  *sync.Map // family-wide: entry hash -> when written
	held    map[string]map[uint64]heldEntry

	fetching atomic.Bool   // a catch-up from a member is under way
	stop     chan struct{} // closed to end the site's sync rounds

	// What a short site's report shows (under mu).
	hbs      map[peer.ID]int // heartbeats by member
	fetches  int             // catch-up sessions started
	skipped  int             // catch-ups not started: one was under way
	fetchErr string          // the last session's error
}

func startLightSites(tb testing.TB, fams []scaleFamily, relayAddr string, delays *delayLog) []*lightSite {
	tb.Helper()
	relayID, err := peer.AddrInfoFromString(relayAddr)
	if err != nil {
		tb.Fatal(err)
	}
	var out []*lightSite
	for _, f := range fams {
		sent := &sync.Map{}
		for j := range 3 {
			name := fmt.Sprintf("site-%d", j)
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				tb.Fatal(err)
			}
			req, err := family.NewJoinRequest(f.info, name, family.RoleSite, key.Public().(ed25519.PublicKey), "light-"+name, "light-db-"+name, time.Now())
			if err != nil {
				tb.Fatal(err)
			}
			cert, err := f.auth.Admit(f.dir, req, time.Now())
			if err != nil {
				if cert, err = f.auth.Move(f.dir, req, time.Now()); err != nil { // a later batch reuses the name
					tb.Fatal(err)
				}
			}
			roster, err := family.NewRoster(f.info)
			if err != nil {
				tb.Fatal(err)
			}
			if _, err := roster.Add(cert); err != nil {
				tb.Fatal(err)
			}
			s := &lightSite{site: name, fam: f.info.FamilyID, key: key, roster: roster, relay: relayID.ID, delays: delays,
				logs: map[string][][]byte{}, sentAt: sent, hbs: map[peer.ID]int{}}
			m, err := mesh.New(context.Background(), mesh.Config{Key: key, Bootstrap: []string{relayAddr}, Family: lightFamily{s},
				Log: lightLog{s}, Handler: lightHandler{s}, Heartbeat: s.heartbeat, HeartbeatInterval: lightHeartbeat})
			if err != nil {
				tb.Fatal(err)
			}
			s.m = m
			s.stop = make(chan struct{})
			go s.rounds(lightHeartbeat, node.DefaultSyncInterval)
			out = append(out, s)
		}
	}
	return out
}

// rounds does what a node's engine does on its own with its default
// settings: every heartbeat interval it probes each connected member (asks
// it for its heartbeat over a stream of its own), and every sync interval it
// runs a catch-up session with each connected member, which answers with
// whatever the site lacks (mostly nothing). The first of each comes at a
// random point of its interval, as the sites' own starts spread theirs.
func (s *lightSite) rounds(probeEvery, every time.Duration) {
	probe := time.NewTimer(time.Duration(mrand.Int64N(int64(probeEvery))))
	round := time.NewTimer(time.Duration(mrand.Int64N(int64(every))))
	defer probe.Stop()
	defer round.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-probe.C:
			for _, p := range s.connected() {
				if !s.m.ProbeNeeded(p, probeEvery*3/2) { // as a node skips it
					continue
				}
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), probeEvery)
					defer cancel()
					_, _ = s.m.Probe(ctx, p)
				}()
			}
			probe.Reset(probeEvery)
		case <-round.C:
			go func() { // one member after another, as a node's engine runs them
				for _, p := range s.connected() {
					s.fetchNow(p)
				}
			}()
			round.Reset(every)
		}
	}
}

// connected lists the members the site is connected to.
func (s *lightSite) connected() []peer.ID {
	var out []peer.ID
	for _, p := range s.m.Peers() {
		if p.Connected {
			out = append(out, p.Member.PeerID)
		}
	}
	return out
}

// lightHeartbeat is a light site's heartbeat and probe interval, a node's
// default.
const lightHeartbeat = mesh.DefaultHeartbeatInterval

// startWave is how many families' light sites start at once.
const startWave = 100

// settleFor is how long n light sites get to connect, or their writes to
// arrive: a minute, and more for a batch of thousands, which this process
// runs on the relay's 2 cores.
func settleFor(n int) time.Duration { return time.Minute + time.Duration(n)*50*time.Millisecond }

func closeLightSites(sites []*lightSite) {
	var wg sync.WaitGroup
	for _, s := range sites {
		close(s.stop)
		wg.Go(func() { _ = s.m.Close() })
	}
	wg.Wait()
}

func waitLightConnected(tb testing.TB, sites []*lightSite, timeout time.Duration) {
	tb.Helper()
	waitLightReconnected(tb, sites, time.Time{}, timeout)
}

// waitLightReconnected waits until every site connected to the relay after
// since.
func waitLightReconnected(tb testing.TB, sites []*lightSite, since time.Time, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := 0
		for _, s := range sites {
			s.mu.Lock()
			if s.relayUp.After(since) {
				n++
			}
			s.mu.Unlock()
		}
		if n == len(sites) {
			return
		}
		if time.Now().After(deadline) {
			var why []string // what the first sites not connected say of the relay
			for _, s := range sites {
				s.mu.Lock()
				up := s.relayUp.After(since)
				s.mu.Unlock()
				if !up && len(why) < 5 {
					for _, bs := range s.m.Bootstrap() {
						why = append(why, fmt.Sprintf("%s/%s: %s (%s)", s.fam[:8], s.site, bs.State, bs.Detail))
					}
				}
			}
			tb.Fatalf("%d of %d light sites connected to the relay within %s; %s", n, len(sites), timeout, strings.Join(why, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runWriters has every site write one entry every `every` and a burst of
// five every fifth time, for d; it returns how many entries were written.
func runWriters(sites []*lightSite, d, every time.Duration) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	end := time.Now().Add(d)
	for i, s := range sites {
		wg.Go(func() {
			// Spread the sites over the interval.
			time.Sleep(time.Duration(i) * every / time.Duration(len(sites)))
			n := 0
			for tick := 0; time.Now().Before(end); tick++ {
				k := 1
				if tick%5 == 4 {
					k = 5
				}
				s.write(k)
				n += k
				time.Sleep(every)
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	return total
}

// write commits k entries of this site, each signed (a commit group of its
// own), and publishes each as a gossip message.
func (s *lightSite) write(k int) {
	for range k {
		s.mu.Lock()
		s.seq++
		e := &wire.Entry{Family: s.fam, Site: s.site, Epoch: 1, Seq: s.seq, Prev: s.prev,
			HLC: uint64(hlc.Make(time.Now().UnixMilli(), 0)), Schema: wire.SchemaVersion,
			Ops: []wire.Op{{Kind: wire.OpPut, Table: "appointments", Key: fmt.Sprintf("%s-%d", s.site, s.seq),
				Fields: map[string]any{"patient": "p-" + strconv.FormatUint(s.seq, 10), "room": "2", "note": strings.Repeat("n", 120)}}}}
		signed, err := wire.Sign(e, s.key)
		if err != nil {
			s.mu.Unlock()
			panic(err)
		}
		env := signed.Marshal()
		s.prev = signed.Hash
		s.logs[s.site] = append(s.logs[s.site], env)
		s.sentAt.Store(signed.Hash, time.Now())
		s.mu.Unlock()
		for _, msg := range mesh.GroupMessages([]*wire.Signed{signed}) {
			_ = s.m.Publish(context.Background(), msg.Data)
		}
	}
}

func (s *lightSite) setDelays(d *delayLog) {
	s.mu.Lock()
	s.delays = d
	s.mu.Unlock()
}

func (s *lightSite) heartbeat() mesh.Heartbeat {
	return mesh.Heartbeat{Site: s.site, Role: "site", Version: "bench", Protocol: mesh.ProtocolVersion, Schema: wire.SchemaVersion,
		Frontier: lightLog{s}.Frontier(), Wall: time.Now().UTC(), Status: "ok"}
}

type lightFamily struct{ s *lightSite }

func (f lightFamily) ID() string { return f.s.fam }
func (f lightFamily) Member(p peer.ID) (mesh.Member, bool) {
	x, ok := f.s.roster.Member(p)
	if !ok {
		return mesh.Member{}, false
	}
	return mesh.Member{Site: x.Site, Relay: x.Role == family.RoleRelay, PeerID: x.PeerID, Epoch: x.Epoch}, true
}
func (f lightFamily) Members() []mesh.Member {
	var out []mesh.Member
	for _, x := range f.s.roster.Members() {
		out = append(out, mesh.Member{Site: x.Site, Relay: x.Role == family.RoleRelay, PeerID: x.PeerID, Epoch: x.Epoch})
	}
	return out
}
func (f lightFamily) Banned(p peer.ID) bool { return false }
func (f lightFamily) SiteKey(site string, epoch uint64) (ed25519.PublicKey, error) {
	return f.s.roster.KeyFor(site, epoch)
}
func (f lightFamily) Documents() [][]byte {
	var out [][]byte
	for _, c := range f.s.roster.Certificates() {
		if b, err := c.Marshal(); err == nil {
			out = append(out, b)
		}
	}
	return out
}
func (f lightFamily) DocumentsOf(p peer.ID) [][]byte {
	var out [][]byte
	for _, c := range f.s.roster.Certificates() {
		if c.PeerID == p {
			if b, err := c.Marshal(); err == nil {
				out = append(out, b)
			}
		}
	}
	return out
}
func (f lightFamily) Learn(doc []byte) (bool, error) {
	c, _, err := family.ParseInstallable(doc)
	if err != nil || c == nil {
		return false, err
	}
	return f.s.roster.Add(c)
}
func (f lightFamily) Subject(doc []byte) (peer.ID, bool) {
	c, _, err := family.ParseInstallable(doc)
	if err != nil || c == nil {
		return "", false
	}
	return c.PeerID, true
}

type lightLog struct{ s *lightSite }

func (l lightLog) Frontier() map[string]uint64 {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	out := make(map[string]uint64, len(l.s.logs))
	for site, envs := range l.s.logs {
		out[site] = uint64(len(envs))
	}
	return out
}

func (l lightLog) RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (bool, error)) error {
	l.s.mu.Lock()
	envs := slices.Clone(l.s.logs[site])
	l.s.mu.Unlock()
	for seq := from; seq <= to && seq <= uint64(len(envs)); seq++ {
		if stop, err := fn(seq, envs[seq-1]); stop || err != nil {
			return err
		}
	}
	return nil
}

func (l lightLog) ForkProofs() [][2][][]byte { return nil }

type lightHandler struct{ s *lightSite }

// Entries keeps another site's entries in seq order and records the delay
// of each the first time it is appended. Like a node, it holds entries that
// arrive past a gap (gossip may deliver a burst out of order) until the gap
// closes, by gossip or catch-up.
func (h lightHandler) Entries(_ context.Context, from peer.ID, run []*wire.Signed, gossip bool) (int, error) {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		// A gap still open after the engine's wait is fetched from the
		// peer that sent what lies past it, as a node does.
		if len(s.held) > 0 && gossip {
			time.AfterFunc(engine.DefaultGapWait, func() {
				s.mu.Lock()
				open := 0
				for _, h := range s.held {
					open += len(h)
				}
				s.mu.Unlock()
				if open > 0 {
					s.fetchFrom(from)
				}
			})
		}
	}()
	if s.held == nil {
		s.held = map[string]map[uint64]heldEntry{}
	}
	n := 0
	for _, e := range run {
		have := uint64(len(s.logs[e.Site]))
		if e.Seq <= have {
			continue
		}
		if e.Seq > have+1 {
			if s.held[e.Site] == nil {
				s.held[e.Site] = map[uint64]heldEntry{}
			}
			if len(s.held[e.Site]) < 1000 {
				s.held[e.Site][e.Seq] = heldEntry{e, gossip}
			}
			continue
		}
		s.appendLocked(e, gossip, now)
		n++
		for {
			next, ok := s.held[e.Site][uint64(len(s.logs[e.Site]))+1]
			if !ok {
				break
			}
			s.appendLocked(next.e, next.gossip, now) // takes it out of held
			n++
		}
	}
	return n, nil
}

// heldEntry is an entry that arrived past a gap.
type heldEntry struct {
	e      *wire.Signed
	gossip bool
}

func (s *lightSite) appendLocked(e *wire.Signed, gossip bool, now time.Time) {
	s.logs[e.Site] = append(s.logs[e.Site], e.Marshal())
	delete(s.held[e.Site], e.Seq)
	if at, ok := s.sentAt.Load(e.Hash); ok {
		s.delays.add(now.Sub(at.(time.Time)), gossip)
		if d := now.Sub(at.(time.Time)); (!gossip || d > time.Second) && os.Getenv("PPSYNC_SCALE_TRACE") != "" {
			how := "gossip"
			if !gossip {
				how = "catch-up"
			}
			fmt.Printf("%s %s %s %s<-%s seq %d after %s\n", now.Format("15:04:05.000"), how, s.fam[:6], s.site, e.Site, e.Seq, d.Round(time.Millisecond))
		}
	}
}

// Heartbeat pulls what a member holds beyond this site, as a node's engine
// does: gossip is best effort, catch-up repairs.
func (h lightHandler) Heartbeat(from peer.ID, hb mesh.Heartbeat) {
	s := h.s
	s.mu.Lock()
	s.hbs[from]++
	s.mu.Unlock()
	have := lightLog{s}.Frontier()
	behind := false
	for site, seq := range hb.Frontier {
		if seq > have[site] {
			behind = true
		}
	}
	if behind {
		s.fetchFrom(from)
	}
}

// fetchFrom pulls from member p whatever it holds beyond this site, unless
// a catch-up is under way already.
func (s *lightSite) fetchFrom(p peer.ID) {
	if s.fetching.CompareAndSwap(false, true) {
		go s.fetched(p)
	} else {
		s.skip()
	}
}

// fetchNow is fetchFrom that returns when the session ended.
func (s *lightSite) fetchNow(p peer.ID) {
	if s.fetching.CompareAndSwap(false, true) {
		s.fetched(p)
	} else {
		s.skip()
	}
}

func (s *lightSite) skip() {
	s.mu.Lock()
	s.skipped++
	s.mu.Unlock()
}

// fetched runs one catch-up session with p; the caller set fetching.
func (s *lightSite) fetched(p peer.ID) {
	defer s.fetching.Store(false)
	have := lightLog{s}.Frontier()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.m.Fetch(ctx, p, have, nil, nil)
	s.mu.Lock()
	s.fetches++
	if err != nil {
		s.fetchErr = err.Error()
	}
	s.mu.Unlock()
}

// PeerChanged notes when the relay connected, and catches up with a member
// that connected, as a node does.
func (h lightHandler) PeerChanged(p peer.ID, connected bool) {
	if !connected {
		return
	}
	if p == h.s.relay {
		h.s.mu.Lock()
		h.s.relayUp = time.Now()
		h.s.mu.Unlock()
	}
	h.s.fetchFrom(p)
}
func (h lightHandler) DocumentsChanged()                                 {}
func (h lightHandler) ForkProof(peer.ID, []*wire.Signed, []*wire.Signed) {}
func (h lightHandler) Duplicate(peer.ID)                                 {}
