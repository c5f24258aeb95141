package engine

import (
	"sort"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// Defaults of Config's zero fields.
const (
	DefaultMaxInFlight    = 2
	DefaultMaxBackoff     = time.Minute
	DefaultForkCheckEvery = 10 * time.Second
	DefaultDivergeWindow  = 1000
	DefaultAheadWait      = 500 * time.Millisecond
)

// The write gate's reasons, as the clinic reads them.
const (
	gateMoved  = "this node was moved here and is catching up its site's log from the family before it accepts writes; try again in a moment"
	gateBehind = "another node holds newer entries of this site than this node does; this node is catching up before it accepts writes; try again in a moment"
)

// Config tunes the engine.
type Config struct {
	Log         Log           // the local log, read only (required)
	OwnSite     string        // this node's site
	Epoch       uint64        // this node's certificate epoch: > 1 when it was moved here
	Interval    time.Duration // the sync interval (0: no rounds)
	MaxInFlight int           // catch-up sessions at once (default 2)
	MaxBackoff  time.Duration // after failures (default 1m)
	ProbeEvery  time.Duration // probe every connected member this often (0: never)
	GapWait     time.Duration // how long held gossip waits for its predecessor (default 50ms)
	// AheadWait is how long a member's heartbeat that shows it holding more
	// of other sites waits for gossip to bring the difference before a
	// catch-up fetches it (default 500ms).
	AheadWait time.Duration
	// ForkCheckEvery rate-limits fork checks per member and site (default 10s).
	ForkCheckEvery time.Duration
	// DivergeWindow is how far back before a fork a branch is pushed (default 1000).
	DivergeWindow   uint64
	ReorderMax      int // held entries at most (default ReorderMax)
	ReorderMaxBytes int // held bytes at most (default ReorderMaxBytes)
}

type peerState struct {
	up       bool
	inFlight bool
	pending  string    // a reason that arrived while a session ran
	failures int       // consecutive failed sessions
	notUntil time.Time // backoff after a failure
	lastOK   time.Time
	// A heartbeat showed the member ahead: unless the log holds aheadOf by
	// aheadAt (gossip in flight landed), a catch-up fetches the rest.
	aheadOf map[string]uint64
	aheadAt time.Time
}

// Engine is the sync policy's state. It is not safe for concurrent use: a
// driver serializes its calls to Step and the queries.
type Engine struct {
	cfg       Config
	peers     map[string]*peerState
	queue     []Fetch
	lastRound time.Time
	lastSync  time.Time // last successful session with any member
	lastProbe time.Time
	requested time.Time // the earliest wake-up asked for since the last Wake
	held      *reorder
	frontiers map[string]map[string]uint64 // each member's latest heartbeat
	checked   map[string]time.Time         // peer/site fork checks, rate-limited
	twins     map[string]time.Time         // members seen running as two processes
	caughtUp  bool                         // own log holds what the family holds of it
	out       []Action
}

// New returns an engine. A node at its site's first epoch may write at once;
// one that was moved here first catches up its site's log from the family.
func New(cfg Config) *Engine {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.GapWait <= 0 {
		cfg.GapWait = DefaultGapWait
	}
	if cfg.AheadWait <= 0 {
		cfg.AheadWait = DefaultAheadWait
	}
	if cfg.ForkCheckEvery <= 0 {
		cfg.ForkCheckEvery = DefaultForkCheckEvery
	}
	if cfg.DivergeWindow == 0 {
		cfg.DivergeWindow = DefaultDivergeWindow
	}
	if cfg.ReorderMax <= 0 {
		cfg.ReorderMax = ReorderMax
	}
	if cfg.ReorderMaxBytes <= 0 {
		cfg.ReorderMaxBytes = ReorderMaxBytes
	}
	return &Engine{cfg: cfg, peers: map[string]*peerState{}, held: newReorder(cfg.ReorderMax, cfg.ReorderMaxBytes),
		frontiers: map[string]map[string]uint64{}, checked: map[string]time.Time{}, twins: map[string]time.Time{},
		caughtUp: cfg.Epoch <= 1}
}

// Step takes one input and returns every action it calls for, in order.
func (e *Engine) Step(in Input) []Action {
	e.out = nil
	now := in.When()
	if e.lastProbe.IsZero() {
		e.lastProbe = now // the first probes come one interval after start
	}
	switch in := in.(type) {
	case PeerUp:
		e.peerUp(in.Peer, now)
	case PeerDown:
		e.peerDown(in.Peer)
	case Heartbeat:
		e.heartbeat(in, now)
	case Received:
		e.emit(Append{Peer: in.Peer, Run: in.Run, Gossip: in.Gossip})
	case Appended:
		e.appended(in.Append, in.Outcome, now)
	case Tick:
		if !now.Before(e.requested) {
			e.requested = time.Time{} // the timer fired or is about to
		}
		e.round(now)
		e.advance(now)
	case Wake:
		e.requested = time.Time{} // the driver's one timer fired
		e.advance(now)
	case FetchDone:
		e.done(in.Peer, in.OK, now)
	case SyncNow:
		e.lastRound = now
		for _, id := range e.upPeers() {
			e.want(id, ReasonSyncNow, true)
		}
	case IntervalChanged:
		e.cfg.Interval = in.Interval
	case DuplicateSeen:
		e.twins[in.Peer] = now
		// Whichever copy answers, compare everything it holds, now: at most
		// once per ForkCheckEvery per member, as the duplicate is reported
		// on every connection of the second copy.
		if key := "dup/" + in.Peer; now.Sub(e.checked[key]) >= e.cfg.ForkCheckEvery {
			e.checked[key] = now
			e.emit(CheckDuplicate{Peer: in.Peer})
		}
	case ForkProofReceived:
		if in.Added {
			// Whoever learns of a fork passes the proof on, once, and its
			// own branch too: a copy of the forked site that only heard of
			// it still holds entries no one else has. The proof must be
			// passed on by the others: a cloned copy shares its peer ID with
			// the copy that found the fork, so it is never connected to it,
			// and gossip is not forwarded to the peer ID it came from.
			e.spreadFork(in.Site, in.Seq)
		}
	case WriteAsked:
		e.updateCaughtUp()
		e.emit(e.gate())
	default:
		panic("engine: unknown input")
	}
	e.start(now)
	e.schedule()
	return e.out
}

func (e *Engine) emit(a Action) { e.out = append(e.out, a) }

func (e *Engine) peer(id string) *peerState {
	p := e.peers[id]
	if p == nil {
		p = &peerState{}
		e.peers[id] = p
	}
	return p
}

// peerUp: a member connected. It hears of every fork this node knows, and a
// catch-up with it starts at once.
func (e *Engine) peerUp(id string, now time.Time) {
	p := e.peer(id)
	p.up, p.failures, p.notUntil = true, 0, time.Time{}
	if e.lastRound.IsZero() {
		e.lastRound = now // the connect session is this round
	}
	for _, f := range e.cfg.Log.Forks() {
		e.spreadFork(f.Site, f.Seq)
	}
	e.want(id, ReasonConnect, true)
}

func (e *Engine) peerDown(id string) {
	p := e.peer(id)
	p.up = false
	p.pending = ""
	p.aheadOf, p.aheadAt = nil, time.Time{}
	e.dequeue(id)
}

// heartbeat takes in a member's frontier and heads: the write gate, fork
// checks, and a fetch when it holds more than the local log.
func (e *Engine) heartbeat(hb Heartbeat, now time.Time) {
	f := make(map[string]uint64, len(hb.Frontier))
	for site, n := range hb.Frontier {
		f[site] = n
	}
	e.frontiers[hb.Peer] = f
	e.updateCaughtUp()
	e.compareHeads(hb, now)
	if !e.ahead(hb.Frontier) {
		return
	}
	// A member that holds more of this node's own site: fetch at once (no
	// gossip brings those, and writes wait for them). Entries of other sites
	// are most often in flight by gossip while their sites write: waiting a
	// moment for them keeps a busy family's entries on gossip instead of
	// fetching each again.
	if mine, _ := e.cfg.Log.Head(e.cfg.OwnSite); e.cfg.OwnSite != "" && hb.Frontier[e.cfg.OwnSite] > mine {
		e.want(hb.Peer, ReasonAhead, false)
		return
	}
	// The first such heartbeat sets what must have landed by when; later
	// ones show more in flight again, and are looked at once it is due.
	if p := e.peer(hb.Peer); p.aheadAt.IsZero() {
		p.aheadOf, p.aheadAt = f, now.Add(e.cfg.AheadWait)
	}
}

// ahead reports whether theirs holds any entry the local log lacks.
func (e *Engine) ahead(theirs map[string]uint64) bool {
	for site, n := range theirs {
		if mine, _ := e.cfg.Log.Head(site); n > mine {
			return true
		}
	}
	return false
}

// compareHeads looks for a site whose entry at the member's head differs from
// the one held here: two copies of a site that wrote the same number of
// entries show no gap anywhere, only different hashes. On a mismatch it asks
// for that entry from the member (at most once per ForkCheckEvery per member
// and site), and the log records the fork.
func (e *Engine) compareHeads(hb Heartbeat, now time.Time) {
	sites := make([]string, 0, len(hb.Frontier))
	for site := range hb.Frontier {
		sites = append(sites, site)
	}
	sort.Strings(sites)
	for _, site := range sites {
		n, theirs := hb.Frontier[site], hb.Heads[site]
		ours, ok := hb.Ours[site] // only where the member is not ahead
		if !ok || len(theirs) != len(wire.Hash{}) {
			continue
		}
		if wire.Hash(theirs) == ours {
			continue
		}
		key := hb.Peer + "/" + site
		if now.Sub(e.checked[key]) < e.cfg.ForkCheckEvery {
			continue
		}
		e.checked[key] = now
		e.emit(ForkCheck{Peer: hb.Peer, Site: site, Seq: n})
	}
}

// appended decides what follows an append: a gossiped run ahead of the log
// waits in the reorder buffer, a catch-up gap (or a full buffer) fetches from
// the sender, a fork spreads, and whatever extends the log lets the held
// entries after it follow.
func (e *Engine) appended(a Append, o Outcome, now time.Time) {
	if len(a.Run) == 0 {
		return
	}
	site := a.Run[0].Site
	switch o.Kind {
	case OutcomeGap:
		// A drained run meets a gap only when another append raced it;
		// it waits again like any gossip.
		if a.Gossip && e.held.holdRun(a.Run, a.Peer, now) {
			e.drain(site) // the gap may have closed since the append
			return
		}
		e.want(a.Peer, ReasonGap, false)
	case OutcomeFork:
		seq := o.Seq
		for _, f := range e.cfg.Log.Forks() {
			if f.Site == site {
				seq = f.Seq
			}
		}
		e.spreadFork(site, seq)
	case OutcomeOK:
		if o.Appended > 0 {
			e.drain(site)
		}
	}
}

// drain asks to append the held entries that now extend site's log, in
// order, as one run; its outcome drains again. The run ends at its last
// signed entry (a commit group's end): the entries after it wait for the
// rest of their group, since the log refuses a run that ends unsigned.
func (e *Engine) drain(site string) {
	head, _ := e.cfg.Log.Head(site)
	var held []heldEntry
	for {
		h, ok := e.held.next(site, head+uint64(len(held)))
		if !ok {
			break
		}
		held = append(held, h)
	}
	end := len(held)
	for end > 0 && !held[end-1].e.IsSigned() {
		end--
	}
	for _, h := range held[end:] {
		e.held.hold(h.e, h.from, h.at)
	}
	if end == 0 {
		return
	}
	run := make([]*wire.Signed, end)
	for i, h := range held[:end] {
		run[i] = h.e
	}
	e.emit(Append{Peer: held[0].from, Run: run, Gossip: true, Held: true})
}

// spreadFork gossips the proof of a site's fork and carries this node's
// branch on to the others, where it is kept as evidence: no acknowledged
// entry lives in one place only.
func (e *Engine) spreadFork(site string, seq uint64) {
	e.emit(SpreadFork{Site: site, Seq: seq})
	e.pushBranch(site, seq)
}

// pushBranch pushes this node's entries of a forked site, from a little
// before the seq the proof names (the branches may have parted earlier) to
// its head.
func (e *Engine) pushBranch(site string, seq uint64) {
	from := uint64(1)
	if seq > e.cfg.DivergeWindow {
		from = seq - e.cfg.DivergeWindow + 1
	}
	if head, _ := e.cfg.Log.Head(site); head >= from {
		e.emit(PushBranch{Site: site, From: from})
	}
}

// round: every interval, a session with every connected member.
func (e *Engine) round(now time.Time) {
	if e.cfg.Interval > 0 && now.Sub(e.lastRound) >= e.cfg.Interval {
		e.lastRound = now
		for _, id := range e.upPeers() {
			e.want(id, ReasonInterval, false)
		}
	}
}

// advance does what has come due: held gossip whose gap stayed open fetches
// from whoever sent it, and every ProbeEvery each connected member is probed.
func (e *Engine) advance(now time.Time) {
	if e.held.len() > 0 {
		head := func(site string) uint64 { n, _ := e.cfg.Log.Head(site); return n }
		for _, p := range e.held.expired(now, e.cfg.GapWait, head) {
			e.want(p, ReasonGap, false)
		}
	}
	for _, id := range e.upPeers() {
		p := e.peers[id]
		if p.aheadAt.IsZero() || now.Before(p.aheadAt) {
			continue
		}
		if e.ahead(p.aheadOf) {
			e.want(id, ReasonAhead, false)
		}
		p.aheadOf, p.aheadAt = nil, time.Time{}
	}
	if e.cfg.ProbeEvery > 0 && now.Sub(e.lastProbe) >= e.cfg.ProbeEvery {
		e.lastProbe = now
		for _, id := range e.upPeers() {
			e.emit(Probe{Peer: id})
		}
	}
}

// schedule asks for a wake-up at the next time something comes due, unless
// an earlier one is pending.
func (e *Engine) schedule() {
	var next time.Time
	if e.held.len() > 0 {
		next = e.held.oldest.Add(e.cfg.GapWait)
	}
	if e.cfg.ProbeEvery > 0 && len(e.upPeers()) > 0 {
		if p := e.lastProbe.Add(e.cfg.ProbeEvery); next.IsZero() || p.Before(next) {
			next = p
		}
	}
	for _, id := range e.upPeers() {
		if at := e.peers[id].aheadAt; !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	if !next.IsZero() && (e.requested.IsZero() || next.Before(e.requested)) {
		e.requested = next
		e.emit(SetTimer{At: next})
	}
}

// done: a session finished.
func (e *Engine) done(id string, ok bool, now time.Time) {
	p := e.peer(id)
	p.inFlight = false
	if ok {
		p.failures, p.notUntil, p.lastOK = 0, time.Time{}, now
		e.lastSync = now
	} else {
		p.failures++
		back := time.Second << min(p.failures-1, 10)
		p.notUntil = now.Add(min(back, e.cfg.MaxBackoff))
	}
	e.updateCaughtUp()
	if p.pending != "" && p.up {
		r := p.pending
		p.pending = ""
		e.enqueue(id, r)
	}
}

// want queues a session with id unless one runs (then it runs again after).
// force ignores the peer's backoff.
func (e *Engine) want(id, reason string, force bool) {
	p := e.peer(id)
	if !p.up {
		return
	}
	if force {
		p.notUntil = time.Time{}
	}
	if p.inFlight {
		p.pending = reason
		return
	}
	e.enqueue(id, reason)
}

func (e *Engine) enqueue(id, reason string) {
	for _, q := range e.queue {
		if q.Peer == id {
			return
		}
	}
	e.queue = append(e.queue, Fetch{Peer: id, Reason: reason})
}

func (e *Engine) dequeue(id string) {
	q := e.queue[:0]
	for _, a := range e.queue {
		if a.Peer != id {
			q = append(q, a)
		}
	}
	e.queue = q
}

// start turns queued wishes into sessions while there is room and the peer
// is not backing off.
func (e *Engine) start(now time.Time) {
	running := 0
	for _, p := range e.peers {
		if p.inFlight {
			running++
		}
	}
	rest := e.queue[:0]
	for _, a := range e.queue {
		p := e.peer(a.Peer)
		if running < e.cfg.MaxInFlight && p.up && !now.Before(p.notUntil) {
			p.inFlight = true
			running++
			e.emit(a)
			continue
		}
		rest = append(rest, a)
	}
	e.queue = rest
}

func (e *Engine) upPeers() []string {
	var ids []string
	for id, p := range e.peers {
		if p.up {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// updateCaughtUp: the own log has caught up when no member is known to hold
// more of this site than this node does (and, for a node moved here, once a
// session succeeded).
func (e *Engine) updateCaughtUp() {
	own, _ := e.cfg.Log.Head(e.cfg.OwnSite)
	if Beyond(e.MostHeld(e.cfg.OwnSite), own) > 0 {
		e.caughtUp = false
		return
	}
	if !e.lastSync.IsZero() || e.cfg.Epoch <= 1 {
		e.caughtUp = true
	}
}

func (e *Engine) gate() WriteGate {
	switch {
	case e.caughtUp:
		return WriteGate{Open: true}
	case e.cfg.Epoch > 1:
		return WriteGate{Reason: gateMoved}
	default:
		return WriteGate{Reason: gateBehind}
	}
}

// --- queries ----------------------------------------------------------------------

// MostHeld returns the most of site's log any member is known to hold (from
// its latest heartbeat).
func (e *Engine) MostHeld(site string) uint64 {
	var most uint64
	for _, f := range e.frontiers {
		most = max(most, f[site])
	}
	return most
}

// LastSync returns when a session with a member last succeeded.
func (e *Engine) LastSync() time.Time { return e.lastSync }

// Held returns the number of gossiped entries waiting for their predecessor.
func (e *Engine) Held() int { return e.held.len() }

// CaughtUp reports whether the own log holds what the family holds of it.
func (e *Engine) CaughtUp() bool { return e.caughtUp }

// Twins lists the members seen running as two processes at once, sorted.
func (e *Engine) Twins() []string {
	out := make([]string, 0, len(e.twins))
	for p := range e.twins {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// InFlight reports whether a session with peer runs.
func (e *Engine) InFlight(peer string) bool {
	p := e.peers[peer]
	return p != nil && p.inFlight
}

// MaxInFlight is the most sessions that run at once.
func (e *Engine) MaxInFlight() int { return e.cfg.MaxInFlight }
