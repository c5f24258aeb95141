//go:build linux

package fault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// Rotation starts new data key epochs under the write load and kills the
// rotating site with SIGKILL at a random moment of `ppsync family
// rotate-key` (before, while or just after it makes and gives the key),
// twice, at two sites, while a third site is off across both rotations.
// Afterwards every acknowledged write is everywhere as in every scenario,
// every site holds every key (none waits for one, none holds an entry), and
// the site that was off reads what was written under the new keys.
func Rotation(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "rotation", Seed: seed}
	h, load, err := start(ctx, env, seed, 3, lightLoad, nil)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	if _, err := h.waitMesh(ctx, h.Nodes()); err != nil {
		h.Violate("membership", "%v", err)
		return res, nil
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	if err := pause(ctx, 8*time.Second); err != nil {
		return res, err
	}
	off := h.Sites[2]
	h.Logf("rotation: %s goes off across the rotations", off.Name)
	h.countFault("kill")
	if err := off.Kill(); err != nil {
		h.Violate("harness", "kill %s: %v", off.Name, err)
	}
	for _, n := range h.Sites[:2] {
		delay := time.Duration(rng.IntN(40)) * time.Millisecond
		done := make(chan string, 1)
		go func() {
			out, stderr, code, err := n.CLI(ctx, "family", "rotate-key", "--data", n.Data, "--json")
			done <- fmt.Sprintf("exit %d %v %s%s", code, err, out, stderr)
		}()
		if err := pause(ctx, delay); err != nil {
			return res, err
		}
		h.Logf("rotation: kill -9 %s %s into `ppsync family rotate-key`", n.Name, delay)
		h.countFault("kill-during-rotation")
		if err := n.Kill(); err != nil {
			h.Violate("harness", "kill %s: %v", n.Name, err)
		}
		h.Logf("rotation: rotate-key at %s ended: %s", n.Name, <-done)
		if err := n.Start(ctx); err != nil {
			h.Violate("harness", "restart %s: %v", n.Name, err)
			return res, nil
		}
		// A rotation that completes: the next epoch at the same site.
		if out, stderr, code, err := n.CLI(ctx, "family", "rotate-key", "--data", n.Data, "--json"); err != nil || code != 0 {
			h.Violate("rotation", "rotate-key at %s after its restart: exit %d %v %s%s", n.Name, code, err, out, stderr)
		}
		if err := pause(ctx, 3*time.Second); err != nil {
			return res, err
		}
	}
	if err := pause(ctx, 5*time.Second); err != nil {
		return res, err
	}
	h.Logf("rotation: %s comes back", off.Name)
	if err := off.Start(ctx); err != nil {
		h.Violate("harness", "start %s: %v", off.Name, err)
		return res, nil
	}
	if err := pause(ctx, 5*time.Second); err != nil {
		return res, err
	}
	load.Stop()

	// Every site holds every key and waits for none.
	_, kerr := waitFor(ctx, 60*time.Second, 500*time.Millisecond, "every site holds every data key", func() (bool, string) {
		all := map[string]uint64{}
		held := map[string]map[string]bool{}
		for _, s := range h.Sites {
			c := s.Client()
			if c == nil {
				return false, s.Name + " is not running"
			}
			kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ks, err := c.Keys(kctx)
			st, serr := c.Status(kctx)
			cancel()
			if err != nil || serr != nil {
				return false, fmt.Sprintf("%s: %v %v", s.Name, err, serr)
			}
			if st.Held != 0 || st.Encryption == nil || st.Encryption.State != "sealing" {
				return false, fmt.Sprintf("%s holds %d entries, encryption %+v", s.Name, st.Held, st.Encryption)
			}
			held[s.Name] = map[string]bool{}
			for _, k := range ks.Keys {
				all[k.ID] = k.Epoch
				if k.Held {
					held[s.Name][k.ID] = true
				}
			}
		}
		for _, s := range h.Sites {
			for id := range all {
				if !held[s.Name][id] {
					return false, fmt.Sprintf("%s lacks key %.8s", s.Name, id)
				}
			}
		}
		var top uint64
		for _, ep := range all {
			top = max(top, ep)
		}
		if top < 3 {
			return false, fmt.Sprintf("the newest key epoch is %d, want at least 3 (two completed rotations)", top)
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%d data keys, newest epoch %d, held by every site", len(all), top))
		return true, ""
	})
	if kerr != nil {
		h.Violate("rotation", "%v", kerr)
	}
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}
