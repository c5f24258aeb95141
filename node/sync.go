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

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/txlog"
)

// clockSkewLimit is how far a member's clock may be from this node's before
// every status surface reports it.
const clockSkewLimit = 2 * time.Minute

// syncEvent is one input of the sync loop.
type syncEvent struct {
	kind     string // up, down, heartbeat, gap, held, done, syncnow, interval
	peer     peer.ID
	frontier map[string]uint64
	ok       bool
}

// peerView is what the node knows of a member from its heartbeats.
type peerView struct {
	hb       mesh.Heartbeat
	seen     time.Time // when the heartbeat arrived (this node's clock)
	skew     time.Duration
	warnedOn string // version already warned about
}

// syncer owns the engine and everything the mesh reports.
type syncer struct {
	n      *Node
	events chan syncEvent
	pubq   chan []byte
	held   *reorder // gossip that arrived ahead of its predecessor

	mu       sync.Mutex
	views    map[peer.ID]*peerView
	lastSync time.Time
	caughtUp bool                  // own log has caught up with what the family holds of it
	twins    map[peer.ID]time.Time // members seen running as two processes at once
	probed   map[string]time.Time  // peer/site divergence checks, rate-limited
}

// lastSyncTime returns when this node last completed a sync with a member.
func (s *syncer) lastSyncTime() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSync
}

func newSyncer(n *Node) *syncer {
	// A node at its site's first epoch may write at once; one that was moved
	// here first catches up its site's log from the family.
	return &syncer{n: n, events: make(chan syncEvent, 4096), pubq: make(chan []byte, 8192), held: newReorder(), views: map[peer.ID]*peerView{},
		caughtUp: n.cert.Epoch <= 1, twins: map[peer.ID]time.Time{}, probed: map[string]time.Time{}}
}

// post hands an event to the loop. Heartbeats are dropped when the loop is
// behind (the next one carries the same news); other events wait.
func (s *syncer) post(ctx context.Context, ev syncEvent) {
	if ev.kind == "heartbeat" {
		select {
		case s.events <- ev:
		default:
		}
		return
	}
	select {
	case s.events <- ev:
	case <-ctx.Done():
	}
}

// loop runs the engine until ctx ends.
func (s *syncer) loop(ctx context.Context) {
	eng := newEngine(engineConfig{Interval: time.Duration(s.n.currentConfig().SyncInterval)})
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	gapTimer := time.NewTimer(gapWait)
	gapTimer.Stop()
	var gapC <-chan time.Time // set while a gap check is scheduled
	for {
		var acts []fetchAction
		now := s.n.cfg.Now()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			acts = eng.tick(now)
		case <-gapC:
			// Held gossip whose gap stayed open: fetch from whoever sent it.
			gapC = nil
			for _, p := range s.held.expired(now, func(site string) uint64 { return s.n.txlog.Head(site).Seq }) {
				acts = append(acts, eng.gap(p.String(), now)...)
			}
			if s.held.disarm() && s.held.arm() {
				gapTimer.Reset(gapWait)
				gapC = gapTimer.C
			}
		case ev := <-s.events:
			id := ev.peer.String()
			switch ev.kind {
			case "up":
				acts = eng.peerUp(id, now)
			case "down":
				eng.peerDown(id)
			case "heartbeat":
				acts = eng.heartbeat(id, ev.frontier, s.n.txlog.Frontier(), now)
			case "gap":
				acts = eng.gap(id, now)
			case "held":
				if gapC == nil {
					gapTimer.Reset(gapWait)
					gapC = gapTimer.C
				}
			case "done":
				acts = eng.done(id, ev.ok, now)
			case "syncnow":
				acts = eng.syncNow(now)
			case "interval":
				eng.setInterval(time.Duration(s.n.currentConfig().SyncInterval))
			}
		}
		for _, a := range acts {
			p, err := peer.Decode(a.Peer)
			if err != nil {
				continue
			}
			s.n.goTracked(func() { s.fetch(ctx, p, a.Reason) })
		}
	}
}

// fetch runs one catch-up session and reports back to the loop.
func (s *syncer) fetch(ctx context.Context, p peer.ID, reason string) {
	fctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	start := s.n.cfg.Now()
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
		s.n.log.Info("caught up", "peer", p, "reason", reason, "entries", st.Appended, "bytes", st.Bytes, "took", s.n.cfg.Now().Sub(start).Round(time.Millisecond))
	}
	if err == nil {
		s.mu.Lock()
		s.lastSync = s.n.cfg.Now()
		s.mu.Unlock()
	}
	s.updateCaughtUp()
	s.post(ctx, syncEvent{kind: "done", peer: p, ok: err == nil})
}

// probeLoop asks every connected member for its heads each heartbeat
// interval over this node's own streams and compares them with the log: a
// cloned twin that no gossip reaches still finds a fork within seconds.
func (s *syncer) probeLoop(ctx context.Context) {
	every := s.n.cfg.HeartbeatInterval
	if every <= 0 {
		every = mesh.DefaultHeartbeatInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, pi := range s.n.mesh.Peers() {
			if pi.Connected {
				_, _ = s.probe(ctx, pi.Member.PeerID, every)
			}
		}
	}
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

// publishLoop gossips own entries, once each, in the order committed.
func (s *syncer) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case env := <-s.pubq:
			if err := s.n.mesh.Publish(ctx, env); err != nil && ctx.Err() == nil {
				s.n.log.Debug("gossip publish failed (catch-up will deliver)", "err", err)
			}
		}
	}
}

// published queues committed own entries for gossip. It never blocks a
// writer: when the queue is full the entry is left to catch-up.
func (s *syncer) published(es []*wire.Signed) {
	for _, e := range es {
		select {
		case s.pubq <- e.Marshal():
		default:
			s.n.counters.publishDropped.Add(1)
		}
	}
}

// Entries is the mesh.Handler side: runs received from peers. A gossiped
// entry that arrived before its predecessor waits in the reorder buffer for a
// moment (see reorder); whatever extends the log lets the held entries after
// it follow.
func (s *syncer) Entries(ctx context.Context, from peer.ID, run []*wire.Signed, gossip bool) (int, error) {
	if err := s.n.checkSpace(); err != nil {
		return 0, err // the session ends; the engine retries with backoff
	}
	n, err := s.appendRun(ctx, from, run, gossip)
	var gap *txlog.GapError
	if errors.As(err, &gap) {
		if gossip && s.held.holdRun(run, from, s.n.cfg.Now()) {
			if s.held.arm() {
				s.post(ctx, syncEvent{kind: "held"})
			}
			return n, nil
		}
		s.post(ctx, syncEvent{kind: "gap", peer: from})
	}
	if n > 0 {
		n += s.drain(ctx, run[0].Site)
		if s.n.dbs != nil {
			s.n.dbs.poke() // write the merged rows into the practice database
		}
	}
	return n, err
}

// drain appends the held entries that now extend site's log, in order, as
// one run per pass, and returns how many it appended.
func (s *syncer) drain(ctx context.Context, site string) int {
	total := 0
	for {
		head := s.n.txlog.Head(site).Seq
		var run []*wire.Signed
		var from peer.ID
		for {
			h, ok := s.held.next(site, head+uint64(len(run)))
			if !ok {
				break
			}
			if len(run) == 0 {
				from = h.from
			}
			run = append(run, h.e)
		}
		if len(run) == 0 {
			return total
		}
		n, err := s.appendRun(ctx, from, run, true)
		total += n
		if err != nil {
			s.n.log.Debug("held gossip entries not appended", "first", run[0].ID(), "entries", len(run), "err", err)
			return total
		}
	}
}

// appendRun appends a run to the log and reports what it brought: counters,
// the received event, and a fork when one shows.
func (s *syncer) appendRun(ctx context.Context, from peer.ID, run []*wire.Signed, gossip bool) (int, error) {
	var res txlog.RunResult
	var err error
	if gossip && len(run) == 1 {
		res, err = s.n.txlog.AppendRemote(ctx, run[0])
	} else {
		res, err = s.n.txlog.AppendRun(ctx, run)
	}
	if res.Appended > 0 {
		via := "catch-up"
		if gossip {
			via = "gossip"
			s.n.counters.receivedGossip.Add(uint64(res.Appended))
		} else {
			s.n.counters.receivedCatchUp.Add(uint64(res.Appended))
		}
		last := run[len(run)-1]
		s.n.events.emit(EvReceived, map[string]any{"site": last.Site, "from": last.Seq - uint64(res.Appended) + 1, "to": last.Seq, "peer": from.String(), "via": via})
	}
	s.rejected(from, run, err)
	var fork *txlog.ForkError
	if errors.As(err, &fork) {
		s.n.log.Error("fork detected: two copies of a site wrote different entries", "site", fork.Site, "seq", fork.Seq, "peer", from)
		s.n.events.emit(EvFork, map[string]any{"site": fork.Site, "seq": fork.Seq, "peer": from.String()})
		s.n.goTracked(func() { s.spreadFork(fork.Site) })
	}
	return res.Appended, err
}

// rejected counts and shows entries a member sent that the log refused as
// invalid (a forged signature, a broken chain, another family, a fenced
// epoch, a malformed entry); gaps, forks and duplicates are not refusals.
func (s *syncer) rejected(from peer.ID, run []*wire.Signed, err error) {
	var c *atomic.Uint64
	switch {
	case err == nil:
		return
	case errors.Is(err, wire.ErrSignature):
		c = &s.n.counters.rejectedSignature
	case errors.Is(err, txlog.ErrChain):
		c = &s.n.counters.rejectedChain
	case errors.Is(err, txlog.ErrWrongFamily), errors.Is(err, txlog.ErrEpoch), errors.Is(err, txlog.ErrFenced), errors.Is(err, wire.ErrInvalid):
		c = &s.n.counters.rejectedOther
	default:
		return
	}
	c.Add(1)
	site := ""
	if len(run) > 0 {
		site = run[0].Site
	}
	s.n.log.Warn("entries from a member refused", "peer", from, "site", site, "err", err)
	s.n.events.emit(EvRejected, map[string]any{"peer": from.String(), "site": site, "error": err.Error()})
}

// spreadFork gossips the proof of a site's fork.
func (s *syncer) spreadFork(site string) {
	a, b, err := s.n.txlog.ForkProof(site)
	if err != nil {
		s.n.log.Error("cannot build the proof of a fork", "site", site, "err", err)
		return
	}
	if err := s.n.mesh.PublishForkProof(s.n.ctx, a, b); err != nil && s.n.ctx.Err() == nil {
		s.n.log.Warn("fork proof not gossiped", "site", site, "err", err)
	}
	// Carry this node's branch from the fork on to the others, where it is
	// kept as evidence: no acknowledged entry lives in one place only.
	s.pushBranch(site, a.Seq)
}

// pushBranch carries this node's entries of a forked site, from a little
// before the seq the proof names (the branches may have parted earlier) to
// its head, to every connected member, where they are kept as evidence.
func (s *syncer) pushBranch(site string, seq uint64) {
	from := uint64(1)
	if seq > mesh.DivergeWindow {
		from = seq - mesh.DivergeWindow + 1
	}
	if h := s.n.txlog.Head(site); h.Seq >= from {
		s.n.mesh.PushRange(site, from, h.Seq)
	}
}

// ForkProof is the mesh.Handler side: a member's proof of a fork.
func (s *syncer) ForkProof(from peer.ID, a, b *wire.Signed) {
	added, err := s.n.txlog.AddForkProof(s.n.ctx, a, b)
	if err != nil {
		s.n.log.Warn("a member sent a fork proof that does not hold", "peer", from, "err", err)
		return
	}
	if added {
		// Whoever learns of a fork passes on its own branch too: a copy of
		// the forked site that only heard of it still holds entries no one
		// else has.
		s.n.goTracked(func() { s.pushBranch(a.Site, a.Seq) })
		s.n.events.emit(EvFork, map[string]any{"site": a.Site, "seq": a.Seq, "peer": from.String()})
		s.n.log.Error("fork reported by a member: two copies of a site wrote different entries", "site", a.Site, "seq", a.Seq, "peer", from)
	}
}

// Heartbeat is the mesh.Handler side: a member's heartbeat, gossiped or
// asked for (probe). It is the one place a member's heads are taken in.
func (s *syncer) Heartbeat(from peer.ID, hb mesh.Heartbeat) {
	now := s.n.cfg.Now()
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
	s.updateCaughtUp()
	s.compareHeads(from, hb)
	s.post(s.n.ctx, syncEvent{kind: "heartbeat", peer: from, frontier: hb.Frontier})
}

// compareHeads looks for a site whose entry at the member's head differs from
// the one held here: two copies of a site that wrote the same number of
// entries show no gap anywhere, only different hashes. On a mismatch it
// fetches that entry from the member, and the log records the fork.
func (s *syncer) compareHeads(from peer.ID, hb mesh.Heartbeat) {
	for site, n := range hb.Frontier {
		theirs := hb.Heads[site]
		if n == 0 || len(theirs) != len(wire.Hash{}) {
			continue
		}
		mine := s.n.txlog.Head(site)
		if n > mine.Seq {
			continue // ahead: the catch-up it triggers compares the chains
		}
		ours := mine.Hash
		if n < mine.Seq {
			e, err := s.n.txlog.Get(site, n)
			if err != nil {
				continue
			}
			ours = e.Hash
		}
		if wire.Hash(theirs) == ours {
			continue
		}
		key := from.String() + "/" + site
		s.mu.Lock()
		recent := s.n.cfg.Now().Sub(s.probed[key]) < 10*time.Second
		if !recent {
			s.probed[key] = s.n.cfg.Now()
		}
		s.mu.Unlock()
		if recent {
			continue
		}
		s.n.log.Warn("a member holds another entry for the same seq: checking for a fork", "site", site, "seq", n, "peer", from)
		s.n.goTracked(func() {
			ctx, cancel := context.WithTimeout(s.n.ctx, time.Minute)
			defer cancel()
			if _, err := s.n.mesh.Fetch(ctx, from, map[string]uint64{site: n - 1}, nil, []string{site}); err != nil && ctx.Err() == nil {
				s.n.log.Debug("fork check fetch failed", "peer", from, "site", site, "err", err)
			}
		})
	}
}

// Duplicate is the mesh.Handler side: two processes run one member's identity.
func (s *syncer) Duplicate(p peer.ID) {
	s.mu.Lock()
	s.twins[p] = s.n.cfg.Now()
	s.mu.Unlock()
	site := ""
	if m, ok := s.n.roster.Member(p); ok {
		site = m.Site
	}
	s.n.events.emit(EvFork, map[string]any{"site": site, "peer": p.String(), "duplicate": true})
	// Whichever copy answers, compare everything it holds.
	s.n.goTracked(func() {
		ctx, cancel := context.WithTimeout(s.n.ctx, time.Minute)
		defer cancel()
		have, heads := s.n.frontierWithHeads()
		_, _ = s.n.mesh.Fetch(ctx, p, have, heads, nil)
	})
}

// duplicates lists the sites seen running as two processes at once.
func (s *syncer) duplicates() []string {
	s.mu.Lock()
	twins := make([]peer.ID, 0, len(s.twins))
	for p := range s.twins {
		twins = append(twins, p)
	}
	s.mu.Unlock()
	var out []string
	for _, p := range twins { // the roster's lock is not taken under the syncer's
		if m, ok := s.n.roster.Member(p); ok {
			out = append(out, m.Site)
		} else {
			out = append(out, p.String())
		}
	}
	sort.Strings(out)
	return out
}

// PeerChanged is the mesh.Handler side: a member connected or left. A member
// that connects hears of every fork this node knows.
func (s *syncer) PeerChanged(p peer.ID, up bool) {
	kind := "down"
	site := ""
	if m, ok := s.n.roster.Member(p); ok {
		site = m.Site
	}
	s.n.events.emit(EvPeer, map[string]any{"peer": p.String(), "site": site, "connected": up})
	if up {
		kind = "up"
		for _, f := range s.n.txlog.Forks() {
			s.n.goTracked(func() { s.spreadFork(f.Site) })
		}
	}
	s.post(s.n.ctx, syncEvent{kind: kind, peer: p})
}

// DocumentsChanged is the mesh.Handler side: membership changed.
func (s *syncer) DocumentsChanged() { s.n.recheckCertificate() }

// skewed reports whether a member's clock is off by more than the limit.
func skewed(skew time.Duration) bool { return skew > clockSkewLimit || skew < -clockSkewLimit }

// mostHeld returns the most of site's log any member is known to hold (from
// its latest heartbeat).
func (s *syncer) mostHeld(site string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mostHeldLocked(site)
}

func (s *syncer) mostHeldLocked(site string) uint64 {
	var most uint64
	for _, v := range s.views {
		most = max(most, v.hb.Frontier[site])
	}
	return most
}

// updateCaughtUp: the own log has caught up when no member is known to hold
// more of this site than this node does.
func (s *syncer) updateCaughtUp() {
	site := s.n.id.Site
	own := s.n.txlog.Head(site).Seq
	s.mu.Lock()
	defer s.mu.Unlock()
	if beyond(s.mostHeldLocked(site), own) > 0 {
		s.caughtUp = false
		return
	}
	if !s.lastSync.IsZero() || s.n.cert.Epoch <= 1 {
		s.caughtUp = true
	}
}

// writeGate says why own writes must wait, or "" when they may go ahead.
func (s *syncer) writeGate() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.caughtUp {
		return ""
	}
	if s.n.cert.Epoch > 1 {
		return "this node was moved here and is catching up its site's log from the family before it accepts writes; try again in a moment"
	}
	return "another node holds newer entries of this site than this node does; this node is catching up before it accepts writes; try again in a moment"
}

// PeerJSON is one row of GET /v1/peers and `ppsync peers`.
type PeerJSON struct {
	Site      string            `json:"site"`
	Role      string            `json:"role"`
	PeerID    string            `json:"peer_id"`
	Connected bool              `json:"connected"`
	Via       string            `json:"via"` // direct, relay or "" when not connected
	Version   string            `json:"version"`
	Frontier  map[string]uint64 `json:"frontier"`
	Lag       uint64            `json:"lag"` // entries this node holds that the member does not
	LastSeen  *time.Time        `json:"last_seen"`
	ClockSkew string            `json:"clock_skew,omitempty"` // set when over 2 minutes
}

// peers lists every other member as this node sees it.
func (s *syncer) peers() []PeerJSON {
	local := s.n.txlog.Frontier()
	var out []PeerJSON
	for _, pi := range s.n.mesh.Peers() {
		row := PeerJSON{Site: pi.Member.Site, Role: "site", PeerID: pi.Member.PeerID.String(), Connected: pi.Connected, Via: pi.Via, Frontier: map[string]uint64{}}
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

// Receipt is the answer of POST /v1/sync: per member, caught up or why not.
type Receipt struct {
	CaughtUp bool            `json:"caught_up"` // every member holds everything this node holds
	Members  []ReceiptMember `json:"members"`
	Waited   string          `json:"waited"`
}

// ReceiptMember is one member's line of a receipt.
type ReceiptMember struct {
	Site     string `json:"site"`
	PeerID   string `json:"peer_id"`
	CaughtUp bool   `json:"caught_up"`
	Behind   uint64 `json:"behind"` // entries it lacks
	Reason   string `json:"reason,omitempty"`
}

// syncNow starts a round now and, with wait > 0, waits until every member
// holds everything this node holds or the time runs out.
func (s *syncer) syncNow(ctx context.Context, wait time.Duration) Receipt {
	start := s.n.cfg.Now()
	s.n.mesh.Redial()
	s.n.mesh.PublishHeartbeat()
	s.post(ctx, syncEvent{kind: "syncnow"})
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

func (s *syncer) receipt(ctx context.Context) Receipt {
	local := s.n.txlog.Frontier()
	rc := Receipt{CaughtUp: true}
	for _, pi := range s.n.mesh.Peers() {
		m := ReceiptMember{Site: pi.Member.Site, PeerID: pi.Member.PeerID.String()}
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
