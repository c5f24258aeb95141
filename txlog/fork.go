package txlog

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

func hlcTimestamp(v uint64) hlc.Timestamp { return hlc.Timestamp(v) }

// Fork records that a site signed two different entries for one seq.
type Fork struct {
	Site    string    `codec:"s"`
	Seq     uint64    `codec:"q"` // the seq held with two different hashes
	Held    wire.Hash `codec:"h"` // the hash this node holds at Seq
	Offered wire.Hash `codec:"o"` // the other hash (or the hash an entry at Seq+1 names as its predecessor)
	// Evidence names the stored envelope that proves the other branch: the
	// entry (Site, EvidenceSeq) with hash Offered, or the successor that names it.
	EvidenceSeq  uint64    `codec:"es"`
	EvidenceHash wire.Hash `codec:"eh"`
	// HeldEntry is the envelope of the entry at Seq when this node learned of
	// the fork from a peer's proof (its own log may not hold it).
	HeldEntry []byte `codec:"he,omitempty"`
}

func (f Fork) marshal() []byte {
	b, err := wire.Marshal(&f)
	if err != nil {
		panic(fmt.Sprintf("txlog: encode fork record: %v", err)) // fixed-size fields cannot fail
	}
	return b
}

func (l *Log) loadForks() error {
	p := l.keys.prefix(kindFork)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return fmt.Errorf("txlog: load forks: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("txlog: load forks: %w", err)
		}
		var f Fork
		if err := wire.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("%w: fork record %x: %v", ErrDamaged, it.Key(), err)
		}
		l.forks[f.Site] = f
	}
	return it.Error()
}

// Forks returns every fork known here.
func (l *Log) Forks() []Fork {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Fork, 0, len(l.forks))
	for _, f := range l.forks {
		out = append(out, f)
	}
	sortForks(out)
	return out
}

func sortForks(fs []Fork) {
	for i := 1; i < len(fs); i++ {
		for j := i; j > 0 && fs[j].Site < fs[j-1].Site; j-- {
			fs[j], fs[j-1] = fs[j-1], fs[j]
		}
	}
}

// fork handles a run that disagrees with the held chain: it finds where, checks
// the offered entry's own signature (a forged entry proves nothing and is
// rejected), stores the proof, and quarantines the rest of the run.
func (l *Log) fork(g *group, run []*wire.Signed, head Head) (RunResult, error) {
	var res RunResult
	site := run[0].Site
	idx := -1
	var forkSeq uint64
	var held wire.Hash
	for i, s := range run {
		if s.Seq > head.Seq {
			break
		}
		h, err := l.hashAt(g, site, s.Seq)
		if err != nil {
			return res, err
		}
		if h != s.Hash {
			idx, forkSeq, held = i, s.Seq, h
			break
		}
		res.Duplicates++
	}
	offered := wire.Hash{}
	if idx >= 0 {
		offered = run[idx].Hash
	} else {
		// The first new entry names another predecessor than the held head.
		for i, s := range run {
			if s.Seq == head.Seq+1 {
				idx = i
				break
			}
		}
		if idx < 0 {
			return res, fmt.Errorf("txlog: internal: fork without a differing entry in the run from %s#%d", site, run[0].Seq)
		}
		forkSeq, held, offered = head.Seq, head.Hash, run[idx].Prev
	}
	ev := run[idx]
	if heldEntry, err := l.entryAt(g, site, forkSeq); err == nil && ev.Epoch < heldEntry.Epoch {
		// Not a fork: the site moved, and this branch is its old machine's,
		// written after the new machine (a newer epoch) took over.
		return l.fence(g, run[idx:], res)
	}
	key, err := l.cfg.Keys.SiteKey(ev.Site, ev.Epoch)
	if err != nil {
		return res, fmt.Errorf("txlog: check conflicting entry %s: %w", ev.ID(), err)
	}
	if err := ev.Verify(key); err != nil {
		return res, fmt.Errorf("txlog: conflicting entry offered for %s: %w", ev.ID(), err)
	}
	if err := g.b.Set(l.keys.hash(kindEvidence, site, ev.Seq, ev.Hash), ev.Marshal(), nil); err != nil {
		return res, fmt.Errorf("txlog: store fork evidence: %w", err)
	}
	f := Fork{Site: site, Seq: forkSeq, Held: held, Offered: offered, EvidenceSeq: ev.Seq, EvidenceHash: ev.Hash}
	g.forks[site] = f
	for _, s := range run[idx+1:] {
		if err := g.b.Set(l.keys.hash(kindQuarantine, site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return res, fmt.Errorf("txlog: quarantine %s: %w", s.ID(), err)
		}
		res.Quarantined++
	}
	return res, &ForkError{Site: site, Seq: forkSeq, Held: held, Offered: offered}
}

// quarantine stores a forked site's offered entries without applying them.
func (l *Log) quarantine(g *group, run []*wire.Signed, head Head) (RunResult, error) {
	var res RunResult
	site := run[0].Site
	for _, s := range run {
		if s.Seq <= head.Seq {
			h, err := l.hashAt(g, site, s.Seq)
			if err != nil {
				return res, err
			}
			if h == s.Hash {
				res.Duplicates++
				continue
			}
		}
		if err := g.b.Set(l.keys.hash(kindQuarantine, site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return res, fmt.Errorf("txlog: quarantine %s: %w", s.ID(), err)
		}
		res.Quarantined++
	}
	if res.Quarantined == 0 {
		return res, nil
	}
	return res, fmt.Errorf("%w: site %q has forked; %d of its entries were stored for support to examine and not applied", ErrQuarantined, site, res.Quarantined)
}

// ForkProof returns two validly signed entries that prove a site's fork: the
// entry held at the fork's seq and the other entry (at the same seq, or at the
// next seq naming another predecessor). Peers check and record it.
func (l *Log) ForkProof(site string) (held, other *wire.Signed, err error) {
	l.mu.Lock()
	f, ok := l.forks[site]
	l.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("txlog: no fork of site %q", site)
	}
	ev, err := l.scanEnvelopes(l.keys.hash(kindEvidence, site, f.EvidenceSeq, f.EvidenceHash))
	if err != nil || len(ev) == 0 {
		return nil, nil, fmt.Errorf("%w: the evidence of the fork of %q is missing", ErrDamaged, site)
	}
	if f.HeldEntry != nil {
		held, err = wire.DecodeEnvelope(f.HeldEntry)
	} else {
		held, err = l.Get(site, f.Seq)
	}
	if err != nil {
		return nil, nil, err
	}
	return held, ev[0], nil
}

// checkProof verifies that a and b prove a fork of one site.
func (l *Log) checkProof(a, b *wire.Signed) error {
	if a.Site != b.Site {
		return fmt.Errorf("%w: the entries are of different sites", ErrNoProof)
	}
	if err := l.checkFamily(a); err != nil {
		return err
	}
	if err := l.checkFamily(b); err != nil {
		return err
	}
	switch {
	case a.Seq == b.Seq && a.Hash != b.Hash:
	case b.Seq == a.Seq+1 && b.Prev != a.Hash:
	default:
		return fmt.Errorf("%w: %s and %s do not conflict", ErrNoProof, a.ID(), b.ID())
	}
	if err := l.verify(a); err != nil {
		return err
	}
	return l.verify(b)
}

// AddForkProof records a fork proven by a peer: two validly signed entries
// of one site that cannot both belong to its chain. The site's log stops
// growing here too, and status surfaces show the fork.
func (l *Log) AddForkProof(ctx context.Context, a, b *wire.Signed) (bool, error) {
	if err := l.checkProof(a, b); err != nil {
		return false, err
	}
	r := &request{proof: &[2]*wire.Signed{a, b}}
	err := l.submit(ctx, r)
	return r.res.Appended > 0, err
}

// addProof records a checked proof unless the site is already known forked.
func (l *Log) addProof(g *group, a, b *wire.Signed) (int, error) {
	if _, ok := l.forkOf(g, a.Site); ok {
		return 0, nil
	}
	for _, s := range []*wire.Signed{a, b} {
		if err := g.b.Set(l.keys.hash(kindEvidence, s.Site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return 0, fmt.Errorf("txlog: store fork evidence: %w", err)
		}
	}
	f := Fork{Site: a.Site, Seq: a.Seq, Held: a.Hash, Offered: b.Hash, EvidenceSeq: b.Seq, EvidenceHash: b.Hash, HeldEntry: a.Marshal()}
	if b.Seq == a.Seq+1 {
		f.Offered = b.Prev
	}
	g.forks[a.Site] = f
	return 1, nil
}
