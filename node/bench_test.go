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
			out, err := n.txlog.WriteMany(context.Background(), txs)
			if err != nil {
				tb.Fatal(err)
			}
			n.sync.published(out)
			txs = txs[:0]
		}
	}
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
// apply), beside the local ingest rate of the same node measured in the same
// run (no network) as the ceiling.
func BenchmarkCatchUp1M(b *testing.B) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_BENCH_ENTRIES")); err == nil && v > 0 {
		total = v // a shorter run for profiling
	}
	for b.Loop() {
		tf := newTestFamily(b)
		tf.add("clinic-a", "site")
		tf.addKnowing("clinic-b", "site", "clinic-a")
		a := tf.start("clinic-a")
		for _, addr := range a.n.mesh.Addrs() {
			tf.relay = addr
		}
		writeMany(b, a.n, "clinic-a", total)
		start := time.Now()
		bn := tf.start("clinic-b")
		waitFrontier(b, bn.n, "clinic-a", uint64(total), 10*time.Minute)
		secs := time.Since(start).Seconds()
		b.ReportMetric(float64(total)/secs, "catch-up-entries/s")
		b.ReportMetric(float64(total)/secs/5500, "x-5.5k-reference")
		tf.stop("clinic-b")
		tf.stop("clinic-a")
	}
}

// BenchmarkLiveReplication writes 1,000 transactions/s at one site for 5 s and
// measures, for every entry, the time from commit at the writer to applied at
// each of two peers.
func BenchmarkLiveReplication(b *testing.B) {
	const rate, seconds = 1000, 5
	for b.Loop() {
		tf := newTestFamily(b)
		tf.add("clinic-a", "site")
		tf.addKnowing("clinic-b", "site", "clinic-a")
		tf.add("clinic-c", "site")
		a := tf.start("clinic-a")
		for _, addr := range a.n.mesh.Addrs() {
			tf.relay = addr
		}
		peers := []*running{tf.start("clinic-b"), tf.start("clinic-c")}
		// Let the mesh form (gossip drops what is published before it does).
		writeMany(b, a.n, "clinic-a", 1)
		for _, p := range peers {
			waitFrontier(b, p.n, "clinic-a", 1, 30*time.Second)
		}
		time.Sleep(2 * time.Second) // gossip mesh heartbeat settles; measured below, not asserted

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
			a.n.sync.published([]*wire.Signed{s})
		}
		tick.Stop()
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if len(lat) == 0 {
			b.Fatal("no latencies measured")
		}
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(len(lat)), "samples")
		// How the entries arrived: gossip, or catch-up after a gap (an entry
		// that overtook its predecessor) or a lost message.
		var viaGossip, viaCatchUp uint64
		for _, p := range peers {
			viaGossip += p.n.counters.receivedGossip.Load()
			viaCatchUp += p.n.counters.receivedCatchUp.Load()
		}
		b.ReportMetric(100*float64(viaCatchUp)/float64(max(1, viaGossip+viaCatchUp)), "%-via-catch-up")
	}
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
		a := tf.start("clinic-a")
		for _, addr := range a.n.mesh.Addrs() {
			tf.relay = addr
		}
		tf.start("clinic-b")
		tf.start("clinic-c")
		time.Sleep(2 * time.Second) // the mesh forms
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
					n.sync.published(out)
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
		var viaGossip, viaCatchUp uint64
		for _, s := range sites {
			viaGossip += tf.nodes[s].r.n.counters.receivedGossip.Load()
			viaCatchUp += tf.nodes[s].r.n.counters.receivedCatchUp.Load()
		}
		b.ReportMetric(100*float64(viaCatchUp)/float64(max(1, viaGossip+viaCatchUp)), "%-via-catch-up")
	}
}
