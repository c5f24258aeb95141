package txlog

import (
	"context"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// request is one call waiting for the committer.
type request struct {
	own   [][]wire.Op               // own transactions, one entry each
	enc   []wire.EncodedOps         // own: each transaction's operations encoded, or nil (sealed)
	grant []wire.Grant              // own: a grant entry (own is one nil transaction)
	seen  map[string]uint64         // own: cap the deps at what the writer saw (nil: the whole frontier)
	run   []*wire.Signed            // remote: a verified contiguous run of one site
	proof *[2][]*wire.Signed        // a fork proof from a peer (checked)
	fn    func() error              // exclusive work run between groups (replay)
	sync  bool                      // Durable: answered once every group committed before it is durable
	extra func(*pebble.Batch) error // own: more writes for the same batch (a capture position)
	loads []uint64                  // own: the initial load each transaction belongs to (WriteLoad), or nil
	pre   []any                     // own: each transaction's reads ahead (Prefetcher), or nil
	preAt uint64                    // own: l.exclusives when they began

	out  []*wire.Signed // own: the committed entries
	res  RunResult      // remote: what happened
	err  error
	done chan struct{}
}

func (r *request) size() int {
	switch {
	case r.own != nil:
		return len(r.own)
	case r.run != nil:
		return len(r.run)
	case r.proof != nil:
		return 2
	}
	return 1
}

// RunResult says what became of a remote run.
type RunResult struct {
	Appended    int // new entries appended (and applied unless held)
	Duplicates  int // entries already held
	Quarantined int // entries of a forked site stored in quarantine
}

// group is one group commit under construction.
type group struct {
	b        *pebble.Batch
	heads    map[string]Head         // heads as of this group (copy-on-write over l.heads)
	forks    map[string]Fork         // forks found in this group
	writes   []*wire.Signed          // new entries to store and apply, in order
	unsigned []*wire.Signed          // own entries still to sign
	loads    map[*wire.Signed]uint64 // entries of an initial load (WriteLoad): the load
	pre      map[*wire.Signed]any    // own entries read ahead (Prefetcher), still good
}

// run is the committer: it builds each group, makes it visible with an
// unsynced commit, and hands it to the syncer, which makes it durable and only
// then answers the callers. While one group waits for its fsync the next
// gathers the requests that arrive (it could not be synced sooner), then is
// stamped, signed and applied. Bigger groups mean fewer fsyncs and fewer
// signatures. Reads that others can see (heads, ranges) advance only once a
// group is durable.
//
// It runs while there is work: after Config.IdleAfter without a request it
// stops, with its syncer, unless a request is in flight (see retire).
func (l *Log) run() {
	l.syncq = make(chan *pending, 4) // closed below: each committer has its own
	syncDone := make(chan struct{})
	go l.syncer(syncDone)
	defer func() { close(l.syncq); <-syncDone }()
	idle := time.NewTimer(l.cfg.IdleAfter)
	defer idle.Stop()
	for {
		idle.Reset(l.cfg.IdleAfter)
		var first *request
		select {
		case first = <-l.reqs:
		case <-l.stop:
			return
		case <-idle.C:
			if l.retire() {
				return
			}
			continue
		}
		if first.fn != nil {
			l.exclusive(first)
			continue
		}
		if first.sync {
			l.syncq <- &pending{barrier: first.done}
			continue
		}
		b := l.openGroup(first.batchSize())
		b.add(l, first)
		var syncs []*request // Durable calls that arrived while b was built
	fill:
		for b.n < l.cfg.MaxBatch {
			var r *request
			select {
			case r = <-l.reqs:
			default:
				if l.unsynced.Load() == 0 || int64(b.n) >= l.unsyncedEntries.Load() {
					break fill
				}
				// The syncer is busy: this group cannot be synced before it is
				// free anyway, so it takes (and stamps) what arrives meanwhile,
				// until it is as large as what the syncer holds: then it is
				// finished while the syncer works, and the two alternate.
				select {
				case r = <-l.reqs:
				case <-l.synced:
					break fill
				}
			}
			if r.fn != nil { // exclusive work waits for the group before it
				l.commitGroup(b)
				b = nil
				l.exclusive(r)
				break fill
			}
			if r.sync { // after b: its caller may have seen b's stamps
				syncs = append(syncs, r)
				continue
			}
			b.add(l, r)
		}
		if b != nil {
			l.commitGroup(b)
		}
		for _, r := range syncs {
			l.syncq <- &pending{barrier: r.done}
		}
	}
}

// building is a group under construction: its requests, each stamped or
// placed as it arrived.
type building struct {
	g   *group
	grp []*request
	n   int
}

// openGroup opens a group whose batch starts with room for size bytes (0:
// Pebble's default).
func (l *Log) openGroup(size int) *building {
	var b *pebble.Batch
	if size > 0 {
		b = l.db.NewIndexedBatchWithSize(size)
	} else {
		b = l.db.NewIndexedBatch()
	}
	return &building{g: &group{b: b, heads: map[string]Head{}, forks: map[string]Fork{}}}
}

// add places r in the group: own transactions are stamped, remote runs and
// proofs checked against the log.
func (b *building) add(l *Log, r *request) {
	switch {
	case r.own != nil:
		r.err = l.stampOwn(b.g, r)
	case r.proof != nil:
		r.res.Appended, r.err = l.addProof(b.g, r.proof[0], r.proof[1])
	default:
		r.res, r.err = l.addRun(b.g, r.run)
	}
	b.grp = append(b.grp, r)
	b.n += r.size()
}

// exclusive runs r.fn once every earlier group is durable, with nothing else
// writing meanwhile.
func (l *Log) exclusive(r *request) {
	barrier := make(chan struct{})
	l.syncq <- &pending{barrier: barrier}
	<-barrier
	if err := l.brokenErr(); err != nil {
		r.err = err
	} else {
		r.err = r.fn()
		l.exclusives.Add(1) // it may have written anything
	}
	close(r.done)
}

// pending is a group committed without sync, waiting for the syncer.
type pending struct {
	grp     []*request
	n       int            // the entries of its requests (their sizes)
	own     []*wire.Signed // own entries to report to Config.Committed (see ownRun)
	heads   map[string]Head
	forks   map[string]Fork
	barrier chan struct{} // set for a barrier: closed once all before it are durable
}

// syncer makes committed groups durable with one WAL sync for everything
// queued, then publishes their heads and answers their callers.
func (l *Log) syncer(done chan struct{}) {
	defer close(done)
	for p := range l.syncq {
		batch := []*pending{p}
	drain:
		for {
			select {
			case q, ok := <-l.syncq:
				if !ok {
					break drain
				}
				batch = append(batch, q)
			default:
				break drain
			}
		}
		var err error
		if needsSync(batch) {
			start := time.Now()
			err = l.db.LogData(nil, l.write)
			l.syncs.add(batch, time.Since(start))
			if err != nil {
				err = fmt.Errorf("txlog: the disk failed to save the last writes (%v); they are not acknowledged; restart the node", err)
				l.mu.Lock()
				if l.broken == nil {
					l.broken = err
				}
				l.mu.Unlock()
				l.cfg.Logger.Error("sync failed", "err", err)
			}
		}
		for _, p := range batch {
			if err == nil {
				l.publish(p)
			}
			for _, r := range p.grp {
				if err != nil && r.err == nil {
					r.err, r.out, r.res = err, nil, RunResult{}
				}
				close(r.done)
			}
			if p.barrier != nil {
				close(p.barrier)
			}
			if len(p.grp) > 0 {
				l.unsyncedEntries.Add(-int64(p.n))
			}
			if len(p.grp) > 0 && l.unsynced.Add(-1) == 0 {
				select {
				case l.synced <- struct{}{}:
				default:
				}
			}
		}
	}
}

func needsSync(batch []*pending) bool {
	for _, p := range batch {
		if len(p.grp) > 0 {
			return true
		}
	}
	return false
}

// publish makes a durable group's heads and forks visible.
func (l *Log) publish(p *pending) {
	l.mu.Lock()
	for s, h := range p.heads {
		l.heads[s] = h
	}
	for s, f := range p.forks {
		l.forks[s] = f
	}
	l.mu.Unlock()
	if len(p.own) > 0 && l.cfg.Committed != nil {
		l.cfg.Committed(p.own)
	}
	for _, f := range p.forks {
		l.cfg.Logger.Error("fork detected: two different entries for the same site and seq",
			"site", f.Site, "seq", f.Seq, "held", f.Held.Short(), "offered", f.Offered.Short())
	}
}

func (l *Log) brokenErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// head returns a site's head as the committer sees it: including groups
// committed but not yet durable.
func (l *Log) head(g *group, site string) Head {
	if h, ok := g.heads[site]; ok {
		return h
	}
	return l.prep[site]
}

func (l *Log) forkOf(g *group, site string) (Fork, bool) {
	if f, ok := g.forks[site]; ok {
		return f, true
	}
	f, ok := l.prepForks[site]
	return f, ok
}

// commitGroup applies, signs and stores a built group, commits it without
// sync and hands it to the syncer.
func (l *Log) commitGroup(b *building) {
	g, grp := b.g, b.grp
	defer g.b.Close()
	answer := func(err error) {
		for _, r := range grp {
			if r.err == nil {
				r.err, r.out, r.res = err, nil, RunResult{}
			}
			close(r.done)
		}
	}
	if err := l.brokenErr(); err != nil {
		answer(err)
		return
	}
	err := l.writeAll(g, l.signAll(g.unsigned))
	if err == nil && !g.b.Empty() {
		if err = g.b.Commit(pebble.NoSync); err != nil {
			err = fmt.Errorf("txlog: commit: %w", err)
		}
	}
	if err != nil {
		answer(err)
		return
	}
	for s, h := range g.heads {
		l.prep[s] = h
	}
	for s, f := range g.forks {
		l.prepForks[s] = f
	}
	l.unsynced.Add(1)
	l.unsyncedEntries.Add(int64(b.n))
	l.syncq <- &pending{grp: grp, n: b.n, own: ownRun(grp), heads: g.heads, forks: g.forks}
}

// ownRun returns the own entries of a committed group that end it and
// belong to no initial load (WriteLoad): the longest such run that ends at
// the group's last own entry, which is signed. Empty when the group's last
// own entries are a load's.
func ownRun(grp []*request) []*wire.Signed {
	var run []*wire.Signed
	for _, r := range grp {
		if r.own == nil || r.err != nil || len(r.out) == 0 {
			continue
		}
		if r.loads != nil {
			run = nil
			continue
		}
		run = append(run, r.out...)
	}
	return run
}

// stampOwn turns own transactions into entries: next seq, previous hash, HLC,
// deps and canonical body. A request's transactions join the group all or none.
func (l *Log) stampOwn(g *group, r *request) error {
	self := l.cfg.Self
	if self == nil {
		return ErrReadOnly
	}
	if _, ok := l.forkOf(g, self.Site); ok {
		return fmt.Errorf("%w: another copy of this site (%q) has written entries this node did not; writes are stopped until support resolves it", ErrForked, self.Site)
	}
	head := l.head(g, self.Site)
	if head.Epoch > self.Epoch {
		return fmt.Errorf("%w: this node's certificate has epoch %d but its site's log is at epoch %d: the site was moved to another machine", ErrEpoch, self.Epoch, head.Epoch)
	}
	var deps map[string]uint64 // made once another site has entries
	for s, h := range l.prep {
		if s != self.Site && h.Seq > 0 {
			if deps == nil {
				deps = map[string]uint64{}
			}
			deps[s] = h.Seq
		}
	}
	for s, h := range g.heads {
		if s != self.Site && h.Seq > 0 {
			if deps == nil {
				deps = map[string]uint64{}
			}
			deps[s] = h.Seq
		}
	}
	if r.seen != nil {
		for s, seq := range deps {
			if c := r.seen[s]; c < seq {
				if c == 0 {
					delete(deps, s)
				} else {
					deps[s] = c
				}
			}
		}
	}
	if len(deps) == 0 {
		deps = nil
	}
	out := make([]*wire.Signed, 0, len(r.own))
	app := l.cfg.App()
	for i, ops := range r.own {
		s := &wire.Signed{Entry: wire.Entry{
			Family: l.cfg.Family, Site: self.Site, Epoch: self.Epoch,
			Seq: head.Seq + 1, Prev: head.Hash, HLC: uint64(l.cfg.Clock.Now()),
			Schema: wire.SchemaFor(app), App: app, Deps: deps, Ops: ops,
		}}
		e := &s.Entry
		switch {
		case r.grant != nil:
			e.Grants, e.Schema = r.grant, max(e.Schema, wire.SchemaSealed)
		case l.cfg.Seal != nil:
			if err := l.cfg.Seal(e); err != nil {
				return fmt.Errorf("txlog: seal the entry: %w", err)
			}
		}
		var body []byte
		var err error
		if r.enc != nil {
			body, err = wire.EncodeBodyOps(e, r.enc[i])
		} else {
			body, err = wire.EncodeBody(e)
		}
		if err != nil {
			if len(r.own) > 1 {
				return fmt.Errorf("transaction %d: %w", i+1, err)
			}
			return err
		}
		s.Body, s.Hash = body, wire.HashOf(body)
		out = append(out, s)
		head = Head{Seq: e.Seq, Hash: s.Hash, Epoch: e.Epoch}
	}
	if r.extra != nil {
		if err := r.extra(g.b); err != nil {
			return fmt.Errorf("txlog: write with the entries: %w", err)
		}
	}
	g.heads[self.Site] = head
	for i, load := range r.loads {
		if load == 0 {
			continue
		}
		if g.loads == nil {
			g.loads = make(map[*wire.Signed]uint64, len(out))
		}
		g.loads[out[i]] = load
	}
	if r.pre != nil && r.preAt == l.exclusives.Load() {
		// No exclusive work ran since the writer read ahead: the state was
		// written only by groups, each applied, then committed, before the
		// next was applied (the Prefetcher's part checks those).
		if g.pre == nil {
			g.pre = make(map[*wire.Signed]any, len(out))
		}
		for i, s := range out {
			g.pre[s] = r.pre[i]
		}
	}
	g.writes = append(g.writes, out...)
	g.unsigned = append(g.unsigned, out...)
	r.out = out
	return nil
}

// signAll signs the own entries of the group that end a commit group: the
// last one, and one at least every wire.MaxGroupEntries entries and
// wire.MaxGroupBytes bytes, so no stored entry is far from a signed one. The
// others stay unsigned: the hash chain binds them to the signed entry after
// them. The signing runs while the committer applies the group to the state
// (applying does not need the signatures); the returned function waits for it.
func (l *Log) signAll(ss []*wire.Signed) (wait func()) {
	ends := groupEnds(ss)
	if len(ends) == 0 {
		return func() {}
	}
	key := l.cfg.Self
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range ends {
			s.Sig = signHash(key, s.Hash)
		}
	}()
	return func() { <-done }
}

// groupEnds returns the entries of ss (one site's consecutive own entries)
// to sign: the last, and the last of every full chunk of
// wire.MaxGroupEntries entries or wire.MaxGroupBytes bytes.
func groupEnds(ss []*wire.Signed) []*wire.Signed {
	var ends []*wire.Signed
	n, size := 0, 0
	for i, s := range ss {
		n++
		size += len(s.Body) + envelopeOverhead
		next := 0
		if i+1 < len(ss) {
			next = len(ss[i+1].Body) + envelopeOverhead
		}
		if i == len(ss)-1 || n >= wire.MaxGroupEntries || size+next > wire.MaxGroupBytes {
			ends = append(ends, s)
			n, size = 0, 0
		}
	}
	return ends
}

// envelopeOverhead bounds what an envelope adds to its body: the map, the
// two keys, the headers and the signature.
const envelopeOverhead = 80

// writeAll applies every new entry of the group to the state (or marks it
// held), waits for the signatures, stores the entries (long runs as tables,
// beside the apply: startIngest), then records the heads and forks.
func (l *Log) writeAll(g *group, signed func()) error {
	defer signed() // never leave signers running past the group
	ingested := l.startIngest(g, signed)
	defer ingested() // nor the ingestion
	apply := make([]*wire.Signed, 0, len(g.writes))
	la, hinted := l.cfg.Apply.(LoadApplier)
	hinted = hinted && len(g.loads) > 0
	var loads []uint64
	if hinted {
		loads = make([]uint64, 0, len(g.writes))
	}
	if l.cfg.Take != nil {
		if err := l.cfg.Take(g.b, g.writes); err != nil {
			return fmt.Errorf("txlog: take in: %w", err)
		}
	}
	for _, s := range g.writes {
		if !l.holds(s) {
			apply = append(apply, s)
			if hinted {
				loads = append(loads, g.loads[s])
			}
			continue
		}
		if err := g.b.Set(l.keys.seq(kindHeld, s.Site, s.Seq), nil, nil); err != nil {
			return fmt.Errorf("txlog: hold %s: %w", s.ID(), err)
		}
	}
	if len(apply) > 0 {
		var err error
		pf, prefetched := l.cfg.Apply.(Prefetcher)
		switch {
		case hinted:
			err = la.ApplyLoad(g.b, apply, loads)
		case prefetched && len(g.pre) > 0:
			pre := make([]any, len(apply))
			for i, s := range apply {
				pre[i] = g.pre[s]
			}
			err = pf.ApplyPrefetched(g.b, apply, pre)
		default:
			err = l.cfg.Apply.ApplyAll(g.b, apply)
		}
		if err != nil {
			return fmt.Errorf("txlog: apply: %w", err)
		}
	}
	signed()
	if err := l.storeEntries(g, ingested()); err != nil {
		return err
	}
	for s, h := range g.heads {
		if err := g.b.Set(l.keys.site(kindHead, s), h.marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store head of %q: %w", s, err)
		}
	}
	for s, f := range g.forks {
		if err := g.b.Set(l.keys.site(kindFork, s), f.marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store fork of %q: %w", s, err)
		}
	}
	return nil
}

// ingestMin is the fewest new entries of another site in a group that are
// stored as a table of their own (Config.Ingest) rather than through the
// group's batch: a catch-up run (up to 4,000 entries), where writing one
// table costs less than taking every entry through the write-ahead log, the
// memtable, a flush and the compactions.
const ingestMin = 1000

// storeEntries stores the group's new entries in its batch, but for those
// of the sites in ingested (see startIngest).
func (l *Log) storeEntries(g *group, ingested map[string]bool) error {
	for _, s := range g.writes {
		if ingested[s.Site] {
			continue
		}
		if err := g.b.Set(l.keys.entry(s.Site, s.Seq), s.Marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store %s: %w", s.ID(), err)
		}
	}
	return nil
}

// startIngest starts storing the new entries of each other site with
// ingestMin entries or more in the group as a table of that site's entries
// (a catch-up run: own entries, even an import's, go through the batch; an
// import of 300,000 lines with a peer connected ran at 0.78× the rate with
// its own groups ingested, its GC working four times as hard), handed to
// the database whole (Config.Ingest), in a goroutine of its own that runs
// beside the state's apply once the signatures are made. The returned
// function waits for it and returns the sites whose entries it stored (none
// if it failed: they go through the batch after all); writeAll always
// calls it before it returns.
//
// The tables are stored before the group's batch is committed. Their
// entries are all above their site's durable head, which only the batch
// moves, and the log reads a site's entries only up to its head: until the
// batch is durable they are invisible, and if the batch never is (a crash,
// a failed group) they are unused, replaced when the same seqs are stored
// again and dropped when the log opens (dropAboveHeads).
func (l *Log) startIngest(g *group, signed func()) (wait func() map[string]bool) {
	if l.cfg.Ingest == nil || len(g.writes) < ingestMin {
		return func() map[string]bool { return nil }
	}
	count := map[string]int{}
	for _, s := range g.writes {
		if l.cfg.Self == nil || s.Site != l.cfg.Self.Site {
			count[s.Site]++
		}
	}
	sites := map[string]bool{}
	for site, n := range count {
		if n >= ingestMin {
			sites[site] = true
		}
	}
	if len(sites) == 0 {
		return func() map[string]bool { return nil }
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		signed()
		var tables [][]store.KV
		bySite := make(map[string]int, len(sites))
		for _, s := range g.writes {
			if !sites[s.Site] {
				continue
			}
			i, ok := bySite[s.Site]
			if !ok {
				i = len(tables)
				bySite[s.Site] = i
				tables = append(tables, make([]store.KV, 0, count[s.Site]))
			}
			tables[i] = append(tables[i], store.KV{Key: l.keys.entry(s.Site, s.Seq), Value: s.Marshal()})
		}
		if err := l.cfg.Ingest.Ingest(context.Background(), tables); err != nil {
			l.cfg.Logger.Warn("storing a group's entries as tables failed; they go through the batch", "err", err)
			clear(sites)
		} else if l.afterIngest != nil {
			l.afterIngest()
		}
	}()
	return func() map[string]bool { <-done; return sites }
}

// holds reports whether s waits for a newer build or a newer practice
// software here before it is applied. A site that knows no practice schema
// version (0) holds nothing for it.
func (l *Log) holds(s *wire.Signed) bool {
	if s.Schema > l.cfg.Schema {
		return true
	}
	if l.cfg.Ready != nil && !l.cfg.Ready(s) {
		return true
	}
	app := l.cfg.App()
	return s.App > 0 && app > 0 && s.App > app
}

// addRun places a verified contiguous run of one site's entries.
func (l *Log) addRun(g *group, run []*wire.Signed) (RunResult, error) {
	var res RunResult
	site := run[0].Site
	head := l.head(g, site)
	first, last := run[0].Seq, run[len(run)-1].Seq
	if _, forked := l.forkOf(g, site); forked {
		return l.quarantine(g, run, head)
	}
	if first > head.Seq+1 {
		return res, &GapError{Site: site, Have: head.Seq, Got: first}
	}
	if first <= head.Seq {
		// The overlap with what is held: thanks to the hash chain, one
		// comparison at its end settles all of it.
		k := min(last, head.Seq)
		held, err := l.hashAt(g, site, k)
		if err != nil {
			return res, err
		}
		if held != run[k-first].Hash {
			return l.fork(g, run, head)
		}
		res.Duplicates = int(k - first + 1)
		run = run[k-first+1:]
		if len(run) == 0 {
			return res, nil
		}
	}
	if run[0].Prev != head.Hash {
		// seq head+1 names another predecessor than the entry held at head:
		// the site's chain split at head or earlier.
		return l.fork(g, run, head)
	}
	if run[0].Epoch < head.Epoch {
		// The site moved and its new machine already wrote here: this comes
		// from the old machine afterwards.
		return l.fence(g, run, res)
	}
	var maxHLC uint64
	for _, s := range run {
		maxHLC = max(maxHLC, s.HLC)
	}
	l.cfg.Clock.Observe(hlcTimestamp(maxHLC))
	g.writes = append(g.writes, run...)
	end := run[len(run)-1]
	g.heads[site] = Head{Seq: end.Seq, Hash: end.Hash, Epoch: end.Epoch}
	res.Appended = len(run)
	return res, nil
}

// fence quarantines entries of a site's old machine written after its new
// machine (a newer epoch) took over: kept as evidence, never applied, and no
// fork, since the newer epoch's chain is the site's.
func (l *Log) fence(g *group, run []*wire.Signed, res RunResult) (RunResult, error) {
	for _, s := range run {
		if err := g.b.Set(l.keys.hash(kindQuarantine, s.Site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return res, fmt.Errorf("txlog: quarantine %s: %w", s.ID(), err)
		}
		res.Quarantined++
	}
	return res, fmt.Errorf("%w: %s (epoch %d) was written by the site's old machine after the site moved; it is kept as evidence and not applied", ErrFenced, run[0].ID(), run[0].Epoch)
}

// hashAt returns the hash of the held entry (site, seq), looking through the
// group's batch so that entries appended earlier in the group count.
func (l *Log) hashAt(g *group, site string, seq uint64) (wire.Hash, error) {
	s, err := l.entryAt(g, site, seq)
	if err != nil {
		return wire.Hash{}, err
	}
	return s.Hash, nil
}

// entryAt returns the held entry (site, seq) through the group's batch.
func (l *Log) entryAt(g *group, site string, seq uint64) (*wire.Signed, error) {
	v, closer, err := g.b.Get(l.keys.entry(site, seq))
	if err != nil {
		return nil, fmt.Errorf("%w: %s#%d is below the head but cannot be read: %v", ErrDamaged, site, seq, err)
	}
	defer closer.Close()
	s, err := wire.DecodeEnvelope(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s#%d: %v", ErrDamaged, site, seq, err)
	}
	return s, nil
}
