//go:build linux

package fault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Fault kinds of the randomized schedules.
const (
	FaultKillSite    = "kill-9-site"            // kill -9 a site during writes; restart it after the hold
	FaultKillRelay   = "kill-9-relay"           // kill -9 the relay during writes; restart it
	FaultKillCatchUp = "kill-9-during-catch-up" // kill a node, write a burst elsewhere, restart it and kill it again while it catches up
	FaultRestart     = "restart"                // SIGTERM and start again
	FaultFreeze      = "sigstop"                // SIGSTOP for the hold, then SIGCONT
	FaultPartition   = "partition"              // cut two nodes apart (two sites: the relay is their only path)
	FaultOneWay      = "one-way-partition"      // stall the bytes from one node to another
	FaultIsolate     = "isolate"                // cut one node from every other
	FaultSplit       = "split"                  // cut the family into two groups
	FaultRelayOnly   = "relay-only-path"        // cut every site-to-site link: everything goes through the relay
	FaultStall       = "stall"                  // both directions between two nodes stall (Net.Stall: no reset, new connections unanswered)
	FaultOffline     = "long-offline"           // a site offline (cut off or stopped) while the others write tens of thousands of entries
	FaultClockJump   = "clock-jump"             // restart a site with its clock shifted (PPSYNC_CLOCK_OFFSET)
)

// processFaults act on a node's process; two never overlap on one node.
var processFaults = []string{FaultKillSite, FaultKillRelay, FaultKillCatchUp, FaultRestart, FaultFreeze, FaultOffline, FaultClockJump}

// networkFaults need nodes in namespaces of their own.
var networkFaults = []string{FaultPartition, FaultOneWay, FaultIsolate, FaultSplit, FaultRelayOnly, FaultStall}

// Step is one fault of a plan.
type Step struct {
	At     time.Duration `json:"at"`
	Kind   string        `json:"kind"`
	Nodes  []string      `json:"nodes"`            // targets; for split, the first group
	Hold   time.Duration `json:"hold"`             // how long the fault lasts
	Burst  int           `json:"burst,omitempty"`  // entries written elsewhere meanwhile (offline, catch-up)
	Offset string        `json:"offset,omitempty"` // clock offset (clock-jump)
	Stop   bool          `json:"stop,omitempty"`   // offline by stopping the process (else cut off)
}

func (s Step) String() string {
	x := fmt.Sprintf("t+%-6s %-22s %-28s hold %s", s.At.Round(100*time.Millisecond), s.Kind, strings.Join(s.Nodes, ","), s.Hold.Round(100*time.Millisecond))
	if s.Burst > 0 {
		x += fmt.Sprintf(" burst %d", s.Burst)
	}
	if s.Offset != "" {
		x += " offset " + s.Offset
	}
	if s.Stop {
		x += " (stopped)"
	}
	return x
}

// Plan is a fault schedule drawn from a seed.
type Plan struct {
	Seed     uint64        `json:"seed"`
	Sites    int           `json:"sites"`
	Duration time.Duration `json:"duration"`
	Load     LoadOptions   `json:"load"`
	Steps    []Step        `json:"steps"`
}

func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan seed %d: relay + %d sites, %s of faults under load (%.0f tx/s per site):\n", p.Seed, p.Sites, p.Duration, p.Load.Rate)
	for _, s := range p.Steps {
		b.WriteString("  " + s.String() + "\n")
	}
	return b.String()
}

// PlanOptions bound a plan.
type PlanOptions struct {
	Duration time.Duration // fault phase (default 20s)
	Sites    int           // 0: 3 to 5, drawn from the seed
	Kinds    []string      // allowed fault kinds (default: all but clock jumps)
	Isolated bool          // network faults possible
	BurstMax int           // largest burst of the offline and catch-up faults (default 20000)
}

// SchedulePlan is the plan of a schedule of length d (its bursts grow with it).
func SchedulePlan(d time.Duration) PlanOptions {
	return PlanOptions{Duration: d, BurstMax: min(30000, max(3000, int(d.Seconds())*300))}
}

// DefaultKinds are the fault kinds of the schedules.
func DefaultKinds() []string {
	return []string{FaultKillSite, FaultKillRelay, FaultKillCatchUp, FaultRestart, FaultFreeze, FaultOffline,
		FaultPartition, FaultOneWay, FaultIsolate, FaultSplit, FaultRelayOnly, FaultStall}
}

// NewPlan draws a schedule from seed: the same seed and options always give
// the same plan.
func NewPlan(seed uint64, o PlanOptions) Plan {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	if o.Kinds == nil {
		o.Kinds = DefaultKinds()
	}
	if o.BurstMax <= 0 {
		o.BurstMax = 20000
	}
	p := Plan{Seed: seed, Sites: o.Sites, Duration: o.Duration}
	if p.Sites <= 0 {
		p.Sites = 3 + rng.IntN(3)
	}
	p.Load = LoadOptions{Rate: float64(10 + rng.IntN(21)), BatchP: 0.02 + rng.Float64()*0.06, BatchMax: 50 + rng.IntN(250), OwnP: 0.3, HotP: 0.2}
	var kinds []string
	for _, k := range o.Kinds {
		if o.Isolated || !slices.Contains(networkFaults, k) {
			kinds = append(kinds, k)
		}
	}
	sites := make([]string, p.Sites)
	for i := range sites {
		sites[i] = fmt.Sprintf("clinic-%d", i+1)
	}
	all := append([]string{RelayName}, sites...)
	busy := map[string]time.Duration{} // node -> end of its last process fault
	dur := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(time.Second))
	}
	pick := func(from []string) string { return from[rng.IntN(len(from))] }
	free := func(from []string, at time.Duration) []string {
		var out []string
		for _, n := range from {
			if busy[n] <= at {
				out = append(out, n)
			}
		}
		return out
	}
	two := func(from []string) []string {
		a := rng.IntN(len(from))
		b := (a + 1 + rng.IntN(len(from)-1)) % len(from)
		return []string{from[a], from[b]}
	}
	for at := dur(0.5, 2); at < o.Duration && len(kinds) > 0; at += dur(0.7, 3) {
		s := Step{At: at, Kind: pick(kinds)}
		switch s.Kind {
		case FaultKillSite, FaultRestart, FaultFreeze, FaultClockJump:
			c := free(sites, at)
			if len(c) == 0 {
				continue
			}
			s.Nodes, s.Hold = []string{pick(c)}, dur(0.2, 5)
			if s.Kind == FaultClockJump {
				s.Offset = (time.Duration(rng.IntN(601)-300) * time.Second).String()
			}
		case FaultKillRelay:
			if busy[RelayName] > at {
				continue
			}
			s.Nodes, s.Hold = []string{RelayName}, dur(0.2, 4)
		case FaultKillCatchUp:
			c := free(all, at)
			if len(c) == 0 {
				continue
			}
			s.Nodes, s.Hold, s.Burst = []string{pick(c)}, dur(0.2, 3), 2000+rng.IntN(max(1, o.BurstMax/2))
		case FaultOffline:
			c := free(sites, at)
			if len(c) == 0 {
				continue
			}
			s.Nodes, s.Hold, s.Burst = []string{pick(c)}, dur(1, 4), o.BurstMax/2+rng.IntN(o.BurstMax/2+1)
			s.Stop = !o.Isolated || rng.IntN(2) == 0
		case FaultPartition, FaultStall:
			s.Nodes, s.Hold = two(all), dur(1, 8)
			if rng.IntN(3) > 0 { // mostly two sites: the relay stays their path
				s.Nodes = two(sites)
			}
		case FaultOneWay:
			s.Nodes, s.Hold = two(all), dur(1, 8)
		case FaultIsolate:
			s.Nodes, s.Hold = []string{pick(all)}, dur(1, 8)
		case FaultSplit:
			perm := rng.Perm(len(all))
			k := 1 + rng.IntN(len(all)-1)
			for _, i := range perm[:k] {
				s.Nodes = append(s.Nodes, all[i])
			}
			slices.Sort(s.Nodes)
			s.Hold = dur(1, 8)
		case FaultRelayOnly:
			s.Nodes, s.Hold = append([]string(nil), sites...), dur(2, 10)
		}
		if slices.Contains(processFaults, s.Kind) {
			end := at + s.Hold + 5*time.Second
			if s.Burst > 0 {
				end += time.Duration(s.Burst) * time.Millisecond // generous: bursts take a while
			}
			for _, n := range s.Nodes {
				busy[n] = end
			}
		}
		p.Steps = append(p.Steps, s)
	}
	return p
}

// faultRunner executes a plan's steps against a harness.
type faultRunner struct {
	h     *Harness
	rng   *rand.Rand // bursts' content
	rngMu sync.Mutex
	locks map[string]*sync.Mutex // one process fault per node at a time
}

func (r *faultRunner) node(name string) *Node {
	if name == RelayName {
		return r.h.Relay
	}
	return r.h.Site(name)
}

func (r *faultRunner) lock(name string) func() {
	m := r.locks[name]
	m.Lock()
	return m.Unlock
}

// hold waits out a fault's duration (a schedule, not a wait for a condition).
func hold(ctx context.Context, d time.Duration) { _ = pause(ctx, d) }

// run executes one step, healing it at the end of its hold.
func (r *faultRunner) run(ctx context.Context, s Step) error {
	h := r.h
	h.countFault(s.Kind)
	switch s.Kind {
	case FaultKillSite, FaultKillRelay:
		n := r.node(s.Nodes[0])
		defer r.lock(n.Name)()
		if err := r.kill(n); err != nil {
			return err
		}
		hold(ctx, s.Hold)
		return n.Start(ctx)
	case FaultRestart:
		n := r.node(s.Nodes[0])
		defer r.lock(n.Name)()
		if err := r.stop(n); err != nil {
			return err
		}
		hold(ctx, s.Hold)
		return n.Start(ctx)
	case FaultClockJump:
		n := r.node(s.Nodes[0])
		defer r.lock(n.Name)()
		if err := r.stop(n); err != nil {
			return err
		}
		n.SetEnv("PPSYNC_CLOCK_OFFSET", s.Offset)
		hold(ctx, s.Hold)
		return n.Start(ctx)
	case FaultFreeze:
		n := r.node(s.Nodes[0])
		defer r.lock(n.Name)()
		if err := n.Freeze(); err != nil {
			return err
		}
		hold(ctx, s.Hold)
		return n.Thaw()
	case FaultKillCatchUp:
		return r.killDuringCatchUp(ctx, s)
	case FaultOffline:
		return r.offline(ctx, s)
	}
	// Network faults.
	var pairs [][2]string
	oneWay := false
	switch s.Kind {
	case FaultPartition, FaultStall:
		pairs = [][2]string{{s.Nodes[0], s.Nodes[1]}}
	case FaultOneWay:
		pairs, oneWay = [][2]string{{s.Nodes[0], s.Nodes[1]}}, true
	case FaultIsolate:
		for _, n := range h.Nodes() {
			if n.Name != s.Nodes[0] {
				pairs = append(pairs, [2]string{s.Nodes[0], n.Name})
			}
		}
	case FaultSplit:
		for _, a := range s.Nodes {
			for _, n := range h.Nodes() {
				if !slices.Contains(s.Nodes, n.Name) {
					pairs = append(pairs, [2]string{a, n.Name})
				}
			}
		}
	case FaultRelayOnly:
		for i, a := range s.Nodes {
			for _, b := range s.Nodes[i+1:] {
				pairs = append(pairs, [2]string{a, b})
			}
		}
	default:
		return fmt.Errorf("fault: unknown fault kind %q", s.Kind)
	}
	for _, p := range pairs {
		var err error
		switch {
		case oneWay:
			err = h.Net.Block(p[0], p[1])
		case s.Kind == FaultStall:
			err = h.Net.Stall(p[0], p[1])
		default:
			err = h.Net.Cut(p[0], p[1])
		}
		if err != nil {
			return err
		}
	}
	hold(ctx, s.Hold)
	for _, p := range pairs {
		switch {
		case oneWay:
			h.Net.Unblock(p[0], p[1])
		case s.Kind == FaultStall:
			h.Net.Unstall(p[0], p[1])
		default:
			h.Net.Mend(p[0], p[1])
		}
	}
	return nil
}

// stop stops n with SIGTERM; a clean stop exits 0.
func (r *faultRunner) stop(n *Node) error {
	code, err := n.Stop()
	if err == nil && code != 0 {
		r.h.Violate("stop", "%s exited %d after SIGTERM, want 0:\n%s", n.Name, code, n.LogTail(15))
	}
	return err
}

// kill kills n with SIGKILL and arranges the durability check of its next
// start: its own log must hold every write acknowledged before the kill.
func (r *faultRunner) kill(n *Node) error {
	if err := n.Kill(); err != nil {
		return err
	}
	if n.Role != "site" {
		return nil
	}
	acked := r.h.Ledger.MaxAcked()[n.Site]
	n.mu.Lock()
	n.onReady = func(n *Node) {
		st, err := n.Status(context.Background())
		if err != nil {
			return
		}
		if st.Frontier[n.Site] < acked {
			r.h.Violate("durability", "%s restarted after kill -9 with its own log at %d, but %d was acknowledged before the kill", n.Name, st.Frontier[n.Site], acked)
		}
	}
	n.mu.Unlock()
	return nil
}

// burst writes k entries spread over the running sites other than skip.
func (r *faultRunner) burst(ctx context.Context, k int, skip string) int {
	var writers []*Node
	for _, s := range r.h.Sites {
		if s.Name != skip && s.Client() != nil && !s.Frozen() {
			writers = append(writers, s)
		}
	}
	if len(writers) == 0 || k <= 0 {
		return 0
	}
	r.rngMu.Lock()
	seeds := make([]uint64, len(writers))
	for i := range seeds {
		seeds[i] = r.rng.Uint64()
	}
	r.rngMu.Unlock()
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for i, w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, _ := r.h.Bulk(ctx, w, k/len(writers), 2500, rand.New(rand.NewPCG(seeds[i], 7)))
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total
}

// killDuringCatchUp: kill -9 the node, let the others write a burst, start
// it, and kill it again as soon as its frontier shows that catch-up has begun
// (or has ended: then the kill was after catch-up); restart after the hold.
func (r *faultRunner) killDuringCatchUp(ctx context.Context, s Step) error {
	n := r.node(s.Nodes[0])
	defer r.lock(n.Name)()
	if err := r.kill(n); err != nil {
		return err
	}
	wrote := r.burst(ctx, s.Burst, n.Name)
	target := r.h.Ledger.MaxAcked()
	if err := n.Start(ctx); err != nil {
		return err
	}
	st0, err := n.Status(ctx)
	if err != nil {
		return err
	}
	mid := false
	_, _ = waitFor(ctx, 5*time.Second, 5*time.Millisecond, "catch-up to begin", func() (bool, string) {
		st, err := n.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		behind, moved := false, false
		for site, seq := range target {
			if site == n.Site {
				continue
			}
			behind = behind || st.Frontier[site] < seq
			moved = moved || st.Frontier[site] > st0.Frontier[site]
		}
		mid = behind && moved
		return moved || !behind, "no progress yet"
	})
	if mid {
		r.h.countFault(FaultKillCatchUp + "/seen-mid-way") // of those, how many hit a catch-up in progress
	}
	r.h.Logf("%s: killing %s again after a burst of %d (catch-up under way: %v)", FaultKillCatchUp, n.Name, wrote, mid)
	if err := r.kill(n); err != nil {
		return err
	}
	hold(ctx, s.Hold)
	return n.Start(ctx)
}

// offline takes a site off (its process stopped, or every link cut) while the
// other sites write a large burst, then brings it back.
func (r *faultRunner) offline(ctx context.Context, s Step) error {
	h := r.h
	n := r.node(s.Nodes[0])
	defer r.lock(n.Name)()
	if s.Stop || !h.Net.Isolated() {
		if err := r.stop(n); err != nil {
			return err
		}
	} else {
		for _, o := range h.Nodes() {
			if o != n {
				if err := h.Net.Cut(n.Name, o.Name); err != nil {
					return err
				}
			}
		}
	}
	start := time.Now()
	wrote := r.burst(ctx, s.Burst, n.Name)
	h.Logf("%s: %s was offline while the others wrote %d entries in %s", FaultOffline, n.Name, wrote, time.Since(start).Round(time.Millisecond))
	hold(ctx, s.Hold)
	if s.Stop || !h.Net.Isolated() {
		return n.Start(ctx)
	}
	for _, o := range h.Nodes() {
		if o != n {
			h.Net.Mend(n.Name, o.Name)
		}
	}
	return nil
}

// HealAll ends every fault: links restored, frozen nodes continued, stopped
// nodes started.
func (h *Harness) HealAll(ctx context.Context) error {
	h.Net.HealAll()
	return h.each(h.Nodes(), func(n *Node) error {
		if err := n.Thaw(); err != nil {
			return err
		}
		return n.Start(ctx)
	})
}

// RunPlan runs a plan's faults under write load, then heals everything and
// stops the load. It returns when the plan is over; convergence is next.
func (h *Harness) RunPlan(ctx context.Context, p Plan) error {
	r := &faultRunner{h: h, rng: rand.New(rand.NewPCG(p.Seed, 0xb0b)), locks: map[string]*sync.Mutex{}}
	for _, n := range h.Nodes() {
		r.locks[n.Name] = &sync.Mutex{}
	}
	load := h.StartLoad(ctx, h.Sites, p.Load)
	defer load.Stop()
	start := time.Now()
	errs := make(chan error, len(p.Steps))
	var wg sync.WaitGroup
	for _, s := range p.Steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pause(ctx, time.Until(start.Add(s.At))); err != nil {
				return
			}
			h.Logf("fault %s", s)
			if err := r.run(ctx, s); err != nil {
				errs <- fmt.Errorf("step %s: %w", s, err)
			}
		}()
	}
	_ = pause(ctx, time.Until(start.Add(p.Duration)))
	wg.Wait()
	close(errs)
	var all []string
	for err := range errs {
		all = append(all, err.Error())
	}
	if len(all) > 0 {
		return fmt.Errorf("fault: %s", strings.Join(all, "; "))
	}
	return ctx.Err()
}
