package node

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Data-driven multi-node traces: scripted scenarios on the simulator with
// fixed delays and no random faults. Commands:
//
//	opt k=v ...           interval, heartbeat, redial, delay, batch, forward=on|off
//	nodes a b r:relay     node IDs (= sites); "r:relay" is a relay
//	start                 boot every node
//	run 10s               let simulated time pass
//	write a 3             three writes of one entry at a (each its own commit group, gossiped)
//	writemany a 40        one write of 40 entries (one commit group, gossiped as one run)
//	cut a-b | cut a>b     partition both ways | a's messages to b only
//	isolate c             cut c from everyone
//	heal [a-b]            heal one link (both ways) or everything
//	crash c | restart c
//	drop a>b 1            drop the next gossip message(s) from a to b
//	crash-at-batch c 3    crash c right after its 3rd catch-up batch
//	gossip on|off
//	mark                  later "expect fetch" lines look at sessions from here on
//	expect frontier c a=3 b=0
//	expect fetch c<-a connect [have=a=15]   (a or the reason may be *)
//	expect nofetch a<->b | expect nofetch c
//	expect converged      every acknowledged entry everywhere, once, same digests
var simScripts = []struct {
	name   string
	script string
}{
	{"offline node catches up when it reconnects", `
		nodes a b c
		opt interval=30s
		start
		run 5s
		isolate c
		run 30s
		write a 20
		write b 10
		run 30s
		expect frontier c a=0 b=0
		expect frontier a a=20 b=10
		mark
		heal
		run 20s
		expect fetch c<-* connect have=
		expect converged
	`},
	{"a gap on gossip triggers a fetch", `
		nodes a b
		opt interval=1h heartbeat=1h
		start
		run 2s
		write a 1
		run 1s
		expect frontier b a=1
		mark
		drop a>b 1
		write a 1
		write a 1
		run 1s
		expect fetch b<-a gap have=a=1
		expect frontier b a=3
		expect converged
	`},
	{"a partitioned pair converges through a third node", `
		nodes a b c
		opt forward=off interval=30s
		cut a-b
		start
		run 2s
		write a 5
		write b 5
		run 40s
		expect nofetch a<->b
		expect fetch a<-c peer-ahead
		expect fetch b<-c peer-ahead
		expect converged
	`},
	{"the relay is the only path", `
		nodes r:relay a b
		opt forward=off interval=1m
		cut a-b
		start
		run 2s
		writemany a 12
		write b 3
		run 20s
		expect nofetch a<->b
		expect converged
	`},
	{"a crash mid catch-up resumes from what was committed", `
		nodes a c
		opt batch=5
		start
		run 2s
		crash c
		write a 40
		run 5s
		mark
		crash-at-batch c 3
		restart c
		run 5s
		expect fetch c<-a connect have=
		expect frontier c a=15
		mark
		restart c
		run 10s
		expect fetch c<-a connect have=a=15
		expect converged
	`},
	{"a one-way partition stalls one direction only, then heals", `
		nodes a b
		opt interval=10s
		start
		run 2s
		cut a>b
		write a 5
		write b 5
		run 60s
		expect frontier b a=0 b=5
		expect frontier a a=5 b=5
		heal
		run 30s
		expect converged
	`},
}

func TestSimScripts(t *testing.T) {
	for _, sc := range simScripts {
		t.Run(sc.name, func(t *testing.T) { simRunScript(t, sc.script) })
	}
}

func simRunScript(t *testing.T, script string) {
	opt := simOptions{Seed: 1, Interval: 30 * time.Second, Heartbeat: 5 * time.Second, Redial: 10 * time.Second,
		DelayMin: 10 * time.Millisecond, DelayMax: 10 * time.Millisecond, Batch: 1000, Bound: 5 * time.Minute, fixed: true}
	var w *simWorld
	var pendingCuts [][2]string
	mark := 0
	defer func() {
		if w != nil {
			w.close()
		}
	}()
	node := func(lineNo int, id string) *simNode {
		n := w.byID[id]
		if n == nil {
			t.Fatalf("line %d: no node %q", lineNo, id)
		}
		return n
	}
	pair := func(lineNo int, s, sep string) (*simNode, *simNode) {
		a, b, ok := strings.Cut(s, sep)
		if !ok {
			t.Fatalf("line %d: want x%sy, got %q", lineNo, sep, s)
		}
		return node(lineNo, a), node(lineNo, b)
	}
	failf := func(lineNo int, line, format string, args ...any) {
		t.Helper()
		tail := ""
		if w != nil {
			tail = w.trace.tail()
		}
		t.Fatalf("line %d %q: %s\ntrace tail:\n%s", lineNo, line, fmt.Sprintf(format, args...), tail)
	}
	for lineNo, raw := range strings.Split(script, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if w == nil && f[0] != "opt" && f[0] != "nodes" && f[0] != "cut" && f[0] != "start" {
			t.Fatalf("line %d: %q before start", lineNo, line)
		}
		switch f[0] {
		case "opt":
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				d, _ := time.ParseDuration(v)
				switch k {
				case "interval":
					opt.Interval = d
				case "heartbeat":
					opt.Heartbeat = d
				case "redial":
					opt.Redial = d
				case "delay":
					opt.DelayMin, opt.DelayMax = d, d
				case "batch":
					opt.Batch, _ = strconv.Atoi(v)
				case "forward":
					opt.Forward = v == "on"
				default:
					t.Fatalf("line %d: unknown option %q", lineNo, k)
				}
			}
		case "nodes":
			var ids, sites []string
			for _, id := range f[1:] {
				name, role, _ := strings.Cut(id, ":")
				ids = append(ids, name)
				if role == "relay" {
					sites = append(sites, "")
				} else {
					sites = append(sites, name)
				}
			}
			pendingCuts = nil
			opt.Nodes = len(ids)
			w = newSimWorld(opt, false, ids, sites)
			w.trace.out = func(s string) {
				if testing.Verbose() {
					t.Log(s)
				}
			}
		case "start":
			if w == nil {
				t.Fatalf("line %d: start before nodes", lineNo)
			}
			w.opt = opt
			for _, n := range w.nodes {
				n.interval = opt.Interval
			}
			for _, c := range pendingCuts {
				a, b := w.byID[c[0]], w.byID[c[1]]
				w.cut[a.idx][b.idx]++
			}
			for _, n := range w.nodes {
				w.boot(n)
			}
			w.after(time.Second, w.monitor)
		case "run":
			d, err := time.ParseDuration(f[1])
			if err != nil {
				t.Fatalf("line %d: %v", lineNo, err)
			}
			w.runUntil(w.now + d)
		case "write", "writemany":
			n := node(lineNo, f[1])
			k, _ := strconv.Atoi(f[2])
			if f[0] == "writemany" {
				w.write(n, k)
			} else {
				for range k {
					w.write(n, 1)
				}
			}
		case "cut":
			if w == nil || w.nodes[0].eng == nil { // before start: remember
				a, b, ok := strings.Cut(f[1], "-")
				if !ok {
					t.Fatalf("line %d: cut before start takes a-b", lineNo)
				}
				if w == nil {
					t.Fatalf("line %d: cut before nodes", lineNo)
				}
				pendingCuts = append(pendingCuts, [2]string{a, b}, [2]string{b, a})
				continue
			}
			if strings.Contains(f[1], ">") {
				a, b := pair(lineNo, f[1], ">")
				w.cut[a.idx][b.idx]++
			} else {
				a, b := pair(lineNo, f[1], "-")
				w.cut[a.idx][b.idx]++
				w.cut[b.idx][a.idx]++
			}
			w.tracef("PARTITION %s", f[1])
		case "isolate":
			n := node(lineNo, f[1])
			for _, p := range w.nodes {
				if p != n {
					w.cut[n.idx][p.idx]++
					w.cut[p.idx][n.idx]++
				}
			}
			w.tracef("PARTITION isolate %s", n.id)
		case "heal":
			if len(f) == 1 {
				w.healAll()
			} else {
				a, b := pair(lineNo, f[1], "-")
				w.cut[a.idx][b.idx], w.cut[b.idx][a.idx] = 0, 0
			}
			w.tracef("HEAL %s", strings.Join(f[1:], " "))
		case "crash":
			w.crash(node(lineNo, f[1]), "scripted")
		case "restart":
			w.restart(node(lineNo, f[1]))
		case "drop":
			a, b := pair(lineNo, f[1], ">")
			k, _ := strconv.Atoi(f[2])
			w.dropGossip[[2]int{a.idx, b.idx}] += k
		case "crash-at-batch":
			k, _ := strconv.Atoi(f[2])
			w.crashAtBatch[node(lineNo, f[1]).idx] = k
		case "gossip":
			w.gossipOff = f[1] == "off"
		case "mark":
			mark = len(w.log)
		case "expect":
			if w.violation != nil {
				failf(lineNo, line, "violation: %v", w.violation)
			}
			simExpect(w, f[1:], mark, func(format string, args ...any) { failf(lineNo, line, format, args...) })
		default:
			t.Fatalf("line %d: unknown command %q", lineNo, f[0])
		}
	}
	if w != nil && w.violation != nil {
		t.Fatalf("violation: %v\n%s", w.violation, w.trace.tail())
	}
}

func simExpect(w *simWorld, f []string, mark int, fail func(string, ...any)) {
	switch f[0] {
	case "frontier":
		n := w.byID[f[1]]
		got := n.store.Frontier()
		for _, kv := range f[2:] {
			site, v, _ := strings.Cut(kv, "=")
			want, _ := strconv.ParseUint(v, 10, 64)
			if got[site] != want {
				fail("%s holds %s up to %d, want %d (frontier %s)", n.id, site, got[site], want, simFrontier(got))
			}
		}
	case "fetch":
		client, server, _ := strings.Cut(f[1], "<-")
		reason, have := "*", "*"
		if len(f) > 2 {
			reason = f[2]
		}
		if len(f) > 3 {
			have = strings.TrimPrefix(f[3], "have=")
		}
		for _, r := range w.log[mark:] {
			if r.client == client && (server == "*" || r.server == server) && (reason == "*" || r.reason == reason) && (have == "*" || r.have == have) {
				return
			}
		}
		fail("no session %s since the mark; sessions: %v", strings.Join(f[1:], " "), w.log[mark:])
	case "nofetch":
		a, b, both := strings.Cut(f[1], "<->")
		for _, r := range w.log[mark:] {
			if both && (r.client == a && r.server == b || r.client == b && r.server == a) || !both && r.client == a {
				fail("unexpected session %+v", r)
			}
		}
	case "converged":
		if m := w.missing(nil); m != "" {
			fail("not converged: %s", m)
		}
		if err := w.check(); err != nil {
			fail("%v", err)
		}
	default:
		fail("unknown expectation %q", f[0])
	}
}
