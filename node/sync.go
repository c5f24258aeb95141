package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/engine"
	"github.com/ppsync/ppsync/txlog"
)

// clockSkewLimit is how far a member's clock may be from this node's before
// every status surface reports it.
const clockSkewLimit = 2 * time.Minute

// syncEvent is what the API posts to the driver (only "interval": the sync
// interval setting changed).
type syncEvent struct {
	kind string
}

// peerView is what the node knows of a member from its heartbeats.
type peerView struct {
	hb       mesh.Heartbeat
	seen     time.Time // when the heartbeat arrived (this node's clock)
	skew     time.Duration
	warnedOn string // version already warned about
}

// syncer is the thin driver of the sync engine (package engine, where every
// sync decision is made): mesh.Handler callbacks, the API and its own tick
// and timer become the engine's inputs, and it carries out the engine's
// actions through engine.Drive (see call). It holds the engine behind mu only
// while calling Step or a query, never across I/O. What is not policy stays
// here: the gossip publish queue, counters, events, logging, the members'
// views for status, and Sync Now's receipt.
type syncer struct {
	n    *Node
	pubq chan []*wire.Signed // committed runs of own entries to gossip
	// queued is the bytes of the entries in pubq (at most gossipQueueBytes);
	// budget is the gossip rate (gossipbudget.go).
	queued atomic.Int64
	budget *gossipBudget
	tick   *job // the engine's tick, every second, on the node's scheduler
	wake   wakeTimer

	mu    sync.Mutex // guards the fields below
	eng   *engine.Engine
	views map[peer.ID]*peerView
}

func newSyncer(n *Node) *syncer {
	every := n.cfg.HeartbeatInterval
	if every <= 0 {
		every = mesh.DefaultHeartbeatInterval
	}
	eng := engine.New(engine.Config{Log: engineLog{n.txlog}, OwnSite: n.id.Site, Epoch: n.cert.Epoch,
		Interval: time.Duration(n.currentConfig().SyncInterval), ProbeEvery: every, DivergeWindow: mesh.DivergeWindow})
	// A site's own commit groups wait in pubq for gossip. A relay writes
	// none: at 8,192 slots (192 KiB, which every collection scans) for each
	// of its families, the empty queues were most of a relay's memory.
	queue := 8192
	if n.cert.Role != family.RoleSite {
		queue = 0
	}
	s := &syncer{n: n, pubq: make(chan []*wire.Signed, queue), budget: newGossipBudget(gossipRate, gossipBurst, n.cfg.Now),
		eng: eng, views: map[peer.ID]*peerView{}}
	s.tick = n.schedule(func() {
		s.tick.reset(time.Second)
		s.drive(n.ctx, engine.Tick{Now: s.now()})
	})
	s.wake = wakeTimer{now: s.now, job: n.schedule(func() {
		s.wake.fired()
		s.drive(n.ctx, engine.Wake{Now: s.now()})
	})}
	return s
}

// start ticks the engine every second, until the node closes. Its wake-ups
// run whenever it asks for them, started or not.
func (s *syncer) start() { s.tick.reset(time.Second) }

// step runs one input through the engine under the lock.
func (s *syncer) step(in engine.Input) []engine.Action {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.Step(in)
}

// drive steps in and carries out what the engine decides; ctx bounds the
// synchronous appends.
func (s *syncer) drive(ctx context.Context, in engine.Input) *call {
	c := &call{s: s, ctx: ctx}
	engine.Drive(s.step, c, in)
	return c
}

func (s *syncer) now() time.Time { return s.n.cfg.Now() }

// engineLog is the engine's read-only view of the log.
type engineLog struct{ l *txlog.Log }

func (g engineLog) Head(site string) (uint64, wire.Hash) {
	h := g.l.Head(site)
	return h.Seq, h.Hash
}

func (g engineLog) HashAt(site string, seq uint64) (wire.Hash, bool) {
	e, err := g.l.Get(site, seq)
	if err != nil {
		return wire.Hash{}, false
	}
	return e.Hash, true
}

func (g engineLog) Forks() []engine.Fork {
	fs := g.l.Forks()
	out := make([]engine.Fork, len(fs))
	for i, f := range fs {
		out[i] = engine.Fork{Site: f.Site, Seq: f.Seq}
	}
	return out
}

// lastSyncTime returns when this node last completed a sync with a member.
func (s *syncer) lastSyncTime() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.LastSync()
}

// heldCount returns the number of gossiped entries waiting for their
// predecessor.
func (s *syncer) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.Held()
}

// post hands the API's news to the engine.
func (s *syncer) post(ctx context.Context, ev syncEvent) {
	if ev.kind == "interval" {
		s.drive(ctx, engine.IntervalChanged{Now: s.now(), Interval: time.Duration(s.n.currentConfig().SyncInterval)})
	}
}

// wakeTimer is the one wake-up the engine asked for: the earliest time
// requested since it last fired, a job on the node's scheduler.
type wakeTimer struct {
	now func() time.Time // the node's clock, which the engine's times are in
	job *job

	mu sync.Mutex
	at time.Time
}

func (w *wakeTimer) request(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.at.IsZero() || at.Before(w.at) {
		w.at = at
		w.job.reset(max(at.Sub(w.now()), 0)) // under mu: a later request cannot undo an earlier
	}
}

func (w *wakeTimer) fired() {
	w.mu.Lock()
	w.at = time.Time{}
	w.mu.Unlock()
}

// call carries out the actions of one engine.Drive: it implements
// engine.Effects. Background work runs under the node's context; what the
// caller needs back (how many entries its run brought and the log's answer,
// the write gate) is kept here.
type call struct {
	s         *syncer
	ctx       context.Context
	appended  int
	first     *engine.Outcome // the outcome of the first append (the caller's run)
	gate      engine.WriteGate
	gateGiven bool
}

// Fetch runs one catch-up session in the background.
func (c *call) Fetch(a engine.Fetch) {
	p, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	c.s.n.goTracked(func() { c.s.fetch(c.s.n.ctx, p, a.Reason) })
}

// ForkCheck fetches one site's entry at a seq where a member's head hash
// differs from the local one.
func (c *call) ForkCheck(a engine.ForkCheck) {
	s := c.s
	from, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	s.n.log.Warn("a member holds another entry for the same seq: checking for a fork", "site", a.Site, "seq", a.Seq, "peer", from)
	s.n.goTracked(func() {
		ctx, cancel := context.WithTimeout(s.n.ctx, time.Minute)
		defer cancel()
		if _, err := s.n.mesh.Fetch(ctx, from, map[string]uint64{a.Site: a.Seq - 1}, nil, []string{a.Site}); err != nil && ctx.Err() == nil {
			s.n.log.Debug("fork check fetch failed", "peer", from, "site", a.Site, "err", err)
		}
	})
}

// CheckDuplicate compares everything a member whose identity runs twice
// holds with this node's log, whichever copy answers.
func (c *call) CheckDuplicate(a engine.CheckDuplicate) {
	s := c.s
	p, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	s.n.goTracked(func() {
		ctx, cancel := context.WithTimeout(s.n.ctx, time.Minute)
		defer cancel()
		have, heads := s.n.frontierWithHeads()
		if _, err := s.n.mesh.Fetch(ctx, p, have, heads, nil); err != nil && ctx.Err() == nil {
			s.n.log.Debug("duplicate identity check failed", "peer", p, "err", err)
		}
	})
}

// Append appends a run to the log (unless the disk is almost full) and
// reports what it brought: counters, the received event, refusals, a fork.
func (c *call) Append(a engine.Append) engine.Outcome {
	s := c.s
	var o engine.Outcome
	if err := s.n.checkSpace(); err != nil {
		o = engine.Outcome{Kind: engine.OutcomeSpaceFull, Err: err} // the session ends; the engine retries with backoff
	} else {
		o = appendReceived(c.ctx, s.n.txlog, a)
	}
	from := a.Peer
	if p, err := peer.Decode(a.Peer); err == nil {
		from = p.String()
	}
	if o.Appended > 0 {
		via := "catch-up"
		if a.Gossip {
			via = "gossip"
			s.n.counters.receivedGossip.Add(uint64(o.Appended))
		} else {
			s.n.counters.receivedCatchUp.Add(uint64(o.Appended))
		}
		last := a.Run[len(a.Run)-1]
		s.n.events.emit(EvReceived, map[string]any{"site": last.Site, "from": last.Seq - uint64(o.Appended) + 1, "to": last.Seq, "peer": from, "via": via})
		if s.n.dbs != nil {
			s.n.dbs.poke() // write the merged rows into the practice database
		}
	}
	switch o.Kind {
	case engine.OutcomeRefused:
		s.rejected(from, a.Run, o)
	case engine.OutcomeFork:
		s.n.log.Error("fork detected: two copies of a site wrote different entries", "site", o.Site, "seq", o.Seq, "peer", from)
		s.n.events.emit(EvFork, map[string]any{"site": o.Site, "seq": o.Seq, "peer": from})
	}
	if a.Held && o.Err != nil {
		s.n.log.Debug("held gossip entries not appended", "first", a.Run[0].ID(), "entries", len(a.Run), "err", o.Err)
	}
	c.appended += o.Appended
	if c.first == nil {
		c.first = &o
	}
	return o
}

// SpreadFork gossips the proof of a site's fork.
func (c *call) SpreadFork(a engine.SpreadFork) {
	s := c.s
	s.n.goTracked(func() {
		x, y, err := s.n.txlog.ForkProof(a.Site)
		if err != nil {
			s.n.log.Error("cannot build the proof of a fork", "site", a.Site, "err", err)
			return
		}
		if err := s.n.mesh.PublishForkProof(s.n.ctx, x, y); err != nil && s.n.ctx.Err() == nil {
			s.n.log.Warn("fork proof not gossiped", "site", a.Site, "err", err)
		}
	})
}

// PushBranch carries this node's entries of a forked site, from a.From to
// its head, to every connected member, where they are kept as evidence.
func (c *call) PushBranch(a engine.PushBranch) {
	s := c.s
	s.n.goTracked(func() {
		if h := s.n.txlog.Head(a.Site); h.Seq >= a.From {
			s.n.mesh.PushRange(a.Site, a.From, h.Seq)
		}
	})
}

// Probe asks a member for its heartbeat over this node's own stream: a
// cloned twin that no gossip reaches still shows within seconds. A member
// whose own heartbeat came over its one direct connection lately is not
// asked again (mesh.ProbeNeeded).
func (c *call) Probe(a engine.Probe) {
	s := c.s
	p, err := peer.Decode(a.Peer)
	if err != nil {
		return
	}
	every := s.n.cfg.HeartbeatInterval
	if every <= 0 {
		every = mesh.DefaultHeartbeatInterval
	}
	// Its heartbeats arrive every interval; half of one more is their slack.
	if !s.n.mesh.ProbeNeeded(p, every*3/2) {
		return
	}
	s.n.goTracked(func() { _, _ = s.probe(s.n.ctx, p, every) })
}

// SetTimer asks the loop for a wake-up.
func (c *call) SetTimer(a engine.SetTimer) { c.s.wake.request(a.At) }

// WriteGate keeps the engine's answer for writeGate.
func (c *call) WriteGate(a engine.WriteGate) { c.gate, c.gateGiven = a, true }

// runLog is what appending a received run needs of a log: txlog.Log's, and
// the simulation's stores'.
type runLog interface {
	AppendRemote(ctx context.Context, e *wire.Signed) (txlog.RunResult, error)
	AppendRun(ctx context.Context, run []*wire.Signed) (txlog.RunResult, error)
}

// appendReceived appends a received run (one gossiped entry alone, anything
// else as a run) and classifies what the log did. The driver and the
// simulation both append through it.
func appendReceived(ctx context.Context, l runLog, a engine.Append) engine.Outcome {
	var res txlog.RunResult
	var err error
	if a.Gossip && len(a.Run) == 1 {
		res, err = l.AppendRemote(ctx, a.Run[0])
	} else {
		res, err = l.AppendRun(ctx, a.Run)
	}
	return outcomeOf(res, err)
}

// outcomeOf classifies an append's result for the engine: a gap, a fork, a
// refusal (an invalid entry: a forged signature, a broken chain, another
// family, a fenced epoch, a malformed entry) with what was wrong, or another
// failure.
func outcomeOf(res txlog.RunResult, err error) engine.Outcome {
	o := engine.Outcome{Appended: res.Appended, Duplicates: res.Duplicates, Err: err}
	var gap *txlog.GapError
	var fork *txlog.ForkError
	switch {
	case err == nil && res.Appended > 0:
		o.Kind = engine.OutcomeOK
	case err == nil:
		o.Kind = engine.OutcomeDuplicate
	case errors.As(err, &gap):
		o.Kind, o.Site, o.Seq = engine.OutcomeGap, gap.Site, gap.Have
	case errors.As(err, &fork):
		o.Kind, o.Site, o.Seq = engine.OutcomeFork, fork.Site, fork.Seq
	case errors.Is(err, wire.ErrSignature):
		o.Kind, o.Reason = engine.OutcomeRefused, "signature"
	case errors.Is(err, txlog.ErrChain):
		o.Kind, o.Reason = engine.OutcomeRefused, "chain"
	case errors.Is(err, txlog.ErrWrongFamily), errors.Is(err, txlog.ErrEpoch), errors.Is(err, txlog.ErrFenced), errors.Is(err, wire.ErrInvalid):
		o.Kind, o.Reason = engine.OutcomeRefused, "other"
	default:
		o.Kind = engine.OutcomeFailed
	}
	return o
}

// fetch runs one catch-up session and reports back to the engine.
func (s *syncer) fetch(ctx context.Context, p peer.ID, reason string) {
	fctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	start := s.now()
	have, heads := s.n.frontierWithHeads()
	st, err := s.n.mesh.Fetch(fctx, p, have, heads, nil)
	if err != nil && ctx.Err() == nil {
		s.n.log.Debug("catch-up session failed", "peer", p, "reason", reason, "err", err)
	}
	s.n.counters.catchupBytes.Add(uint64(st.Bytes))
	if err == nil {
		s.n.counters.catchupOK.Add(1)
	} else {
		s.n.counters.catchupFailed.Add(1)
	}
	s.n.events.emit(EvCatchUp, map[string]any{"peer": p.String(), "reason": reason, "entries": st.Appended, "bytes": st.Bytes, "ok": err == nil})
	if st.Appended > 0 {
		// What this session brought, gossip did not bring the members
		// either, most likely: tell them now.
		s.n.mesh.HeartbeatSoon()
		s.n.log.Info("caught up", "peer", p, "reason", reason, "entries", st.Appended, "bytes", st.Bytes, "took", s.now().Sub(start).Round(time.Millisecond))
	}
	s.drive(ctx, engine.FetchDone{Now: s.now(), Peer: p.String(), OK: err == nil})
}

// probe asks member p for its heartbeat now, over this node's own stream,
// and takes it in as one that came by gossip.
func (s *syncer) probe(ctx context.Context, p peer.ID, timeout time.Duration) (mesh.Heartbeat, error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hb, err := s.n.mesh.Probe(pctx, p)
	if err == nil {
		s.Heartbeat(p, hb)
	}
	return hb, err
}

// publishLoop gossips own commit groups, once each, in the order committed,
// each as messages of whole groups (mesh.GroupMessages). Encoding happens
// here, off the log's committer.
func (s *syncer) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case run := <-s.pubq:
			s.queued.Add(-runBytes(run))
			sent := 0
			for _, m := range mesh.GroupMessages(run) {
				if err := s.n.mesh.Publish(ctx, m.Data); err != nil {
					if ctx.Err() == nil {
						s.n.log.Debug("gossip publish failed (catch-up will deliver)", "err", err)
					}
					continue
				}
				sent += m.Entries
			}
			if dropped := len(run) - sent; dropped > 0 {
				s.n.counters.publishDropped.Add(uint64(dropped)) // too large for a message: catch-up delivers
			}
		}
	}
}

// published queues a committed run of own entries (the end of a commit
// group, see txlog.Config.Committed) for gossip. It never blocks the
// committer: a run beyond the gossip budget (counted in bytes) or the
// queue's bytes is left to catch-up.
func (s *syncer) published(es []*wire.Signed) {
	size := runBytes(es)
	if s.queued.Load() >= gossipQueueBytes || !s.budget.take(int(size)) {
		s.n.counters.publishDropped.Add(uint64(len(es)))
		return
	}
	s.queued.Add(size)
	select {
	case s.pubq <- es:
	default:
		s.queued.Add(-size)
		s.n.counters.publishDropped.Add(uint64(len(es)))
	}
}

// runBytes estimates the encoded size of a run's envelopes.
func runBytes(run []*wire.Signed) int64 {
	n := 0
	for _, e := range run {
		n += len(e.Body) + 80
	}
	return int64(n)
}

// Entries is the mesh.Handler side: runs received from peers. The engine
// decides what follows (a gossiped entry ahead of its predecessor waits in
// its reorder buffer; whatever extends the log lets the held entries after
// it follow); it returns how many entries were appended, held ones that
// followed included, and the log's answer to the run. A gossiped run that
// skipped ahead is no error: the engine holds it or fetches the gap.
func (s *syncer) Entries(ctx context.Context, from peer.ID, run []*wire.Signed, gossip bool) (int, error) {
	if s.n.overStorage(run) {
		return 0, errFamilyFull
	}
	c := s.drive(ctx, engine.Received{Now: s.now(), Peer: from.String(), Run: run, Gossip: gossip})
	if c.first == nil || (gossip && c.first.Kind == engine.OutcomeGap) {
		return c.appended, nil
	}
	return c.appended, c.first.Err
}

// rejected counts and shows entries a member sent that the log refused as
// invalid; gaps, forks and duplicates are not refusals.
func (s *syncer) rejected(from string, run []*wire.Signed, o engine.Outcome) {
	switch o.Reason {
	case "signature":
		s.n.counters.rejectedSignature.Add(1)
	case "chain":
		s.n.counters.rejectedChain.Add(1)
	default:
		s.n.counters.rejectedOther.Add(1)
	}
	site := ""
	if len(run) > 0 {
		site = run[0].Site
	}
	s.n.log.Warn("entries from a member refused", "peer", from, "site", site, "err", o.Err)
	s.n.events.emit(EvRejected, map[string]any{"peer": from, "site": site, "error": o.Err.Error()})
}

// ForkProof is the mesh.Handler side: a member's proof of a fork, two runs
// from the fork to their commit groups' signed ends.
func (s *syncer) ForkProof(from peer.ID, runA, runB []*wire.Signed) {
	added, err := s.n.txlog.AddForkProof(s.n.ctx, runA, runB)
	if err != nil {
		s.n.log.Warn("a member sent a fork proof that does not hold", "peer", from, "err", err)
		return
	}
	a := runA[0]
	if added {
		s.n.events.emit(EvFork, map[string]any{"site": a.Site, "seq": a.Seq, "peer": from.String()})
		s.n.log.Error("fork reported by a member: two copies of a site wrote different entries", "site", a.Site, "seq", a.Seq, "peer", from)
	}
	s.drive(s.n.ctx, engine.ForkProofReceived{Now: s.now(), Peer: from.String(), Site: a.Site, Seq: a.Seq, Added: added})
}

// Heartbeat is the mesh.Handler side: a member's heartbeat, gossiped or
// asked for (probe). It is the one place a member's heads are taken in.
func (s *syncer) Heartbeat(from peer.ID, hb mesh.Heartbeat) {
	now := s.now()
	skew := hb.Wall.Sub(now)
	s.mu.Lock()
	v := s.views[from]
	if v == nil {
		v = &peerView{}
		s.views[from] = v
	}
	wasSkewed := skewed(v.skew)
	v.hb, v.seen, v.skew = hb, now, skew
	warn := hb.Version != s.n.cfg.Version && v.warnedOn != hb.Version
	if warn {
		v.warnedOn = hb.Version
	}
	s.mu.Unlock()
	if warn {
		s.n.log.Warn("systems are on different versions", "site", hb.Site, "peer_version", hb.Version, "this_version", s.n.cfg.Version)
	}
	if skewed(skew) && !wasSkewed {
		s.n.log.Warn("clock skew with a member", "site", hb.Site, "skew", skew.Round(time.Second))
	}
	s.drive(s.n.ctx, engine.NewHeartbeat(engineLog{s.n.txlog}, now, from.String(), hb.Frontier, hb.Heads))
}

// Duplicate is the mesh.Handler side: two processes run one member's identity.
func (s *syncer) Duplicate(p peer.ID) {
	site := ""
	if m, ok := s.n.roster.Member(p); ok {
		site = m.Site
	}
	s.n.events.emit(EvFork, map[string]any{"site": site, "peer": p.String(), "duplicate": true})
	s.drive(s.n.ctx, engine.DuplicateSeen{Now: s.now(), Peer: p.String()})
}

// duplicates lists the sites seen running as two processes at once.
func (s *syncer) duplicates() []string {
	s.mu.Lock()
	twins := s.eng.Twins()
	s.mu.Unlock()
	var out []string
	for _, id := range twins { // the roster's lock is not taken under the syncer's
		p, err := peer.Decode(id)
		if m, ok := s.n.roster.Member(p); err == nil && ok {
			out = append(out, m.Site)
		} else {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// PeerChanged is the mesh.Handler side: a member connected or left.
func (s *syncer) PeerChanged(p peer.ID, up bool) {
	site := ""
	if m, ok := s.n.roster.Member(p); ok {
		site = m.Site
	}
	s.n.events.emit(EvPeer, map[string]any{"peer": p.String(), "site": site, "connected": up})
	if up {
		s.drive(s.n.ctx, engine.PeerUp{Now: s.now(), Peer: p.String()})
	} else {
		s.drive(s.n.ctx, engine.PeerDown{Now: s.now(), Peer: p.String()})
	}
}

// DocumentsChanged is the mesh.Handler side: membership changed.
func (s *syncer) DocumentsChanged() { s.n.recheckCertificate(); s.n.membershipChanged() }

// skewed reports whether a member's clock is off by more than the limit.
func skewed(skew time.Duration) bool { return skew > clockSkewLimit || skew < -clockSkewLimit }

// mostHeld returns the most of site's log any member is known to hold (from
// its latest heartbeat).
func (s *syncer) mostHeld(site string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.MostHeld(site)
}

// writeGate says why own writes must wait, or "" when they may go ahead.
func (s *syncer) writeGate() string {
	c := s.drive(s.n.ctx, engine.WriteAsked{Now: s.now()})
	if !c.gateGiven || c.gate.Open {
		return ""
	}
	return c.gate.Reason
}

// peers lists every other member as this node sees it.
func (s *syncer) peers() []api.PeerJSON {
	local := s.n.txlog.Frontier()
	var out []api.PeerJSON
	for _, pi := range s.n.mesh.Peers() {
		row := api.PeerJSON{Site: pi.Member.Site, Role: "site", PeerID: pi.Member.PeerID.String(), Connected: pi.Connected, Via: pi.Via, Frontier: map[string]uint64{}}
		if pi.Member.Relay {
			row.Role = "relay"
		}
		s.mu.Lock()
		if v := s.views[pi.Member.PeerID]; v != nil {
			row.Version, row.Frontier = v.hb.Version, v.hb.Frontier
			seen := v.seen.UTC()
			row.LastSeen = &seen
			if skewed(v.skew) {
				row.ClockSkew = v.skew.Round(time.Second).String()
			}
		}
		s.mu.Unlock()
		row.Lag = missing(local, row.Frontier)
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// syncNow starts a round now and, with wait > 0, waits until every member
// holds everything this node holds or the time runs out.
func (s *syncer) syncNow(ctx context.Context, wait time.Duration) api.Receipt {
	start := s.n.cfg.Now()
	s.n.mesh.Redial()
	s.n.mesh.PublishHeartbeat()
	s.drive(ctx, engine.SyncNow{Now: s.now()})
	deadline := start.Add(wait)
	for {
		rc := s.receipt(ctx)
		if rc.CaughtUp || !s.n.cfg.Now().Before(deadline) || ctx.Err() != nil {
			rc.Waited = s.n.cfg.Now().Sub(start).Round(time.Millisecond).String()
			return rc
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		s.n.mesh.PublishHeartbeat()
	}
}

func (s *syncer) receipt(ctx context.Context) api.Receipt {
	local := s.n.txlog.Frontier()
	rc := api.Receipt{CaughtUp: true}
	for _, pi := range s.n.mesh.Peers() {
		m := api.ReceiptMember{Site: pi.Member.Site, PeerID: pi.Member.PeerID.String()}
		switch {
		case !pi.Connected:
			m.Reason = "not reachable"
			if !pi.LastSeen.IsZero() {
				m.Reason = fmt.Sprintf("not reachable (last seen %s)", pi.LastSeen.UTC().Format(time.RFC3339))
			}
		default:
			hb, err := s.probe(ctx, pi.Member.PeerID, 5*time.Second)
			if err != nil {
				m.Reason = "did not answer: " + err.Error()
				break
			}
			m.Behind = missing(local, hb.Frontier)
			if m.Behind == 0 {
				m.CaughtUp = true
			} else {
				m.Reason = fmt.Sprintf("still %d entries behind", m.Behind)
			}
		}
		rc.CaughtUp = rc.CaughtUp && m.CaughtUp
		rc.Members = append(rc.Members, m)
	}
	return rc
}
