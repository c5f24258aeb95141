package txlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// Sentinel errors.
var (
	ErrClosed      = errors.New("txlog: log is closed")
	ErrReadOnly    = errors.New("txlog: this node writes no entries of its own (relay role)")
	ErrChain       = errors.New("txlog: entry does not link to the previous entry of its site")
	ErrForked      = errors.New("txlog: site has forked")
	ErrQuarantined = errors.New("txlog: entry quarantined")
	ErrWrongFamily = errors.New("txlog: entry belongs to another family")
	ErrEpoch       = errors.New("txlog: entry epoch goes backwards")
	ErrDamaged     = errors.New("txlog: stored log is damaged")
	ErrFenced      = errors.New("txlog: entry fenced")
	ErrNoProof     = errors.New("txlog: not a proof of a fork")
)

// GapError says that an entry skipped ahead of the site's log: the caller
// should fetch the range starting at Have+1.
type GapError struct {
	Site string
	Have uint64 // highest contiguous seq held
	Got  uint64 // seq offered
}

func (e *GapError) Error() string {
	return fmt.Sprintf("txlog: entry %s#%d arrived before %s#%d (this node holds up to %d): fetch the missing range", e.Site, e.Got, e.Site, e.Have+1, e.Have)
}

// ForkError says that an entry conflicts with a different entry already held
// for the same (site, seq). Both are kept as evidence.
type ForkError struct {
	Site    string
	Seq     uint64
	Held    wire.Hash
	Offered wire.Hash
}

func (e *ForkError) Error() string {
	return fmt.Sprintf("txlog: site %q forked at seq %d: this node holds %s, a peer offered %s (two copies of the site are writing; support must resolve it)", e.Site, e.Seq, e.Held.Short(), e.Offered.Short())
}

func (e *ForkError) Unwrap() error { return ErrForked }

// KeyResolver answers which public key signs a site's entries of an epoch. The
// node satisfies it from the family roster.
type KeyResolver interface {
	SiteKey(site string, epoch uint64) (ed25519.PublicKey, error)
}

// Applier applies entries to the materialized state inside the log's batch.
// b is an indexed batch: reads through it see earlier writes of the batch.
// ApplyAll is called from one goroutine at a time, with each entry exactly
// once, each site's entries in seq order; batches commit in call order.
type Applier interface {
	ApplyAll(b *pebble.Batch, es []*wire.Signed) error
}

// LoadApplier is an Applier that can apply the entries of an initial load
// faster (see WriteLoad): loads[i], if not 0, names the load es[i] belongs to.
type LoadApplier interface {
	Applier
	ApplyLoad(b *pebble.Batch, es []*wire.Signed, loads []uint64) error
}

// Prefetcher is an Applier that can read ahead, on a writer's goroutine,
// what applying the writer's own transaction will read, so that the
// committer, one goroutine, need not. Prefetch reads the database as
// committed and returns what it read; ApplyPrefetched is ApplyAll where
// pre[i], if not nil, is what Prefetch returned for the operations of es[i].
// The log vouches that no exclusive work ran since Prefetch began, that
// each group's batch, applied by one ApplyAll, ApplyLoad or ApplyPrefetched
// call, was committed (or discarded) before the next group's call began,
// and that the batch holds no writes of the applier but this call's; the
// applier tells which of the reads groups committed since made stale.
type Prefetcher interface {
	Applier
	Prefetch(ops []wire.Op) (any, error)
	ApplyPrefetched(b *pebble.Batch, es []*wire.Signed, pre []any) error
}

// Identity is the signing identity of the node's own site.
type Identity struct {
	Site  string
	Epoch uint64
	Key   ed25519.PrivateKey
}

// Config configures a Log.
type Config struct {
	DB     *pebble.DB  // the node's database (required)
	Family string      // family ID every entry must carry (required)
	Self   *Identity   // own site; nil for a relay, which writes nothing
	Keys   KeyResolver // verifies remote entries (required)
	Apply  Applier     // the state (required)
	Clock  *hlc.Clock  // the node's clock (required)
	Logger *slog.Logger
	// Space is the family's key space in a database shared by several
	// families (store.FamilySpace); every key of the log is Space + 't' + ….
	// Empty for the primary family: the keys of a one-family database.
	Space store.Space
	// MaxBatch bounds how many entries one group commit carries (default 1024).
	MaxBatch int
	// QueueSize bounds the requests waiting for the committer (default 1024);
	// callers block when it is full (backpressure).
	QueueSize int
	// Schema is the newest schema this build applies (default wire.SchemaVersion).
	Schema uint32
	// App returns the practice software's schema version at this site: own
	// entries are stamped with it, and a remote entry written with a newer
	// one is held (stored and forwarded, not applied) until the site's
	// version reaches it (ReleaseHeld). 0 (or nil): unknown, nothing is held
	// for it.
	App func() uint32
	// Seal, if set, seals an own entry's operations before it is encoded
	// and signed (end-to-end encryption): it sets Key and Sealed, moves Ops
	// to Opened, and raises Schema. An error fails the write.
	Seal func(e *wire.Entry) error
	// Take, if set, sees every new entry of a group, held or not, in the
	// group's batch before anything is applied: how key grants are taken in
	// from an entry that is itself held until the key it carries is known.
	Take func(b *pebble.Batch, es []*wire.Signed) error
	// Ready, if set, says whether an entry can be applied now; one that
	// cannot (sealed with a data key this node does not hold yet) is held,
	// stored and forwarded, until ReleaseHeld finds it ready.
	Ready func(s *wire.Signed) bool
	// Committed, if set, is called once a group is durable with the own
	// entries that end it (not those of an initial load, see ownRun): one
	// site's consecutive entries whose last is signed, so they can travel
	// as one run. It is called from the committer's syncer and must not
	// block.
	Committed func(own []*wire.Signed)
	// Ingest, if set, stores a group's long runs of another site's entries as
	// tables of their own (see startIngest): what a catch-up writes skips
	// the write-ahead log, the memtable and most compactions. Its directory
	// must be on the database's file system.
	Ingest *store.Ingester
	// NoSync skips fsync. Only for benchmarks that measure everything else.
	NoSync bool
	// IdleAfter is how long the committer waits for a request before it
	// stops (default DefaultIdleAfter); the next request starts it again, so
	// a log nobody writes to runs no goroutine.
	IdleAfter time.Duration
}

// DefaultIdleAfter is how long an idle committer lives by default.
const DefaultIdleAfter = 5 * time.Second

func (c *Config) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("txlog: config has no database")
	case c.Family == "":
		return errors.New("txlog: config has no family ID")
	case c.Keys == nil:
		return errors.New("txlog: config has no key resolver")
	case c.Apply == nil:
		return errors.New("txlog: config has no applier")
	case c.Clock == nil:
		return errors.New("txlog: config has no clock")
	}
	if c.Self != nil {
		if err := wire.ValidateSiteID(c.Self.Site); err != nil {
			return fmt.Errorf("txlog: own identity: %w", err)
		}
		if c.Self.Epoch == 0 || len(c.Self.Key) != ed25519.PrivateKeySize {
			return errors.New("txlog: own identity needs an epoch and an Ed25519 private key")
		}
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 1024
	}
	if c.App == nil {
		c.App = func() uint32 { return 0 }
	}
	if c.Schema == 0 {
		c.Schema = wire.SchemaVersion
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.IdleAfter <= 0 {
		c.IdleAfter = DefaultIdleAfter
	}
	return nil
}

// Log is the transaction log. All methods are safe for concurrent use.
type Log struct {
	cfg   Config
	db    *pebble.DB
	keys  keys
	reqs  chan *request
	syncq chan *pending // committed groups waiting for their fsync (each committer makes its own)
	// unsynced counts the groups handed to the syncer and not yet answered;
	// synced gets a signal when it drops to 0 (the committer waits for it to
	// gather a bigger group).
	unsynced        atomic.Int32
	unsyncedEntries atomic.Int64 // the entries of those groups
	synced          chan struct{}
	stop            chan struct{} // closed by Close: the committer ends
	write           *pebble.WriteOptions
	// inflight counts the requests submitted and not yet answered. It is
	// raised under mu, where the committer decides to stop: it stops only
	// when none is in flight, so no request waits for a committer that left.
	inflight atomic.Int64

	syncs syncStats // the syncer's figures (SyncStats)

	// exclusives counts the exclusive work run: a writer's read ahead
	// (Prefetcher) is passed on while it has not moved.
	exclusives atomic.Uint64

	mu      sync.Mutex
	closed  bool
	pending sync.WaitGroup  // submitted requests not yet answered
	running bool            // a committer serves reqs (started on demand, see submit)
	starts  int             // committers started so far (tests read it)
	done    chan struct{}   // closed once the last committer started has ended; nil before the first
	heads   map[string]Head // durable heads: what others may see and be served
	forks   map[string]Fork
	broken  error // set when a sync failed: nothing more is accepted

	// Owned by the committer goroutine: heads and forks including groups
	// committed but not yet durable.
	prep      map[string]Head
	prepForks map[string]Fork

	// afterIngest, if set (by tests), runs after a group's entries were
	// ingested and before its batch is committed: where a crash leaves
	// entries above the heads.
	afterIngest func()
}

// Open loads the log's heads (no replay: start-up does not depend on the log's
// length) and applies held entries this build now supports. The committer
// starts with the first request and stops once idle (Config.IdleAfter); Close
// stops it.
func Open(cfg Config) (*Log, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l := &Log{
		cfg:    cfg,
		db:     cfg.DB,
		keys:   newKeys(cfg.Space),
		reqs:   make(chan *request, cfg.QueueSize),
		synced: make(chan struct{}, 1),
		stop:   make(chan struct{}),
		write:  pebble.Sync,
		heads:  map[string]Head{},
		forks:  map[string]Fork{},
	}
	if cfg.NoSync {
		l.write = pebble.NoSync
	}
	if err := l.loadHeads(); err != nil {
		return nil, err
	}
	if err := l.dropAboveHeads(); err != nil {
		return nil, err
	}
	if err := l.loadForks(); err != nil {
		return nil, err
	}
	if err := l.applyHeld(); err != nil {
		return nil, err
	}
	if err := l.seedClock(); err != nil {
		return nil, err
	}
	l.prep, l.prepForks = maps.Clone(l.heads), maps.Clone(l.forks)
	return l, nil
}

// Close stops accepting calls, waits for every submitted call to be answered
// (in-flight writes finish or fail, nothing is half-written) and stops the
// committer.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.pending.Wait()
	close(l.stop)
	l.mu.Lock()
	done := l.done // no committer starts any more
	l.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// submit hands r to the committer, starting one if none runs, and waits for
// its answer. Once submitted, a request is always answered, even if ctx ends:
// an answer is never ambiguous.
func (l *Log) submit(ctx context.Context, r *request) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.pending.Add(1)
	l.inflight.Add(1)
	if !l.running {
		l.startCommitter()
	}
	l.mu.Unlock()
	defer l.pending.Done()
	defer l.inflight.Add(-1)
	r.done = make(chan struct{})
	select {
	case l.reqs <- r:
	case <-ctx.Done():
		return fmt.Errorf("txlog: waiting for the committer: %w", ctx.Err())
	}
	<-r.done
	return r.err
}

// startCommitter starts a committer; l.mu is held. It begins once the one
// before it (if any) has ended with its syncer: one committer at a time owns
// the committer's state (prep, prepForks, syncq).
func (l *Log) startCommitter() {
	prev, done := l.done, make(chan struct{})
	l.running, l.done = true, done
	l.starts++
	go func() {
		defer close(done)
		if prev != nil {
			<-prev
		}
		l.run()
	}()
}

// retire is the idle committer asking to stop: it may when no request is in
// flight, and the next submit starts another.
func (l *Log) retire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight.Load() > 0 {
		return false
	}
	l.running = false
	return true
}

// Heads returns a copy of every site's head.
func (l *Log) Heads() map[string]Head {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]Head, len(l.heads))
	for s, h := range l.heads {
		out[s] = h
	}
	return out
}

// Head returns one site's head (zero if nothing is held).
func (l *Log) Head(site string) Head {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heads[site]
}

// Frontier returns site -> highest contiguous seq held.
func (l *Log) Frontier() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(l.heads))
	for s, h := range l.heads {
		out[s] = h.Seq
	}
	return out
}

func (l *Log) loadHeads() error {
	p := l.keys.prefix(kindHead)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return fmt.Errorf("txlog: load heads: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		site, _, err := l.keys.parseSite(it.Key())
		if err != nil {
			return fmt.Errorf("%w: %v", ErrDamaged, err)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("txlog: load head of %q: %w", site, err)
		}
		h, err := unmarshalHead(v)
		if err != nil {
			return fmt.Errorf("%w: head of %q: %v", ErrDamaged, site, err)
		}
		l.heads[site] = h
	}
	return it.Error()
}

// dropAboveHeads removes the entries stored above a site's head (or of a
// site with no head): entries stored as a table (Config.Ingest) whose group's
// batch, which moves the head, was not made durable before a crash. They were
// never acknowledged, applied or served; removing them keeps Verify's check
// that a site's last entry is its head, and keeps the seqs free for what the
// site (or this node, for its own) writes there next.
func (l *Log) dropAboveHeads() error {
	p := l.keys.prefix(kindEntry)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return fmt.Errorf("txlog: read the log: %w", err)
	}
	type span struct {
		site     string
		from, to []byte
	}
	var drop []span
	for ok := it.First(); ok; {
		site, _, err := l.keys.parseSeq(it.Key())
		if err != nil {
			return errors.Join(fmt.Errorf("%w: %v", ErrDamaged, err), it.Close())
		}
		end := store.PrefixEnd(l.keys.site(kindEntry, site))
		above := l.keys.entry(site, l.heads[site].Seq+1)
		if it.SeekGE(above) && bytes.Compare(it.Key(), end) < 0 {
			drop = append(drop, span{site, above, end})
		}
		ok = it.SeekGE(end)
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("txlog: read the log: %w", err)
	}
	if len(drop) == 0 {
		return nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	for _, d := range drop {
		if err := b.DeleteRange(d.from, d.to, nil); err != nil {
			return fmt.Errorf("txlog: drop entries above the head of %q: %w", d.site, err)
		}
		l.cfg.Logger.Info("dropped entries above a site's head, stored by a group that was not made durable before the node stopped",
			"site", d.site, "head", l.heads[d.site].Seq)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("txlog: drop entries above the heads: %w", err)
	}
	return nil
}

// seedClock moves the clock past every head's timestamp, so that entries
// written after a restart are later than everything held even when the
// machine's clock was set back meanwhile.
func (l *Log) seedClock() error {
	for site, h := range l.heads {
		if h.Seq == 0 {
			continue
		}
		v, closer, err := l.db.Get(l.keys.entry(site, h.Seq))
		if err != nil {
			return fmt.Errorf("%w: head %s#%d cannot be read: %v", ErrDamaged, site, h.Seq, err)
		}
		e, err := wire.DecodeEnvelope(v)
		closer.Close()
		if err != nil {
			return fmt.Errorf("%w: head %s#%d: %v", ErrDamaged, site, h.Seq, err)
		}
		l.cfg.Clock.Observe(hlc.Timestamp(e.HLC))
	}
	return nil
}
