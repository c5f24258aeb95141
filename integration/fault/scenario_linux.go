//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// ConvergeTimeout bounds the wait for convergence after the last fault healed.
const ConvergeTimeout = 2 * time.Minute

// ErrSkip says a scenario cannot run here; the error's text says why.
var ErrSkip = errors.New("fault: scenario skipped")

// Env is what every scenario needs.
type Env struct {
	Bin     string               // ppsync binary
	Dir     string               // a fresh directory for this scenario
	Logf    func(string, ...any) // progress
	Cleanup func(func())         // registers cleanups (t.Cleanup); may be nil
}

// options are the harness options of a scenario with sites sites.
func (e Env) options(seed uint64, sites int) Options {
	return Options{Bin: e.Bin, Dir: e.Dir, Sites: sites, Seed: seed, Logf: e.Logf, Cleanup: e.Cleanup}
}

// Result is what one scenario did and found.
type Result struct {
	Name       string         `json:"name"`
	Seed       uint64         `json:"seed"`
	Plan       *Plan          `json:"plan,omitempty"`
	Acked      int            `json:"acked"`
	Unknown    int            `json:"unknown"`
	Refused    map[string]int `json:"refused,omitempty"`
	Faults     map[string]int `json:"faults"`
	Converge   time.Duration  `json:"converge"` // from the last heal to convergence
	Violations []Violation    `json:"violations"`
	Notes      []string       `json:"notes,omitempty"` // measured facts worth reporting
}

var (
	isolateOnce sync.Once
	isolateErr  error
)

// CanIsolate reports (once per process) whether nodes get network namespaces
// of their own; when they cannot, the error says why. PPSYNC_FAULT_SHARED set
// forces the shared mode.
func CanIsolate() error {
	isolateOnce.Do(func() {
		if os.Getenv("PPSYNC_FAULT_SHARED") != "" {
			isolateErr = errors.New("PPSYNC_FAULT_SHARED is set")
			return
		}
		isolateErr = canIsolate()
	})
	return isolateErr
}

// finish fills a result from a harness.
func (h *Harness) finish(r *Result) {
	r.Acked, r.Unknown = len(h.Ledger.Acked()), len(h.Ledger.Unknown())
	r.Refused, r.Faults = h.Ledger.Refused(), h.Faults()
	r.Violations = h.Violations()
	if len(r.Violations) > 0 {
		h.DumpLogs(40)
	}
}

// settle heals every fault, waits for convergence of nodes and checks the
// state, then stops the nodes and verifies their data directories.
func (h *Harness) settle(ctx context.Context, r *Result, nodes []*Node, o CheckOptions) {
	if err := h.HealAll(ctx); err != nil {
		h.Violate("heal", "%v", err)
	}
	h.settleAsIs(ctx, r, nodes, o)
}

// settleAsIs is settle without the heal: the network stays as it is (links
// cut for good stay cut).
func (h *Harness) settleAsIs(ctx context.Context, r *Result, nodes []*Node, o CheckOptions) {
	took, digest, err := h.Converge(ctx, nodes, ConvergeTimeout, o)
	r.Converge = took
	if err != nil {
		h.Violate("liveness", "%v", err)
		digest = ""
	} else {
		h.Logf("converged %s after the last heal (digest %.16s)", took.Round(time.Millisecond), digest)
	}
	h.CheckState(ctx, nodes, o)
	reps := h.StopAndVerify(ctx, nodes, digest)
	for _, n := range nodes {
		if n.Role == "relay" {
			h.Logf("verify: every node re-checked its logs (%d entries at %s)", reps[n.Name].Entries, n.Name)
		}
	}
}

// RunSchedule runs the randomized fault schedule of seed on a new family and
// checks every invariant afterwards.
func RunSchedule(ctx context.Context, env Env, seed uint64, po PlanOptions) (res Result, err error) {
	po.Isolated = CanIsolate() == nil
	plan := NewPlan(seed, po)
	res = Result{Name: "schedule", Seed: seed, Plan: &plan}
	env.Logf("%s", plan)
	h, err := New(ctx, env.options(seed, plan.Sites))
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	if err := h.StartAll(ctx); err != nil {
		return res, err
	}
	if err := h.RunPlan(ctx, plan); err != nil {
		h.Violate("schedule", "%v", err)
	}
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// String summarizes a result in one line.
func (r Result) String() string {
	return fmt.Sprintf("%s seed %d: %d acknowledged, %d unknown, faults %v, converged in %s, %d violations",
		r.Name, r.Seed, r.Acked, r.Unknown, r.Faults, r.Converge.Round(time.Millisecond), len(r.Violations))
}
