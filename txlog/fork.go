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
	// With one signature per commit group, the entry at either side of a
	// fork may be unsigned; the proof then carries the rest of its group.
	// EvidenceEnd is the seq of the signed entry that ends the evidence's
	// group (0: the evidence is signed itself), stored as evidence too;
	// HeldRun holds the envelopes after HeldEntry up to its group's signed
	// end.
	EvidenceEnd uint64   `codec:"ee,omitempty"`
	HeldRun     [][]byte `codec:"hr,omitempty"`
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
	evRun, err := l.evidenceRun(run, idx)
	if err != nil {
		return res, err
	}
	for _, s := range evRun {
		if err := g.b.Set(l.keys.hash(kindEvidence, site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return res, fmt.Errorf("txlog: store fork evidence: %w", err)
		}
	}
	f := Fork{Site: site, Seq: forkSeq, Held: held, Offered: offered, EvidenceSeq: ev.Seq, EvidenceHash: ev.Hash}
	if end := evRun[len(evRun)-1]; end != ev {
		f.EvidenceEnd = end.Seq
	}
	g.forks[site] = f
	for _, s := range run[idx+1:] {
		if err := g.b.Set(l.keys.hash(kindQuarantine, site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
			return res, fmt.Errorf("txlog: quarantine %s: %w", s.ID(), err)
		}
		res.Quarantined++
	}
	return res, &ForkError{Site: site, Seq: forkSeq, Held: held, Offered: offered}
}

// evidenceRun returns the part of a verified run that proves the entry
// run[idx] is its site's: from it to the signed entry that ends its commit
// group, checked again (a forged entry proves nothing and is rejected).
func (l *Log) evidenceRun(run []*wire.Signed, idx int) ([]*wire.Signed, error) {
	ev := run[idx]
	end := wire.SignedEnd(run, idx)
	if end < 0 {
		return nil, fmt.Errorf("%w: conflicting entry offered for %s: no signed entry after it in the run", wire.ErrSignature, ev.ID())
	}
	evRun := run[idx : end+1]
	if err := l.verifyRun(evRun); err != nil {
		return nil, fmt.Errorf("txlog: conflicting entry offered for %s: %w", ev.ID(), err)
	}
	return evRun, nil
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

// ForkProof returns two runs that prove a site's fork, each from an entry
// at the fork to the signed entry that ends its commit group (a run of one
// when that entry is signed itself): the entry held at the fork's seq, and
// the other entry (at the same seq, or at the next seq naming another
// predecessor). Peers check and record it.
func (l *Log) ForkProof(site string) (held, other []*wire.Signed, err error) {
	l.mu.Lock()
	f, ok := l.forks[site]
	l.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("txlog: no fork of site %q", site)
	}
	if other, err = l.evidenceChain(f); err != nil {
		return nil, nil, err
	}
	if f.HeldEntry != nil {
		held, err = decodeRun(append([][]byte{f.HeldEntry}, f.HeldRun...))
	} else {
		held, err = l.heldRun(site, f.Seq)
	}
	if err != nil {
		return nil, nil, err
	}
	return held, other, nil
}

// evidenceChain reads a fork's stored evidence: the offered entry and, when
// it is unsigned, the entries after it that link to it up to its group's
// signed end.
func (l *Log) evidenceChain(f Fork) ([]*wire.Signed, error) {
	missing := fmt.Errorf("%w: the evidence of the fork of %q is missing", ErrDamaged, f.Site)
	ev, err := l.scanEnvelopes(l.keys.hash(kindEvidence, f.Site, f.EvidenceSeq, f.EvidenceHash))
	if err != nil || len(ev) == 0 {
		return nil, missing
	}
	out := []*wire.Signed{ev[0]}
	for seq := f.EvidenceSeq + 1; seq <= f.EvidenceEnd; seq++ {
		cands, err := l.scanEnvelopes(l.keys.seq(kindEvidence, f.Site, seq))
		if err != nil {
			return nil, missing
		}
		prev := out[len(out)-1]
		var next *wire.Signed
		for _, c := range cands {
			if c.Prev == prev.Hash {
				next = c
				break
			}
		}
		if next == nil {
			return nil, missing
		}
		out = append(out, next)
	}
	return out, nil
}

// heldRun reads the log from seq to the signed entry that ends its group.
func (l *Log) heldRun(site string, seq uint64) ([]*wire.Signed, error) {
	var out []*wire.Signed
	err := l.RawRange(site, seq, 0, func(n uint64, env []byte) (bool, error) {
		s, err := wire.DecodeEnvelope(env)
		if err != nil {
			return true, fmt.Errorf("%w: %s#%d: %v", ErrDamaged, site, n, err)
		}
		out = append(out, s)
		return s.IsSigned(), nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 || !out[len(out)-1].IsSigned() {
		return nil, fmt.Errorf("%w: %s#%d has no signed entry after it", ErrDamaged, site, seq)
	}
	return out, nil
}

func decodeRun(envs [][]byte) ([]*wire.Signed, error) {
	out := make([]*wire.Signed, len(envs))
	for i, b := range envs {
		s, err := wire.DecodeEnvelope(b)
		if err != nil {
			return nil, fmt.Errorf("%w: fork record: %v", ErrDamaged, err)
		}
		out[i] = s
	}
	return out, nil
}

// checkProof verifies that runs a and b prove a fork of one site: each is a
// run of the site's entries that chains and ends at an entry signed by the
// site's key of its epoch, and their first entries cannot both belong to the
// site's chain.
func (l *Log) checkProof(a, b []*wire.Signed) error {
	if len(a) == 0 || len(b) == 0 {
		return fmt.Errorf("%w: a branch is empty", ErrNoProof)
	}
	if a[0].Site != b[0].Site {
		return fmt.Errorf("%w: the entries are of different sites", ErrNoProof)
	}
	for _, run := range [][]*wire.Signed{a, b} {
		for _, s := range run {
			if err := l.checkFamily(s); err != nil {
				return err
			}
		}
	}
	x, y := a[0], b[0]
	switch {
	case x.Seq == y.Seq && x.Hash != y.Hash:
	case y.Seq == x.Seq+1 && y.Prev != x.Hash:
	default:
		return fmt.Errorf("%w: %s and %s do not conflict", ErrNoProof, x.ID(), y.ID())
	}
	if err := l.verifyRun(a); err != nil {
		return err
	}
	return l.verifyRun(b)
}

// AddForkProof records a fork proven by a peer: two runs of one site, each
// ending at a validly signed entry, whose first entries cannot both belong
// to its chain. The site's log stops growing here too, and status surfaces
// show the fork.
func (l *Log) AddForkProof(ctx context.Context, a, b []*wire.Signed) (bool, error) {
	if err := l.checkProof(a, b); err != nil {
		return false, err
	}
	r := &request{proof: &[2][]*wire.Signed{a, b}}
	err := l.submit(ctx, r)
	return r.res.Appended > 0, err
}

// addProof records a checked proof unless the site is already known forked.
func (l *Log) addProof(g *group, a, b []*wire.Signed) (int, error) {
	x, y := a[0], b[0]
	if _, ok := l.forkOf(g, x.Site); ok {
		return 0, nil
	}
	for _, run := range [][]*wire.Signed{a, b} {
		for _, s := range run {
			if err := g.b.Set(l.keys.hash(kindEvidence, s.Site, s.Seq, s.Hash), s.Marshal(), nil); err != nil {
				return 0, fmt.Errorf("txlog: store fork evidence: %w", err)
			}
		}
	}
	f := Fork{Site: x.Site, Seq: x.Seq, Held: x.Hash, Offered: y.Hash, EvidenceSeq: y.Seq, EvidenceHash: y.Hash, HeldEntry: x.Marshal()}
	for _, s := range a[1:] {
		f.HeldRun = append(f.HeldRun, s.Marshal())
	}
	if len(b) > 1 {
		f.EvidenceEnd = b[len(b)-1].Seq
	}
	if y.Seq == x.Seq+1 {
		f.Offered = y.Prev
	}
	g.forks[x.Site] = f
	return 1, nil
}
