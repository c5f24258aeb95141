package node

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// simRegressionSeeds are seeds that once found a bug: they run on every test
// run, whatever PPSYNC_SIM_SEEDS says.
var simRegressionSeeds = []uint64{}

// TestSim runs the deterministic simulation over many seeds: 1..N (N is
// simSeeds, or PPSYNC_SIM_SEEDS), the regression seeds, and a few random
// seeds that it prints. PPSYNC_SIM_SEED=n replays one seed with its full
// trace.
func TestSim(t *testing.T) {
	if s := os.Getenv("PPSYNC_SIM_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PPSYNC_SIM_SEED=%q: %v", s, err)
		}
		opt := simOptionsFor(seed)
		t.Logf("options: %s", opt)
		w, err := simRunSeed(opt, false, false, func(l string) { t.Log(l) })
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		t.Logf("seed %d converged %s after the faults stopped, probe %s; stats %+v", seed, w.stats.converge, w.stats.probe, w.stats)
		return
	}
	n := simSeeds
	if s := os.Getenv("PPSYNC_SIM_SEEDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("PPSYNC_SIM_SEEDS=%q: want a positive number", s)
		}
		n = v
	}
	var seeds []uint64
	for i := 1; i <= n; i++ {
		seeds = append(seeds, uint64(i))
	}
	seeds = append(seeds, simRegressionSeeds...)
	for range 3 {
		r := rand.Uint64() >> 1
		t.Logf("random seed %d (replay: PPSYNC_SIM_SEED=%d)", r, r)
		seeds = append(seeds, r)
	}
	start := time.Now()
	fails, stats := simRunMany(seeds)
	for i, f := range fails {
		if i < 3 {
			t.Error(f.String())
		} else {
			t.Errorf("seed %d FAILED: %v", f.opt.Seed, f.err)
		}
	}
	t.Logf("%d seeds in %s: %s", len(seeds), time.Since(start).Round(time.Millisecond), stats)
}

// simSummary sums up many runs.
type simSummary struct {
	runs                                                             int
	acked, sessions, failed, crashes, partitions, lost, dups, resets int
	gossip, catchup                                                  int
	core, converge, probe                                            []time.Duration
}

func (s *simSummary) add(st simStats) {
	s.runs++
	s.acked += st.acked
	s.sessions += st.sessions
	s.failed += st.failed
	s.crashes += st.crashes
	s.partitions += st.partitions
	s.lost += st.lost
	s.dups += st.dups
	s.resets += st.resets
	s.gossip += st.appendedGossip
	s.catchup += st.appendedCatchup
	if st.core > 0 {
		s.core = append(s.core, st.core)
	}
	s.converge = append(s.converge, st.converge)
	s.probe = append(s.probe, st.probe)
}

func (s *simSummary) String() string {
	q := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return fmt.Sprintf("p50 %s max %s", ds[len(ds)/2], ds[len(ds)-1])
	}
	return fmt.Sprintf("%d converged; %d entries acknowledged (appended %d via gossip, %d via catch-up); "+
		"%d sessions (%d failed, %d reset); %d crashes; %d partitions; %d messages lost, %d duplicated; "+
		"time to converge with one node down/mute/deaf %s, after all faults %s, probe (gossip off) %s",
		s.runs, s.acked, s.gossip, s.catchup, s.sessions, s.failed, s.resets, s.crashes, s.partitions, s.lost, s.dups,
		q(s.core), q(s.converge), q(s.probe))
}

// simRunMany runs seeds on all cores (each seed alone is single-threaded and
// deterministic) and returns the failures in seed order.
func simRunMany(seeds []uint64) ([]simFailure, *simSummary) {
	type result struct {
		fail  *simFailure
		stats simStats
	}
	results := make([]result, len(seeds))
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				opt := simOptionsFor(seeds[i])
				w, err := simRunSeed(opt, false, false, nil)
				results[i].stats = w.stats
				if err != nil {
					results[i].fail = &simFailure{opt: opt, err: err, tail: w.trace.tail(), stats: w.stats}
				}
			}
		})
	}
	for i := range seeds {
		next <- i
	}
	close(next)
	wg.Wait()
	var fails []simFailure
	sum := &simSummary{}
	for _, r := range results {
		if r.fail != nil {
			fails = append(fails, *r.fail)
			continue
		}
		sum.add(r.stats)
	}
	return fails, sum
}

// TestSimDeterministic: a seed replays to the same trace, line for line.
func TestSimDeterministic(t *testing.T) {
	for _, seed := range []uint64{3, 11} {
		opt := simOptionsFor(seed)
		a, errA := simRunSeed(opt, false, true, nil)
		b, errB := simRunSeed(opt, false, true, nil)
		if fmt.Sprint(errA) != fmt.Sprint(errB) {
			t.Fatalf("seed %d: outcomes differ: %v / %v", seed, errA, errB)
		}
		if i := simDiverge(a.trace.all, b.trace.all); i >= 0 {
			t.Fatalf("seed %d: traces diverge at line %d:\n%s\n%s", seed, i, simLineAt(a.trace.all, i), simLineAt(b.trace.all, i))
		}
		if len(a.trace.all) < 100 {
			t.Fatalf("seed %d: only %d trace lines", seed, len(a.trace.all))
		}
	}
}

// TestSimRealStorage runs a few seeds on the real txlog and state (in-memory,
// crashable Pebble; a crash keeps only what was synced) and requires the same
// trace as the model gives for the same seed: every append, gap, duplicate
// and session outcome agrees. PPSYNC_SIM_REAL_SEEDS=n runs seeds 1..n.
func TestSimRealStorage(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6}
	if simRace {
		seeds = seeds[:4]
	}
	if s := os.Getenv("PPSYNC_SIM_REAL_SEEDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("PPSYNC_SIM_REAL_SEEDS=%q: want a positive number", s)
		}
		seeds = seeds[:0]
		for i := 1; i <= v; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	for _, seed := range seeds {
		opt := simOptionsFor(seed)
		opt.Nodes = min(opt.Nodes, 5)
		opt.Safety = min(opt.Safety, time.Minute)
		m, errM := simRunSeed(opt, false, true, nil)
		r, errR := simRunSeed(opt, true, true, nil)
		if errR != nil {
			t.Fatalf("%s", simFailure{opt: opt, err: errR, tail: r.trace.tail()})
		}
		if errM != nil {
			t.Fatalf("model: %s", simFailure{opt: opt, err: errM, tail: m.trace.tail()})
		}
		if i := simDiverge(m.trace.all, r.trace.all); i >= 0 {
			t.Fatalf("seed %d: model and real storage diverge at trace line %d:\nmodel: %s\nreal:  %s\noptions: %s",
				seed, i, simLineAt(m.trace.all, i), simLineAt(r.trace.all, i), opt)
		}
		if len(seeds) <= 10 {
			t.Logf("seed %d: %d trace lines agree; %d entries acknowledged, %d crashes", seed, len(r.trace.all), r.stats.acked, r.stats.crashes)
		}
	}
}

func simDiverge(a, b []string) int {
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}

func simLineAt(l []string, i int) string {
	if i < len(l) {
		return l[i]
	}
	return "(end of trace)"
}
