package node

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/engine"
)

// --- the engine, driven as sync.go drives it ----------------------------------------

// drive steps in through n's engine and carries out its actions with
// engine.Drive, the dispatcher the node's driver uses; sess is the catch-up
// session whose batch this is, if any.
func (w *simWorld) drive(n *simNode, in engine.Input, sess *simSession) *simFx {
	fx := &simFx{w: w, n: n, sess: sess}
	engine.Drive(n.eng.Step, fx, in)
	w.checkEngine(n)
	return fx
}

func (w *simWorld) up(n, p *simNode) {
	w.tracef("%s: %s up", n.id, p.id)
	w.drive(n, engine.PeerUp{Now: w.clock(), Peer: p.id}, nil)
}

func (w *simWorld) down(n, p *simNode) {
	w.tracef("%s: %s down", n.id, p.id)
	w.drive(n, engine.PeerDown{Now: w.clock(), Peer: p.id}, nil)
}

// checkEngine: at most one session per peer, no more than MaxInFlight, and
// the engine's idea of what runs matches what runs.
func (w *simWorld) checkEngine(n *simNode) {
	if n.eng == nil {
		return
	}
	per := map[string]int{}
	for _, s := range n.sessions {
		per[s.server.id]++
	}
	if len(n.sessions) > n.eng.MaxInFlight() {
		w.fail("%s runs %d sessions, more than %d", n.id, len(n.sessions), n.eng.MaxInFlight())
	}
	for _, p := range w.nodes {
		inFlight := n.eng.InFlight(p.id)
		if per[p.id] > 1 {
			w.fail("%s runs %d sessions with %s at once", n.id, per[p.id], p.id)
		}
		if inFlight != (per[p.id] == 1) {
			w.fail("%s: engine says session with %s in flight=%v, sessions running=%d", n.id, p.id, inFlight, per[p.id])
		}
	}
}

// simFx carries out one node's engine actions in the simulated world: it is
// the simulation's engine.Effects.
type simFx struct {
	w    *simWorld
	n    *simNode
	sess *simSession
	gate engine.WriteGate
}

func (fx *simFx) Fetch(a engine.Fetch) { fx.w.startSession(fx.n, a) }

// ForkCheck, SpreadFork and PushBranch: the simulation has no forks, so a
// differing head hash or a fork is a violation.
func (fx *simFx) ForkCheck(a engine.ForkCheck) {
	fx.w.fail("%s: fork check of %s#%d with %s, but no site forked", fx.n.id, a.Site, a.Seq, a.Peer)
}

func (fx *simFx) CheckDuplicate(a engine.CheckDuplicate) {
	fx.w.fail("%s: checks %s as a duplicate identity, but no identity runs twice", fx.n.id, a.Peer)
}

func (fx *simFx) SpreadFork(a engine.SpreadFork) {
	fx.w.fail("%s: spreads a fork of %s#%d, but no site forked", fx.n.id, a.Site, a.Seq)
}

func (fx *simFx) PushBranch(a engine.PushBranch) {
	fx.w.fail("%s: pushes a branch of %s from %d, but no site forked", fx.n.id, a.Site, a.From)
}

// Append appends through the node's appendReceived, as the driver does.
// Anything but a gap or a duplicate is a violation here (the simulation has
// no forks or forgeries).
func (fx *simFx) Append(a engine.Append) engine.Outcome {
	w, n := fx.w, fx.n
	o := appendReceived(context.Background(), n.store, a)
	first, last := a.Run[0], a.Run[len(a.Run)-1]
	via := "catch-up"
	switch {
	case a.Held:
		via = "held gossip"
	case a.Gossip:
		via = "gossip"
	}
	switch o.Kind {
	case engine.OutcomeGap:
		w.tracef("%s <-%s %s %s#%d..%d: gap (holds %d)", n.id, via, a.Peer, first.Site, first.Seq, last.Seq, o.Seq)
	case engine.OutcomeOK, engine.OutcomeDuplicate:
		if a.Gossip {
			w.stats.appendedGossip += o.Appended
		} else {
			w.stats.appendedCatchup += o.Appended
		}
		w.tracef("%s <-%s %s %s#%d..%d: +%d dup %d", n.id, via, a.Peer, first.Site, first.Seq, last.Seq, o.Appended, o.Duplicates)
	default:
		w.fail("%s: %s from %s of %s#%d..%d: %s: %v", n.id, via, a.Peer, first.Site, first.Seq, last.Seq, o.Kind, o.Err)
	}
	if o.Err != nil && fx.sess != nil && !a.Gossip {
		fx.sess.skip[first.Site] = true // mesh skips the rest of a site after an error
	}
	return o
}

// Probe asks the peer for its heartbeat: a request there, the answer back.
func (fx *simFx) Probe(a engine.Probe) {
	w, n := fx.w, fx.n
	p := w.byID[a.Peer]
	inc := n.inc
	w.send(n, p, func(_ *simConn, _ bool) {
		f, heads := w.headsOf(p)
		w.send(p, n, func(_ *simConn, _ bool) {
			if n.inc == inc {
				w.drive(n, engine.NewHeartbeat(n.store, w.clock(), p.id, f, heads), nil)
			}
		})
	})
}

// SetTimer keeps one wake-up per node, at the earliest time asked for, as
// the driver's loop does.
func (fx *simFx) SetTimer(a engine.SetTimer) {
	w, n := fx.w, fx.n
	if !n.wakeAt.IsZero() && !a.At.Before(n.wakeAt) {
		return
	}
	n.wakeAt = a.At
	inc := n.inc
	w.after(max(a.At.Sub(w.clock()), 0), func() {
		if !n.alive || n.inc != inc || !n.wakeAt.Equal(a.At) {
			return
		}
		n.wakeAt = time.Time{}
		w.drive(n, engine.Wake{Now: w.clock()}, nil)
	})
}

func (fx *simFx) WriteGate(a engine.WriteGate) { fx.gate = a }

// --- catch-up sessions --------------------------------------------------------------

func (w *simWorld) startSession(n *simNode, a engine.Fetch) {
	p := w.byID[a.Peer]
	w.nsession++
	s := &simSession{id: w.nsession, client: n, server: p, reason: a.Reason,
		have: n.store.Frontier(), last: w.now, skip: map[string]bool{}}
	have := simFrontier(s.have)
	w.log = append(w.log, simSessionRec{at: w.now, client: n.id, server: p.id, reason: a.Reason, have: have})
	w.stats.sessions++
	w.tracef("%s fetch #%d from %s (%s) have [%s]", n.id, s.id, p.id, a.Reason, have)
	n.sessions = append(n.sessions, s)
	s.conn = w.connFor(n.idx, p.idx)
	if s.conn == nil {
		w.after(time.Millisecond, func() { w.endSession(s, false, "no connection") })
		return
	}
	w.after(w.delay(), func() { w.serve(s) })
	w.watch(s)
}

// watch fails the session when nothing arrives for simIdle.
func (w *simWorld) watch(s *simSession) {
	w.after(simIdle, func() {
		if !s.done && w.now-s.last >= simIdle {
			w.endSession(s, false, "idle timeout")
		}
	})
}

// serve: the request reached the server, which streams the runs it holds
// beyond the client's frontier, site by site, in batches (mesh.serveCatchup
// reads its frontier once, then the entries lazily: the same, as entries
// never change).
func (w *simWorld) serve(s *simSession) {
	if s.done || !w.pathOK(s.conn, s.client.idx, s.server.idx) {
		return // lost: the client times out
	}
	srv := s.server
	front := srv.store.Frontier()
	sites := make([]string, 0, len(front))
	for site := range front {
		sites = append(sites, site)
	}
	sort.Strings(sites)
	var batches [][]*wire.Signed
	for _, site := range sites {
		from := s.have[site] + 1
		if front[site] < from {
			continue
		}
		run := srv.store.Range(site, from, front[site])
		for len(run) > 0 {
			k := min(len(run), w.opt.Batch)
			for k < len(run) && !run[k-1].IsSigned() {
				k++ // a batch ends at a commit group's signed end, as mesh.writeRange's
			}
			batches = append(batches, run[:k])
			run = run[k:]
		}
	}
	w.tracef("%s serves #%d to %s: %d batches", srv.id, s.id, s.client.id, len(batches))
	if len(batches) == 0 {
		w.after(w.delay(), func() { w.deliver(s, nil, true) })
		return
	}
	sent, arrive := time.Duration(0), time.Duration(0)
	for i, b := range batches {
		sent += time.Millisecond * time.Duration(1+i%5)
		arrive = max(arrive, sent+w.delay()) // a stream keeps its order
		last := i == len(batches)-1
		w.after(arrive, func() { w.deliver(s, b, last) })
	}
}

// deliver: a batch (or the end of the stream) reaches the client.
func (w *simWorld) deliver(s *simSession, run []*wire.Signed, last bool) {
	if s.done || !w.pathOK(s.conn, s.server.idx, s.client.idx) {
		return
	}
	if w.faults && w.chance(w.opt.Reset) {
		w.stats.resets++
		w.endSession(s, false, "stream reset")
		return
	}
	s.last = w.now
	w.watch(s)
	n := s.client
	if len(run) > 0 {
		site := run[0].Site
		n.batches++
		if !s.skip[site] {
			w.drive(n, engine.Received{Now: w.clock(), Peer: s.server.id, Run: run}, s)
		}
		if k, ok := w.crashAtBatch[n.idx]; ok && n.batches >= k {
			delete(w.crashAtBatch, n.idx)
			w.crash(n, fmt.Sprintf("scripted, after catch-up batch %d", k))
			return
		}
		if w.faults && w.chance(w.opt.CrashMid) {
			w.crash(n, "mid catch-up")
			return
		}
	}
	if last {
		w.endSession(s, true, "")
	}
}

func (w *simWorld) endSession(s *simSession, ok bool, why string) {
	if s.done {
		return
	}
	s.done = true
	n := s.client
	for i, x := range n.sessions {
		if x == s {
			n.sessions = append(n.sessions[:i], n.sessions[i+1:]...)
			break
		}
	}
	if ok {
		w.tracef("%s fetch #%d from %s done", n.id, s.id, s.server.id)
	} else {
		w.stats.failed++
		w.tracef("%s fetch #%d from %s failed: %s", n.id, s.id, s.server.id, why)
	}
	w.drive(n, engine.FetchDone{Now: w.clock(), Peer: s.server.id, OK: ok}, nil)
}

// applied is called by the store for each entry it applies.
func (w *simWorld) applied(n *simNode, e *wire.Signed) {
	id := e.ID()
	n.applied[id]++
	if n.applied[id] > 1 {
		w.fail("%s applied %s %d times", n.id, id, n.applied[id])
	}
	if e.Site == n.site {
		return // own write: checked against what Write returns
	}
	t := w.truth[e.Site]
	if e.Seq > uint64(len(t)) || t[e.Seq-1] != e.Hash {
		w.fail("%s applied %s, which its site never acknowledged", n.id, id)
	}
}

// --- gossip and heartbeats --------------------------------------------------------

// send carries one gossip message (an entry or a heartbeat) with the faults.
func (w *simWorld) send(from, to *simNode, deliver func(c *simConn, bypass bool)) {
	c := w.connFor(from.idx, to.idx)
	if c == nil {
		return
	}
	if w.faults && w.chance(w.opt.Loss) {
		w.stats.lost++
		return
	}
	copies := 1
	if w.faults && w.chance(w.opt.Dup) {
		copies = 2
		w.stats.dups++
	}
	for i := range copies {
		bypass := i == 1 && w.rng.IntN(2) == 0 // delivered again after the seen-cache forgot it
		w.after(w.delay(), func() {
			if w.pathOK(c, from.idx, to.idx) && to.alive {
				deliver(c, bypass)
			}
		})
	}
}

// gossip carries one message of the groups topic: the run of entries one
// commit group wrote, ending at its signed entry.
func (w *simWorld) gossip(from, to *simNode, run []*wire.Signed) {
	if w.gossipOff {
		return
	}
	first, last := run[0], run[len(run)-1]
	if k := w.dropGossip[[2]int{from.idx, to.idx}]; k > 0 {
		w.dropGossip[[2]int{from.idx, to.idx}] = k - 1
		w.tracef("%s ->gossip %s %s#%d..%d: dropped (scripted)", from.id, to.id, first.Site, first.Seq, last.Seq)
		return
	}
	w.stats.gossip++
	w.send(from, to, func(_ *simConn, bypass bool) { w.receive(to, from, run, bypass) })
}

func (w *simWorld) receive(n, from *simNode, run []*wire.Signed, bypass bool) {
	last := run[len(run)-1]
	key := simSeen{last.ID(), last.Hash}
	if at, ok := n.seen[key]; ok && !bypass && w.now-at < simSeenTTL {
		return
	}
	n.seen[key] = w.now
	w.drive(n, engine.Received{Now: w.clock(), Peer: from.id, Run: run, Gossip: true}, nil)
	if w.opt.Forward {
		for _, p := range w.peersOf(n) {
			if p != from {
				w.gossip(n, p, run)
			}
		}
	}
}

func (w *simWorld) heartbeat(n *simNode) {
	f, heads := w.headsOf(n)
	for _, p := range w.peersOf(n) {
		w.send(n, p, func(_ *simConn, _ bool) {
			w.drive(p, engine.NewHeartbeat(p.store, w.clock(), n.id, f, heads), nil)
		})
	}
}

// headsOf is what n's heartbeat carries: its frontier and each site's head
// hash.
func (w *simWorld) headsOf(n *simNode) (map[string]uint64, map[string][]byte) {
	f := n.store.Frontier()
	heads := make(map[string][]byte, len(f))
	for site := range f {
		_, h := n.store.Head(site)
		heads[site] = append([]byte(nil), h[:]...)
	}
	return f, heads
}

// --- writes -----------------------------------------------------------------------

func (w *simWorld) genOps() []wire.Op {
	w.opCount++
	key := fmt.Sprintf("k%d", w.rng.IntN(12))
	if w.rng.IntN(10) == 0 {
		return []wire.Op{{Kind: wire.OpDelete, Table: "t", Key: key}}
	}
	fields := map[string]any{}
	for j := range 1 + w.rng.IntN(2) {
		fields[fmt.Sprintf("f%d", w.rng.IntN(3))] = fmt.Sprintf("v%d.%d", w.opCount, j)
	}
	return []wire.Op{{Kind: wire.OpPut, Table: "t", Key: key, Fields: fields}}
}

// write commits k own entries at n, records them as acknowledged, and
// gossips them (unless the node crashes first).
func (w *simWorld) write(n *simNode, k int) {
	if !n.alive {
		w.fail("%s: write at a node that is down", n.id)
		return
	}
	if g := w.drive(n, engine.WriteAsked{Now: w.clock()}, nil).gate; !g.Open {
		w.tracef("%s: write refused: %s", n.id, g.Reason)
		return
	}
	txs := make([][]wire.Op, k)
	for i := range txs {
		txs[i] = w.genOps()
	}
	es, err := n.store.Write(txs)
	if err != nil {
		w.fail("%s: write: %v", n.id, err)
		return
	}
	for _, e := range es {
		t := w.truth[n.site]
		if e.Seq != uint64(len(t))+1 || (len(t) > 0 && e.Prev != t[len(t)-1]) {
			w.fail("%s wrote %s after %d acknowledged entries: a self-fork", n.id, e.ID(), len(t))
		}
		w.truth[n.site] = append(t, e.Hash)
		n.seen[simSeen{e.ID(), e.Hash}] = w.now
		w.stats.acked++
	}
	w.tracef("%s writes %s#%d..%d (acked)", n.id, n.site, es[0].Seq, es[len(es)-1].Seq)
	if w.faults && w.chance(w.opt.CrashAck) {
		w.crash(n, "after the ack, before gossip")
		return
	}
	for _, p := range w.peersOf(n) {
		w.gossip(n, p, es)
	}
}
