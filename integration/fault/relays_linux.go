//go:build linux

package fault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Bounds of the two-relays scenario.
const (
	// RelayGoneBound: every site must show the killed relay disconnected
	// (its bootstrap address no longer "connected") within this of the kill.
	// SIGKILL closes the relay's sockets, so the sites see the connections
	// end at once; a relay that went silent instead would take the liveness
	// timeout (about 12 s).
	RelayGoneBound = 15 * time.Second
	// AfterKillBound: a write acknowledged at a site after the kill must
	// reach every other site and the surviving relay within this.
	AfterKillBound = 20 * time.Second
	// twoRelaysPhase is how long the load runs before the kill, and again
	// after it.
	twoRelaysPhase = 5 * time.Second
)

// FaultKillRelayForGood is a relay killed with SIGKILL and never restarted.
const FaultKillRelayForGood = "kill-relay-for-good"

// TwoRelays proves that a family keeps syncing when one of its relays is
// gone for good. The family has two relays, each set up the way the README
// says a relay is added (`init --role relay` with family.json, `family
// admit`, `install` of its own certificate, `run`, then `family bootstrap
// --add` of its address), so the sites' family.json names both. Every
// site-to-site link is cut from the start: the sites reach each other only
// through the relays. Under the write load both relays must be connected at
// every site (each site dials both bootstrap addresses); then the first relay
// is killed with SIGKILL and never restarted. Every site must notice within
// RelayGoneBound, a write made at each site just after the kill must reach
// every other site and the surviving relay within AfterKillBound (through the
// surviving relay: the site-to-site links stay cut), and afterwards every
// acknowledged write is at every site and at the surviving relay, the sites
// converge, and `ppsync verify` is clean on every node still there.
func TwoRelays(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "TwoRelays", Seed: seed}
	if err := CanIsolate(); err != nil {
		return res, fmt.Errorf("%w: the nodes cannot get network namespaces of their own (%v), so the sites cannot be kept from reaching each other directly", ErrSkip, err)
	}
	opts := env.options(seed, 3)
	opts.Relays = 2
	h, err := New(ctx, opts)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	for i, a := range h.Sites {
		for _, b := range h.Sites[i+1:] {
			if err := h.Net.Cut(a.Name, b.Name); err != nil {
				return res, err
			}
		}
	}
	h.countFault(FaultRelayOnly)
	t0 := time.Now()
	if err := h.StartAll(ctx); err != nil {
		return res, err
	}
	load := h.StartLoad(ctx, h.Sites, lightLoad)
	defer load.Stop()
	dead, survivor := h.Relays[0], h.Relays[1]
	took, err := h.waitMesh(ctx, h.Nodes())
	if err != nil {
		h.Violate("membership", "%v", err)
		return res, nil
	}
	res.Notes = append(res.Notes, fmt.Sprintf("every node saw every other %s after the start (sites through the relays only)", took.Round(time.Millisecond)))
	// Each site dials both bootstrap addresses and reaches no other site
	// directly.
	for _, s := range h.Sites {
		if _, err := waitFor(ctx, meshTimeout, statusEvery, s.Name+" connected to both relays", func() (bool, string) {
			return h.bootstrapState(ctx, s, h.Relays, "connected")
		}); err != nil {
			h.Violate("relays", "%v", err)
		}
		h.noDirectSite(ctx, s)
	}
	if err := pause(ctx, twoRelaysPhase); err != nil {
		return res, err
	}

	h.Logf("two relays: kill -9 %s for good, %s stays", dead.Name, survivor.Name)
	h.countFault(FaultKillRelayForGood)
	killed := time.Now()
	if err := dead.Kill(); err != nil {
		return res, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x2e1a))
	type probe struct {
		w       Write
		arrived map[string]time.Duration // node -> after the kill
	}
	var probes []*probe
	for _, s := range h.Sites {
		ws, err := h.Send(ctx, s, h.NewWrites(s, 1, rng, 0, 0), 10*time.Second)
		if err != nil {
			h.Violate("relays", "a write at %s just after the kill of %s: %v", s.Name, dead.Name, err)
			continue
		}
		probes = append(probes, &probe{w: ws[0], arrived: map[string]time.Duration{}})
	}
	noticed := map[string]time.Duration{}
	targets := append([]*Node{survivor}, h.Sites...)
	_, werr := waitFor(ctx, max(RelayGoneBound, AfterKillBound)+10*time.Second, 50*time.Millisecond, "the sites noticing the relay gone and the writes made after the kill arriving", func() (bool, string) {
		var waiting []string
		for _, s := range h.Sites {
			if _, ok := noticed[s.Name]; ok {
				continue
			}
			if ok, _ := h.bootstrapState(ctx, s, []*Node{dead}, "!connected"); ok {
				noticed[s.Name] = time.Since(killed)
			} else {
				waiting = append(waiting, s.Name+" still shows "+dead.Name+" connected")
			}
		}
		for _, p := range probes {
			for _, n := range targets {
				if _, ok := p.arrived[n.Name]; ok || n.Name == p.w.By {
					continue
				}
				if ok, _ := h.hasWrite(ctx, n, p.w); ok {
					p.arrived[n.Name] = time.Since(killed)
				} else {
					waiting = append(waiting, fmt.Sprintf("%s#%d not at %s", p.w.Site, p.w.Seq, n.Name))
				}
			}
		}
		return len(waiting) == 0, strings.Join(waiting, "; ")
	})
	if werr != nil {
		h.Violate("liveness", "%v", werr)
	}
	var slowestNotice, slowestWrite time.Duration
	for _, s := range h.Sites {
		d, ok := noticed[s.Name]
		switch {
		case !ok:
			h.Violate("relays", "%s never showed %s disconnected after its kill", s.Name, dead.Name)
		case d > RelayGoneBound:
			h.Violate("relays", "%s showed %s disconnected only %s after its kill (bound %s)", s.Name, dead.Name, d.Round(time.Millisecond), RelayGoneBound)
		}
		slowestNotice = max(slowestNotice, d)
	}
	for _, p := range probes {
		for name, d := range p.arrived {
			if d > AfterKillBound {
				h.Violate("relays", "%s's write made after the kill reached %s only %s after the kill (bound %s)", p.w.Site, name, d.Round(time.Millisecond), AfterKillBound)
			}
			slowestWrite = max(slowestWrite, d)
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("after the kill of %s: every site showed it disconnected within %s (bound %s); a write made at each site just after the kill reached every other site and %s within %s (bound %s)",
		dead.Name, slowestNotice.Round(time.Millisecond), RelayGoneBound, survivor.Name, slowestWrite.Round(time.Millisecond), AfterKillBound))

	// The load goes on with one relay; the sites still reach each other
	// only through it.
	if err := pause(ctx, twoRelaysPhase); err != nil {
		return res, err
	}
	for _, s := range h.Sites {
		h.noDirectSite(ctx, s)
	}
	load.Stop()
	after := 0
	for _, w := range h.Ledger.Acked() {
		if w.At.After(killed) {
			after++
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%d writes acknowledged after the kill, all checked at every site and at %s", after, survivor.Name))
	if after == 0 {
		h.Violate("relays", "no write was acknowledged after the kill of %s", dead.Name)
	}
	// The killed relay stays dead and the site-to-site links stay cut: the
	// surviving relay must hold everything and the sites converge through it.
	h.settleAsIs(ctx, &res, targets, CheckOptions{})
	h.finish(&res)
	res.Notes = append(res.Notes, fmt.Sprintf("scenario took %s", time.Since(t0).Round(time.Millisecond)))
	return res, ctx.Err()
}

// bootstrapState reports whether site s's status shows the bootstrap address
// of each relay in state want ("!connected": any state but connected).
func (h *Harness) bootstrapState(ctx context.Context, s *Node, relays []*Node, want string) (bool, string) {
	st, err := s.Status(ctx)
	if err != nil {
		return false, err.Error()
	}
	for _, r := range relays {
		i := slices.IndexFunc(st.Bootstrap, func(b api.BootstrapJSON) bool { return b.PeerID == r.PeerID })
		if i < 0 {
			return false, fmt.Sprintf("%s's status lists no bootstrap address of %s: %+v", s.Name, r.Name, st.Bootstrap)
		}
		got := st.Bootstrap[i].State
		if (want == "!connected" && got == "connected") || (want != "!connected" && got != want) {
			return false, fmt.Sprintf("%s shows the bootstrap address of %s %s (%s)", s.Name, r.Name, got, st.Bootstrap[i].Detail)
		}
	}
	return true, ""
}

// noDirectSite records a violation when site s reaches another site
// directly: the scenario cut every site-to-site link.
func (h *Harness) noDirectSite(ctx context.Context, s *Node) {
	rows, err := s.Peers(ctx)
	if err != nil {
		h.Violate("check", "%s: peers: %v", s.Name, err)
		return
	}
	for _, r := range rows {
		if !strings.HasPrefix(r.Site, RelayName) && r.Connected && r.Via == "direct" {
			h.Violate("partition", "%s reaches %s directly although their link is cut", s.Name, r.Site)
		}
	}
}
