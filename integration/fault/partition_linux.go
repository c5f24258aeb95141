//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// RelayOnly proves that the harness's partitions hold and that the relay
// carries the family when it is the only path:
//
//  1. Every site-to-site link is cut. Each site's `ppsync peers` must show
//     the other sites reached through the relay (or not at all) — never
//     "direct" — and a write at each site must still reach every other site.
//  2. One site is then cut from the relay too. Once every other node shows
//     it disconnected, a write it acknowledged must be nowhere else; after
//     the heal it must arrive everywhere.
func RelayOnly(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "relay-only-path", Seed: seed}
	if err := CanIsolate(); err != nil {
		return res, fmt.Errorf("%w: the nodes cannot get network namespaces of their own (%v), so links cannot be cut", ErrSkip, err)
	}
	h, load, err := start(ctx, env, seed, 3, lightLoad, nil)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	rng := rand.New(rand.NewPCG(seed, 0x4e1a))
	h.countFault(FaultRelayOnly)
	for i, a := range h.Sites {
		for _, b := range h.Sites[i+1:] {
			if err := h.Net.Cut(a.Name, b.Name); err != nil {
				return res, err
			}
		}
	}
	for _, s := range h.Sites {
		took, err := waitFor(ctx, 30*time.Second, 200*time.Millisecond, s.Name+" reaching the other sites only through the relay", func() (bool, string) {
			rows, err := s.Peers(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, r := range rows {
				if r.Site == RelayName {
					if !r.Connected || r.Via != "direct" {
						return false, fmt.Sprintf("relay row %+v", r)
					}
					continue
				}
				if r.Connected && r.Via == "direct" {
					return false, fmt.Sprintf("%s still direct", r.Site)
				}
			}
			return true, ""
		})
		if err != nil {
			h.Violate("partition", "%v", err)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%s reached the other sites only through the relay %s after the cut", s.Name, took.Round(time.Millisecond)))
		}
	}
	for _, s := range h.Sites {
		ws, err := h.Send(ctx, s, h.NewWrites(s, 1, rng, 0, 0), 10*time.Second)
		if err != nil {
			return res, err
		}
		for _, o := range h.Sites {
			if o == s {
				continue
			}
			took, err := waitFor(ctx, 30*time.Second, 50*time.Millisecond, fmt.Sprintf("%s's write reaching %s through the relay", s.Name, o.Name), func() (bool, string) {
				return h.hasWrite(ctx, o, ws[0])
			})
			if err != nil {
				h.Violate("liveness", "%v", err)
			} else {
				res.Notes = append(res.Notes, fmt.Sprintf("%s's write reached %s through the relay in %s", s.Name, o.Name, took.Round(time.Millisecond)))
			}
		}
		// No direct path may have appeared meanwhile.
		rows, err := s.Peers(ctx)
		if err == nil {
			for _, r := range rows {
				if r.Site != RelayName && r.Connected && r.Via == "direct" {
					h.Violate("partition", "%s reaches %s directly although their link is cut", s.Name, r.Site)
				}
			}
		}
	}
	// Step 2: one site cut off from everything.
	lone := h.Sites[0]
	others := slices.DeleteFunc(h.Nodes(), func(n *Node) bool { return n == lone })
	h.countFault(FaultIsolate)
	if err := h.Net.Cut(lone.Name, RelayName); err != nil {
		return res, err
	}
	for _, o := range others {
		if _, err := waitFor(ctx, 60*time.Second, 200*time.Millisecond, o.Name+" seeing "+lone.Name+" gone", func() (bool, string) {
			rows, err := o.Peers(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, r := range rows {
				if r.Site == lone.Site && r.Connected {
					return false, fmt.Sprintf("%+v", r)
				}
			}
			return true, ""
		}); err != nil {
			h.Violate("partition", "%v", err)
		}
	}
	ws, err := h.Send(ctx, lone, h.NewWrites(lone, 1, rng, 0, 0), 10*time.Second)
	if err != nil {
		return res, err
	}
	for _, o := range others {
		if ok, _ := h.hasWrite(ctx, o, ws[0]); ok {
			h.Violate("partition", "%s's write reached %s although %s was cut off from every node", lone.Name, o.Name, lone.Name)
		}
	}
	healed := time.Now()
	h.Net.HealAll()
	for _, o := range others {
		if _, err := waitFor(ctx, 60*time.Second, 50*time.Millisecond, lone.Name+"'s write reaching "+o.Name+" after the heal", func() (bool, string) {
			return h.hasWrite(ctx, o, ws[0])
		}); err != nil {
			h.Violate("liveness", "%v", err)
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("after the heal %s's write reached every node in %s", lone.Name, time.Since(healed).Round(time.Millisecond)))
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// hasWrite reports whether n holds w: its record at a site, its entry at the
// relay (which holds no readable record).
func (h *Harness) hasWrite(ctx context.Context, n *Node, w Write) (bool, string) {
	c := n.Client()
	if c == nil {
		return false, n.Name + " is down"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n.Role == "relay" {
		if w.Seq == 0 {
			return false, "the write's seq is unknown"
		}
		st, err := c.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		if st.Frontier[w.Site] < w.Seq {
			return false, "not there yet"
		}
		return true, ""
	}
	_, err := c.Get(ctx, TableFT, w.FT)
	if errors.Is(err, api.ErrNotFound) {
		return false, "not there yet"
	}
	if err != nil {
		return false, err.Error()
	}
	return true, ""
}
