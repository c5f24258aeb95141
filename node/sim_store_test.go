package node

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/engine"
	"github.com/ppsync/ppsync/state"
	"github.com/ppsync/ppsync/txlog"
)

// A simulated node's persisted part: its log and the state derived from it.
// Two backends answer the same calls with the same results: a fast in-memory
// model of txlog's rules (most seeds run on it), and the real txlog and state
// on an in-memory, crashable Pebble filesystem (a few seeds run on it, and the
// same seeds on both backends must give identical traces, which keeps the
// model honest).
type simStore interface {
	// Write commits own transactions, one entry each, durably.
	Write(txs [][]wire.Op) ([]*wire.Signed, error)
	// AppendRemote takes one gossiped entry; AppendRun a run (node's
	// appendReceived chooses, as for the real log).
	AppendRemote(ctx context.Context, e *wire.Signed) (txlog.RunResult, error)
	AppendRun(ctx context.Context, run []*wire.Signed) (txlog.RunResult, error)
	Frontier() map[string]uint64
	// Head returns site's highest contiguous seq held and its hash.
	Head(site string) (uint64, wire.Hash)
	// Forks lists the sites known to have forked.
	Forks() []engine.Fork
	// Range returns the held entries of site from..to (to inclusive).
	Range(site string, from, to uint64) []*wire.Signed
	// HashAt returns the hash of held entry (site, seq).
	HashAt(site string, seq uint64) (wire.Hash, bool)
	Digest() wire.Hash
	// Crash loses everything volatile (unsynced writes, caches); Reopen
	// starts again from what was persisted.
	Crash(seed uint64)
	Reopen()
	Close()
}

const simFamily = "simfamily"

// simKey is a site's deterministic signing key.
func simKey(site string) ed25519.PrivateKey {
	s := sha256.Sum256([]byte("ppsync sim key " + site))
	return ed25519.NewKeyFromSeed(s[:])
}

func simPub(site string) ed25519.PublicKey { return simKey(site).Public().(ed25519.PublicKey) }

type simKeyring map[string]ed25519.PublicKey

func (k simKeyring) SiteKey(site string, _ uint64) (ed25519.PublicKey, error) {
	p, ok := k[site]
	if !ok {
		return nil, fmt.Errorf("sim: no key for site %q", site)
	}
	return p, nil
}

// --- the model backend -------------------------------------------------------

// simModelStore models txlog's rules over in-memory per-site logs: next seq
// only, duplicates are no-ops (checked by hash at the end of the overlap), a
// gap is a *txlog.GapError, any other mismatch is a fork. The state is a
// last-writer-wins merge per field by (HLC, site, seq, op) with record
// tombstones, like package state; its digest is a function of the set of
// entries applied only.
type simModelStore struct {
	site    string // own site; "" for a relay
	now     func() time.Time
	onApply func(*wire.Signed)

	// persisted (a write or append is durable when the call returns)
	logs  map[string][]*wire.Signed
	state map[simRecKey]*simRec

	// volatile
	clock *hlc.Clock
}

type simRecKey struct{ table, key string }

type simVer struct {
	hlc  uint64
	site string
	seq  uint64
	op   int
}

func (a simVer) less(b simVer) bool {
	if a.hlc != b.hlc {
		return a.hlc < b.hlc
	}
	if a.site != b.site {
		return a.site < b.site
	}
	if a.seq != b.seq {
		return a.seq < b.seq
	}
	return a.op < b.op
}

type simField struct {
	v   simVer
	val string
}

type simRec struct {
	del    simVer
	fields map[string]simField
}

func newSimModelStore(site string, now func() time.Time, onApply func(*wire.Signed)) *simModelStore {
	m := &simModelStore{site: site, now: now, onApply: onApply,
		logs: map[string][]*wire.Signed{}, state: map[simRecKey]*simRec{}}
	m.Reopen()
	return m
}

func (m *simModelStore) Write(txs [][]wire.Op) ([]*wire.Signed, error) {
	if m.site == "" {
		return nil, txlog.ErrReadOnly
	}
	log := m.logs[m.site]
	var prev wire.Hash
	if len(log) > 0 {
		prev = log[len(log)-1].Hash
	}
	deps := map[string]uint64{}
	for s, l := range m.logs {
		if s != m.site && len(l) > 0 {
			deps[s] = uint64(len(l))
		}
	}
	out := make([]*wire.Signed, 0, len(txs))
	for i, ops := range txs {
		e := wire.Entry{Family: simFamily, Site: m.site, Epoch: 1, Seq: uint64(len(log)) + 1, Prev: prev,
			HLC: uint64(m.clock.Now()), Schema: wire.SchemaVersion, Deps: deps, Ops: ops}
		s := &wire.Signed{Entry: e, Hash: simModelHash(&e)}
		if i == len(txs)-1 || (i+1)%wire.MaxGroupEntries == 0 {
			s.Sig = simModelSig // a commit group's end, as the real log signs it
		}
		log = append(log, s)
		out = append(out, s)
		prev = s.Hash
	}
	m.logs[m.site] = log
	for _, s := range out {
		m.apply(s)
	}
	return out, nil
}

// simModelSig marks the model's signed entries (the model checks no
// signature).
var simModelSig = make([]byte, 64)

// simModelHash chains an entry to its predecessor like wire.HashOf(body) does.
func simModelHash(e *wire.Entry) wire.Hash {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%x\x00%d\x00", e.Site, e.Seq, e.Prev[:], e.HLC)
	for _, op := range e.Ops {
		fmt.Fprintf(h, "%d\x00%s\x00%s\x00", op.Kind, op.Table, op.Key)
		names := make([]string, 0, len(op.Fields))
		for k := range op.Fields {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(h, "%s=%v\x00", k, op.Fields[k])
		}
	}
	var out wire.Hash
	h.Sum(out[:0])
	return out
}

func (m *simModelStore) AppendRemote(ctx context.Context, e *wire.Signed) (txlog.RunResult, error) {
	return m.AppendRun(ctx, []*wire.Signed{e})
}

func (m *simModelStore) Head(site string) (uint64, wire.Hash) {
	l := m.logs[site]
	if len(l) == 0 {
		return 0, wire.Hash{}
	}
	return uint64(len(l)), l[len(l)-1].Hash
}

// Forks: the model never records a fork (any fork is a violation).
func (m *simModelStore) Forks() []engine.Fork { return nil }

func (m *simModelStore) AppendRun(_ context.Context, run []*wire.Signed) (txlog.RunResult, error) {
	var res txlog.RunResult
	if len(run) == 0 {
		return res, nil
	}
	site := run[0].Site
	log := m.logs[site]
	head := uint64(len(log))
	first, last := run[0].Seq, run[len(run)-1].Seq
	if first > head+1 {
		return res, &txlog.GapError{Site: site, Have: head, Got: first}
	}
	if first <= head {
		k := min(last, head)
		if log[k-1].Hash != run[k-first].Hash {
			return res, &txlog.ForkError{Site: site, Seq: k, Held: log[k-1].Hash, Offered: run[k-first].Hash}
		}
		res.Duplicates = int(k - first + 1)
		run = run[k-first+1:]
		if len(run) == 0 {
			return res, nil
		}
	}
	var headHash wire.Hash
	if head > 0 {
		headHash = log[head-1].Hash
	}
	if run[0].Prev != headHash {
		return res, &txlog.ForkError{Site: site, Seq: head + 1, Offered: run[0].Hash}
	}
	var maxHLC uint64
	for _, s := range run {
		maxHLC = max(maxHLC, s.HLC)
	}
	m.clock.Observe(hlc.Timestamp(maxHLC))
	m.logs[site] = append(log, run...)
	for _, s := range run {
		m.apply(s)
	}
	res.Appended = len(run)
	return res, nil
}

func (m *simModelStore) apply(e *wire.Signed) {
	m.onApply(e)
	for i, op := range e.Ops {
		v := simVer{hlc: e.HLC, site: e.Site, seq: e.Seq, op: i}
		k := simRecKey{op.Table, op.Key}
		r := m.state[k]
		if r == nil {
			r = &simRec{fields: map[string]simField{}}
			m.state[k] = r
		}
		switch op.Kind {
		case wire.OpDelete:
			if r.del.less(v) {
				r.del = v
			}
		default:
			for name, val := range op.Fields {
				if f, ok := r.fields[name]; !ok || f.v.less(v) {
					r.fields[name] = simField{v: v, val: fmt.Sprint(val)}
				}
			}
		}
	}
}

func (m *simModelStore) Frontier() map[string]uint64 {
	out := make(map[string]uint64, len(m.logs))
	for s, l := range m.logs {
		if len(l) > 0 {
			out[s] = uint64(len(l))
		}
	}
	return out
}

func (m *simModelStore) Range(site string, from, to uint64) []*wire.Signed {
	l := m.logs[site]
	to = min(to, uint64(len(l)))
	if from < 1 || from > to {
		return nil
	}
	return append([]*wire.Signed(nil), l[from-1:to]...)
}

func (m *simModelStore) HashAt(site string, seq uint64) (wire.Hash, bool) {
	l := m.logs[site]
	if seq < 1 || seq > uint64(len(l)) {
		return wire.Hash{}, false
	}
	return l[seq-1].Hash, true
}

func (m *simModelStore) Digest() wire.Hash {
	keys := make([]simRecKey, 0, len(m.state))
	for k := range m.state {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].table != keys[j].table {
			return keys[i].table < keys[j].table
		}
		return keys[i].key < keys[j].key
	})
	h := sha256.New()
	for _, k := range keys {
		r := m.state[k]
		fmt.Fprintf(h, "%s\x00%s\x00del=%v\x00", k.table, k.key, r.del)
		names := make([]string, 0, len(r.fields))
		for n, f := range r.fields {
			if r.del.less(f.v) {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			f := r.fields[n]
			fmt.Fprintf(h, "%s=%s@%v\x00", n, f.val, f.v)
		}
	}
	var out wire.Hash
	h.Sum(out[:0])
	return out
}

func (m *simModelStore) Crash(uint64) { m.clock = nil }

func (m *simModelStore) Reopen() {
	m.clock = hlc.New(m.now)
	var maxHLC uint64
	for _, l := range m.logs {
		for _, e := range l {
			maxHLC = max(maxHLC, e.HLC)
		}
	}
	m.clock.Observe(hlc.Timestamp(maxHLC))
}

func (m *simModelStore) Close() {}

// --- the real backend ----------------------------------------------------------

// simRealStore is the real txlog and state on a crashable in-memory Pebble
// filesystem. A crash keeps exactly what was synced (CrashClone), so it also
// checks that every acknowledged entry was synced before txlog answered.
type simRealStore struct {
	site    string
	keys    simKeyring
	now     func() time.Time
	onApply func(*wire.Signed)

	fs  *vfs.MemFS
	db  *pebble.DB
	st  *state.State
	log *txlog.Log
}

// simCounter is the Applier: it reports each applied entry, then applies it.
type simCounter struct {
	st      *state.State
	onApply func(*wire.Signed)
}

func (c simCounter) ApplyAll(b *pebble.Batch, es []*wire.Signed) error {
	for _, e := range es {
		c.onApply(e)
	}
	return c.st.ApplyAll(b, es)
}

func newSimRealStore(site string, keys simKeyring, now func() time.Time, onApply func(*wire.Signed)) *simRealStore {
	r := &simRealStore{site: site, keys: keys, now: now, onApply: onApply, fs: vfs.NewCrashableMem()}
	r.Reopen()
	return r
}

func (r *simRealStore) Reopen() {
	db, err := store.Open("db", store.Options{FS: r.fs, CacheSize: 1 << 20})
	if err != nil {
		panic(fmt.Sprintf("sim: open store: %v", err))
	}
	st, err := state.Open(db, nil)
	if err != nil {
		panic(fmt.Sprintf("sim: open state: %v", err))
	}
	var self *txlog.Identity
	if r.site != "" {
		self = &txlog.Identity{Site: r.site, Epoch: 1, Key: simKey(r.site)}
	}
	l, err := txlog.Open(txlog.Config{DB: db, Family: simFamily, Self: self, Keys: r.keys,
		Apply: simCounter{st: st, onApply: r.onApply}, Clock: hlc.New(r.now)})
	if err != nil {
		panic(fmt.Sprintf("sim: open log: %v", err))
	}
	r.db, r.st, r.log = db, st, l
}

func (r *simRealStore) Crash(seed uint64) {
	clone := r.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: int(seed % 101),
		RNG: rand.New(rand.NewPCG(seed, 0x63726173))})
	r.Close()
	r.fs = clone
}

func (r *simRealStore) Close() {
	if r.log != nil {
		r.log.Close()
		r.db.Close()
		r.log, r.db, r.st = nil, nil, nil
	}
}

func (r *simRealStore) Write(txs [][]wire.Op) ([]*wire.Signed, error) {
	return r.log.WriteMany(context.Background(), txs)
}

// copyEntry gives the receiver its own decoded copy, as the wire does.
func simCopyEntry(e *wire.Signed) *wire.Signed {
	c, err := wire.DecodeEnvelope(e.Marshal())
	if err != nil {
		panic(fmt.Sprintf("sim: decode envelope: %v", err))
	}
	return c
}

func (r *simRealStore) AppendRemote(ctx context.Context, e *wire.Signed) (txlog.RunResult, error) {
	return r.log.AppendRemote(ctx, simCopyEntry(e))
}

func (r *simRealStore) Head(site string) (uint64, wire.Hash) {
	h := r.log.Head(site)
	return h.Seq, h.Hash
}

func (r *simRealStore) Forks() []engine.Fork { return engineLog{r.log}.Forks() }

func (r *simRealStore) AppendRun(ctx context.Context, run []*wire.Signed) (txlog.RunResult, error) {
	cp := make([]*wire.Signed, len(run))
	for i, e := range run {
		cp[i] = simCopyEntry(e)
	}
	return r.log.AppendRun(ctx, cp)
}

func (r *simRealStore) Frontier() map[string]uint64 {
	out := r.log.Frontier()
	for s, n := range out {
		if n == 0 {
			delete(out, s)
		}
	}
	return out
}

func (r *simRealStore) Range(site string, from, to uint64) []*wire.Signed {
	if from > to {
		return nil
	}
	out, err := r.log.Range(site, from, int(to-from+1))
	if err != nil {
		panic(fmt.Sprintf("sim: range: %v", err))
	}
	return out
}

func (r *simRealStore) HashAt(site string, seq uint64) (wire.Hash, bool) {
	e, err := r.log.Get(site, seq)
	if err != nil {
		return wire.Hash{}, false
	}
	return e.Hash, true
}

func (r *simRealStore) Digest() wire.Hash {
	d, err := r.st.Digest()
	if err != nil {
		panic(fmt.Sprintf("sim: digest: %v", err))
	}
	return d
}
