package txlog

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

func signHash(id *Identity, h wire.Hash) []byte { return ed25519.Sign(id.Key, h[:]) }

// Write commits one own transaction: it is stamped (next seq, previous hash,
// HLC, deps), signed, stored and applied, durably, before Write returns.
func (l *Log) Write(ctx context.Context, ops []wire.Op) (*wire.Signed, error) {
	out, err := l.WriteMany(ctx, [][]wire.Op{ops})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// Durable returns once every group committed before the call, or being
// built while it was made, is durable. The state's readers see a group as
// soon as it is committed, before its sync: what they hand on to a place
// that outlives the node's memory (a practice database and its apply
// position) waits for this first, so a crash cannot leave that place ahead
// of the log.
func (l *Log) Durable(ctx context.Context) error {
	if err := l.submit(ctx, &request{sync: true}); err != nil {
		return err
	}
	return l.brokenErr()
}

// WriteMany commits several own transactions, one entry each, all or none, in
// one durable batch. It is how bulk imports reach thousands per second.
func (l *Log) WriteMany(ctx context.Context, txs [][]wire.Op) ([]*wire.Signed, error) {
	return l.WriteManyWith(ctx, txs, nil)
}

// WriteManyWith is WriteMany with extra writes (outside the log's and the
// state's key spaces) committed in the same durable batch as the entries:
// how a database capture position is stored together with what it captured,
// so a change is in the log exactly once.
func (l *Log) WriteManyWith(ctx context.Context, txs [][]wire.Op, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	return l.WriteLoad(ctx, txs, nil, extra)
}

// WriteLoad is WriteManyWith for transactions of an initial load: loads[i],
// if not 0, is the ID (from the applier) of the load txs[i] belongs to, and
// says that txs[i] puts only records that no other transaction of that load
// puts. A LoadApplier uses that to apply them without reading their records
// first where it knows they are new. loads is as long as txs, or nil.
func (l *Log) WriteLoad(ctx context.Context, txs [][]wire.Op, loads []uint64, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	if loads != nil && len(loads) != len(txs) {
		return nil, fmt.Errorf("txlog: %d load IDs for %d transactions", len(loads), len(txs))
	}
	return l.writeOwn(ctx, &request{own: txs, extra: extra, loads: loads})
}

// WriteSeen is WriteManyWith for transactions whose writer saw only seen
// of the other sites' logs (a practice database, which holds what was
// applied to it, not everything the log holds): the entries' deps say no
// more, so that a write made before another site's entry arrived is still
// concurrent with it.
func (l *Log) WriteSeen(ctx context.Context, txs [][]wire.Op, seen map[string]uint64, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	if seen == nil {
		seen = map[string]uint64{}
	}
	return l.writeOwn(ctx, &request{own: txs, extra: extra, seen: seen})
}

// writeOwn checks own transactions and commits them as r says.
func (l *Log) writeOwn(ctx context.Context, r *request) ([]*wire.Signed, error) {
	if l.cfg.Self == nil {
		return nil, ErrReadOnly
	}
	if len(r.own) == 0 {
		return nil, nil
	}
	if l.cfg.Seal == nil {
		// The operations go into the entries in clear: encode them here, on
		// the writer's goroutine, so the committer only adds the headers.
		r.enc = make([]wire.EncodedOps, len(r.own))
	}
	for i, ops := range r.own {
		var err error
		if r.enc != nil {
			r.enc[i], err = wire.EncodeOps(ops)
		} else {
			err = wire.ValidateOps(ops)
		}
		if err != nil {
			if len(r.own) > 1 {
				return nil, fmt.Errorf("transaction %d: %w", i+1, err)
			}
			return nil, err
		}
	}
	l.prefetch(r)
	if err := l.submit(ctx, r); err != nil {
		return nil, err
	}
	return r.out, nil
}

// prefetch reads ahead what applying r's transactions will read, when the
// applier can (Prefetcher) and they are not an initial load's (a load reads
// less already). A failed read only leaves the committer to read.
func (l *Log) prefetch(r *request) {
	p, ok := l.cfg.Apply.(Prefetcher)
	if !ok || r.loads != nil {
		return
	}
	r.preAt = l.exclusives.Load()
	r.pre = make([]any, len(r.own))
	for i, ops := range r.own {
		pre, err := p.Prefetch(ops)
		if err != nil {
			r.pre = nil
			return
		}
		r.pre[i] = pre
	}
}

// WriteGrants commits an own entry that carries key grants and no
// operations.
func (l *Log) WriteGrants(ctx context.Context, grants []wire.Grant) (*wire.Signed, error) {
	if l.cfg.Self == nil {
		return nil, ErrReadOnly
	}
	if len(grants) == 0 {
		return nil, errors.New("txlog: a grant entry needs at least one grant")
	}
	r := &request{own: [][]wire.Op{nil}, grant: grants}
	if err := l.submit(ctx, r); err != nil {
		return nil, err
	}
	return r.out[0], nil
}

// AppendRemote takes one entry received from a peer (gossip): it checks the
// family and the signature against the site's certificate of that epoch, then
// appends it if it is the next of its site.
func (l *Log) AppendRemote(ctx context.Context, s *wire.Signed) (RunResult, error) {
	if err := l.checkFamily(s); err != nil {
		return RunResult{}, err
	}
	if err := l.verify(s); err != nil {
		return RunResult{}, err
	}
	r := &request{run: []*wire.Signed{s}}
	err := l.submit(ctx, r)
	return r.res, err
}

// AppendRun takes a contiguous run of one site's entries (a catch-up batch,
// a gossiped commit group, a pushed branch). It checks every hash link and
// every signature in the run: the last entry of the run and of each epoch in
// it must be signed, the entries before a signed one are bound to it by the
// chain (one signature per commit group, so catch-up is not limited by
// signature checks), and an unsigned entry with no signed one after it is
// refused, never stored. Then it appends the part this node lacks.
func (l *Log) AppendRun(ctx context.Context, run []*wire.Signed) (RunResult, error) {
	if len(run) == 0 {
		return RunResult{}, nil
	}
	for i, s := range run {
		if err := l.checkFamily(s); err != nil {
			return RunResult{}, err
		}
		if i == 0 {
			continue
		}
		p := run[i-1]
		if s.Site != p.Site {
			return RunResult{}, fmt.Errorf("txlog: a run mixes sites %q and %q", p.Site, s.Site)
		}
		if s.Seq != p.Seq+1 || s.Prev != p.Hash {
			return RunResult{}, fmt.Errorf("%w: %s does not follow %s in the run", ErrChain, s.ID(), p.ID())
		}
		if s.Epoch < p.Epoch {
			return RunResult{}, fmt.Errorf("%w: %s has epoch %d after epoch %d", ErrEpoch, s.ID(), s.Epoch, p.Epoch)
		}
	}
	if err := l.verifyRun(run); err != nil {
		return RunResult{}, err
	}
	r := &request{run: run}
	err := l.submit(ctx, r)
	return r.res, err
}

func (l *Log) checkFamily(s *wire.Signed) error {
	if s.Family != l.cfg.Family {
		return fmt.Errorf("%w: %s is for family %.12s…, this node is in %.12s…", ErrWrongFamily, s.ID(), s.Family, l.cfg.Family)
	}
	return nil
}

// verifyRun checks a run's chain and its signatures (wire.VerifyRun), the
// keys from the site's certificates.
func (l *Log) verifyRun(run []*wire.Signed) error {
	err := wire.VerifyRun(run, l.cfg.Keys.SiteKey)
	if errors.Is(err, wire.ErrChain) {
		return fmt.Errorf("%w: %v", ErrChain, err)
	}
	return err
}

func (l *Log) verify(s *wire.Signed) error {
	key, err := l.cfg.Keys.SiteKey(s.Site, s.Epoch)
	if err != nil {
		return fmt.Errorf("txlog: verify %s: %w", s.ID(), err)
	}
	return s.Verify(key)
}

// batchSize estimates the bytes a received run takes in its group's batch
// (the entries, their records and their change feed: about three times the
// envelopes), so that a catch-up run's batch is allocated once instead of
// growing by doubling and copying. 0 for anything else.
func (r *request) batchSize() int {
	if r.run == nil {
		return 0
	}
	n := 0
	for _, s := range r.run {
		n += len(s.Body) + len(s.Sig) + 16
	}
	return 3 * n
}
