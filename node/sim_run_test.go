package node

import (
	"fmt"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/engine"
)

// --- faults ---------------------------------------------------------------------------

// process runs fn at exponential intervals of mean while on() holds.
func (w *simWorld) process(mean time.Duration, on func() bool, fn func()) {
	if mean <= 0 {
		return
	}
	var step func()
	step = func() {
		if !on() {
			return
		}
		fn()
		w.after(w.exp(mean), step)
	}
	w.after(w.exp(mean), step)
}

func (w *simWorld) aliveNodes(sitesOnly bool) []*simNode {
	var out []*simNode
	for _, n := range w.nodes {
		if n.alive && (!sitesOnly || n.site != "") {
			out = append(out, n)
		}
	}
	return out
}

func (w *simWorld) pick(ns []*simNode) *simNode {
	if len(ns) == 0 {
		return nil
	}
	return ns[w.rng.IntN(len(ns))]
}

// cutEdges cuts directed links for a while.
func (w *simWorld) cutEdges(edges [][2]int, d time.Duration, what string) {
	for _, e := range edges {
		w.cut[e[0]][e[1]]++
	}
	w.stats.partitions++
	w.tracef("PARTITION %s for %s", what, d)
	gen := w.healGen
	w.after(d, func() {
		if gen != w.healGen {
			return
		}
		for _, e := range edges {
			w.cut[e[0]][e[1]]--
		}
		w.tracef("HEAL %s", what)
	})
}

func (w *simWorld) partition() {
	k := len(w.nodes)
	d := 5*time.Second + time.Duration(w.rng.Int64N(int64(2*time.Minute)))
	var edges [][2]int
	switch w.rng.IntN(4) {
	case 0, 1: // one link, maybe one way
		a := w.rng.IntN(k)
		b := (a + 1 + w.rng.IntN(k-1)) % k
		if w.opt.OneWay && w.rng.IntN(2) == 0 {
			w.cutEdges([][2]int{{a, b}}, d, fmt.Sprintf("%s -/-> %s", w.nodes[a].id, w.nodes[b].id))
			return
		}
		w.cutEdges([][2]int{{a, b}, {b, a}}, d, fmt.Sprintf("%s <-/-> %s", w.nodes[a].id, w.nodes[b].id))
	case 2: // a node offline
		n := w.rng.IntN(k)
		for j := range k {
			if j != n {
				edges = append(edges, [2]int{n, j}, [2]int{j, n})
			}
		}
		w.cutEdges(edges, d, "isolate "+w.nodes[n].id)
	default: // split in two
		var left, right []string
		side := make([]bool, k)
		for i := range k {
			side[i] = w.rng.IntN(2) == 0
		}
		for i := range k {
			if side[i] {
				left = append(left, w.nodes[i].id)
			} else {
				right = append(right, w.nodes[i].id)
			}
			for j := range k {
				if side[i] != side[j] {
					edges = append(edges, [2]int{i, j})
				}
			}
		}
		w.cutEdges(edges, d, fmt.Sprintf("split %v | %v", left, right))
	}
}

func (w *simWorld) healAll() {
	w.healGen++
	for i := range w.cut {
		for j := range w.cut[i] {
			w.cut[i][j] = 0
		}
	}
}

func (w *simWorld) crashRandom() {
	n := w.pick(w.aliveNodes(false))
	if n == nil {
		return
	}
	w.crash(n, "random")
	down := time.Second + time.Duration(w.rng.Int64N(int64(time.Minute)))
	if w.rng.IntN(5) == 0 {
		down = time.Duration(w.rng.Int64N(int64(w.opt.Safety))) + time.Second // a long stretch offline
	}
	inc := n.inc
	w.after(down, func() {
		if !n.alive && n.inc == inc {
			w.restart(n)
		}
	})
}

// --- a whole run --------------------------------------------------------------------

// start boots every node and the background processes of the safety phase.
func (w *simWorld) start() {
	for _, n := range w.nodes {
		w.boot(n)
	}
	w.after(time.Second, w.monitor)
	w.faults, w.writes = true, true
	on := func() bool { return w.faults }
	w.process(w.opt.Write, func() bool { return w.writes }, func() {
		if n := w.pick(w.aliveNodes(true)); n != nil {
			w.write(n, 1+w.rng.IntN(w.opt.WriteMany))
		}
	})
	w.process(w.opt.Partition, on, w.partition)
	w.process(w.opt.Crash, on, w.crashRandom)
	w.process(w.opt.SyncNow, on, func() {
		if n := w.pick(w.aliveNodes(false)); n != nil {
			w.tracef("%s: Sync now", n.id)
			w.dial(n)
			w.drive(n, engine.SyncNow{Now: w.clock()}, nil)
		}
	})
	w.process(w.opt.Settings, on, func() {
		if n := w.pick(w.aliveNodes(false)); n != nil {
			n.interval = []time.Duration{5 * time.Second, 15 * time.Second, time.Minute}[w.rng.IntN(3)]
			w.tracef("%s: sync interval set to %s", n.id, n.interval)
			w.drive(n, engine.IntervalChanged{Now: w.clock(), Interval: n.interval}, nil)
		}
	})
}

// simFailure is a failed seed with what it takes to understand and replay it.
type simFailure struct {
	opt   simOptions
	err   error
	tail  string
	stats simStats
}

func (f simFailure) String() string {
	return fmt.Sprintf("seed %d FAILED: %v\noptions: %s\nreplay: PPSYNC_SIM_SEED=%d go test ./node -run 'TestSim$' -v\ntrace tail:\n%s",
		f.opt.Seed, f.err, f.opt, f.opt.Seed, f.tail)
}

// simRunSeed runs one seed on the model (or the real storage).
func simRunSeed(opt simOptions, real bool, keep bool, out func(string)) (*simWorld, error) {
	w := newSimRandomWorld(opt, real)
	defer w.close()
	w.trace.keep, w.trace.out = keep, out
	err := w.simulate()
	return w, err
}

// --- the phases of a run ------------------------------------------------------

// heal ends the safety phase: faults off, partitions healed, every node up.
func (w *simWorld) heal() {
	w.faults, w.writes = false, false
	w.healAll()
	w.tracef("LIVENESS: faults off, network healed, no more writes")
	for _, n := range w.nodes {
		w.restart(n)
	}
}

// spoil makes one node faulty for the first part of the liveness phase
// (TigerBeetle's "healthy enough" cluster): down, mute (its messages are
// lost) or deaf (messages to it are lost). The others must still converge.
func (w *simWorld) spoil() *simNode {
	var cands []*simNode
	for _, n := range w.nodes {
		if !(w.opt.Star && n.site == "") { // in a star the relay holds the core together
			cands = append(cands, n)
		}
	}
	b := w.pick(cands)
	w.tracef("LIVENESS with %s %s", b.id, w.opt.Bad)
	for _, p := range w.nodes {
		switch {
		case p == b:
		case w.opt.Bad == "mute":
			w.cut[b.idx][p.idx]++
		case w.opt.Bad == "deaf":
			w.cut[p.idx][b.idx]++
		}
	}
	if w.opt.Bad == "down" {
		w.crash(b, "kept down")
	}
	return b
}

// missing says what keeps the nodes other than bad (nil: all nodes) from
// having converged, or "" when they have: each holds every acknowledged
// entry of every site but bad's, and of bad's site as much as any of them.
func (w *simWorld) missing(bad *simNode) string {
	for _, site := range w.sites {
		want := uint64(len(w.truth[site]))
		if bad != nil && bad.site == site {
			want = 0
			for _, n := range w.nodes {
				if n != bad {
					want = max(want, n.store.Frontier()[site])
				}
			}
		}
		for _, n := range w.nodes {
			if n == bad {
				continue
			}
			if !n.alive {
				return n.id + " is down"
			}
			if f := n.store.Frontier(); f[site] != want {
				return fmt.Sprintf("%s holds %s up to %d of %d (frontier %s)", n.id, site, f[site], want, simFrontier(f))
			}
		}
	}
	return ""
}

// converge runs until missing(bad) is "" or bound passes.
func (w *simWorld) converge(bad *simNode, bound time.Duration) (time.Duration, error) {
	start := w.now
	for {
		if w.violation != nil {
			return 0, w.violation
		}
		m := w.missing(bad)
		if m == "" {
			return w.now - start, nil
		}
		if w.now-start >= bound {
			return 0, fmt.Errorf("no convergence within %s: %s", bound, m)
		}
		w.runUntil(w.now + time.Second)
	}
}

// check verifies the end state: every acknowledged entry at every node with
// its acknowledged hash, each applied exactly once, equal digests.
func (w *simWorld) check() error {
	if w.violation != nil {
		return w.violation
	}
	total := 0
	for _, site := range w.sites {
		total += len(w.truth[site])
	}
	var digest wire.Hash
	for i, n := range w.nodes {
		for _, site := range w.sites {
			for seq, h := range w.truth[site] {
				id := wire.ID{Site: site, Seq: uint64(seq + 1)}
				got, ok := n.store.HashAt(site, id.Seq)
				if !ok || got != h {
					return fmt.Errorf("%s lost acknowledged entry %s", n.id, id)
				}
				if c := n.applied[id]; c != 1 {
					return fmt.Errorf("%s applied %s %d times", n.id, id, c)
				}
			}
		}
		if len(n.applied) != total {
			return fmt.Errorf("%s applied %d entries, %d were acknowledged", n.id, len(n.applied), total)
		}
		d := n.store.Digest()
		if i == 0 {
			digest = d
		} else if d != digest {
			return fmt.Errorf("%s has digest %s, %s has %s", n.id, d.Short(), w.nodes[0].id, digest.Short())
		}
		w.checkEngine(n)
	}
	return w.violation
}

// simulate runs one seed: safety phase; liveness with one faulty node (when
// the seed says so), then with every node healthy; probe; end-state checks.
func (w *simWorld) simulate() error {
	w.start()
	w.runUntil(w.opt.Safety)
	if w.violation != nil {
		return w.violation
	}
	w.heal()
	if w.opt.Bad != "" {
		b := w.spoil()
		// Progress is required, not just repair: every live site writes.
		for _, n := range w.nodes {
			if n.alive && n.site != "" {
				w.write(n, 1)
			}
		}
		d, err := w.converge(b, w.opt.Bound)
		if err != nil {
			return fmt.Errorf("liveness with %s %s: %w", b.id, w.opt.Bad, err)
		}
		w.stats.core = d
		w.healAll()
		w.restart(b)
		w.tracef("LIVENESS: %s healthy again", b.id)
	}
	d, err := w.converge(nil, w.opt.Bound)
	if err != nil {
		return fmt.Errorf("liveness: %w", err)
	}
	w.stats.converge = d
	// Probe: one more entry per site with gossip off. Only the engine's
	// anti-entropy (heartbeats, rounds) can deliver them: an engine that
	// stopped fetching would show here.
	w.gossipOff = true
	w.tracef("PROBE: one entry per site, gossip off")
	for _, n := range w.nodes {
		if n.site != "" {
			w.write(n, 1)
		}
	}
	if d, err = w.converge(nil, w.opt.Bound); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	w.stats.probe = d
	return w.check()
}
