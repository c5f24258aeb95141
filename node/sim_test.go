package node

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/engine"
)

// A deterministic simulation of the sync engine and the node logic around it
// (sync.go, mesh catch-up and gossip as the node sees them), in the manner of
// FoundationDB's simulator and TigerBeetle's VOPR: one thread, no goroutines,
// no real time, every choice drawn from one seeded PCG. A seed fixes the
// options (printed on failure) and the whole run, so any failure replays.
//
// Each simulated node has a persisted part (its log and state: simStore) and
// a volatile part lost on a crash (the engine, catch-up sessions in flight,
// the gossip seen-cache, connections). The network carries gossip of each
// committed entry (lost, duplicated, reordered by random delays, forwarded
// like gossipsub), heartbeats (frontiers), and catch-up sessions (request =
// frontier; response = the missing runs in batches, which a partition, a
// crash, a stream reset or an idle timeout can cut off midway). Connections
// follow the mesh: a member is "up" while at least one connection to it is
// open; a dead path or peer is noticed only after a keepalive delay; nodes
// redial every few seconds.
//
// A run has a safety phase (faults and writes on; exactly-once and chain
// integrity are checked at every apply) and a liveness phase (faults off,
// partitions healed, crashed nodes restarted, no writes) that must converge
// within a bound: every acknowledged entry at every node, applied exactly
// once, identical digests. A probe then writes one entry per site with gossip
// switched off, which only the engine's anti-entropy can deliver, and must
// converge again within the bound.

// simOptions are every knob of one run; a seed derives them all.
type simOptions struct {
	Seed      uint64
	Nodes     int  // 3..7 including the relay
	Relay     bool // node 0 is a relay: writes nothing, serves everything
	Star      bool // sites reach each other mostly through the relay
	Interval  time.Duration
	Heartbeat time.Duration
	Redial    time.Duration
	DelayMin  time.Duration
	DelayMax  time.Duration
	Loss      float64 // gossip and heartbeats
	Dup       float64
	Forward   bool // receivers forward gossip to their other peers
	Batch     int  // entries per catch-up batch
	Reset     float64
	Partition time.Duration // mean time between partitions (0: none)
	OneWay    bool
	Sticky    bool          // a one-way cut does not close the connection (keepalives pass, streams do not)
	Crash     time.Duration // mean time between crashes (0: none)
	CrashAck  float64       // a node crashes right after acking, before gossip
	CrashMid  float64       // a node crashes after a catch-up batch
	Write     time.Duration // mean time between writes
	WriteMany int           // entries per write call, 1..WriteMany
	SyncNow   time.Duration // mean time between "Sync now" presses (0: none)
	Settings  time.Duration // mean time between sync-interval changes (0: none)
	Safety    time.Duration
	Bound     time.Duration // liveness: converge within this
	Bad       string        // liveness first runs with one node "down", "mute" or "deaf" ("": none)

	fixed bool // scripts: no random delays, phases or detection times
}

const (
	simIdle      = 30 * time.Second  // catch-up read deadline (mesh.catchupIdle)
	simSeenTTL   = 120 * time.Second // gossipsub seen-cache
	simMaxDetect = 40 * time.Second  // keepalive: longest time to notice a dead path
)

func simOptionsFor(seed uint64) simOptions {
	r := rand.New(rand.NewPCG(seed, 0x6f7074696f6e73))
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	o := simOptions{Seed: seed, Redial: 10 * time.Second, Bound: 5 * time.Minute}
	o.Nodes = 3 + r.IntN(5)
	o.Relay = r.IntN(3) > 0
	o.Star = o.Relay && r.IntN(3) == 0
	o.Interval = []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute}[r.IntN(4)]
	o.Heartbeat = []time.Duration{2 * time.Second, 5 * time.Second, 10 * time.Second}[r.IntN(3)]
	o.DelayMin = ms(1 + r.IntN(20))
	o.DelayMax = o.DelayMin + ms(r.IntN(2000))
	o.Loss = r.Float64() * 0.3
	o.Dup = r.Float64() * 0.2
	o.Forward = r.IntN(2) == 0
	o.Batch = 1 + r.IntN(16)
	o.Reset = r.Float64() * 0.05
	if r.IntN(5) > 0 {
		o.Partition = sec(5 + r.IntN(60))
	}
	o.OneWay = r.IntN(2) == 0
	o.Sticky = o.OneWay && r.IntN(3) == 0
	if r.IntN(5) > 0 {
		o.Crash = sec(10 + r.IntN(90))
	}
	o.CrashAck = r.Float64() * 0.05
	o.CrashMid = r.Float64() * 0.02
	o.Write = ms(100 + r.IntN(2000))
	o.WriteMany = 1 + r.IntN(4)
	if r.IntN(3) == 0 {
		o.SyncNow = sec(20 + r.IntN(60))
	}
	if r.IntN(4) == 0 {
		o.Settings = sec(30 + r.IntN(60))
	}
	o.Safety = sec(30 + r.IntN(150))
	o.Bad = []string{"", "", "down", "mute", "deaf"}[r.IntN(5)]
	return o
}

func (o simOptions) String() string {
	return fmt.Sprintf("seed=%d nodes=%d relay=%v star=%v interval=%s heartbeat=%s redial=%s delay=%s..%s "+
		"loss=%.3f dup=%.3f forward=%v batch=%d reset=%.3f partition=%s oneway=%v sticky=%v crash=%s crashack=%.3f "+
		"crashmid=%.3f write=%s writemany=%d syncnow=%s settings=%s safety=%s bound=%s bad=%q",
		o.Seed, o.Nodes, o.Relay, o.Star, o.Interval, o.Heartbeat, o.Redial, o.DelayMin, o.DelayMax,
		o.Loss, o.Dup, o.Forward, o.Batch, o.Reset, o.Partition, o.OneWay, o.Sticky, o.Crash, o.CrashAck,
		o.CrashMid, o.Write, o.WriteMany, o.SyncNow, o.Settings, o.Safety, o.Bound, o.Bad)
}

// --- event queue ----------------------------------------------------------------

type simEvent struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// --- trace ------------------------------------------------------------------------

type simLine struct {
	at     time.Duration
	format string
	args   []any
}

func (l simLine) String() string {
	return fmt.Sprintf("%9.3fs ", l.at.Seconds()) + fmt.Sprintf(l.format, l.args...)
}

// simTrace keeps the tail of the trace (formatted only when shown) and, when
// asked, every line.
type simTrace struct {
	ring []simLine
	next int
	all  []string
	keep bool
	out  func(string) // verbose: every line as it happens
}

func (tr *simTrace) add(l simLine) {
	if tr.keep || tr.out != nil {
		s := l.String()
		if tr.keep {
			tr.all = append(tr.all, s)
		}
		if tr.out != nil {
			tr.out(s)
		}
	}
	if len(tr.ring) < 120 {
		tr.ring = append(tr.ring, l)
		return
	}
	tr.ring[tr.next] = l
	tr.next = (tr.next + 1) % len(tr.ring)
}

func (tr *simTrace) tail() string {
	var b strings.Builder
	for i := range tr.ring {
		b.WriteString(tr.ring[(tr.next+i)%len(tr.ring)].String())
		b.WriteByte('\n')
	}
	return b.String()
}

// --- world ------------------------------------------------------------------------

type simNode struct {
	idx      int
	id       string // peer ID as the engine knows it
	site     string // own site; "" for the relay
	store    simStore
	interval time.Duration   // persisted setting
	applied  map[wire.ID]int // observer: applications of each entry (persisted with the state)
	alive    bool            // volatile from here on
	inc      int             // incarnation: bumped by each crash
	eng      *engine.Engine  // a new one at each boot
	seen     map[simSeen]time.Duration
	sessions []*simSession // outgoing catch-up sessions in flight
	batches  int           // catch-up batches received in this incarnation
	wakeAt   time.Time     // the engine's wake-up timer (zero: none)
}

type simSeen struct {
	id   wire.ID
	hash wire.Hash
}

// simConn is one connection; each end is open or closed on its own (a crash
// closes the crashed end silently; the survivor notices after a delay).
type simConn struct {
	id      int
	a, b    int
	open    [2]bool
	doomed  bool             // will close at both ends
	closeAt [2]time.Duration // when each end notices the broken path (0: not yet)
}

func (c *simConn) side(n int) int {
	if n == c.a {
		return 0
	}
	return 1
}

type simSession struct {
	id             int
	client, server *simNode
	conn           *simConn
	reason         string
	have           map[string]uint64
	last           time.Duration // last progress
	done           bool
	skip           map[string]bool
}

// simSessionRec is a session as the scripts check it.
type simSessionRec struct {
	at             time.Duration
	client, server string
	reason         string
	have           string
}

type simStats struct {
	acked, gossip, lost, dups, resets int
	sessions, failed                  int
	crashes, partitions               int
	appendedGossip, appendedCatchup   int
	core, converge, probe             time.Duration // times to converge: faulty minority, all healthy, probe
}

type simWorld struct {
	opt     simOptions
	rng     *rand.Rand
	base    time.Time
	now     time.Duration
	q       simQueue
	seq     uint64
	nodes   []*simNode
	byID    map[string]*simNode
	allowed [][]bool
	cut     [][]int // cut[a][b] > 0: a's messages to b are dropped
	conns   []*simConn
	nconn   int
	truth   map[string][]wire.Hash // what each site acknowledged, by seq
	sites   []string

	faults, writes, gossipOff bool
	healGen                   int
	violation                 error
	trace                     simTrace
	log                       []simSessionRec
	nsession                  int
	stats                     simStats
	opCount                   int

	// scripts
	dropGossip   map[[2]int]int // drop the next n gossip messages a -> b
	crashAtBatch map[int]int    // crash node after its nth catch-up batch
}

// newSimWorld builds the nodes; names[i] is node i's ID and site ("" site:
// relay).
func newSimWorld(opt simOptions, real bool, ids, sites []string) *simWorld {
	w := &simWorld{opt: opt, rng: rand.New(rand.NewPCG(opt.Seed, 0x73696d)),
		base: time.Unix(1_750_000_000, 0), byID: map[string]*simNode{}, truth: map[string][]wire.Hash{},
		dropGossip: map[[2]int]int{}, crashAtBatch: map[int]int{}}
	keys := simKeyring{}
	for _, s := range sites {
		if s != "" {
			keys[s] = simPub(s)
			w.sites = append(w.sites, s)
		}
	}
	sort.Strings(w.sites)
	now := func() time.Time { return w.clock() }
	for i, id := range ids {
		n := &simNode{idx: i, id: id, site: sites[i], interval: opt.Interval, applied: map[wire.ID]int{}}
		onApply := func(e *wire.Signed) { w.applied(n, e) }
		if real {
			n.store = newSimRealStore(n.site, keys, now, onApply)
		} else {
			n.store = newSimModelStore(n.site, now, onApply)
		}
		w.nodes = append(w.nodes, n)
		w.byID[id] = n
	}
	k := len(ids)
	w.allowed, w.cut = make([][]bool, k), make([][]int, k)
	for i := range k {
		w.allowed[i], w.cut[i] = make([]bool, k), make([]int, k)
		for j := range k {
			w.allowed[i][j] = i != j
		}
	}
	return w
}

// newSimRandomWorld lays out the nodes and topology of a seed.
func newSimRandomWorld(opt simOptions, real bool) *simWorld {
	var ids, sites []string
	for i := range opt.Nodes {
		if i == 0 && opt.Relay {
			ids, sites = append(ids, "relay"), append(sites, "")
			continue
		}
		s := fmt.Sprintf("s%d", i)
		ids, sites = append(ids, s), append(sites, s)
	}
	w := newSimWorld(opt, real, ids, sites)
	if opt.Star {
		// Sites behind NAT: through the relay, and a few direct links.
		for i := 1; i < opt.Nodes; i++ {
			for j := i + 1; j < opt.Nodes; j++ {
				direct := w.rng.IntN(4) == 0
				w.allowed[i][j], w.allowed[j][i] = direct, direct
			}
		}
	}
	return w
}

func (w *simWorld) close() {
	for _, n := range w.nodes {
		n.store.Close()
	}
}

func (w *simWorld) clock() time.Time { return w.base.Add(w.now) }

func (w *simWorld) tracef(format string, args ...any) {
	w.trace.add(simLine{at: w.now, format: format, args: args})
}

func (w *simWorld) fail(format string, args ...any) {
	if w.violation == nil {
		w.violation = fmt.Errorf(format, args...)
		w.tracef("VIOLATION: "+format, args...)
	}
}

func (w *simWorld) after(d time.Duration, fn func()) {
	w.seq++
	heap.Push(&w.q, &simEvent{at: w.now + d, seq: w.seq, fn: fn})
}

// runUntil runs every event up to t (or until a violation).
func (w *simWorld) runUntil(t time.Duration) {
	for w.q.Len() > 0 && w.q[0].at <= t && w.violation == nil {
		ev := heap.Pop(&w.q).(*simEvent)
		w.now = ev.at
		ev.fn()
	}
	if w.violation == nil && w.now < t {
		w.now = t
	}
}

func (w *simWorld) delay() time.Duration {
	if w.opt.fixed || w.opt.DelayMax <= w.opt.DelayMin {
		return w.opt.DelayMin
	}
	return w.opt.DelayMin + time.Duration(w.rng.Int64N(int64(w.opt.DelayMax-w.opt.DelayMin)))
}

func (w *simWorld) detect() time.Duration {
	if w.opt.fixed {
		return 10 * time.Second
	}
	return time.Second + time.Duration(w.rng.Int64N(int64(simMaxDetect-time.Second)))
}

func (w *simWorld) exp(mean time.Duration) time.Duration {
	return time.Duration(w.rng.ExpFloat64()*float64(mean)) + time.Millisecond
}

func (w *simWorld) chance(p float64) bool { return p > 0 && w.rng.Float64() < p }

func simFrontier(f map[string]uint64) string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, f[k]))
	}
	return strings.Join(parts, ",")
}

// --- nodes: boot, crash, restart ------------------------------------------------

// boot starts a node's volatile part: a new engine and its loops.
func (w *simWorld) boot(n *simNode) {
	n.alive = true
	n.eng = engine.New(engine.Config{Log: n.store, OwnSite: n.site, Epoch: 1, Interval: n.interval, ProbeEvery: w.opt.Heartbeat})
	n.seen = map[simSeen]time.Duration{}
	n.sessions, n.batches, n.wakeAt = nil, 0, time.Time{}
	w.loop(n, time.Second, func() { w.drive(n, engine.Tick{Now: w.clock()}, nil) })
	w.loop(n, w.opt.Heartbeat, func() { w.heartbeat(n) })
	w.loop(n, w.opt.Redial, func() { w.dial(n) })
	w.dial(n)
}

// loop runs fn every period while the node lives in this incarnation.
func (w *simWorld) loop(n *simNode, period time.Duration, fn func()) {
	inc := n.inc
	var step func()
	step = func() {
		if !n.alive || n.inc != inc {
			return
		}
		fn()
		w.after(period, step)
	}
	phase := time.Duration(n.idx+1) * 97 * time.Millisecond % period
	if !w.opt.fixed {
		phase = time.Duration(w.rng.Int64N(int64(period))) + 1
	}
	w.after(phase, step)
}

func (w *simWorld) crash(n *simNode, why string) {
	if !n.alive {
		return
	}
	w.tracef("%s CRASH (%s); persisted %s", n.id, why, simFrontier(n.store.Frontier()))
	w.stats.crashes++
	n.alive = false
	n.inc++
	n.eng = nil
	for _, s := range n.sessions {
		s.done = true
	}
	n.sessions, n.seen, n.wakeAt = nil, nil, time.Time{}
	for _, c := range w.conns {
		if (c.a == n.idx || c.b == n.idx) && c.open[c.side(n.idx)] {
			c.open[c.side(n.idx)] = false
			c.doomed = true
		}
	}
	n.store.Crash(w.rng.Uint64())
}

func (w *simWorld) restart(n *simNode) {
	if n.alive {
		return
	}
	n.store.Reopen()
	w.tracef("%s RESTART from %s", n.id, simFrontier(n.store.Frontier()))
	w.boot(n)
}

// --- connections -------------------------------------------------------------------

func (w *simWorld) cutAny(a, b int) bool { return w.cut[a][b] > 0 || w.cut[b][a] > 0 }

// openTo counts n's open connections to p.
func (w *simWorld) openTo(n, p int) int {
	k := 0
	for _, c := range w.conns {
		if (c.a == n && c.b == p || c.a == p && c.b == n) && c.open[c.side(n)] {
			k++
		}
	}
	return k
}

// connFor is n's newest open connection to p.
func (w *simWorld) connFor(n, p int) *simConn {
	for i := len(w.conns) - 1; i >= 0; i-- {
		c := w.conns[i]
		if (c.a == n && c.b == p || c.a == p && c.b == n) && c.open[c.side(n)] {
			return c
		}
	}
	return nil
}

// pathOK: a message from -> to over c arrives now.
func (w *simWorld) pathOK(c *simConn, from, to int) bool {
	return c != nil && c.open[0] && c.open[1] && w.cut[from][to] == 0
}

// peersOf lists the nodes n has an open connection to, by index.
func (w *simWorld) peersOf(n *simNode) []*simNode {
	var out []*simNode
	for _, p := range w.nodes {
		if p != n && w.openTo(n.idx, p.idx) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// dial connects n to every allowed member it has no connection to.
func (w *simWorld) dial(n *simNode) {
	for _, p := range w.nodes {
		if p == n || !w.allowed[n.idx][p.idx] || w.openTo(n.idx, p.idx) > 0 || !p.alive || w.cutAny(n.idx, p.idx) {
			continue
		}
		incN, incP := n.inc, p.inc
		w.after(2*w.delay(), func() {
			if !n.alive || n.inc != incN || !p.alive || p.inc != incP || w.cutAny(n.idx, p.idx) {
				return
			}
			if w.openTo(n.idx, p.idx) > 0 {
				return
			}
			upP := w.openTo(p.idx, n.idx) == 0
			w.nconn++
			c := &simConn{id: w.nconn, a: n.idx, b: p.idx, open: [2]bool{true, true}}
			w.conns = append(w.conns, c)
			w.tracef("%s connects to %s (conn %d)", n.id, p.id, c.id)
			w.up(n, p)
			if upP {
				w.up(p, n)
			}
		})
	}
}

// monitor notices broken connections, one second at a time.
func (w *simWorld) monitor() {
	live := w.conns[:0]
	for _, c := range w.conns {
		if c.open[0] || c.open[1] {
			live = append(live, c)
		}
	}
	w.conns = live
	for _, c := range append([]*simConn(nil), w.conns...) {
		cut := w.cutAny(c.a, c.b)
		if w.opt.Sticky {
			cut = w.cut[c.a][c.b] > 0 && w.cut[c.b][c.a] > 0
		}
		broken := c.doomed || !c.open[0] || !c.open[1] || cut
		if !broken {
			c.closeAt = [2]time.Duration{}
			continue
		}
		for side, idx := range [2]int{c.a, c.b} {
			if !c.open[side] {
				continue
			}
			if c.closeAt[side] == 0 {
				c.closeAt[side] = w.now + w.detect()
				continue
			}
			if w.now >= c.closeAt[side] {
				w.closeEnd(c, side, w.nodes[idx])
			}
		}
	}
	w.after(time.Second, w.monitor)
}

// closeEnd: node n notices that connection c is dead.
func (w *simWorld) closeEnd(c *simConn, side int, n *simNode) {
	c.open[side] = false
	c.doomed = true
	p := w.nodes[c.a+c.b-n.idx]
	w.tracef("%s loses conn %d to %s", n.id, c.id, p.id)
	var failing []*simSession
	for _, s := range n.sessions {
		if s.conn == c {
			failing = append(failing, s)
		}
	}
	down := w.openTo(n.idx, p.idx) == 0
	// The session's error and the mesh's "down" reach the loop in either order.
	if down && w.rng.IntN(2) == 0 {
		w.down(n, p)
		down = false
	}
	for _, s := range failing {
		w.endSession(s, false, "connection closed")
	}
	if down {
		w.down(n, p)
	}
}
