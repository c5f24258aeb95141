package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// ErrSchema is returned by Apply for an entry whose schema version is newer
// than this build supports. Such entries are kept by the log and applied after
// an upgrade; Apply changes nothing for them.
var ErrSchema = errors.New("state: entry schema is newer than this build supports")

// State is the materialized state of one node. Its read methods are safe for
// concurrent use with each other and with Apply. Apply must be called by one
// goroutine at a time, and Clear must not run concurrently with Apply.
type State struct {
	db  *pebble.DB
	log *slog.Logger

	// Counters handed out by Apply. They only grow: when a batch is discarded
	// the values it used are skipped, never reused.
	cursor     atomic.Uint64 // last change-feed cursor handed out
	conflictID atomic.Uint64 // last conflict ID handed out

	loads  atomic.Uint64 // last initial load ID handed out (NewLoad)
	clears atomic.Uint64 // Clear calls: a Prefetched read before one is stale
	// applies counts the apply calls begun; recent holds the records the
	// latest of them wrote, by call (see Prefetch and readAhead). Apply's
	// goroutine alone touches recent.
	applies    atomic.Uint64
	prefetches atomic.Bool // Prefetch has been called: apply calls keep recent
	recent     [recentApplies]appliedKeys
	// fresh says, per table, whether the puts of an initial load (by its
	// ID) need no read of their records: the table held no record when
	// that load first wrote it, and only that load's puts wrote it since.
	// Used by Apply's goroutine only; kept in memory alone, so a restart
	// forgets it and reads again.
	fresh map[string]freshTable

	// filter is the presence filter, installed when BuildPresence begins
	// its build (every apply call adds to it from then on) and asked once
	// filterReady says its scan is complete; callBegun tells a build waiting
	// for an apply call that one began (see presence.go).
	filter      atomic.Pointer[presence]
	filterReady atomic.Bool
	callBegun   chan struct{}
	ownWrites   chan struct{} // closed by the first Prefetch
	// presenceMin is the smallest capacity of a filter: presenceMinKeys
	// (tests set less, to see filters grow).
	presenceMin uint64
}

// recentApplies is how many apply calls recent remembers: a read ahead is
// checked against the calls begun since it began, and one older than that
// many calls is read again. A writer's read ahead waits for one group
// commit, rarely two.
const recentApplies = 8

// appliedKeys are the records one apply call wrote (keys: its call number).
type appliedKeys struct {
	call uint64
	keys map[string]struct{}
}

// freshTable is what is known of a table for one initial load.
type freshTable struct {
	load  uint64
	empty bool // the table held no record when the load first wrote it
}

// storedFloor survives Clear so that cursors and conflict IDs keep growing
// across a rebuild. Encoded as three big-endian uint64s.
type storedFloor struct {
	Cursor    uint64 // feed cursor reached
	Conflict  uint64 // conflict ID reached
	ClearedAt uint64 // feed cursor when Clear last ran (0: never)
}

// storedCounts are maintained by Apply through the batch. Encoded as two
// big-endian uint64s.
type storedCounts struct {
	Records   uint64
	Conflicts uint64
}

// Open returns the state kept in db under store.PrefixState. It starts no
// goroutines and needs no Close: the caller owns db.
func Open(db *pebble.DB, logger *slog.Logger) (*State, error) {
	if db == nil {
		return nil, errors.New("state: open: no database")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &State{db: db, log: logger, callBegun: make(chan struct{}, 1), ownWrites: make(chan struct{}), presenceMin: presenceMinKeys}
	floor, err := loadFloor(db, "open")
	if err != nil {
		return nil, fmt.Errorf("state: open: %w", err)
	}
	lastFeed, err := lastSeqKey(db, spaceFeed)
	if err != nil {
		return nil, fmt.Errorf("state: open: %w", err)
	}
	lastConflict, err := lastSeqKey(db, spaceConflict)
	if err != nil {
		return nil, fmt.Errorf("state: open: %w", err)
	}
	s.cursor.Store(max(floor.Cursor, lastFeed))
	s.conflictID.Store(max(floor.Conflict, lastConflict))
	logger.Debug("state opened", "cursor", s.cursor.Load(), "conflict_id", s.conflictID.Load())
	return s, nil
}

// getCopy returns a copy of the value under key, or nil, false.
func getCopy(r pebble.Reader, key []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := slices.Clone(v)
	if out == nil {
		out = []byte{}
	}
	return out, true, closer.Close()
}

func loadFloor(r pebble.Reader, op string) (storedFloor, error) {
	var f storedFloor
	v, ok, err := getCopy(r, metaKey(metaFloor))
	if err != nil || !ok {
		return f, err
	}
	if err := decodeUints(v, &f.Cursor, &f.Conflict, &f.ClearedAt); err != nil {
		return f, damaged(op, "the change-feed floor", err)
	}
	return f, nil
}

func loadCounts(r pebble.Reader, op string) (storedCounts, error) {
	var c storedCounts
	v, ok, err := getCopy(r, metaKey(metaCounts))
	if err != nil || !ok {
		return c, err
	}
	if err := decodeUints(v, &c.Records, &c.Conflicts); err != nil {
		return c, damaged(op, "the record counts", err)
	}
	return c, nil
}

// lastSeqKey returns the number in the last key of a feed or conflict space.
func lastSeqKey(r pebble.Reader, space byte) (uint64, error) {
	p := spacePrefix(space)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return 0, err
	}
	var n uint64
	if it.Last() {
		n, err = seqOfKey(it.Key())
		if err != nil {
			err = damaged("open", fmt.Sprintf("key %x", it.Key()), err)
		}
	}
	return n, errors.Join(err, it.Close())
}

// Apply applies one verified entry into b, an indexed batch
// (pebble.DB.NewIndexedBatch), reading through b so that the effects of
// earlier entries in the same batch are seen.
//
// Callers apply each entry exactly once, each site's entries in seq order,
// one Apply at a time, and commit batches in the order of their Apply calls
// (the change feed relies on it). Should an entry be applied twice anyway,
// the second Apply changes nothing: every merge compares versions strictly, so
// a write meets itself and loses, no change is fed, and a conflict is
// recorded once per field and pair of entries.
//
// An entry with a schema newer than wire.SchemaVersion is refused with
// ErrSchema. An error leaves b partly written: discard it.
func (s *State) Apply(b *pebble.Batch, e *wire.Signed) error {
	return s.ApplyAll(b, []*wire.Signed{e})
}

// ApplyAll applies entries in order into b, as Apply does for each, and
// updates the record and conflict counts once for all of them. It is how the
// log applies a whole group commit.
func (s *State) ApplyAll(b *pebble.Batch, es []*wire.Signed) error {
	return s.applyAll(b, es, nil, nil)
}

// prefetched holds the records that a transaction's operations write, read
// ahead of applying them (Prefetch).
type prefetched struct {
	clears  uint64 // s.clears before the reads
	applies uint64 // s.applies before the reads
	recs    []prefetchedRecord
}

type prefetchedRecord struct {
	key    []byte
	raw    []byte
	stored bool
}

// Prefetch reads, from the database as committed, the record each of ops
// writes, so that applying them need not (ApplyPrefetched), and returns what
// it read. It is safe for concurrent use with everything but Clear: the writer
// of a transaction calls it on its own goroutine, before the transaction
// reaches the committer.
func (s *State) Prefetch(ops []wire.Op) (any, error) {
	if !s.prefetches.Load() && !s.prefetches.Swap(true) {
		close(s.ownWrites) // the presence filter is built now (BuildPresence)
	}
	p := &prefetched{clears: s.clears.Load(), applies: s.applies.Load(), recs: make([]prefetchedRecord, len(ops))}
	for i := range ops {
		key := recordKey(ops[i].Table, ops[i].Key)
		if s.neverStored(key) { // after p.applies was read: see presence.go
			p.recs[i] = prefetchedRecord{key: key}
			continue
		}
		raw, stored, err := getCopy(s.db, key)
		if err != nil {
			return nil, fmt.Errorf("state: prefetch %s: %w", recordName(ops[i].Table, ops[i].Key), err)
		}
		p.recs[i] = prefetchedRecord{key: key, raw: raw, stored: stored}
	}
	return p, nil
}

// ApplyPrefetched is ApplyAll where pre[i], if not nil, is what Prefetch
// returned for the operations of es[i] (its payload). The caller vouches
// that since that Prefetch began the state was written only by this
// State's apply calls and Clear, each apply call's batch committed (or
// discarded) before the next call began, and that b holds no writes of the
// state but this call's. Then a record read ahead is the record as b holds
// it unless the apply call under way when the read began, a later one, or
// an earlier entry of this call wrote it: the State remembers the records
// each of its latest apply calls wrote (recentApplies of them) and reads
// again a record any of them wrote, or whose read is older than they are.
// The result is the same as ApplyAll's, byte for byte.
func (s *State) ApplyPrefetched(b *pebble.Batch, es []*wire.Signed, pre []any) error {
	if pre != nil && len(pre) != len(es) {
		return fmt.Errorf("state: apply: %d prefetched reads for %d entries", len(pre), len(es))
	}
	var ps []*prefetched
	if pre != nil {
		ps = make([]*prefetched, len(pre))
	}
	for i, p := range pre {
		if p == nil {
			continue
		}
		pp, ok := p.(*prefetched)
		if !ok {
			return fmt.Errorf("state: apply: prefetched reads of type %T", p)
		}
		ps[i] = pp
	}
	return s.applyAll(b, es, nil, ps)
}

// NewLoad returns a new ID for the entries of one initial load (see
// ApplyLoad). IDs are not reused while the State lives.
func (s *State) NewLoad() uint64 { return s.loads.Add(1) }

// ApplyLoad is ApplyAll where loads[i], if not 0, says that es[i] belongs to
// the initial load of that ID (NewLoad) and puts only records that no other
// applied entry of that load puts: each row of a database read once, in one
// consistent read. Such puts skip reading their record (a miss that costs a
// lookup through every level of the store) while the table has held nothing
// but that load's records: the table is checked once for the load, and any
// other write to it ends this until the next check. The result is the same as
// ApplyAll's, byte for byte. loads must be as long as es (or nil).
func (s *State) ApplyLoad(b *pebble.Batch, es []*wire.Signed, loads []uint64) error {
	if loads != nil && len(loads) != len(es) {
		return fmt.Errorf("state: apply: %d load IDs for %d entries", len(loads), len(es))
	}
	return s.applyAll(b, es, loads, nil)
}

func (s *State) applyAll(b *pebble.Batch, es []*wire.Signed, loads []uint64, pre []*prefetched) error {
	if b == nil {
		return errors.New("state: apply: nil batch")
	}
	var recordsDelta int64
	var conflicts uint64
	// written holds the records this call writes, once reads ahead are in
	// use: for this call's reads ahead, and for the calls after it (recent).
	// A call of an initial load or of readAheadEntries entries or more (a
	// catch-up run) without reads ahead of its own keeps none: its many
	// records would cost a set entry each, and a writer's read ahead that
	// it comes after is read again (readAhead), which is rare.
	call := s.applies.Add(1)
	if !s.filterReady.Load() && s.filter.Load() != nil {
		select { // a filter's build may wait for this call to begin
		case s.callBegun <- struct{}{}:
		default:
		}
	}
	var written map[string]struct{}
	if pre != nil || (s.prefetches.Load() && loads == nil && len(es) < readAheadEntries) {
		written = make(map[string]struct{}, len(es))
	}
	defer func() { s.recent[call%recentApplies] = appliedKeys{call: call, keys: written} }()
	clears := s.clears.Load()
	for _, e := range es {
		if e == nil {
			return errors.New("state: apply: nil entry")
		}
		if e.Schema > wire.SchemaVersion {
			return fmt.Errorf("state: apply %s: %w (entry schema %d, supported %d)", e.ID(), ErrSchema, e.Schema, wire.SchemaVersion)
		}
	}
	var recs records
	if loads == nil && pre == nil && len(es) >= readAheadEntries {
		var err error
		if recs, err = s.readRecords(b, es); err != nil {
			return fmt.Errorf("state: apply: %w", err)
		}
	}
	for i, e := range es {
		a := applier{s: s, b: b, e: e, call: call, written: written, recs: recs}
		if loads != nil {
			a.load = loads[i]
		}
		if pre != nil && pre[i] != nil && pre[i].clears == clears {
			a.pre, a.preApplies = pre[i].recs, pre[i].applies
		}
		ops := e.Payload() // a sealed entry's opened operations
		for i := range ops {
			if err := a.applyOp(i, &ops[i]); err != nil {
				return err
			}
		}
		if err := a.finish(); err != nil {
			return err
		}
		recordsDelta += a.recordsDelta
		conflicts += a.conflicts
	}
	return s.addCounts(b, recordsDelta, conflicts)
}

// addCounts adds to the stored record and conflict counts inside b.
func (s *State) addCounts(b *pebble.Batch, recordsDelta int64, conflicts uint64) error {
	if recordsDelta == 0 && conflicts == 0 {
		return nil
	}
	c, err := loadCounts(b, "apply")
	if err != nil {
		return fmt.Errorf("state: apply: %w", err)
	}
	switch {
	case recordsDelta >= 0:
		c.Records += uint64(recordsDelta)
	case uint64(-recordsDelta) > c.Records:
		c.Records = 0
	default:
		c.Records -= uint64(-recordsDelta)
	}
	c.Conflicts += conflicts
	if err := b.Set(metaKey(metaCounts), encodeUints(c.Records, c.Conflicts), nil); err != nil {
		return fmt.Errorf("state: apply: %w", err)
	}
	return nil
}

// applier holds the work of one Apply.
type applier struct {
	s    *State
	b    *pebble.Batch
	e    *wire.Signed
	load uint64 // the initial load e belongs to (ApplyLoad), or 0
	// pre holds the records of e's operations read ahead (ApplyPrefetched)
	// while preApplies apply calls had begun, good unless written holds
	// them (the records this call, number call, wrote) or recent calls
	// wrote them (see readAhead).
	pre        []prefetchedRecord
	preApplies uint64
	call       uint64
	written    map[string]struct{}
	recs       records // the records of the whole ApplyAll, read ahead, or nil

	won          bool // the entry became the writer of something
	recordsDelta int64
	conflicts    uint64
	changed      []touched      // records whose visible content changed, in first-change order
	changedSet   map[string]int // record keys in changed (their index), once it is long
	deps         map[wire.ID]map[string]uint64
}

type touched struct {
	table, key string
	wasStored  bool   // stored before this Apply touched it
	old        uint64 // the record's feed cursor before this Apply (0: not in the record)
	cursor     uint64 // its feed cursor from this Apply on
}

// fail wraps err with the operation; it returns nil for nil.
func (a *applier) fail(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*DamagedError](err); ok {
		return err
	}
	return fmt.Errorf("state: apply %s: %w", a.e.ID(), err)
}

func (a *applier) applyOp(i int, op *wire.Op) error {
	key := recordKey(op.Table, op.Key)
	known, err := a.knownNew(op)
	if err != nil {
		return a.fail(err)
	}
	var raw []byte
	var stored bool
	switch {
	case known:
	case a.readAhead(i, key):
		raw, stored = a.pre[i].raw, a.pre[i].stored
	case a.recs != nil:
		raw, stored = a.recs.get(key)
	case a.s.neverStored(key):
	default:
		if raw, stored, err = getCopy(a.b, key); err != nil {
			return a.fail(err)
		}
	}
	var rec storedRecord
	if stored {
		if rec, err = decodeRecord(raw); err != nil {
			return damaged("apply", recordName(op.Table, op.Key), err)
		}
	}
	existed := rec.exists()
	v := Version{HLC: a.e.HLC, Site: a.e.Site, Seq: a.e.Seq, Op: uint32(i)}

	var changed, visible bool
	switch op.Kind {
	case wire.OpPut:
		names := make([]string, 0, len(op.Fields))
		for name := range op.Fields {
			names = append(names, name)
		}
		slices.Sort(names)
		raw := make([]any, len(names))
		for j, name := range names {
			raw[j] = op.Fields[name]
		}
		vals, err := encodeValues(raw)
		if err != nil {
			return a.fail(fmt.Errorf("operation %d (%s/%s): %w", i+1, op.Table, op.Key, err))
		}
		if err := a.putConflicts(op, &rec, v, names, vals); err != nil {
			return err
		}
		changed = rec.put(v, names, vals)
		visible = changed
	case wire.OpDelete:
		if err := a.deleteConflicts(op, &rec, v); err != nil {
			return err
		}
		changed, visible = rec.del(v)
	default:
		return a.fail(fmt.Errorf("operation %d has unknown kind %v", i+1, op.Kind))
	}
	if !changed {
		return nil
	}
	a.won = true
	if visible {
		a.noteChange(touched{table: op.Table, key: op.Key, wasStored: stored, old: rec.Cursor}, key, &rec)
	}
	enc := rec.encode()
	a.s.noteStored(key) // before the batch holds it: see presence.go
	if err := a.b.Set(key, enc, nil); err != nil {
		return a.fail(err)
	}
	if a.written != nil {
		a.written[string(key)] = struct{}{}
	}
	if a.recs != nil {
		a.recs[string(key)] = enc
	}
	if existed != rec.exists() {
		if rec.exists() {
			a.recordsDelta++
		} else {
			a.recordsDelta--
		}
	}
	return nil
}

// readAhead reports whether operation i's record (under key) was read ahead
// and is still as read: no earlier entry of this call wrote it, and no
// apply call since the one under way when the read began (whose batch may
// have been committed after the read) did. Calls before that one were
// committed before it began (see ApplyPrefetched), so the read saw them.
func (a *applier) readAhead(i int, key []byte) bool {
	if i >= len(a.pre) || !bytes.Equal(a.pre[i].key, key) {
		return false
	}
	if _, w := a.written[string(key)]; w {
		return false
	}
	from := max(a.preApplies, 1)
	if a.call-from > recentApplies {
		return false
	}
	for c := from; c < a.call; c++ {
		r := a.s.recent[c%recentApplies]
		if r.call != c || r.keys == nil {
			return false // forgotten, or not kept: read again
		}
		if _, w := r.keys[string(key)]; w {
			return false
		}
	}
	return true
}

// knownNew reports whether op's record is known not to be stored, so that
// reading it can be skipped: op is a put of an initial load (see ApplyLoad)
// into a table that only that load has written since it was empty. Any
// other write to a table ends what is known of it.
func (a *applier) knownNew(op *wire.Op) (bool, error) {
	s := a.s
	if a.load == 0 || op.Kind != wire.OpPut {
		if len(s.fresh) > 0 {
			delete(s.fresh, op.Table)
		}
		return false, nil
	}
	if f, ok := s.fresh[op.Table]; ok && f.load == a.load {
		return f.empty, nil
	}
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: tablePrefix(op.Table), UpperBound: tableEnd(op.Table)})
	if err != nil {
		return false, err
	}
	empty := !it.First()
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return false, err
	}
	if s.fresh == nil {
		s.fresh = map[string]freshTable{}
	}
	s.fresh[op.Table] = freshTable{load: a.load, empty: empty}
	return empty, nil
}

// noteChange adds t to the records changed by this Apply, once, with a new
// feed cursor, and sets that cursor in rec, the record as it is written.
// Cursors are taken in first-change order.
func (a *applier) noteChange(t touched, key []byte, rec *storedRecord) {
	const scan = 8 // up to this many, a linear scan beats a map
	i := -1
	if a.changedSet != nil {
		if j, ok := a.changedSet[string(key)]; ok {
			i = j
		}
	} else {
		i = slices.IndexFunc(a.changed, func(c touched) bool { return c.table == t.table && c.key == t.key })
	}
	if i >= 0 {
		rec.Cursor = a.changed[i].cursor
		return
	}
	t.cursor = a.s.cursor.Add(1)
	rec.Cursor = t.cursor
	a.changed = append(a.changed, t)
	switch {
	case a.changedSet != nil:
		a.changedSet[string(key)] = len(a.changed) - 1
	case len(a.changed) > scan:
		a.changedSet = make(map[string]int, 2*scan)
		for j, c := range a.changed {
			a.changedSet[string(recordKey(c.table, c.key))] = j
		}
	}
}

// finish writes what one Apply adds besides records: the entry's deps, the
// change feed and the counters.
func (a *applier) finish() error {
	if a.won {
		if deps := otherDeps(a.e); len(deps) > 0 {
			if err := a.b.Set(depsKey(a.e.Site, a.e.Seq), encodeDeps(deps), nil); err != nil {
				return a.fail(err)
			}
		}
	}
	for _, t := range a.changed {
		if err := a.feed(t); err != nil {
			return err
		}
	}
	return nil
}

// feed appends a change of t under its new cursor and drops the record's
// previous feed entry, so the feed holds one entry per record: its latest
// change. The previous entry's cursor is in the record (t.old); a record
// written before records carried it has it in the spaceLast index instead,
// which is dropped too (the record now carries its cursor).
func (a *applier) feed(t touched) error {
	old := t.old
	if old == 0 && t.wasStored {
		lk := lastKey(t.table, t.key)
		v, ok, err := getCopy(a.b, lk)
		if err != nil {
			return a.fail(err)
		}
		if ok {
			if len(v) != 8 {
				return damaged("apply", "the change-feed index of "+recordName(t.table, t.key), fmt.Errorf("%d bytes, want 8", len(v)))
			}
			old = binary.BigEndian.Uint64(v)
			if err := a.b.Delete(lk, nil); err != nil {
				return a.fail(err)
			}
		}
	}
	if old != 0 {
		if err := a.b.Delete(feedKey(old), nil); err != nil {
			return a.fail(err)
		}
	}
	return a.fail(a.b.Set(feedKey(t.cursor), feedValue(t.table, t.key), nil))
}

// otherDeps returns e's deps without its own site: conflict checks only ask
// whether an entry saw entries of other sites.
func otherDeps(e *wire.Signed) map[string]uint64 {
	if len(e.Deps) == 0 {
		return nil
	}
	if _, own := e.Deps[e.Site]; !own {
		return e.Deps
	}
	m := make(map[string]uint64, len(e.Deps)-1)
	for site, seq := range e.Deps {
		if site != e.Site {
			m[site] = seq
		}
	}
	return m
}
