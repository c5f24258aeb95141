package txlog

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// ErrNotFound says the log holds no such entry.
var ErrNotFound = errors.New("txlog: no such entry")

// Get returns the held entry (site, seq). Only durable entries are returned.
func (l *Log) Get(site string, seq uint64) (*wire.Signed, error) {
	if seq > l.Head(site).Seq {
		return nil, fmt.Errorf("%w: %s#%d", ErrNotFound, site, seq)
	}
	v, closer, err := l.db.Get(l.keys.entry(site, seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s#%d", ErrNotFound, site, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("txlog: read %s#%d: %w", site, seq, err)
	}
	defer closer.Close()
	s, err := wire.DecodeEnvelope(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s#%d: %v", ErrDamaged, site, seq, err)
	}
	return s, nil
}

// RawRange calls fn with the stored envelope of each entry of site from seq
// from to seq to (inclusive), in order, until fn returns an error or stop is
// true. The bytes passed to fn are valid only during the call. It is what
// catch-up serves from: no decoding.
func (l *Log) RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (stop bool, err error)) error {
	if to == 0 || to == math.MaxUint64 {
		to = math.MaxUint64 - 1
	}
	// Serve only what is durable: an entry served before its fsync could be
	// lost here in a crash and then signed anew with other content.
	to = min(to, l.Head(site).Seq)
	if from > to {
		return nil
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: l.keys.entry(site, from), UpperBound: l.keys.entry(site, to+1)})
	if err != nil {
		return fmt.Errorf("txlog: read %s#%d..%d: %w", site, from, to, err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		_, seq, err := l.keys.parseSeq(it.Key())
		if err != nil {
			return fmt.Errorf("%w: %v", ErrDamaged, err)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("txlog: read %s#%d: %w", site, seq, err)
		}
		stop, err := fn(seq, v)
		if err != nil || stop {
			return err
		}
	}
	return it.Error()
}

// Range returns up to limit decoded entries of site starting at seq from.
func (l *Log) Range(site string, from uint64, limit int) ([]*wire.Signed, error) {
	var out []*wire.Signed
	err := l.RawRange(site, from, 0, func(seq uint64, env []byte) (bool, error) {
		s, err := wire.DecodeEnvelope(env)
		if err != nil {
			return true, fmt.Errorf("%w: %s#%d: %v", ErrDamaged, site, seq, err)
		}
		out = append(out, s)
		return limit > 0 && len(out) >= limit, nil
	})
	return out, err
}

// Quarantined returns the quarantined entries of a site, by seq.
func (l *Log) Quarantined(site string) ([]*wire.Signed, error) {
	return l.scanEnvelopes(l.keys.site(kindQuarantine, site))
}

// Evidence returns the stored proof of a site's fork.
func (l *Log) Evidence(site string) ([]*wire.Signed, error) {
	return l.scanEnvelopes(l.keys.site(kindEvidence, site))
}

func (l *Log) scanEnvelopes(prefix []byte) ([]*wire.Signed, error) {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: store.PrefixEnd(prefix)})
	if err != nil {
		return nil, fmt.Errorf("txlog: scan: %w", err)
	}
	defer it.Close()
	var out []*wire.Signed
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("txlog: scan: %w", err)
		}
		s, err := wire.DecodeEnvelope(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %x: %v", ErrDamaged, it.Key(), err)
		}
		out = append(out, s)
	}
	return out, it.Error()
}

// applyHeld applies, at Open, the held entries whose schema this build now
// supports, and forgets their held marks, in one durable batch.
func (l *Log) applyHeld() error {
	p := l.keys.prefix(kindHeld)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return fmt.Errorf("txlog: load held entries: %w", err)
	}
	var ids []wire.ID
	for ok := it.First(); ok; ok = it.Next() {
		site, seq, err := l.keys.parseSeq(it.Key())
		if err != nil {
			it.Close()
			return fmt.Errorf("%w: %v", ErrDamaged, err)
		}
		ids = append(ids, wire.ID{Site: site, Seq: seq})
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("txlog: load held entries: %w", err)
	}
	if len(ids) == 0 {
		return nil
	}
	// In chunks: a site that waited long for a data key may hold a whole
	// backlog.
	applied := 0
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		k, err := l.applyHeldChunk(ids[:n])
		if err != nil {
			return err
		}
		applied += k
		ids = ids[n:]
	}
	if applied > 0 {
		l.cfg.Logger.Info("applied held entries (a newer schema, practice software or data key is here now)", "entries", applied)
	}
	return nil
}

func (l *Log) applyHeldChunk(ids []wire.ID) (int, error) {
	b := l.db.NewIndexedBatch()
	defer b.Close()
	var apply []*wire.Signed
	for _, id := range ids {
		s, err := l.Get(id.Site, id.Seq)
		if err != nil {
			return 0, err
		}
		if l.holds(s) {
			continue
		}
		apply = append(apply, s)
		if err := b.Delete(l.keys.seq(kindHeld, id.Site, id.Seq), nil); err != nil {
			return 0, fmt.Errorf("txlog: unhold %s: %w", id, err)
		}
	}
	if len(apply) == 0 {
		return 0, nil
	}
	if err := l.cfg.Apply.ApplyAll(b, apply); err != nil {
		return 0, fmt.Errorf("txlog: apply held entries: %w", err)
	}
	if err := b.Commit(l.write); err != nil {
		return 0, fmt.Errorf("txlog: apply held entries: %w", err)
	}
	return len(apply), nil
}

// ReleaseHeld applies the held entries this site can apply now (its
// practice software was upgraded), between two group commits.
func (l *Log) ReleaseHeld(ctx context.Context) error {
	return l.submit(ctx, &request{fn: l.applyHeld})
}

// Held returns how many entries wait for a newer build to be applied.
func (l *Log) Held() (int, error) {
	p := l.keys.prefix(kindHeld)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return 0, fmt.Errorf("txlog: count held entries: %w", err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n, it.Error()
}

// Progress reports how far a long operation has come.
type Progress func(done, total uint64)

// Replay applies every applicable entry of every site's log to a through
// batches of batchSize, in each site's seq order. It is the state rebuild: the
// caller clears the state first. It runs exclusively: writes wait meanwhile.
func (l *Log) Replay(ctx context.Context, a Applier, batchSize int, progress Progress) error {
	if batchSize <= 0 {
		batchSize = 1000
	}
	total := uint64(0)
	for _, h := range l.Heads() {
		total += h.Seq
	}
	r := &request{fn: func() error { return l.replay(ctx, a, batchSize, total, progress) }}
	return l.submit(ctx, r)
}

func (l *Log) replay(ctx context.Context, a Applier, batchSize int, total uint64, progress Progress) error {
	p := l.keys.prefix(kindEntry)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return fmt.Errorf("txlog: replay: %w", err)
	}
	defer it.Close()
	b := l.db.NewIndexedBatch()
	chunk := make([]*wire.Signed, 0, batchSize)
	done := uint64(0)
	flush := func(opts *pebble.WriteOptions) error {
		if err := a.ApplyAll(b, chunk); err != nil {
			return fmt.Errorf("txlog: replay apply: %w", err)
		}
		chunk = chunk[:0]
		if err := b.Commit(opts); err != nil {
			return fmt.Errorf("txlog: replay commit: %w", err)
		}
		b.Close()
		b = l.db.NewIndexedBatch()
		if progress != nil {
			progress(done, total)
		}
		return ctx.Err()
	}
	defer func() { b.Close() }()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("txlog: replay read: %w", err)
		}
		s, err := wire.DecodeEnvelope(v)
		if err != nil {
			return fmt.Errorf("%w: %x: %v", ErrDamaged, it.Key(), err)
		}
		done++
		if l.holds(s) {
			// Held (again): the marker lets ReleaseHeld find it.
			if err := b.Set(l.keys.seq(kindHeld, s.Site, s.Seq), nil, nil); err != nil {
				return fmt.Errorf("txlog: replay: hold %s: %w", s.ID(), err)
			}
			continue
		}
		if chunk = append(chunk, s); len(chunk) >= batchSize {
			if err := flush(pebble.NoSync); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("txlog: replay: %w", err)
	}
	return flush(pebble.Sync)
}

// Damage is one problem Verify found.
type Damage struct {
	Site    string
	Seq     uint64
	Problem string
}

func (d Damage) String() string {
	if d.Seq == 0 {
		return fmt.Sprintf("site %s: %s", d.Site, d.Problem)
	}
	return fmt.Sprintf("%s#%d: %s", d.Site, d.Seq, d.Problem)
}

// Report is what Verify found.
type Report struct {
	Sites   int
	Entries uint64
	Damage  []Damage
}

// Verify re-checks every site's chain end to end: each entry decodes, seqs have
// no gaps, each links to its predecessor, each signature is valid for its
// epoch's certificate, each unsigned entry is followed, through unbroken
// links within its epoch, by a signed one (the end of its commit group), and
// the stored head matches the last entry. It reads
// only; damage is reported, never repaired, and never panics.
func (l *Log) Verify(ctx context.Context, progress Progress) (Report, error) {
	var rep Report
	heads := l.Heads()
	total := uint64(0)
	for _, h := range heads {
		total += h.Seq
	}
	p := l.keys.prefix(kindEntry)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return rep, fmt.Errorf("txlog: verify: %w", err)
	}
	defer it.Close()
	var (
		site    string
		prev    wire.Hash
		prevSeq uint64
		epoch   uint64
		seen    = map[string]Head{}
		waiting []uint64 // unsigned entries not yet covered by a signed one
	)
	add := func(s string, seq uint64, format string, a ...any) {
		if len(rep.Damage) < 1000 {
			rep.Damage = append(rep.Damage, Damage{Site: s, Seq: seq, Problem: fmt.Sprintf(format, a...)})
		}
	}
	uncovered := func(why string) {
		for _, seq := range waiting {
			add(site, seq, "is unsigned and %s", why)
		}
		waiting = waiting[:0]
	}
	for ok := it.First(); ok; ok = it.Next() {
		ks, seq, err := l.keys.parseSeq(it.Key())
		if err != nil {
			add("?", 0, "unreadable key %x", it.Key())
			continue
		}
		if ks != site {
			uncovered("no signed entry of its commit group follows it")
			site, prev, prevSeq, epoch = ks, wire.Hash{}, 0, 0
			rep.Sites++
		}
		rep.Entries++
		if rep.Entries%10000 == 0 {
			if progress != nil {
				progress(rep.Entries, total)
			}
			if err := ctx.Err(); err != nil {
				return rep, err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			add(site, seq, "cannot be read: %v", err)
			continue
		}
		s, err := wire.DecodeEnvelope(v)
		if err != nil {
			uncovered("the entry after it does not decode")
			add(site, seq, "does not decode: %v", err)
			prevSeq = seq
			continue
		}
		if s.Site != site || s.Seq != seq {
			add(site, seq, "is stored under the wrong key (it says %s)", s.ID())
		}
		linked := false
		if seq != prevSeq+1 {
			add(site, seq, "follows seq %d: entries %d..%d are missing", prevSeq, prevSeq+1, seq-1)
		} else if s.Prev != prev {
			add(site, seq, "does not link to the entry before it (the chain is broken)")
		} else {
			linked = true
		}
		if s.Epoch < epoch {
			add(site, seq, "has epoch %d after epoch %d", s.Epoch, epoch)
		}
		switch {
		case !linked:
			uncovered("the chain breaks before a signed entry follows it")
		case s.Epoch != epoch:
			uncovered("its epoch ends before a signed entry follows it")
		}
		l.verifyStored(s, &waiting, uncovered, add)
		prev, prevSeq, epoch = s.Hash, seq, s.Epoch
		seen[site] = Head{Seq: seq, Hash: s.Hash, Epoch: s.Epoch}
	}
	uncovered("no signed entry of its commit group follows it")
	if err := it.Error(); err != nil {
		add("?", 0, "reading the log failed: %v", err)
	}
	for s, h := range heads {
		if got := seen[s]; got.Seq != h.Seq || got.Hash != h.Hash {
			add(s, 0, "the recorded head (seq %d) does not match the log's last entry (seq %d)", h.Seq, got.Seq)
		}
	}
	for s := range seen {
		if _, ok := heads[s]; !ok {
			add(s, 0, "has entries but no recorded head")
		}
	}
	if progress != nil {
		progress(rep.Entries, total)
	}
	return rep, nil
}

// verifyStored checks one stored entry's signature for Verify: an unsigned
// entry waits for the signed one that ends its group; a signed one covers
// the unsigned entries waiting before it, if its signature is valid.
func (l *Log) verifyStored(s *wire.Signed, waiting *[]uint64, uncovered func(string), add func(string, uint64, string, ...any)) {
	if !s.IsSigned() {
		*waiting = append(*waiting, s.Seq)
		return
	}
	key, err := l.cfg.Keys.SiteKey(s.Site, s.Epoch)
	if err != nil {
		uncovered("the entry that ends its commit group cannot be checked")
		add(s.Site, s.Seq, "has no certificate to check its signature against: %v", err)
		return
	}
	if err := s.Verify(key); err != nil {
		uncovered("the entry that ends its commit group has an invalid signature")
		add(s.Site, s.Seq, "has an invalid signature")
		return
	}
	*waiting = (*waiting)[:0]
}
