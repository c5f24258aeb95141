//go:build linux

package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// ForkDeadline is how soon every node must show a fork once both copies of a
// cloned site have written (the "within 10 seconds").
const ForkDeadline = 10 * time.Second

// start creates a family of sites, starts it and its write load.
// setup, when given, runs before the nodes start (to change a node's
// environment or ppsync.toml).
func start(ctx context.Context, env Env, seed uint64, sites int, lo LoadOptions, setup func(*Harness) error) (*Harness, *Load, error) {
	h, err := New(ctx, env.options(seed, sites))
	if err != nil {
		return nil, nil, err
	}
	if setup != nil {
		if err := setup(h); err != nil {
			h.Close()
			return nil, nil, err
		}
	}
	if err := h.StartAll(ctx); err != nil {
		h.Close()
		return nil, nil, err
	}
	return h, h.StartLoad(ctx, h.Sites, lo), nil
}

var lightLoad = LoadOptions{Rate: 15, BatchP: 0.05, BatchMax: 100, OwnP: 0.3, HotP: 0.2}

// isolate cuts n off from every other node of the family: its links when the
// nodes have namespaces, else by stopping the others. It returns the undo.
func (h *Harness) isolate(ctx context.Context, n *Node) (func() error, error) {
	others := slices.DeleteFunc(h.Nodes(), func(o *Node) bool { return o == n })
	if h.Net.Isolated() {
		for _, o := range others {
			if err := h.Net.Cut(n.Name, o.Name); err != nil {
				return nil, err
			}
		}
		return func() error {
			for _, o := range others {
				h.Net.Mend(n.Name, o.Name)
			}
			return nil
		}, nil
	}
	if err := h.each(others, func(o *Node) error { _, err := o.Stop(); return err }); err != nil {
		return nil, err
	}
	return func() error { return h.each(others, func(o *Node) error { return o.Start(ctx) }) }, nil
}

// LongOffline: a site is offline (cut off, or stopped without namespaces)
// while the other sites write `total` entries besides the load and the
// offline site keeps writing locally. When it comes back it is killed with
// kill -9 in the middle of its catch-up, and so is the relay after a burst
// it missed; every acknowledged entry must still reach every node.
func LongOffline(ctx context.Context, env Env, seed uint64, total int) (res Result, err error) {
	res = Result{Name: "long-offline", Seed: seed}
	h, load, err := start(ctx, env, seed, 3, lightLoad, nil)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	r := &faultRunner{h: h, rng: rand.New(rand.NewPCG(seed, 0xb0b)), locks: map[string]*sync.Mutex{}}
	for _, n := range h.Nodes() {
		r.locks[n.Name] = &sync.Mutex{}
	}
	off := h.Sites[len(h.Sites)-1]
	h.countFault(FaultOffline)
	undo, err := h.isolate(ctx, off)
	if err != nil {
		return res, err
	}
	if !h.Net.Isolated() {
		// Without namespaces the others were stopped: restart them and stop
		// the offline site instead.
		if err := undo(); err != nil {
			return res, err
		}
		if _, err := off.Stop(); err != nil {
			return res, err
		}
		undo = func() error { return off.Start(ctx) }
	}
	t0 := time.Now()
	wrote := r.burst(ctx, total, off.Name)
	res.Notes = append(res.Notes, fmt.Sprintf("while %s was offline the other sites wrote %d entries in batches in %s", off.Name, wrote, time.Since(t0).Round(time.Millisecond)))
	if err := undo(); err != nil {
		return res, err
	}
	target := h.Ledger.MaxAcked()
	// Kill it during its catch-up.
	st0, err := off.Status(ctx)
	if err != nil {
		return res, err
	}
	mid := false
	_, _ = waitFor(ctx, 60*time.Second, 5*time.Millisecond, "catch-up to begin", func() (bool, string) {
		st, err := off.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		for site, seq := range target {
			if site != off.Site && st.Frontier[site] > st0.Frontier[site] {
				mid = st.Frontier[site] < seq
				return true, ""
			}
		}
		return false, fmt.Sprintf("frontier %v", st.Frontier)
	})
	h.countFault(FaultKillCatchUp)
	if mid {
		h.countFault(FaultKillCatchUp + "/seen-mid-way")
	}
	if err := r.kill(off); err != nil {
		return res, err
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%s killed with kill -9 during its catch-up: %v", off.Name, mid))
	if err := off.Start(ctx); err != nil {
		return res, err
	}
	if took, err := waitFor(ctx, ConvergeTimeout, 50*time.Millisecond, off.Name+" catching up", func() (bool, string) {
		st, err := off.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		for site, seq := range target {
			if st.Frontier[site] < seq {
				return false, fmt.Sprintf("%s at %d of %d", site, st.Frontier[site], seq)
			}
		}
		return true, ""
	}); err != nil {
		h.Violate("liveness", "%v", err)
	} else {
		res.Notes = append(res.Notes, fmt.Sprintf("%s caught up %d entries %s after its restart", off.Name, wrote, took.Round(time.Millisecond)))
	}
	// The relay misses a burst, then is killed while it catches up.
	h.countFault(FaultKillRelay)
	if err := r.kill(h.Relay); err != nil {
		return res, err
	}
	wrote = r.burst(ctx, total/4, "")
	if err := h.Relay.Start(ctx); err != nil {
		return res, err
	}
	st0, err = h.Relay.Status(ctx)
	if err != nil {
		return res, err
	}
	target = h.Ledger.MaxAcked()
	mid = false
	_, _ = waitFor(ctx, 60*time.Second, 5*time.Millisecond, "relay catch-up to begin", func() (bool, string) {
		st, err := h.Relay.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		for site, seq := range target {
			if st.Frontier[site] > st0.Frontier[site] {
				mid = st.Frontier[site] < seq
				return true, ""
			}
		}
		return false, ""
	})
	h.countFault(FaultKillCatchUp)
	if mid {
		h.countFault(FaultKillCatchUp + "/seen-mid-way")
	}
	if err := r.kill(h.Relay); err != nil {
		return res, err
	}
	res.Notes = append(res.Notes, fmt.Sprintf("relay missed %d entries and was killed with kill -9 during its catch-up: %v", wrote, mid))
	if err := h.Relay.Start(ctx); err != nil {
		return res, err
	}
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// PeerRow is one line of `ppsync peers --json`.
type PeerRow struct {
	Site      string `json:"site"`
	Connected bool   `json:"connected"`
	Via       string `json:"via"`
	ClockSkew string `json:"clock_skew"`
}

// Peers runs `ppsync peers --data DATA --json` for n (inside its namespace).
func (n *Node) Peers(ctx context.Context) ([]PeerRow, error) {
	out, errOut, code, err := n.CLI(ctx, "peers", "--data", n.Data, "--json")
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("`ppsync peers` exited %d: %s", code, strings.TrimSpace(errOut))
	}
	var rows []PeerRow
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r PeerRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return nil, fmt.Errorf("`ppsync peers --json` printed %q: %v", l, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// ClockSkew: one site runs with its clock 3 minutes slow. Every other node
// must report it (`ppsync peers --json` clock_skew, status warnings). Then
// the site's clock jumps: cut off from the family, it restarts 5 minutes
// fast, writes, restarts 5 minutes slow (a 10-minute jump back) and writes
// the same records again. No acknowledged write may be lost, and the later
// write of a record must win over the earlier one of the same site.
func ClockSkew(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "clock-skew", Seed: seed}
	const slow = -3 * time.Minute
	h, load, err := start(ctx, env, seed, 3, lightLoad, func(h *Harness) error {
		h.Sites[2].SetEnv("PPSYNC_CLOCK_OFFSET", slow.String())
		return nil
	})
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	skewed := h.Sites[2]
	h.countFault("clock-skew")
	for _, n := range h.Nodes() {
		if n == skewed {
			continue
		}
		took, err := waitFor(ctx, 40*time.Second, 250*time.Millisecond, n.Name+" reporting "+skewed.Name+"'s clock", func() (bool, string) {
			rows, err := n.Peers(ctx)
			if err != nil {
				return false, err.Error()
			}
			var row *PeerRow
			for i := range rows {
				if rows[i].Site == skewed.Site {
					row = &rows[i]
				}
			}
			if row == nil || row.ClockSkew == "" {
				return false, fmt.Sprintf("peers --json row %+v", row)
			}
			d, err := time.ParseDuration(row.ClockSkew)
			if err != nil || d > slow+20*time.Second || d < slow-20*time.Second {
				return false, fmt.Sprintf("clock_skew %q, want about %s", row.ClockSkew, slow)
			}
			st, err := n.Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, w := range st.Warnings {
				if strings.Contains(w, skewed.Site) && strings.Contains(w, "clock") {
					return true, ""
				}
			}
			return false, fmt.Sprintf("status warnings %q name no clock skew of %s", st.Warnings, skewed.Site)
		})
		if err != nil {
			h.Violate("clock-skew", "%v", err)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%s reported %s's clock skew (peers --json and status warnings) %s after the check began", n.Name, skewed.Name, took.Round(time.Millisecond)))
		}
	}
	// The jumps, with the site cut off so that no entry of another site
	// carries its clock forward in between.
	undo, err := h.isolate(ctx, skewed)
	if err != nil {
		return res, err
	}
	rng := rand.New(rand.NewPCG(seed, 0xc10c))
	for _, off := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		if _, err := skewed.Stop(); err != nil {
			return res, err
		}
		skewed.SetEnv("PPSYNC_CLOCK_OFFSET", off.String())
		h.countFault(FaultClockJump)
		if err := skewed.Start(ctx); err != nil {
			return res, err
		}
		for i := range 3 {
			w := h.NewWrites(skewed, 1, rng, 0, 0)
			w[0].Own = fmt.Sprintf("%s.jump%d", skewed.Name, i)
			if _, err := h.Send(ctx, skewed, w, 10*time.Second); err != nil {
				h.Violate("clock-jump", "%s refused a write with its clock at %s: %v", skewed.Name, off, err)
			}
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%s restarted with its clock +5m, wrote 3 records, restarted at -5m and wrote them again", skewed.Name))
	if err := undo(); err != nil {
		return res, err
	}
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// ForeignFamily: a node of another family (same site ID as one of ours) that
// knows every address and peer ID of our family — its authority even signed
// certificates of its own family for our nodes' public keys, so that it dials
// them — connects, says hello and writes. Our nodes must count it refused,
// nothing of it may appear in our family, and nothing of ours may reach it.
func ForeignFamily(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "foreign-family", Seed: seed}
	h, load, err := start(ctx, env, seed, 3, lightLoad, nil)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	authB := filepath.Join(env.Dir, "authority-other")
	famB, err := h.CreateFamily(ctx, authB, "Other Family")
	if err != nil {
		return res, err
	}
	// The other family's family.json lists no bootstrap: the intruder is
	// given every address of ours with --bootstrap, the one node of the
	// suite that needs the flag.
	intruder, err := h.AddNode(ctx, authB, "intruder", h.Sites[0].Site, "site")
	if err != nil {
		return res, err
	}
	for _, n := range h.Nodes() {
		if n.Site == intruder.Site {
			continue
		}
		cert, err := h.admitForeign(ctx, authB, famB, n)
		if err != nil {
			return res, err
		}
		if _, err := h.CLI(ctx, "install", "--data", intruder.Data, cert); err != nil {
			return res, err
		}
		intruder.Boot = append(intruder.Boot, n.ListenAddr())
	}
	h.countFault("foreign-family")
	if err := intruder.Start(ctx); err != nil {
		return res, err
	}
	c := intruder.Client()
	// secret counts the writes it acknowledged, unsure those whose outcome
	// its API did not say (no answer in time: the entry may be in its log).
	secret, unsure := 0, 0
	var unsureErrs []string
	for i := range 20 {
		tx := api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "secret", Key: fmt.Sprintf("s%d", i), Fields: map[string]any{"leak": "intruder data"}}}}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Transact(tctx, tx)
		cancel()
		var refused *api.APIStatusError
		switch {
		case err == nil:
			secret++
		case errors.As(err, &refused) && refused.Status < 500:
		default:
			unsure++
			unsureErrs = append(unsureErrs, err.Error())
		}
	}
	if unsure > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("the intruder did not say the outcome of %d of its writes: %s", unsure, strings.Join(unsureErrs, "; ")))
	}
	if secret == 0 {
		return res, errors.New("fault: the intruder could not write its own data")
	}
	// Every node of ours that it dials refuses it, and counts it. (Our site
	// with its site ID could not be admitted into its family: it never dials
	// that one.)
	for _, n := range h.Nodes() {
		if n.Site == intruder.Site {
			continue
		}
		took, err := waitFor(ctx, 40*time.Second, 250*time.Millisecond, n.Name+" refusing the intruder", func() (bool, string) {
			v, err := n.Metric(ctx, "ppsync_rejections_total", `reason="wrong_family"`)
			if err != nil {
				return false, err.Error()
			}
			return v > 0, "no wrong_family rejection counted"
		})
		if err != nil {
			h.Violate("foreign", "%v", err)
			continue
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s counted the intruder (wrong_family) %s after the intruder's writes", n.Name, took.Round(time.Millisecond)))
	}
	// Let sync rounds run while the intruder keeps trying (one sync-now
	// round from it, too), then look at both sides.
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	rc, err := c.SyncNow(sctx, 3*time.Second)
	cancel()
	if err == nil && rc.CaughtUp {
		for _, m := range rc.Members {
			if m.CaughtUp {
				h.Violate("foreign", "the intruder's Sync Now says member %s (%s) caught up with it", m.Site, m.PeerID)
			}
		}
	}
	load.Stop()
	st, err := intruder.Status(ctx)
	if err != nil {
		return res, err
	}
	for site, seq := range st.Frontier {
		if site != intruder.Site || seq < uint64(secret) || seq > uint64(secret+unsure) {
			h.Violate("leak", "the intruder holds %s up to %d (it wrote %d of its own, %d more of unknown outcome): our data reached it", site, seq, secret, unsure)
		}
	}
	ist, err := readState(ctx, c)
	if err != nil {
		return res, err
	}
	for k := range ist {
		if !strings.HasPrefix(k, "secret/") {
			h.Violate("leak", "the intruder holds our record %s", k)
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("the intruder (family %.8s, site %s) wrote %d records; it holds %d records, frontier %v", famB, intruder.Site, secret, len(ist), st.Frontier))
	if _, err := intruder.Stop(); err != nil {
		return res, err
	}
	h.settle(ctx, &res, h.Nodes(), CheckOptions{}) // the phantom check finds any "secret" record in our family
	h.finish(&res)
	return res, ctx.Err()
}

// admitForeign has the other family's authority sign a certificate for one of
// our nodes: its join request is public, and only family_id is changed.
func (h *Harness) admitForeign(ctx context.Context, auth, famID string, n *Node) (string, error) {
	b, err := os.ReadFile(filepath.Join(n.Data, "join-request.json"))
	if err != nil {
		return "", err
	}
	var req map[string]any
	if err := json.Unmarshal(b, &req); err != nil {
		return "", err
	}
	req["family_id"] = famID
	b, err = json.MarshalIndent(req, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(h.dir, "certs", "foreign-"+n.Name+".request")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	cert := filepath.Join(h.dir, "certs", "foreign-"+n.Name+".cert")
	if _, err := h.CLI(ctx, "family", "admit", "--dir", auth, "--request", path, "--out", cert); err != nil {
		return "", err
	}
	return cert, nil
}

// ClonedSite: a stopped site's data directory is copied and both copies run
// (same machine ID, other ports) and write. Every node — both copies
// included — must show the fork in GET /v1/status within ForkDeadline of the
// second copy's first write, both copies must stop taking writes, the other
// sites must converge exactly, and no acknowledged entry may be lost: each
// copy keeps its own, and every node keeps the entries written before the
// copy. What each node kept of each branch (applied, quarantined, evidence)
// is counted.
func ClonedSite(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "cloned-site", Seed: seed}
	h, err := New(ctx, env.options(seed, 3))
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	if err := h.StartAll(ctx); err != nil {
		return res, err
	}
	orig := h.Sites[1]
	others := []*Node{h.Sites[0], h.Sites[2]}
	load := h.StartLoad(ctx, others, lightLoad)
	singles := LoadOptions{Rate: 10, OwnP: 0.3}
	pre := h.StartLoad(ctx, []*Node{orig}, singles)
	if _, err := waitFor(ctx, 30*time.Second, 50*time.Millisecond, "writes before the copy", func() (bool, string) {
		return h.Ledger.MaxAcked()[orig.Site] >= 20, "fewer than 20 acknowledged"
	}); err != nil {
		return res, err
	}
	pre.Stop()
	if _, err := orig.Stop(); err != nil {
		return res, err
	}
	forkBase := h.Ledger.MaxAcked()[orig.Site]
	clone, err := h.CloneNode(orig, orig.Site+"-clone")
	if err != nil {
		return res, err
	}
	h.countFault("cloned-site")
	if err := h.each([]*Node{orig, clone}, func(n *Node) error { return n.Start(ctx) }); err != nil {
		return res, err
	}
	both := h.StartLoad(ctx, []*Node{orig, clone}, singles)
	var t0 time.Time
	if _, err := waitFor(ctx, 30*time.Second, 10*time.Millisecond, "both copies writing", func() (bool, string) {
		first := map[string]time.Time{}
		for _, w := range h.Ledger.Acked() {
			if w.Seq > forkBase && (w.By == orig.Name || w.By == clone.Name) {
				if f, ok := first[w.By]; !ok || w.At.Before(f) {
					first[w.By] = w.At
				}
			}
		}
		if len(first) < 2 {
			return false, fmt.Sprintf("first acknowledgements after the copy: %v", first)
		}
		t0 = first[orig.Name]
		if first[clone.Name].After(t0) {
			t0 = first[clone.Name]
		}
		return true, ""
	}); err != nil {
		return res, err
	}
	all := append(h.Nodes(), clone)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := waitFor(ctx, 2*ForkDeadline, 50*time.Millisecond, n.Name+" showing the fork", func() (bool, string) {
				st, err := n.Status(ctx)
				if err != nil {
					return false, err.Error()
				}
				for _, f := range st.Forks {
					if f.Site == orig.Site {
						return true, ""
					}
				}
				return false, "no fork in status"
			})
			after := time.Since(t0) // from the second copy's first acknowledged write
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				h.Violate("fork", "%s: %v", n.Name, err)
			case after > ForkDeadline:
				h.Violate("fork", "%s showed the fork of %s only %s after both copies wrote (limit %s)", n.Name, orig.Site, after.Round(time.Millisecond), ForkDeadline)
			default:
				res.Notes = append(res.Notes, fmt.Sprintf("%s showed the fork %s after both copies wrote", n.Name, after.Round(time.Millisecond)))
			}
		}()
	}
	wg.Wait()
	both.Stop()
	for _, n := range []*Node{orig, clone} {
		var refusal string
		took, err := waitFor(ctx, ForkDeadline, 100*time.Millisecond, n.Name+" refusing writes", func() (bool, string) {
			_, err := h.Send(ctx, n, h.NewWrites(n, 1, rand.New(rand.NewPCG(seed, 9)), 0, 0), 10*time.Second)
			var se *api.APIStatusError
			if errors.As(err, &se) && se.Status == 409 {
				refusal = fmt.Sprintf("409 %s: %s", se.Code, se.APIError.Error)
				return true, ""
			}
			return false, fmt.Sprintf("a write answered %v", err)
		})
		if err != nil {
			h.Violate("fork", "a copy of the forked site keeps writing: %v", err)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%s refused writes %s after the fork showed: %s", n.Name, took.Round(time.Millisecond), refusal))
		}
	}
	load.Stop()
	o := CheckOptions{Forked: map[string]bool{orig.Site: true}}
	if err := h.HealAll(ctx); err != nil {
		h.Violate("heal", "%v", err)
	}
	took, _, err := h.Converge(ctx, all, ConvergeTimeout, o)
	res.Converge = took
	if err != nil {
		h.Violate("liveness", "%v", err)
	}
	h.CheckState(ctx, all, o)
	h.StopAndVerify(ctx, all, "")
	h.checkFork(&res, all, orig, clone, forkBase)
	h.finish(&res)
	return res, ctx.Err()
}

// checkFork reads every stopped node's database: the entries written before
// the copy are applied everywhere, each copy holds every entry it
// acknowledged, and what each node kept of each branch is counted.
func (h *Harness) checkFork(res *Result, all []*Node, orig, clone *Node, forkBase uint64) {
	var acked []Write
	for _, w := range h.Ledger.Acked() {
		if w.Site == orig.Site {
			acked = append(acked, w)
		}
	}
	for _, n := range all {
		held, err := InspectSite(n.Data, h.FamilyID, orig.Site)
		if err != nil {
			h.Violate("fork", "%s: read its database: %v", n.Name, err)
			continue
		}
		count := map[string]map[string]int{orig.Name: {}, clone.Name: {}}
		for _, w := range acked {
			where := held.Has(w.Hash)
			if w.Hash == "" { // a batch: no hash; look it up by seq
				if held.Head >= w.Seq {
					where = "applied?"
				}
			}
			switch {
			case w.Seq <= forkBase && where != "applied":
				h.Violate("lost", "%s: %s#%d, acknowledged before the copy, is %q", n.Name, w.Site, w.Seq, where)
			case w.Seq > forkBase && w.By == n.Name && where != "applied":
				h.Violate("lost", "%s lost its own acknowledged %s#%d (%q)", n.Name, w.Site, w.Seq, where)
			case w.Seq > forkBase:
				if where == "" {
					where = "not held"
				}
				count[w.By][where]++
			}
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s holds %s up to %d; of the entries acknowledged after the copy: by %s %v, by %s %v; quarantined %d, evidence %d in all",
			n.Name, orig.Site, held.Head, orig.Name, count[orig.Name], clone.Name, count[clone.Name], len(held.Quarantined), len(held.Evidence)))
		if len(held.Evidence) == 0 {
			h.Violate("fork", "%s keeps no evidence of the fork of %s", n.Name, orig.Site)
		}
	}
}
