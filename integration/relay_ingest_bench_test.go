package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/txlog"
)

// BenchmarkIngestBesideFamilies measures what one family's catch-up through
// a relay costs the relay's other families, which share its database: quiet
// families each receive one entry every 20 ms (gossip, appended one at a
// time, each call returning once the entry is durable), first alone, then
// while a busy family's log takes a 200,000-entry backlog in runs of 4,000
// (as a catch-up delivers it), once with the runs stored as ingested tables
// (what the relay does) and once through the batch. It reports the quiet
// families' append latency (p50, p99, max) in each phase, its ratio to the
// same run's quiet phase, and the busy family's catch-up rate.
func BenchmarkIngestBesideFamilies(b *testing.B) {
	const quiet, perPhase, backlog, runLen = 50, 100, 200_000, 4000
	k := keys{"busy": newKey(b)}
	famID := func(name string) string {
		h := sha256.Sum256([]byte(name))
		return hex.EncodeToString(h[:])
	}
	quietChains := make([][]*wire.Signed, quiet)
	for i := range quiet {
		site := fmt.Sprintf("q%d", i)
		k[site] = newKey(b)
		quietChains[i] = signedChain(b, famID(site), site, k, 2*perPhase, true)
	}
	busyChain := signedChain(b, famID("busy"), "busy", k, backlog, false)

	type phase struct {
		p50, p99, max time.Duration
		catchUp       float64 // entries/s of the busy family, if it ran
	}
	// measure opens a relay database with a log per family and times the
	// quiet families' appends alone, then beside the busy family's catch-up.
	measure := func(ingest bool) (alone, beside phase) {
		dir := b.TempDir()
		db, err := store.Open(filepath.Join(dir, "db"), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		var in *store.Ingester
		if ingest {
			if in, err = store.NewIngester(db, filepath.Join(dir, "ingest"), store.Options{}); err != nil {
				b.Fatal(err)
			}
		}
		open := func(name string) *txlog.Log {
			space, err := store.FamilySpace(famID(name))
			if err != nil {
				b.Fatal(err)
			}
			l, err := txlog.Open(txlog.Config{DB: db, Ingest: in, Family: famID(name), Space: space, Keys: k,
				Apply: applyNothing{}, Clock: hlc.New(time.Now)})
			if err != nil {
				b.Fatal(err)
			}
			return l
		}
		logs := make([]*txlog.Log, quiet)
		for i := range quiet {
			logs[i] = open(fmt.Sprintf("q%d", i))
			defer logs[i].Close()
		}
		busy := open("busy")
		defer busy.Close()

		// quietPhase delivers entries [from, from+perPhase) of every quiet
		// family, one every 20 ms each, until they run out or stop is
		// closed, and returns the sorted latencies.
		quietPhase := func(from int, stop <-chan struct{}) []time.Duration {
			var mu sync.Mutex
			var lat []time.Duration
			var wg sync.WaitGroup
			for i := range quiet {
				wg.Go(func() {
					tick := time.NewTicker(20 * time.Millisecond)
					defer tick.Stop()
					for _, s := range quietChains[i][from : from+perPhase] {
						select {
						case <-tick.C:
						case <-stop:
							return
						}
						start := time.Now()
						if res, err := logs[i].AppendRemote(context.Background(), s); err != nil || res.Appended != 1 {
							b.Errorf("append %s: %+v %v", s.ID(), res, err)
							return
						}
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			slices.Sort(lat)
			return lat
		}
		stats := func(lat []time.Duration) phase {
			if len(lat) == 0 {
				b.Fatal("no latencies")
			}
			return phase{p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1]}
		}
		alone = stats(quietPhase(0, nil))

		done, stop := make(chan float64, 1), make(chan struct{})
		go func() {
			defer close(stop)
			start := time.Now()
			for i := 0; i < backlog; i += runLen {
				if res, err := busy.AppendRun(context.Background(), busyChain[i:i+runLen]); err != nil || res.Appended != runLen {
					b.Errorf("busy run at %d: %+v %v", i+1, res, err)
					break
				}
			}
			done <- float64(backlog) / time.Since(start).Seconds()
		}()
		// The quiet families go on while the catch-up runs (it is shorter
		// than their perPhase entries), so every latency measured here is
		// one beside it.
		lat := quietPhase(perPhase, stop)
		rate := <-done
		beside = stats(lat)
		beside.catchUp = rate
		return alone, beside
	}
	for b.Loop() {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		for _, ingest := range []bool{true, false} {
			name := "ingested"
			if !ingest {
				name = "batched"
			}
			alone, beside := measure(ingest)
			b.ReportMetric(ms(alone.p99), name+":alone-p99-ms")
			b.ReportMetric(ms(beside.p50), name+":beside-p50-ms")
			b.ReportMetric(ms(beside.p99), name+":beside-p99-ms")
			b.ReportMetric(ms(beside.max), name+":beside-max-ms")
			b.ReportMetric(float64(beside.p99)/float64(alone.p99), name+":p99-ratio")
			b.ReportMetric(beside.catchUp, name+":catch-up-entries/s")
			b.Logf("%s: quiet families' appends alone p50 %.1f ms, p99 %.1f ms, max %.1f ms; beside a catch-up at %.0f entries/s p50 %.1f ms, p99 %.1f ms, max %.1f ms",
				name, ms(alone.p50), ms(alone.p99), ms(alone.max), beside.catchUp, ms(beside.p50), ms(beside.p99), ms(beside.max))
		}
	}
}
