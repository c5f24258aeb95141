package node

import (
	"sort"
	"time"
)

// The sync engine decides when to run a catch-up session with which peer. It
// is a pure state machine: no goroutines, no clock, no I/O. The node feeds it
// events (with the time they happened) and carries out the actions it returns.
// Gossip is best effort; these sessions are what make delivery certain.

// Reasons a catch-up session runs.
const (
	ReasonConnect  = "connect"
	ReasonGap      = "gap"
	ReasonAhead    = "peer-ahead"
	ReasonInterval = "interval"
	ReasonSyncNow  = "sync-now"
)

// engineConfig tunes the engine.
type engineConfig struct {
	Interval    time.Duration // the sync interval
	MaxInFlight int           // sessions at once (default 2)
	MaxBackoff  time.Duration // after failures (default 1m)
}

// fetchAction asks the node to run a catch-up session with a peer.
type fetchAction struct {
	Peer   string
	Reason string
}

type enginePeer struct {
	up       bool
	inFlight bool
	pending  string    // a reason that arrived while a session ran
	failures int       // consecutive failed sessions
	notUntil time.Time // backoff after a failure
	lastOK   time.Time
}

type engine struct {
	cfg       engineConfig
	peers     map[string]*enginePeer
	lastRound time.Time
	lastSync  time.Time // last successful session with any peer
	queue     []fetchAction
}

func newEngine(cfg engineConfig) *engine {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 2
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	return &engine{cfg: cfg, peers: map[string]*enginePeer{}}
}

func (e *engine) peer(id string) *enginePeer {
	p := e.peers[id]
	if p == nil {
		p = &enginePeer{}
		e.peers[id] = p
	}
	return p
}

// setInterval changes the sync interval (ppsync set sync-interval).
func (e *engine) setInterval(d time.Duration) { e.cfg.Interval = d }

// peerUp: a member connected. Catch up with it at once.
func (e *engine) peerUp(id string, now time.Time) []fetchAction {
	p := e.peer(id)
	p.up, p.failures, p.notUntil = true, 0, time.Time{}
	if e.lastRound.IsZero() {
		e.lastRound = now // the connect session is this round
	}
	return e.want(id, ReasonConnect, now, true)
}

// peerDown: a member disconnected.
func (e *engine) peerDown(id string) {
	p := e.peer(id)
	p.up = false
	p.pending = ""
	e.dequeue(id)
}

// heartbeat: a member's frontier; fetch when it holds more than local.
func (e *engine) heartbeat(id string, frontier, local map[string]uint64, now time.Time) []fetchAction {
	if !ahead(frontier, local) {
		return nil
	}
	return e.want(id, ReasonAhead, now, false)
}

// gap: an entry from id skipped ahead of the local log.
func (e *engine) gap(id string, now time.Time) []fetchAction {
	return e.want(id, ReasonGap, now, false)
}

// tick: time passes; every interval, a round with every connected member.
func (e *engine) tick(now time.Time) []fetchAction {
	var out []fetchAction
	if e.cfg.Interval > 0 && now.Sub(e.lastRound) >= e.cfg.Interval {
		e.lastRound = now
		for _, id := range e.upPeers() {
			out = append(out, e.want(id, ReasonInterval, now, false)...)
		}
	}
	return append(out, e.start(now)...)
}

// syncNow: a round with every connected member, now, ignoring backoff.
func (e *engine) syncNow(now time.Time) []fetchAction {
	e.lastRound = now
	var out []fetchAction
	for _, id := range e.upPeers() {
		out = append(out, e.want(id, ReasonSyncNow, now, true)...)
	}
	return out
}

// done: a session finished.
func (e *engine) done(id string, ok bool, now time.Time) []fetchAction {
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
	if p.pending != "" && p.up {
		r := p.pending
		p.pending = ""
		e.enqueue(id, r)
	}
	return e.start(now)
}

// want queues a session with id unless one runs (then it runs again after).
func (e *engine) want(id, reason string, now time.Time, force bool) []fetchAction {
	p := e.peer(id)
	if !p.up {
		return nil
	}
	if force {
		p.notUntil = time.Time{}
	}
	if p.inFlight {
		p.pending = reason
		return nil
	}
	e.enqueue(id, reason)
	return e.start(now)
}

func (e *engine) enqueue(id, reason string) {
	for _, q := range e.queue {
		if q.Peer == id {
			return
		}
	}
	e.queue = append(e.queue, fetchAction{Peer: id, Reason: reason})
}

func (e *engine) dequeue(id string) {
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
func (e *engine) start(now time.Time) []fetchAction {
	var out []fetchAction
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
			out = append(out, a)
			continue
		}
		rest = append(rest, a)
	}
	e.queue = rest
	return out
}

func (e *engine) upPeers() []string {
	var ids []string
	for id, p := range e.peers {
		if p.up {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}
