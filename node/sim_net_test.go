package node

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/txlog"
)

// --- the engine, as sync.go drives it ---------------------------------------------

func (w *simWorld) act(n *simNode, acts []fetchAction) {
	for _, a := range acts {
		w.startSession(n, a)
	}
	w.checkEngine(n)
}

func (w *simWorld) up(n, p *simNode) {
	w.tracef("%s: %s up", n.id, p.id)
	w.act(n, n.eng.peerUp(p.id, w.clock()))
}

func (w *simWorld) down(n, p *simNode) {
	w.tracef("%s: %s down", n.id, p.id)
	n.eng.peerDown(p.id)
	w.checkEngine(n)
}

// checkEngine: at most one session per peer, no more than MaxInFlight, and
// the engine's idea of what runs matches what runs.
func (w *simWorld) checkEngine(n *simNode) {
	per := map[string]int{}
	for _, s := range n.sessions {
		per[s.server.id]++
	}
	if len(n.sessions) > n.eng.cfg.MaxInFlight {
		w.fail("%s runs %d sessions, more than %d", n.id, len(n.sessions), n.eng.cfg.MaxInFlight)
	}
	for _, p := range w.nodes {
		ep := n.eng.peers[p.id]
		inFlight := ep != nil && ep.inFlight
		if per[p.id] > 1 {
			w.fail("%s runs %d sessions with %s at once", n.id, per[p.id], p.id)
		}
		if inFlight != (per[p.id] == 1) {
			w.fail("%s: engine says session with %s in flight=%v, sessions running=%d", n.id, p.id, inFlight, per[p.id])
		}
	}
}

// --- catch-up sessions --------------------------------------------------------------

func (w *simWorld) startSession(n *simNode, a fetchAction) {
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
			res, err := n.store.AppendRun(run)
			w.appended(n, s.server, "catch-up", run, res, err)
			if err != nil {
				s.skip[site] = true
			}
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
	w.act(n, n.eng.done(s.server.id, ok, w.clock()))
}

// appended handles the result of a run or gossiped entry as sync.go's
// Entries does: a gossiped entry ahead of the log waits in the reorder
// buffer, a gap that stays open (or a catch-up gap) tells the engine, and
// whatever extends the log lets the held entries after it follow. Anything
// but a gap is a violation here (the simulation has no forks or forgeries).
func (w *simWorld) appended(n, from *simNode, via string, run []*wire.Signed, res txlog.RunResult, err error) {
	first, last := run[0], run[len(run)-1]
	var gap *txlog.GapError
	switch {
	case errors.As(err, &gap) && via == "gossip" && n.held.holdRun(run, peer.ID(from.id), w.clock()):
		w.tracef("%s <-%s %s %s#%d..%d: held (holds %d)", n.id, via, from.id, first.Site, first.Seq, last.Seq, gap.Have)
		if n.held.arm() {
			w.gapCheck(n)
		}
	case errors.As(err, &gap):
		w.tracef("%s <-%s %s %s#%d..%d: gap (holds %d)", n.id, via, from.id, first.Site, first.Seq, last.Seq, gap.Have)
		w.act(n, n.eng.gap(from.id, w.clock()))
	case err != nil:
		w.fail("%s: %s from %s of %s#%d..%d: %v", n.id, via, from.id, first.Site, first.Seq, last.Seq, err)
	default:
		if via == "gossip" {
			w.stats.appendedGossip += res.Appended
		} else {
			w.stats.appendedCatchup += res.Appended
		}
		w.tracef("%s <-%s %s %s#%d..%d: +%d dup %d", n.id, via, from.id, first.Site, first.Seq, last.Seq, res.Appended, res.Duplicates)
		if res.Appended > 0 {
			if h, ok := n.held.next(first.Site, n.store.Frontier()[first.Site]); ok {
				res, err := n.store.AppendRemote(h.e)
				w.appended(n, w.byID[string(h.from)], "gossip", []*wire.Signed{h.e}, res, err)
			}
		}
	}
}

// gapCheck runs sync.go's gap check gapWait from now in this incarnation:
// held entries whose gap stayed open are dropped and their senders fetched
// from.
func (w *simWorld) gapCheck(n *simNode) {
	inc := n.inc
	w.after(gapWait, func() {
		if !n.alive || n.inc != inc {
			return
		}
		frontier := n.store.Frontier()
		for _, p := range n.held.expired(w.clock(), func(site string) uint64 { return frontier[site] }) {
			w.tracef("%s: held gossip from %s still has a gap", n.id, p)
			w.act(n, n.eng.gap(string(p), w.clock()))
		}
		if n.held.disarm() && n.held.arm() {
			w.gapCheck(n)
		}
	})
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

func (w *simWorld) gossip(from, to *simNode, e *wire.Signed) {
	if w.gossipOff {
		return
	}
	if k := w.dropGossip[[2]int{from.idx, to.idx}]; k > 0 {
		w.dropGossip[[2]int{from.idx, to.idx}] = k - 1
		w.tracef("%s ->gossip %s %s: dropped (scripted)", from.id, to.id, e.ID())
		return
	}
	w.stats.gossip++
	w.send(from, to, func(_ *simConn, bypass bool) { w.receive(to, from, e, bypass) })
}

func (w *simWorld) receive(n, from *simNode, e *wire.Signed, bypass bool) {
	key := simSeen{e.ID(), e.Hash}
	if at, ok := n.seen[key]; ok && !bypass && w.now-at < simSeenTTL {
		return
	}
	n.seen[key] = w.now
	res, err := n.store.AppendRemote(e)
	w.appended(n, from, "gossip", []*wire.Signed{e}, res, err)
	if w.opt.Forward {
		for _, p := range w.peersOf(n) {
			if p != from {
				w.gossip(n, p, e)
			}
		}
	}
}

func (w *simWorld) heartbeat(n *simNode) {
	f := n.store.Frontier()
	for _, p := range w.peersOf(n) {
		w.send(n, p, func(_ *simConn, _ bool) {
			w.act(p, p.eng.heartbeat(n.id, f, p.store.Frontier(), w.clock()))
		})
	}
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
	for _, e := range es {
		for _, p := range w.peersOf(n) {
			w.gossip(n, p, e)
		}
	}
}
