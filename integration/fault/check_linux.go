//go:build linux

package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// CheckOptions tune the end-of-run checks.
type CheckOptions struct {
	// Forked sites are expected to have forked (the clone attack): their logs
	// may differ between nodes, so they are left out of the frontier, record
	// and digest comparisons (the attack test checks them on its own).
	Forked map[string]bool
	// Extra records (table/key) were written by the scenario itself, each
	// in an entry of its own, besides the load.
	Extra map[string]bool
}

// view is one node's answers at one moment.
type view struct {
	name     string
	frontier map[string]uint64
	digest   string
	blind    bool // a relay: no readable state, its frontier alone
	err      error
}

func (h *Harness) look(ctx context.Context, n *Node) view {
	v := view{name: n.Name}
	c := n.Client()
	if c == nil {
		v.err = fmt.Errorf("%s is not running", n.Name)
		return v
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		v.err = err
		return v
	}
	v.frontier = st.Frontier
	if v.blind = st.Role == "relay"; v.blind {
		return v
	}
	if v.digest, err = c.Digest(ctx); err != nil {
		v.err = err
	}
	return v
}

// Converge waits until every node in nodes holds the same frontier, at least
// every acknowledged seq, and (without forks) the same digest. It returns how
// long that took and the common digest.
func (h *Harness) Converge(ctx context.Context, nodes []*Node, timeout time.Duration, o CheckOptions) (time.Duration, string, error) {
	want := h.Ledger.MaxAcked()
	digest := ""
	took, err := waitFor(ctx, timeout, 250*time.Millisecond, "convergence", func() (bool, string) {
		views := make([]view, len(nodes))
		var wg sync.WaitGroup
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				views[i] = h.look(ctx, n)
			}()
		}
		wg.Wait()
		for _, v := range views {
			if v.err != nil {
				return false, v.name + ": " + v.err.Error()
			}
			for site, seq := range want {
				if !o.Forked[site] && v.frontier[site] < seq {
					return false, fmt.Sprintf("%s holds %s up to %d, %d acknowledged", v.name, site, v.frontier[site], seq)
				}
			}
		}
		ref := strip(views[0].frontier, o.Forked)
		for _, v := range views[1:] {
			if f := strip(v.frontier, o.Forked); !maps.Equal(ref, f) {
				return false, fmt.Sprintf("frontiers differ: %s %v, %s %v", views[0].name, ref, v.name, f)
			}
		}
		var sites []view // a relay holds no readable state: digests of the sites
		for _, v := range views {
			if !v.blind {
				sites = append(sites, v)
			}
		}
		if len(o.Forked) == 0 && len(sites) > 0 {
			for _, v := range sites[1:] {
				if v.digest != sites[0].digest {
					return false, fmt.Sprintf("digests differ: %s %.12s, %s %.12s (frontier %v)", sites[0].name, sites[0].digest, v.name, v.digest, ref)
				}
			}
		}
		if len(sites) > 0 {
			digest = sites[0].digest
		}
		return true, ""
	})
	return took, digest, err
}

func strip(m map[string]uint64, skip map[string]bool) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		if !skip[k] {
			out[k] = v
		}
	}
	return out
}

// record is one record as the change feed shows it.
type record struct {
	fields  map[string]any
	site    string
	seq     uint64
	time    time.Time
	deleted bool
}

// readState reads a node's whole state through the change feed (each record
// once, with the entry that wrote it last), keyed "table/key".
func readState(ctx context.Context, c *api.Client) (map[string]record, error) {
	out := map[string]record{}
	var after uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := c.Changes(cctx, after, 10000)
		cancel()
		if err != nil {
			return nil, err
		}
		for _, ch := range res.Changes {
			r := record{fields: ch.Fields, deleted: ch.Deleted}
			if ch.Version != nil {
				r.site, r.seq, r.time = ch.Version.Site, ch.Version.Seq, ch.Version.Time
			}
			out[ch.Table+"/"+ch.Key] = r
		}
		if len(res.Changes) == 0 || res.Next == after {
			return out, nil
		}
		after = res.Next
	}
}

// CheckState checks every node's records against the ledger:
//   - every acknowledged transaction is there, as the entry (site, seq) it was
//     acknowledged as, with the content it wrote;
//   - each site's entries 1..frontier were applied exactly once (one TableFT
//     record each, no seq twice, none missing), and no record appears that
//     nobody wrote;
//   - a site's own later write to a record it alone writes wins over its
//     earlier ones;
//   - every node holds the same frontier (and digest, without forks).
func (h *Harness) CheckState(ctx context.Context, nodes []*Node, o CheckOptions) {
	acked, unknown := h.Ledger.Acked(), h.Ledger.Unknown()
	written := map[string]map[string]bool{} // table/key -> values written (acked or maybe)
	note := func(table, key, v string) {
		k := table + "/" + key
		if written[k] == nil {
			written[k] = map[string]bool{}
		}
		written[k][v] = true
	}
	ackedSeq := map[string]map[uint64]Write{} // site -> seq -> write
	ownMax := map[string]Write{}              // own key -> acknowledged write with the highest seq
	for _, w := range acked {
		if ackedSeq[w.Site] == nil {
			ackedSeq[w.Site] = map[uint64]Write{}
		}
		ackedSeq[w.Site][w.Seq] = w
		if w.Own != "" && w.Seq > ownMax[w.Own].Seq {
			ownMax[w.Own] = w
		}
	}
	for _, w := range append(acked, unknown...) {
		note(TableFT, w.FT, w.V)
		if w.Own != "" {
			note(TableOwn, w.Own, w.V)
		}
		if w.Hot != "" {
			note(TableHot, w.Hot, w.V)
		}
	}
	type result struct {
		frontier map[string]uint64
		digest   string
	}
	results := map[string]result{}
	relays := map[string]map[string]uint64{}
	// Entries that only give data keys write no record: paging through the
	// logs to find them is done once, and only when a count needs it.
	var keyOnlyOnce map[string]map[uint64]bool
	keyOnly := func() map[string]map[uint64]bool {
		if keyOnlyOnce == nil {
			keyOnlyOnce = h.keyOnlyEntries(ctx, nodes)
		}
		return keyOnlyOnce
	}
	for _, n := range nodes {
		c := n.Client()
		if c == nil {
			h.Violate("check", "%s is not running at the check", n.Name)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.Status(sctx)
		var digest string
		if err == nil && st.Role == "relay" {
			// A relay holds no readable data: it must say so, and hold
			// every entry (its frontier is compared below).
			_, derr := c.Digest(sctx)
			var ae *api.APIStatusError
			if !errors.As(derr, &ae) || ae.Code != "relay_blind" {
				h.Violate("blind", "%s: a relay answered a digest request with %v, want relay_blind", n.Name, derr)
			}
			cancel()
			relays[n.Name] = st.Frontier
			continue
		}
		if err == nil {
			digest, err = c.Digest(sctx)
		}
		cancel()
		if err != nil {
			h.Violate("check", "%s: status: %v", n.Name, err)
			continue
		}
		state, err := readState(ctx, c)
		if err != nil {
			h.Violate("check", "%s: read the change feed: %v", n.Name, err)
			continue
		}
		results[n.Name] = result{frontier: st.Frontier, digest: digest}
		h.checkNode(n.Name, st.Frontier, state, acked, ackedSeq, ownMax, written, keyOnly, o)
	}
	var names []string
	for name := range results {
		names = append(names, name)
	}
	sort.Strings(names)
	for name, f := range relays {
		if len(names) > 0 {
			if fa, fb := strip(results[names[0]].frontier, o.Forked), strip(f, o.Forked); !maps.Equal(fa, fb) {
				h.Violate("diverged", "frontier of the relay %s %v differs from %s's %v", name, fb, names[0], fa)
			}
		}
	}
	for _, name := range names[min(1, len(names)):] {
		a, b := results[names[0]], results[name]
		if fa, fb := strip(a.frontier, o.Forked), strip(b.frontier, o.Forked); !maps.Equal(fa, fb) {
			h.Violate("diverged", "frontier of %s %v differs from %s's %v", name, fb, names[0], fa)
		}
		if len(o.Forked) == 0 && a.digest != b.digest {
			h.Violate("diverged", "digest of %s %s differs from %s's %s", name, b.digest, names[0], a.digest)
		}
	}
}

// keyOnlyEntries pages through every site's log at the first site node
// that answers and returns the entries that only give data keys (grants, no
// operations): they apply no record.
func (h *Harness) keyOnlyEntries(ctx context.Context, nodes []*Node) map[string]map[uint64]bool {
	out := map[string]map[uint64]bool{}
	for _, n := range nodes {
		c := n.Client()
		if c == nil || n.Role == "relay" {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		st, err := c.Status(sctx)
		if err != nil {
			continue
		}
		for site, f := range st.Frontier {
			for from := uint64(1); from <= f; {
				res, err := c.LogRange(sctx, site, from, 10000)
				if err != nil || len(res.Entries) == 0 {
					h.Violate("check", "%s: page through %s's log from %d: %v", n.Name, site, from, err)
					break
				}
				for _, e := range res.Entries {
					if e.Grants > 0 && len(e.Ops) == 0 && e.Key == "" {
						if out[site] == nil {
							out[site] = map[uint64]bool{}
						}
						out[site][e.Seq] = true
					}
					from = e.Seq + 1
				}
			}
		}
		return out
	}
	return out
}

func (h *Harness) checkNode(name string, frontier map[string]uint64, state map[string]record, acked []Write,
	ackedSeq map[string]map[uint64]Write, ownMax map[string]Write, written map[string]map[string]bool, keyOnly func() map[string]map[uint64]bool, o CheckOptions) {
	const maxReports = 5
	reported := map[string]int{}
	violate := func(kind, format string, a ...any) {
		reported[kind]++
		if reported[kind] <= maxReports {
			h.Violate(kind, name+": "+format, a...)
		} else if reported[kind] == maxReports+1 {
			h.Violate(kind, "%s: more %s violations not shown", name, kind)
		}
	}
	for _, w := range acked {
		if o.Forked[w.Site] {
			continue
		}
		if frontier[w.Site] < w.Seq {
			violate("lost", "acknowledged %s#%d (%s) is beyond the frontier %d", w.Site, w.Seq, w.FT, frontier[w.Site])
			continue
		}
		r, ok := state[TableFT+"/"+w.FT]
		switch {
		case !ok || r.deleted:
			violate("lost", "acknowledged %s#%d: record %s/%s is missing", w.Site, w.Seq, TableFT, w.FT)
		case r.site != w.Site || r.seq != w.Seq:
			violate("misplaced", "record %s/%s was acknowledged as %s#%d but was written by %s#%d", TableFT, w.FT, w.Site, w.Seq, r.site, r.seq)
		case fmt.Sprint(r.fields["v"]) != w.V || len(r.fields) != 1:
			violate("content", "record %s/%s of %s#%d holds %v, want {v:%s}", TableFT, w.FT, w.Site, w.Seq, r.fields, w.V)
		}
	}
	seqs := map[string]map[uint64]string{}
	for k, r := range state {
		table, key, _ := strings.Cut(k, "/")
		if o.Extra[k] { // written by the scenario itself, in an entry of its own
			if seqs[r.site] == nil {
				seqs[r.site] = map[uint64]string{}
			}
			seqs[r.site][r.seq] = key
			continue
		}
		if table != TableFT && table != TableOwn && table != TableHot {
			violate("phantom", "record %s that the harness never wrote", k)
			continue
		}
		vals := written[k]
		var v any
		switch table {
		case TableFT:
			v = r.fields["v"]
			if seqs[r.site] == nil {
				seqs[r.site] = map[uint64]string{}
			}
			if prev, dup := seqs[r.site][r.seq]; dup {
				violate("applied-twice", "%s#%d wrote two records: %s and %s", r.site, r.seq, prev, key)
			}
			seqs[r.site][r.seq] = key
		case TableOwn:
			v = r.fields["v"]
		case TableHot:
			v = r.fields["x"]
		}
		if vals == nil || !vals[fmt.Sprint(v)] {
			violate("phantom", "record %s holds %v, which no write of the harness wrote there (version %s#%d)", k, r.fields, r.site, r.seq)
		}
	}
	for site, f := range frontier {
		if o.Forked[site] {
			continue
		}
		got := seqs[site]
		if uint64(len(got)) != f && uint64(len(got)+len(keyOnly()[site])) != f { // entries that only give data keys write no record
			missing := []uint64{}
			for s := uint64(1); s <= f && len(missing) < 10; s++ {
				if _, ok := got[s]; !ok && !keyOnly()[site][s] {
					missing = append(missing, s)
				}
			}
			violate("applied", "site %s: frontier %d but %d of its entries applied (missing seqs %v...)", site, f, len(got), missing)
		}
		for s := range got {
			if s > f {
				violate("applied", "site %s: entry %d applied beyond the frontier %d", site, s, f)
			}
		}
	}
	for key, w := range ownMax {
		if o.Forked[w.Site] {
			continue
		}
		r, ok := state[TableOwn+"/"+key]
		switch {
		case !ok:
			violate("lost", "record %s/%s (last acknowledged write %s#%d) is missing", TableOwn, key, w.Site, w.Seq)
		case r.site != w.Site:
			violate("own-overwritten", "record %s/%s is written only by %s but shows %s#%d", TableOwn, key, w.Site, r.site, r.seq)
		case r.seq < w.Seq:
			violate("own-overwritten", "record %s/%s: %s's acknowledged write #%d lost to its own earlier write #%d (HLC time %s), so the newest value written is not what every node shows",
				TableOwn, key, w.Site, w.Seq, r.seq, r.time.Format(time.RFC3339Nano))
		case r.seq == w.Seq && fmt.Sprint(r.fields["v"]) != w.V:
			violate("content", "record %s/%s of %s#%d holds %v, want {v:%s}", TableOwn, key, w.Site, w.Seq, r.fields, w.V)
		case r.seq > w.Seq:
			if a, ok := ackedSeq[w.Site][r.seq]; ok && a.Own != key {
				violate("misplaced", "record %s/%s names %s#%d, which did not write it", TableOwn, key, w.Site, r.seq)
			}
		}
	}
}

// VerifyReport is `ppsync verify --json`.
type VerifyReport struct {
	Sites       int      `json:"sites"`
	Entries     uint64   `json:"entries"`
	Damage      []string `json:"damage"`
	DigestAfter string   `json:"digest_after"`
	Repaired    bool     `json:"repaired"`
}

// StopAndVerify stops the nodes with SIGTERM (each must exit 0), then runs
// `ppsync verify` on each: exit 0, no damage, and, when digest is given, the
// state rebuilt from the logs has that digest.
func (h *Harness) StopAndVerify(ctx context.Context, nodes []*Node, digest string) map[string]VerifyReport {
	_ = h.each(nodes, func(n *Node) error {
		code, err := n.Stop()
		if err != nil {
			h.Violate("stop", "%v", err)
		} else if code != 0 {
			h.Violate("stop", "%s exited %d after SIGTERM, want 0:\n%s", n.Name, code, n.LogTail(15))
		}
		return nil
	})
	reps := map[string]VerifyReport{}
	var mu sync.Mutex
	_ = h.each(nodes, func(n *Node) error {
		rep, code, err := h.verify(ctx, n)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			h.Violate("verify", "%s: %v", n.Name, err)
		case code != 0 || len(rep.Damage) > 0:
			h.Violate("verify", "%s: `ppsync verify` exited %d: damage %q", n.Name, code, rep.Damage)
		case digest != "" && rep.DigestAfter != digest && n.Role != "relay":
			h.Violate("verify", "%s: the state rebuilt from the logs has digest %s, the running node showed %s", n.Name, rep.DigestAfter, digest)
		}
		reps[n.Name] = rep
		return nil
	})
	return reps
}

func (h *Harness) verify(ctx context.Context, n *Node) (VerifyReport, int, error) {
	var rep VerifyReport
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, "verify", "--data", n.Data, "--json")
	cmd.Env = append(os.Environ(), "PPSYNC_MACHINE_ID="+MachineID)
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
		err = nil
		if code != 0 && code != 1 {
			return rep, code, fmt.Errorf("`ppsync verify` exited %d: %s", code, strings.TrimSpace(string(ee.Stderr)))
		}
	}
	if err != nil {
		return rep, code, err
	}
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		return rep, code, fmt.Errorf("`ppsync verify --json` printed %q: %v", out, jerr)
	}
	return rep, code, nil
}
