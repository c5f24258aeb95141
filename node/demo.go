package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
)

// DemoOptions configure the demo: a family with a relay and three clinic
// sites running on this machine.
type DemoOptions struct {
	Dir     string    // where the family and the nodes live ("" = a new temporary directory)
	NoWait  bool      // exit once the sites converged instead of waiting for Ctrl-C
	Out     io.Writer // progress and results
	Version string
	Records int                 // patients per clinic (default 200)
	Env     func(string) string // the environment; nil: empty
}

var demoSites = []string{"clinic-north", "clinic-south", "clinic-east"}

type demoNode struct {
	site string
	data string
	n    *Node
	stop context.CancelFunc
	done chan error
}

// RunDemo runs the demo until ctx ends (or, with NoWait, until the sites
// converged). It returns an error if they do not converge.
func RunDemo(ctx context.Context, o DemoOptions) error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Records <= 0 {
		o.Records = 200
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ppsync-demo-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		o.Dir = d
	}
	if entries, _ := os.ReadDir(o.Dir); len(entries) > 0 {
		return fmt.Errorf("demo: %s is not empty; give an empty or new directory with --dir", o.Dir)
	}
	say := func(format string, a ...any) { fmt.Fprintf(o.Out, format+"\n", a...) }
	say("ppsync demo in %s", o.Dir)

	authDir := filepath.Join(o.Dir, "authority")
	auth, _, err := family.CreateFamily(authDir, "Demo Dental Practice", time.Now())
	if err != nil {
		return err
	}
	env := func(k string) string {
		if k == "PPSYNC_MACHINE_ID" {
			return "ppsync-demo-machine" // all four nodes share this machine
		}
		if o.Env != nil {
			return o.Env(k)
		}
		return ""
	}
	say("1. created the family %q (authority key in %s)", "Demo Dental Practice", authDir)

	all := append([]string{"relay"}, demoSites...)
	nodes := map[string]*demoNode{}
	familyFile := filepath.Join(authDir, family.InfoFile)
	// setUp does what the README's "Setting up a real family" does for one
	// node: init with the family.json as it is now, support admits the join
	// request, the node installs its own certificate, nothing else. The
	// rest of the family it learns through the relay.
	setUp := func(s, role string) error {
		dn := &demoNode{site: s, data: filepath.Join(o.Dir, s)}
		res, err := Init(InitOptions{DataDir: dn.data, FamilyFile: familyFile, Site: s, Role: role, Env: env})
		if err != nil {
			return err
		}
		b, err := os.ReadFile(res.JoinRequest)
		if err != nil {
			return err
		}
		req, err := family.ParseJoinRequest(b)
		if err != nil {
			return err
		}
		c, err := auth.Admit(authDir, req, time.Now())
		if err != nil {
			return err
		}
		cb, err := c.Marshal()
		if err != nil {
			return err
		}
		if _, err := InstallOffline(dn.data, cb); err != nil {
			return err
		}
		nodes[s] = dn
		return nil
	}

	start := func(s string) error {
		dn := nodes[s]
		cfg, err := LoadConfig(dn.data)
		if err != nil {
			return err
		}
		cfg.API, cfg.Listen, cfg.MDNS, cfg.Env, cfg.Version = "127.0.0.1:0", []string{"/ip4/127.0.0.1/tcp/0"}, false, env, o.Version
		cfg.HeartbeatInterval = time.Second
		cfg.SyncInterval = Duration(5 * time.Second)
		n, err := Open(ctx, cfg)
		if err != nil {
			return fmt.Errorf("demo: start %s: %w", s, err)
		}
		rctx, cancel := context.WithCancel(ctx)
		dn.n, dn.stop, dn.done = n, cancel, make(chan error, 1)
		go func() { dn.done <- n.Run(rctx) }()
		return nil
	}
	stop := func(s string) {
		dn := nodes[s]
		if dn == nil || dn.n == nil {
			return
		}
		dn.stop()
		<-dn.done
		dn.n.Close()
		dn.n = nil
	}
	defer func() {
		for _, s := range all {
			stop(s)
		}
	}()
	// The relay first: it must run for its address to be known.
	if err := setUp("relay", "relay"); err != nil {
		return err
	}
	if err := start("relay"); err != nil {
		return err
	}
	relayAddr := nodes["relay"].n.mesh.Addrs()[0]
	// Support adds the relay's address to family.json (`ppsync family
	// bootstrap --add`), then the clinics are set up with that family.json.
	info, err := family.LoadInfo(familyFile)
	if err != nil {
		return err
	}
	if err := info.AddBootstrap(relayAddr); err != nil {
		return err
	}
	if err := family.SaveInfo(familyFile, info); err != nil {
		return err
	}
	say("2. set up and started the relay; support added its address %s to family.json", relayAddr)
	for _, s := range demoSites {
		if err := setUp(s, "site"); err != nil {
			return err
		}
	}
	for _, s := range demoSites {
		if err := start(s); err != nil {
			return err
		}
	}
	say("3. set up three clinics, each with family.json and its own certificate only; support admitted each one")
	say("   started them; each clinic dials the relay named in family.json and learns the rest of the family there")

	rng := rand.New(rand.NewPCG(7, 11))
	write := func(s string, from, count int) error {
		txs := clinicData(rng, s, from, count)
		for len(txs) > 0 {
			k := min(len(txs), 500)
			if _, err := nodes[s].n.writeBatch(ctx, txs[:k]); err != nil {
				return err
			}
			txs = txs[k:]
		}
		return nil
	}
	for _, s := range demoSites {
		if err := write(s, 0, o.Records); err != nil {
			return err
		}
	}
	say("4. each clinic wrote %d patients with appointments and notes", o.Records)
	if err := demoConverge(ctx, o.Out, nodes, all, 60*time.Second); err != nil {
		return err
	}

	offline := demoSites[2]
	stop(offline)
	say("5. %s went offline (machine switched off); the other clinics keep working", offline)
	for _, s := range demoSites[:2] {
		if err := write(s, o.Records, o.Records*2); err != nil {
			return err
		}
	}
	say("   the others wrote %d more patients each meanwhile", o.Records*2)
	if err := demoConverge(ctx, o.Out, nodes, []string{"relay", demoSites[0], demoSites[1]}, 60*time.Second); err != nil {
		return err
	}
	if err := start(offline); err != nil {
		return err
	}
	say("6. %s is back online and catches up:", offline)
	if err := demoConverge(ctx, o.Out, nodes, all, 120*time.Second); err != nil {
		return err
	}
	say("")
	say("All four nodes hold the same data:")
	for _, s := range all {
		d, _ := nodes[s].n.state.Digest()
		st, _ := nodes[s].n.state.Stats()
		say("  %-13s digest %s  records %d", s, d.Short(), st.Records)
	}
	say("")
	say("Sync pages (each link works once, within 2 minutes; for a new one: ppsync open --data DIR):")
	for _, s := range all {
		say("  %-13s %s", s, nodes[s].n.page.issue().URL)
	}
	say("Data directories: %s/<site>; the API key of each is in its api.key.", o.Dir)
	if o.NoWait {
		return nil
	}
	say("")
	say("The family keeps running; press Ctrl-C to stop.")
	<-ctx.Done()
	return nil
}

// demoConverge waits until the named nodes hold the same entries and state,
// drawing a progress bar of the entries still missing.
func demoConverge(ctx context.Context, out io.Writer, nodes map[string]*demoNode, sites []string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		want := map[string]uint64{}
		for _, s := range sites {
			for site, n := range nodes[s].n.txlog.Frontier() {
				want[site] = max(want[site], n)
			}
		}
		var total, have uint64
		for _, s := range sites {
			f := nodes[s].n.txlog.Frontier()
			for site, n := range want {
				total += n
				have += min(f[site], n)
			}
		}
		same := have == total
		if same {
			var first wire.Hash
			for i, s := range sites {
				d, err := nodes[s].n.state.Digest()
				if err != nil {
					return err
				}
				if i == 0 {
					first = d
				} else if d != first {
					same = false
				}
			}
		}
		width := 30
		done := width
		if total > 0 {
			done = int(uint64(width) * have / total)
		}
		fmt.Fprintf(out, "\r   [%s%s] %d/%d entries held", strings.Repeat("#", done), strings.Repeat(".", width-done), have, total)
		if same {
			fmt.Fprintln(out, "  converged")
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(out)
			return errors.New("demo: the sites did not converge in time")
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

var (
	demoFirst = []string{"Ada", "Ben", "Chloé", "David", "Elif", "Farah", "Giulia", "Hugo", "Ines", "Jonas", "Kenji", "Lea", "Mateo", "Noor", "Olga", "Pedro"}
	demoLast  = []string{"Meier", "Rossi", "Keller", "Novak", "Schmid", "Dubois", "Weber", "Costa", "Huber", "Brunner"}
	demoNotes = []string{"check-up, no findings", "filling upper left 6", "hygiene appointment booked", "x-ray taken, review next visit", "patient reports sensitivity", "crown prep, temporary fitted"}
)

// clinicData makes count realistic transactions at a site: a patient, an
// appointment and a clinical note each.
func clinicData(rng *rand.Rand, site string, from, count int) [][]wire.Op {
	out := make([][]wire.Op, 0, count)
	for i := from; i < from+count; i++ {
		pid := fmt.Sprintf("%s-p%05d", site, i)
		day := time.Date(2026, 12, 1+rng.IntN(28), 8+rng.IntN(9), 15*rng.IntN(4), 0, 0, time.UTC)
		out = append(out, []wire.Op{
			{Kind: wire.OpPut, Table: "patients", Key: pid, Fields: map[string]any{
				"first_name": demoFirst[rng.IntN(len(demoFirst))], "last_name": demoLast[rng.IntN(len(demoLast))],
				"dob": fmt.Sprintf("19%02d-%02d-%02d", 40+rng.IntN(60), 1+rng.IntN(12), 1+rng.IntN(28)), "clinic": site,
				"phone": fmt.Sprintf("+41 31 %03d %02d %02d", rng.IntN(1000), rng.IntN(100), rng.IntN(100)),
			}},
			{Kind: wire.OpPut, Table: "appointments", Key: pid + "-a1", Fields: map[string]any{
				"patient": pid, "start": day.Format(time.RFC3339), "minutes": int64(30 + 15*rng.IntN(3)), "room": int64(1 + rng.IntN(4)), "status": "booked",
			}},
			{Kind: wire.OpPut, Table: "notes", Key: pid + "-n1", Fields: map[string]any{
				"patient": pid, "text": demoNotes[rng.IntN(len(demoNotes))], "author": "Dr. " + demoLast[rng.IntN(len(demoLast))],
			}},
		})
	}
	return out
}
