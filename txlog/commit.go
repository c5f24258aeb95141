package txlog

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// request is one call waiting for the committer.
type request struct {
	own [][]wire.Op    // own transactions, one entry each
	run []*wire.Signed // remote: a verified contiguous run of one site
	fn  func() error   // exclusive work run between groups (replay)

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
	heads    map[string]Head // heads as of this group (copy-on-write over l.heads)
	forks    map[string]Fork // forks found in this group
	writes   []*wire.Signed  // new entries to store and apply, in order
	unsigned []*wire.Signed  // own entries still to sign
}

func (l *Log) run() {
	defer close(l.done)
	for {
		var first *request
		select {
		case first = <-l.reqs:
		case <-l.stop:
			return
		}
		if first.fn != nil {
			first.err = first.fn()
			close(first.done)
			continue
		}
		grp := []*request{first}
		n := first.size()
	fill:
		for n < l.cfg.MaxBatch {
			select {
			case r := <-l.reqs:
				if r.fn != nil { // exclusive work waits for the group before it
					l.commitGroup(grp)
					r.err = r.fn()
					close(r.done)
					grp, n = nil, 0
					continue
				}
				grp = append(grp, r)
				n += r.size()
			default:
				break fill
			}
		}
		if len(grp) > 0 {
			l.commitGroup(grp)
		}
	}
}

func (l *Log) head(g *group, site string) Head {
	if h, ok := g.heads[site]; ok {
		return h
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heads[site]
}

func (l *Log) forkOf(g *group, site string) (Fork, bool) {
	if f, ok := g.forks[site]; ok {
		return f, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.forks[site]
	return f, ok
}

func (l *Log) commitGroup(grp []*request) {
	g := &group{b: l.db.NewIndexedBatch(), heads: map[string]Head{}, forks: map[string]Fork{}}
	defer g.b.Close()
	for _, r := range grp {
		if r.own != nil {
			r.err = l.stampOwn(g, r)
		} else {
			r.res, r.err = l.addRun(g, r.run)
		}
	}
	err := l.signAll(g.unsigned)
	if err == nil {
		err = l.writeAll(g)
	}
	if err == nil && !g.b.Empty() {
		err = g.b.Commit(l.write)
		if err != nil {
			err = fmt.Errorf("txlog: commit: %w", err)
		}
	}
	if err == nil {
		l.mu.Lock()
		for s, h := range g.heads {
			l.heads[s] = h
		}
		for s, f := range g.forks {
			l.forks[s] = f
			if l.cfg.Self != nil && s == l.cfg.Self.Site {
				l.ownFork = true
			}
		}
		l.mu.Unlock()
		for _, f := range g.forks {
			l.cfg.Logger.Error("fork detected: two different entries for the same site and seq", "site", f.Site, "seq", f.Seq, "held", f.Held.Short(), "offered", f.Offered.Short())
		}
	}
	for _, r := range grp {
		if err != nil && r.err == nil {
			r.err = err
			r.out = nil
			r.res = RunResult{}
		}
		close(r.done)
	}
}

// stampOwn turns own transactions into entries: next seq, previous hash, HLC,
// deps and canonical body. A request's transactions join the group all or none.
func (l *Log) stampOwn(g *group, r *request) error {
	self := l.cfg.Self
	if self == nil {
		return ErrReadOnly
	}
	l.mu.Lock()
	ownFork := l.ownFork
	l.mu.Unlock()
	if _, ok := g.forks[self.Site]; ok || ownFork {
		return fmt.Errorf("%w: another copy of this site (%q) has written entries this node did not; writes are stopped until support resolves it", ErrForked, self.Site)
	}
	head := l.head(g, self.Site)
	if head.Epoch > self.Epoch {
		return fmt.Errorf("%w: this node's certificate has epoch %d but its site's log is at epoch %d: the site was moved to another machine", ErrEpoch, self.Epoch, head.Epoch)
	}
	deps := map[string]uint64{}
	for s, h := range l.Heads() {
		if s != self.Site && h.Seq > 0 {
			deps[s] = h.Seq
		}
	}
	for s, h := range g.heads {
		if s != self.Site && h.Seq > 0 {
			deps[s] = h.Seq
		}
	}
	if len(deps) == 0 {
		deps = nil
	}
	out := make([]*wire.Signed, 0, len(r.own))
	for i, ops := range r.own {
		e := wire.Entry{
			Family: l.cfg.Family, Site: self.Site, Epoch: self.Epoch,
			Seq: head.Seq + 1, Prev: head.Hash, HLC: uint64(l.cfg.Clock.Now()),
			Schema: wire.SchemaVersion, Deps: deps, Ops: ops,
		}
		body, err := wire.EncodeBody(&e)
		if err != nil {
			if len(r.own) > 1 {
				return fmt.Errorf("transaction %d: %w", i+1, err)
			}
			return err
		}
		s := &wire.Signed{Entry: e, Body: body, Hash: wire.HashOf(body)}
		out = append(out, s)
		head = Head{Seq: e.Seq, Hash: s.Hash, Epoch: e.Epoch}
	}
	g.heads[self.Site] = head
	g.writes = append(g.writes, out...)
	g.unsigned = append(g.unsigned, out...)
	r.out = out
	return nil
}

// signAll signs own entries, spreading the work over the machine's cores when
// there are enough of them to be worth it.
func (l *Log) signAll(ss []*wire.Signed) error {
	key := l.cfg.Self
	if len(ss) == 0 {
		return nil
	}
	workers := min(runtime.GOMAXPROCS(0), len(ss)/8)
	if workers <= 1 {
		for _, s := range ss {
			s.Sig = signHash(key, s.Hash)
		}
		return nil
	}
	var wg sync.WaitGroup
	per := (len(ss) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		part := ss[min(w*per, len(ss)):min((w+1)*per, len(ss))]
		wg.Go(func() {
			for _, s := range part {
				s.Sig = signHash(key, s.Hash)
			}
		})
	}
	wg.Wait()
	return nil
}

// writeAll stores every new entry of the group and applies it (or marks it
// held), then records the heads and forks.
func (l *Log) writeAll(g *group) error {
	for _, s := range g.writes {
		if err := g.b.Set(entryKey(s.Site, s.Seq), s.Marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store %s: %w", s.ID(), err)
		}
		if s.Schema > l.cfg.Schema {
			if err := g.b.Set(seqKey(spaceHeld, s.Site, s.Seq), nil, nil); err != nil {
				return fmt.Errorf("txlog: hold %s: %w", s.ID(), err)
			}
			continue
		}
		if err := l.cfg.Apply.Apply(g.b, s); err != nil {
			return fmt.Errorf("txlog: apply %s: %w", s.ID(), err)
		}
	}
	for s, h := range g.heads {
		if err := g.b.Set(siteKey(spaceHead, s), h.marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store head of %q: %w", s, err)
		}
	}
	for s, f := range g.forks {
		if err := g.b.Set(siteKey(spaceFork, s), f.marshal(), nil); err != nil {
			return fmt.Errorf("txlog: store fork of %q: %w", s, err)
		}
	}
	return nil
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
		return res, fmt.Errorf("%w: %s has epoch %d, the site's log is already at epoch %d", ErrEpoch, run[0].ID(), run[0].Epoch, head.Epoch)
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

// hashAt returns the hash of the held entry (site, seq), looking through the
// group's batch so that entries appended earlier in the group count.
func (l *Log) hashAt(g *group, site string, seq uint64) (wire.Hash, error) {
	v, closer, err := g.b.Get(entryKey(site, seq))
	if err != nil {
		return wire.Hash{}, fmt.Errorf("%w: %s#%d is below the head but cannot be read: %v", ErrDamaged, site, seq, err)
	}
	defer closer.Close()
	s, err := wire.DecodeEnvelope(v)
	if err != nil {
		return wire.Hash{}, fmt.Errorf("%w: %s#%d: %v", ErrDamaged, site, seq, err)
	}
	return s.Hash, nil
}
