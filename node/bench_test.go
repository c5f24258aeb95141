package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
)

func patientOps(site string, i int) []wire.Op {
	return []wire.Op{{Kind: wire.OpPut, Table: "patients", Key: fmt.Sprintf("%s-%08d", site, i), Fields: map[string]any{
		"name": fmt.Sprintf("Patient %d", i), "dob": "1984-03-12", "phone": "+41 31 555 01 23", "city": "Bern", "balance": int64(i % 1000),
	}}}
}

// writeMany commits n single-op transactions at site in batches of 1000.
func writeMany(tb testing.TB, n *Node, site string, total int) {
	tb.Helper()
	txs := make([][]wire.Op, 0, 1000)
	for i := 0; i < total; i++ {
		txs = append(txs, patientOps(site, i))
		if len(txs) == cap(txs) || i == total-1 {
			_, err := n.txlog.WriteMany(context.Background(), txs)
			if err != nil {
				tb.Fatal(err)
			}
			txs = txs[:0]
		}
	}
}

// waitGossipPeers polls until each node's gossip of entries reaches all the
// others (what is published before goes by catch-up).
func waitGossipPeers(tb testing.TB, d time.Duration, nodes ...*running) {
	tb.Helper()
	waitUntil(tb, "gossip reaches every node", d, func() (bool, string) {
		for _, r := range nodes {
			if n := r.n.mesh.GossipPeers(); n < len(nodes)-1 {
				return false, fmt.Sprintf("%s's gossip reaches %d of the %d other nodes", r.n.cert.Site, n, len(nodes)-1)
			}
		}
		return true, ""
	})
}

func waitFrontier(tb testing.TB, n *Node, site string, seq uint64, d time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for n.txlog.Frontier()[site] < seq {
		if time.Now().After(deadline) {
			tb.Fatalf("%s holds %d of %s's entries after %s, want %d", n.id.Site, n.txlog.Frontier()[site], site, d, seq)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkCatchUp1M measures a node catching up a 1,000,000-entry backlog
// from a peer over loopback (libp2p, compressed batches, verify, append,
// open, apply), with entries sealed (end-to-end encrypted, as every site
// writes them) and, in the same run as the baseline, written in clear.
func BenchmarkCatchUp1M(b *testing.B) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_BENCH_ENTRIES")); err == nil && v > 0 {
		total = v // a shorter run for profiling
	}
	for b.Loop() {
		plain := catchUpRate(b, total, true)
		sealed := catchUpRate(b, total, false)
		b.ReportMetric(sealed, "catch-up-entries/s")
		b.ReportMetric(plain, "plain-catch-up-entries/s")
		b.ReportMetric(sealed/plain, "x-sealed-vs-plain")
		b.ReportMetric(sealed/5500, "x-5.5k-reference")
	}
}

// catchUpRate writes total entries at one site (sealed unless plain) and
// returns the entries/s at which a second site catches them up.
func catchUpRate(b *testing.B, total int, plain bool) float64 {
	tf := newTestFamily(b)
	tf.add("clinic-b", "site")
	tf.addKnowing("clinic-a", "site", "clinic-b") // its first entry gives clinic-b the key
	mod := func(c *Config) { c.plain = plain }
	a := tf.startWith("clinic-a", mod)
	for _, addr := range a.n.mesh.Addrs() {
		tf.relay = addr
	}
	writeMany(b, a.n, "clinic-a", total)
	start := time.Now()
	bn := tf.startWith("clinic-b", mod)
	want := a.n.txlog.Head("clinic-a").Seq
	waitFrontier(b, bn.n, "clinic-a", want, 10*time.Minute)
	waitApplied(b, bn.n, 10*time.Minute)
	secs := time.Since(start).Seconds()
	tf.stop("clinic-b")
	tf.stop("clinic-a")
	return float64(total) / secs
}

// waitApplied waits until n holds no entry waiting for its data key.
func waitApplied(tb testing.TB, n *Node, d time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		held, err := n.txlog.Held()
		if err == nil && held == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s still holds %d entries after %s", n.id.Site, held, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkLiveReplication writes 1,000 transactions/s at one site for 5 s and
// measures, for every entry, the time from commit at the writer to applied at
// each of two peers.
func BenchmarkLiveReplication(b *testing.B) {
	for b.Loop() {
		p50p, p99p, _ := liveReplication(b, true)
		p50, p99, viaCatchUp := liveReplication(b, false)
		b.ReportMetric(p50, "p50-ms")
		b.ReportMetric(p99, "p99-ms")
		b.ReportMetric(p50p, "plain-p50-ms")
		b.ReportMetric(p99p, "plain-p99-ms")
		b.ReportMetric(viaCatchUp, "%-via-catch-up")
	}
}

// liveReplication runs one round of BenchmarkLiveReplication, entries sealed
// unless plain, and returns p50 and p99 in ms and the share that came by
// catch-up.
func liveReplication(b *testing.B, plain bool) (p50, p99, viaCatchUpPct float64) {
	const rate, seconds = 1000, 5
	mod := func(c *Config) { c.plain = plain }
	{
		tf := newTestFamily(b)
		tf.add("clinic-a", "site")
		tf.addKnowing("clinic-b", "site", "clinic-a")
		tf.add("clinic-c", "site")
		a := tf.startWith("clinic-a", mod)
		for _, addr := range a.n.mesh.Addrs() {
			tf.relay = addr
		}
		peers := []*running{tf.startWith("clinic-b", mod), tf.startWith("clinic-c", mod)}
		// Let the mesh form (gossip drops what is published before it does).
		writeMany(b, a.n, "clinic-a", 1)
		for _, p := range peers {
			waitFrontier(b, p.n, "clinic-a", 1, 30*time.Second)
		}
		if !plain { // every site holds the key before the measured writes
			tf.waitKeysSettled(30*time.Second, "clinic-a", "clinic-b", "clinic-c")
		}
		waitGossipPeers(b, 30*time.Second, a, peers[0], peers[1])

		var mu sync.Mutex
		committed := map[uint64]time.Time{}
		var lat []time.Duration
		var wg sync.WaitGroup
		for _, p := range peers {
			_, c := p.n.events.subscribe(1 << 62)
			wg.Go(func() {
				seen := 0
				for ev := range c {
					if ev.Type != EvReceived {
						continue
					}
					now := time.Now()
					var d struct{ From, To uint64 }
					if json.Unmarshal(ev.Data, &d) != nil {
						continue
					}
					mu.Lock()
					for s := d.From; s <= d.To; s++ {
						if t0, ok := committed[s]; ok {
							lat = append(lat, now.Sub(t0))
						}
					}
					mu.Unlock()
					if seen = int(d.To); seen >= rate*seconds+1 {
						p.n.events.unsubscribe(c)
						return
					}
				}
			})
		}
		tick := time.NewTicker(time.Second / rate)
		for i := 0; i < rate*seconds; i++ {
			<-tick.C
			s, err := a.n.txlog.Write(context.Background(), patientOps("clinic-a", i+1))
			if err != nil {
				b.Fatal(err)
			}
			mu.Lock()
			committed[s.Seq] = time.Now()
			mu.Unlock()
		}
		tick.Stop()
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if len(lat) == 0 {
			b.Fatal("no latencies measured")
		}
		p50 = float64(lat[len(lat)/2].Microseconds()) / 1000
		p99 = float64(lat[len(lat)*99/100].Microseconds()) / 1000
		// How the entries arrived: gossip, or catch-up after a gap (an entry
		// that overtook its predecessor) or a lost message.
		var viaGossip, viaCatchUp uint64
		for _, p := range peers {
			viaGossip += p.n.counters.receivedGossip.Load()
			viaCatchUp += p.n.counters.receivedCatchUp.Load()
		}
		viaCatchUpPct = 100 * float64(viaCatchUp) / float64(max(1, viaGossip+viaCatchUp))
		tf.stop("clinic-c")
		tf.stop("clinic-b")
		tf.stop("clinic-a")
	}
	return p50, p99, viaCatchUpPct
}

// BenchmarkSustained3 has three sites write as fast as they can for 3 s and
// reports the transactions per second the family absorbs: entries written by
// all, over the time until every site holds them all.
func BenchmarkSustained3(b *testing.B) {
	sites := []string{"clinic-a", "clinic-b", "clinic-c"}
	for b.Loop() {
		tf := newTestFamily(b)
		tf.add("clinic-a", "site")
		tf.addKnowing("clinic-b", "site", "clinic-a")
		tf.add("clinic-c", "site")
		// As a user runs them: the default heartbeat and sync interval (the
		// test family's are faster).
		userDefaults := func(c *Config) {
			c.HeartbeatInterval = mesh.DefaultHeartbeatInterval
			c.SyncInterval = Duration(DefaultSyncInterval)
		}
		a := tf.startWith("clinic-a", userDefaults)
		for _, addr := range a.n.mesh.Addrs() {
			tf.relay = addr
		}
		waitGossipPeers(b, 30*time.Second, a, tf.startWith("clinic-b", userDefaults), tf.startWith("clinic-c", userDefaults))
		start := time.Now()
		var wg sync.WaitGroup
		counts := make([]int, len(sites))
		for i, s := range sites {
			wg.Go(func() {
				n := tf.nodes[s].r.n
				for time.Since(start) < 3*time.Second {
					txs := make([][]wire.Op, 100)
					for j := range txs {
						txs[j] = patientOps(s, counts[i]+j)
					}
					out, err := n.txlog.WriteMany(context.Background(), txs)
					if err != nil {
						b.Error(err)
						return
					}
					counts[i] += len(out)
				}
			})
		}
		wg.Wait()
		total := 0
		for i, s := range sites {
			total += counts[i]
			for _, o := range sites {
				waitFrontier(b, tf.nodes[o].r.n, s, uint64(counts[i]), 5*time.Minute)
			}
		}
		secs := time.Since(start).Seconds()
		b.ReportMetric(float64(total)/secs, "family-tx/s")
		b.ReportMetric(float64(total)/3, "written-tx/s")
		var viaGossip, viaCatchUp, notGossiped uint64
		for _, s := range sites {
			viaGossip += tf.nodes[s].r.n.counters.receivedGossip.Load()
			viaCatchUp += tf.nodes[s].r.n.counters.receivedCatchUp.Load()
			notGossiped += tf.nodes[s].r.n.counters.publishDropped.Load()
		}
		b.ReportMetric(100*float64(viaCatchUp)/float64(max(1, viaGossip+viaCatchUp)), "%-via-catch-up")
		// Own entries beyond the gossip budget (or its queue): only catch-up
		// brings them.
		b.ReportMetric(100*float64(notGossiped)/float64(max(1, total)), "%-not-gossiped")
	}
}
