//go:build linux

package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Deadlines of the online-truth scenario.
const (
	// OfflineDeadline: a site whose every link stalls reports `online: false`
	// (with a reason) within this of the stall. The node treats a member that
	// sent nothing for about 12 s as gone.
	OfflineDeadline = 15 * time.Second
	// OnlineDeadline: it reports `online: true` again within this of the heal
	// (members are redialed every 1 to 3 s).
	OnlineDeadline = 5 * time.Second
	// statusEvery paces the polling of GET /v1/status.
	statusEvery = 250 * time.Millisecond
	// meshTimeout bounds the wait for every node to see every other.
	meshTimeout = 30 * time.Second
	// quietWindow: with the connectivity check off, the site is watched this
	// much longer after it lost its last peer, so that a late `online: false`
	// is seen too.
	quietWindow = 3 * time.Second
)

// FaultStallAll stalls every link of one node (Net.Stall: no reset).
const FaultStallAll = "stall-isolate"

// OnlineTruth checks what `status --json` (GET /v1/status, polled every
// 250 ms) says when a site's network silently goes away — every link stalls,
// nothing is reset, as when a cable is pulled — on a family of a relay and two
// sites, each in its own namespace:
//
//  1. clinic-1 (connectivity check on) is stalled from every member: within
//     OfflineDeadline it must report `online: false` with a non-empty
//     `offline_reason` and `peers: 0`; after the heal, `online: true` within
//     OnlineDeadline.
//     A deadline is missed when a status asked for after it still says
//     otherwise: the harness runs beside other scenarios and suites that can
//     starve its process of CPU for seconds, and a poll made late is not a
//     node answering late (the note then says so, with the polling's gaps).
//  2. clinic-2 has `connectivity_check = false` in its ppsync.toml (set
//     before it started) and is stalled the same way: it must never report
//     `online: false`; once it has lost its peers its reason must say that the
//     check is off.
//
// The times measured are the scenario's notes. Write load runs throughout and
// the usual checks follow the heal.
func OnlineTruth(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "online-truth", Seed: seed}
	if err := CanIsolate(); err != nil {
		return res, fmt.Errorf("%w: the nodes cannot get network namespaces of their own (%v), so a site's links cannot be stalled", ErrSkip, err)
	}
	h, load, err := start(ctx, env, seed, 2, lightLoad, func(h *Harness) error {
		return SetConfig(h.Sites[1].Data, "connectivity_check", "false")
	})
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	if took, err := h.waitMesh(ctx, h.Nodes()); err != nil {
		h.Violate("membership", "%v", err)
	} else {
		res.Notes = append(res.Notes, fmt.Sprintf("every node saw every other %s after the start (each holding only its own certificate, the relay's address from family.json)", took.Round(time.Millisecond)))
	}
	h.onlineCut(ctx, &res, h.Sites[0], true)
	if _, err := h.waitMesh(ctx, h.Nodes()); err != nil {
		h.Violate("membership", "after the first heal: %v", err)
	}
	h.onlineCut(ctx, &res, h.Sites[1], false)
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// waitMesh waits until every node's status counts every other node as a
// connected peer.
func (h *Harness) waitMesh(ctx context.Context, nodes []*Node) (time.Duration, error) {
	return waitFor(ctx, meshTimeout, statusEvery, "every node connected to every other", func() (bool, string) {
		for _, n := range nodes {
			st, err := n.Status(ctx)
			if err != nil {
				return false, n.Name + ": " + err.Error()
			}
			if st.Peers != len(nodes)-1 {
				return false, fmt.Sprintf("%s counts %d peers of %d: %s", n.Name, st.Peers, len(nodes)-1, statusJSON(st))
			}
		}
		return true, ""
	})
}

// onlineCut stalls every link of n, watches its status (and every other
// node's peer count) until it has lost its peers, heals, and watches it come
// back. check says whether n's connectivity check is on.
func (h *Harness) onlineCut(ctx context.Context, res *Result, n *Node, check bool) {
	others := slices.DeleteFunc(h.Nodes(), func(o *Node) bool { return o == n })
	before := map[string]int{}
	for _, o := range others {
		if st, err := o.Status(ctx); err == nil {
			before[o.Name] = st.Peers
		}
	}
	h.countFault(FaultStallAll)
	t0 := time.Now()
	for _, o := range others {
		if err := h.Net.Stall(n.Name, o.Name); err != nil {
			h.Violate("harness", "stall %s-%s: %v", n.Name, o.Name, err)
			return
		}
	}
	mode := "connectivity check on"
	if !check {
		mode = "connectivity_check = false"
	}
	var (
		offAt, zeroAt time.Duration // first online false (with check), first peers 0
		offSt, zeroSt api.Status
		wrongOffline  []string // check off: every status that said offline
		emptyReason   bool
		gone          = map[string]time.Duration{} // when each other node counted one peer fewer
	)
	timeout := 2 * OfflineDeadline
	if !check {
		timeout += quietWindow
	}
	var polls pollTrace // when a deadline is missed: was the node late, or the polling?
	// The last status that still said online (with a peer), by when it was
	// asked for: the node was so at that time or later. A deadline is missed
	// when such a status was asked for after it, not when the harness (its
	// process starved of CPU by the suites beside it) first looked again
	// late.
	var lastOn, lastPeers time.Duration
	var lastOnSt api.Status
	_, werr := waitFor(ctx, timeout, statusEvery, n.Name+" ("+mode+") noticing it is cut off", func() (bool, string) {
		polls.round(t0)
		asked := time.Since(t0)
		st, err := polls.status(ctx, t0, n)
		if err != nil {
			return false, err.Error()
		}
		el := time.Since(t0)
		if st.Online {
			lastOn, lastOnSt = asked, st
		}
		if st.Peers > 0 {
			lastPeers = asked
		}
		if !st.Online {
			if check && offAt == 0 {
				offAt, offSt = el, st
			}
			if !check && len(wrongOffline) < 3 {
				wrongOffline = append(wrongOffline, fmt.Sprintf("at +%s: %s", el.Round(time.Millisecond), statusJSON(st)))
			}
			if st.OfflineReason == "" {
				emptyReason = true
			}
		}
		if st.Peers == 0 && zeroAt == 0 {
			zeroAt, zeroSt = el, st
		}
		for _, o := range others {
			if _, ok := gone[o.Name]; ok {
				continue
			}
			if ost, err := polls.status(ctx, t0, o); err == nil && ost.Peers < before[o.Name] {
				gone[o.Name] = time.Since(t0)
			}
		}
		switch {
		case len(gone) < len(others):
		case check && offAt > 0 && zeroAt > 0:
			return true, ""
		case !check && zeroAt > 0 && el >= zeroAt+quietWindow:
			return true, ""
		}
		return false, fmt.Sprintf("status %s; the others counted it gone: %v", statusJSON(st), gone)
	})
	var seen []string
	for _, o := range others {
		if d, ok := gone[o.Name]; ok {
			seen = append(seen, fmt.Sprintf("%s after %s", o.Name, d.Round(time.Millisecond)))
		} else {
			// The same rule holds on their side: a member silent for about
			// 12 s is gone.
			seen = append(seen, fmt.Sprintf("%s not within %s", o.Name, timeout))
			h.Violate("online", "%s still counted %s, stalled from every member, as a connected peer %s after the stall", o.Name, n.Name, timeout)
		}
	}
	if check {
		switch {
		case offAt == 0:
			h.Violate("online", "%s (%s) stalled from every member did not report online false: %v", n.Name, mode, werr)
		case lastOn > OfflineDeadline:
			h.Violate("online", "%s (%s) still reported online true to a status asked for %s after every link stalled (limit %s): %s; %s", n.Name, mode, lastOn.Round(time.Millisecond), OfflineDeadline, statusJSON(lastOnSt), polls.summary())
		case offAt > OfflineDeadline:
			res.Notes = append(res.Notes, fmt.Sprintf("%s (%s): online false first seen %s after the stall, but it was last seen online by a status asked for at +%s: the harness looked late, not the node (%s)",
				n.Name, mode, offAt.Round(time.Millisecond), lastOn.Round(time.Millisecond), polls.summary()))
		}
		switch {
		case zeroAt == 0:
			h.Violate("online", "%s (%s) still counted peers %s after every link stalled: %v", n.Name, mode, timeout, werr)
		case lastPeers > OfflineDeadline:
			h.Violate("online", "%s (%s) still counted a peer in a status asked for %s after every link stalled (limit %s); %s", n.Name, mode, lastPeers.Round(time.Millisecond), OfflineDeadline, polls.summary())
		}
		if emptyReason {
			h.Violate("online", "%s (%s) reported online false without an offline_reason: %s", n.Name, mode, statusJSON(offSt))
		}
		if offAt > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%s (%s), every link stalled (no reset): online false after %s (reason %q), peers 0 after %s; the others counted it gone: %s; %s",
				n.Name, mode, offAt.Round(time.Millisecond), offSt.OfflineReason, zeroAt.Round(time.Millisecond), strings.Join(seen, ", "), polls.summary()))
		}
	} else {
		if len(wrongOffline) > 0 {
			h.Violate("online", "%s (%s) reported online false while cut off: %s", n.Name, mode, strings.Join(wrongOffline, "; "))
		}
		if zeroAt == 0 {
			h.Violate("online", "%s (%s) still counted peers %s after every link stalled: %v", n.Name, mode, timeout, werr)
		} else {
			if r := strings.ToLower(zeroSt.OfflineReason); !strings.Contains(r, "check") {
				h.Violate("online", "%s (%s) lost every peer but its offline_reason does not say the check is off: %s", n.Name, mode, statusJSON(zeroSt))
			}
			res.Notes = append(res.Notes, fmt.Sprintf("%s (%s), every link stalled (no reset): peers 0 after %s, online stayed %v for %s more (reason %q); the others counted it gone: %s",
				n.Name, mode, zeroAt.Round(time.Millisecond), len(wrongOffline) == 0, quietWindow, zeroSt.OfflineReason, strings.Join(seen, ", ")))
		}
	}
	// Heal.
	t1 := time.Now()
	for _, o := range others {
		h.Net.Unstall(n.Name, o.Name)
	}
	var onAt, lastOff time.Duration // first seen online with a peer; the last status before that, by when it was asked for
	var last api.Status
	took, err := waitFor(ctx, 6*OnlineDeadline, statusEvery/2, n.Name+" online again after the heal", func() (bool, string) {
		asked := time.Since(t1)
		st, err := n.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		last = st
		if st.Online && st.Peers > 0 && onAt == 0 {
			onAt = time.Since(t1)
		}
		if onAt == 0 {
			lastOff = asked
		}
		if onAt > 0 && st.Peers == len(others) {
			return true, ""
		}
		return false, statusJSON(st)
	})
	switch {
	case onAt == 0:
		h.Violate("online", "%s (%s) did not report online true (with a peer) after the heal: %v", n.Name, mode, err)
	case lastOff > OnlineDeadline && check:
		h.Violate("online", "%s (%s) still reported offline (or no peer) to a status asked for %s after the heal (limit %s); online true first seen after %s", n.Name, mode, lastOff.Round(time.Millisecond), OnlineDeadline, onAt.Round(time.Millisecond))
	case onAt > OnlineDeadline && check:
		res.Notes = append(res.Notes, fmt.Sprintf("%s (%s): online true first seen %s after the heal, but the last status before it was asked for at +%s: the harness looked late, not the node", n.Name, mode, onAt.Round(time.Millisecond), lastOff.Round(time.Millisecond)))
	}
	if onAt > 0 {
		all := "all its peers back after " + took.Round(time.Millisecond).String()
		if err != nil {
			all = fmt.Sprintf("not all its peers back within %s (last %s)", 6*OnlineDeadline, statusJSON(last))
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s (%s) after the heal: online true with a peer after %s, %s", n.Name, mode, onAt.Round(time.Millisecond), all))
	}
}

// pollTrace records how the status polling itself went (when each round
// began, how long each node took to answer), so that a missed deadline says
// whether the node was late or the polling was.
type pollTrace struct {
	rounds   int
	lastAt   time.Duration // start of the last round, since t0
	gapAt    time.Duration // start of the round after the longest gap
	gap      time.Duration // longest time between the starts of two rounds
	slow     []string      // status calls that took over a second
	slowSeen int
	slowest  time.Duration // the slowest status call, and to which node
	slowNode string
}

func (p *pollTrace) round(t0 time.Time) {
	at := time.Since(t0)
	if p.rounds > 0 && at-p.lastAt > p.gap {
		p.gap, p.gapAt = at-p.lastAt, at
	}
	p.rounds++
	p.lastAt = at
}

func (p *pollTrace) status(ctx context.Context, t0 time.Time, n *Node) (api.Status, error) {
	start := time.Now()
	st, err := n.Status(ctx)
	took := time.Since(start)
	if took > p.slowest {
		p.slowest, p.slowNode = took, n.Name
	}
	if took > time.Second {
		p.slowSeen++
		if len(p.slow) < 8 {
			s := fmt.Sprintf("%s at +%s took %s", n.Name, start.Sub(t0).Round(time.Millisecond), took.Round(time.Millisecond))
			if err != nil {
				s += " (" + err.Error() + ")"
			}
			p.slow = append(p.slow, s)
		}
	}
	return st, err
}

func (p *pollTrace) summary() string {
	s := fmt.Sprintf("the polling: %d rounds, the longest gap between two %s (ending at +%s), the slowest answer %s (%s)", p.rounds, p.gap.Round(time.Millisecond), p.gapAt.Round(time.Millisecond), p.slowest.Round(time.Millisecond), p.slowNode)
	if p.slowSeen > 0 {
		s += fmt.Sprintf(", %d status calls over 1s: %s", p.slowSeen, strings.Join(p.slow, "; "))
	}
	return s
}

// statusJSON is the part of a status that matters here, as JSON.
func statusJSON(st api.Status) string {
	b, err := json.Marshal(map[string]any{"online": st.Online, "offline_reason": st.OfflineReason, "peers": st.Peers, "warnings": st.Warnings})
	if err != nil {
		return err.Error()
	}
	return string(b)
}
