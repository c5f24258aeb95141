package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/state"
	"github.com/ppsync/ppsync/txlog"
)

const benchFamily = "bench-family"

type keys map[string]ed25519.PrivateKey

func (k keys) SiteKey(site string, _ uint64) (ed25519.PublicKey, error) {
	p, ok := k[site]
	if !ok {
		return nil, fmt.Errorf("unknown site %q", site)
	}
	return p.Public().(ed25519.PublicKey), nil
}

func newKey(tb testing.TB) ed25519.PrivateKey {
	_, p, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// core is one node's data core: a Pebble store, the state and the log.
type core struct {
	db       *pebble.DB
	st       *state.State
	log      *txlog.Log
	stop     context.CancelFunc // ends the presence filter's build, as a node's Close does
	presence chan error
}

func openCore(tb testing.TB, dir, site string, k keys, noSync bool) *core {
	tb.Helper()
	return openCoreApplying(tb, dir, site, k, noSync, nil)
}

// openCoreApplying is openCore whose log applies with apply instead of the
// state (nil: the state).
func openCoreApplying(tb testing.TB, dir, site string, k keys, noSync bool, apply txlog.Applier) *core {
	tb.Helper()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	st, err := state.Open(db, nil)
	if err != nil {
		tb.Fatal(err)
	}
	var self *txlog.Identity
	if site != "" {
		self = &txlog.Identity{Site: site, Epoch: 1, Key: k[site]}
	}
	if apply == nil {
		apply = st
	}
	l, err := txlog.Open(txlog.Config{DB: db, Family: benchFamily, Self: self, Keys: k, Apply: apply,
		Clock: hlc.New(time.Now), NoSync: noSync})
	if err != nil {
		tb.Fatal(err)
	}
	// A site node builds the state's presence filter on a goroutine of its
	// own (node.Open): so does the core.
	ctx, stop := context.WithCancel(context.Background())
	c := &core{db: db, st: st, log: l, stop: stop, presence: make(chan error, 1)}
	go func() { c.presence <- st.BuildPresence(ctx) }()
	return c
}

func (c *core) close() { c.stop(); <-c.presence; c.log.Close(); c.db.Close() }

// patient returns a single-op transaction of about 200 encoded bytes.
func patient(i int) []wire.Op {
	return []wire.Op{{Kind: wire.OpPut, Table: "patients", Key: fmt.Sprintf("p%08d", i), Fields: map[string]any{
		"name": fmt.Sprintf("Patient %d", i), "dob": "1984-03-12", "phone": "+41 31 555 01 23",
		"city": "Bern", "balance": int64(i % 1000), "note": "recall in six months",
	}}}
}

// BenchmarkDurableAppend64 compares 64 concurrent writers committing
// single-op transactions through the log (stamp, sign, store, apply, fsync)
// with the raw Pebble synced-commit rate at the same concurrency. This disk's
// sync rate moves from one second to the next, so the two alternate for
// durableRounds rounds and the ratio reported is the median of the rounds'
// ratios (each ours against the raw run just before it), with the lowest and
// highest beside it.
func BenchmarkDurableAppend64(b *testing.B) {
	const writers, perWriter, durableRounds = 64, 300, 3
	value := make([]byte, 200)
	var n atomic.Uint64
	var wg sync.WaitGroup
	// rawRate is raw Pebble, one synced commit per writer's turn, 64
	// goroutines: a batch of one Set of value (see rawCommit for the
	// variants).
	rawRate := func(rc rawCommit) float64 {
		db, err := store.Open(b.TempDir(), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		start := time.Now()
		for w := 0; w < writers; w++ {
			wg.Go(func() {
				for i := 0; i < perWriter; i++ {
					if err := rc.commit(db, n.Add(1), value); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return float64(writers*perWriter) / time.Since(start).Seconds()
	}
	// oursRate is ppsync's log and state, as the node runs them (withState);
	// the log alone, its applier applying nothing (no record, change feed
	// or counts: logOnly); or the log with the state applied after it by a
	// goroutine of its own, in batches of its own (stateFollows: not a
	// design, which would need its own exactly-once and crash argument, but
	// the bound of one that takes the state's apply off the commit path),
	// timed until that goroutine has applied everything.
	const (
		withState = iota
		logOnly
		stateFollows
	)
	var ourSyncs txlog.SyncStats // the log's syncs in the withState rounds
	oursRate := func(mode int) float64 {
		var apply txlog.Applier // the state
		var follow *followingState
		switch mode {
		case logOnly:
			apply = applyNothing{}
		case stateFollows:
			follow = &followingState{groups: make(chan []*wire.Signed, 64)}
			apply = follow
		}
		c := openCoreApplying(b, b.TempDir(), "a", keys{"a": newKey(b)}, false, apply)
		defer c.close()
		var followed chan error
		if follow != nil {
			followed = make(chan error, 1)
			go func() { followed <- follow.run(c.db, c.st) }()
		}
		start := time.Now()
		var idx atomic.Int64
		for w := 0; w < writers; w++ {
			wg.Go(func() {
				for i := 0; i < perWriter; i++ {
					if _, err := c.log.Write(context.Background(), patient(int(idx.Add(1)))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if follow != nil {
			close(follow.groups) // the log has applied (handed on) every entry
			if err := <-followed; err != nil {
				b.Fatal(err)
			}
		}
		rate := float64(writers*perWriter) / time.Since(start).Seconds()
		if mode == withState {
			s := c.log.SyncStats()
			ourSyncs.Syncs += s.Syncs
			ourSyncs.Entries += s.Entries
			ourSyncs.Time += s.Time
		}
		return rate
	}
	// withCPU runs f and adds the CPU time the process used meanwhile (all
	// goroutines: the writers, the committer, Pebble, the GC) to *sum; on a
	// system without /proc it adds nothing and clears *ok.
	withCPU := func(sum *time.Duration, ok *bool, f func() float64) float64 {
		before, err := procCPU(os.Getpid())
		r := f()
		after, err2 := procCPU(os.Getpid())
		if err != nil || err2 != nil {
			*ok = false
		}
		*sum += after - before
		return r
	}
	for b.Loop() {
		ourSyncs = txlog.SyncStats{}
		var raws, ours, ratios []float64
		var rawCPUTime, ourCPUTime time.Duration
		cpuOK := true
		for range durableRounds {
			raw := withCPU(&rawCPUTime, &cpuOK, func() float64 { return rawRate(rawCommit{}) })
			o := withCPU(&ourCPUTime, &cpuOK, func() float64 { return oursRate(withState) })
			raws, ours, ratios = append(raws, raw), append(ours, o), append(ratios, o/raw)
		}

		// Further baselines, one run each: raw Pebble plus one Ed25519
		// signature per commit (the floor that per-entry signing puts under
		// any signed log); raw Pebble writing the keys and bytes an entry of
		// ours writes (the log entry, its record with its feed cursor, the
		// change feed's entry: about 460 bytes of WAL); and raw Pebble whose
		// writers each spend 10 µs of CPU before each commit (what a little
		// work per entry, anywhere in the process, costs a latency-bound
		// loop on 2 cores). And ppsync's log alone, without the state: what
		// the state's apply (a record read, merged and written, the change
		// feed's key, the counts) costs the loop; and the log with the state
		// following it: what that apply costs when it is off the loop but on
		// the same cores.
		rawSigned := rawRate(rawCommit{sign: newKey(b)})
		rawBytes := rawRate(rawCommit{sizes: []int{250, 154, 20}})
		rawCPU := rawRate(rawCommit{cpu: 10 * time.Microsecond})
		logAlone := oursRate(logOnly)
		follows := oursRate(stateFollows)

		slices.Sort(raws)
		slices.Sort(ours)
		slices.Sort(ratios)
		mid := durableRounds / 2
		b.ReportMetric(raws[mid], "raw-pebble-commits/s")
		b.ReportMetric(rawSigned, "raw-pebble+sign-commits/s")
		b.ReportMetric(ours[mid], "ppsync-tx/s")
		b.ReportMetric(ratios[mid], "ratio")
		b.ReportMetric(ratios[0], "ratio-lowest")
		b.ReportMetric(ratios[durableRounds-1], "ratio-highest")
		b.ReportMetric(ours[mid]/rawSigned, "ratio-to-signed")
		b.ReportMetric(rawBytes/raws[mid], "raw-our-bytes-ratio")
		b.ReportMetric(rawCPU/raws[mid], "raw-10us-cpu-ratio")
		b.ReportMetric(logAlone/raws[mid], "log-without-state-ratio")
		b.ReportMetric(follows/raws[mid], "state-follows-log-ratio")
		if ourSyncs.Syncs > 0 {
			// How ppsync's group commit used the disk: entries per sync
			// (64 writers wait at once) and how long a sync took.
			b.ReportMetric(float64(ourSyncs.Entries)/float64(ourSyncs.Syncs), "ppsync-entries/sync")
			b.ReportMetric(float64(ourSyncs.Time.Microseconds())/float64(ourSyncs.Syncs), "ppsync-sync-us")
		}
		if cpuOK {
			// CPU per transaction over the rounds, the process's, in clock
			// ticks of 10 ms: what bounds the loop on 2 cores.
			perTx := func(d time.Duration) float64 {
				return float64(d.Microseconds()) / float64(durableRounds*writers*perWriter)
			}
			b.ReportMetric(perTx(ourCPUTime), "ppsync-cpu-us/tx")
			b.ReportMetric(perTx(rawCPUTime), "raw-pebble-cpu-us/tx")
		}
	}
}

// applyNothing is an applier that applies nothing: the log alone, for the
// log-without-state baseline.
type applyNothing struct{}

func (applyNothing) ApplyAll(*pebble.Batch, []*wire.Signed) error { return nil }

// followingState is an applier that hands each group's entries on to run,
// which applies them to the state in batches of its own: the
// state-follows-log baseline.
type followingState struct{ groups chan []*wire.Signed }

func (f *followingState) ApplyAll(_ *pebble.Batch, es []*wire.Signed) error {
	f.groups <- slices.Clone(es)
	return nil
}

// run applies what arrives on groups, everything waiting in one batch, until
// groups is closed.
func (f *followingState) run(db *pebble.DB, st *state.State) error {
	for es := range f.groups {
	more:
		for {
			select {
			case next, ok := <-f.groups:
				if !ok {
					break more
				}
				es = append(es, next...)
			default:
				break more
			}
		}
		b := db.NewIndexedBatch()
		err := st.ApplyAll(b, es)
		if err == nil {
			err = b.Commit(pebble.NoSync)
		}
		b.Close()
		if err != nil {
			return fmt.Errorf("the following state: %w", err)
		}
	}
	return nil
}

// rawCommit is one commit of a raw Pebble baseline: by default a single Set
// of the value given; with sign, the value followed by an Ed25519 signature
// of its key; with sizes, one Set of each size (zero bytes) under keys of
// their own; with cpu, the writer first spends that much CPU.
type rawCommit struct {
	sign  ed25519.PrivateKey
	sizes []int
	cpu   time.Duration
}

func (rc rawCommit) commit(db *pebble.DB, id uint64, value []byte) error {
	if rc.cpu > 0 {
		for start := time.Now(); time.Since(start) < rc.cpu; {
		}
	}
	k := binary.BigEndian.AppendUint64([]byte("k"), id)
	if len(rc.sizes) == 0 {
		v := value
		if rc.sign != nil {
			v = append(value[:len(value):len(value)], ed25519.Sign(rc.sign, k)...)
		}
		return db.Set(k, v, pebble.Sync)
	}
	bt := db.NewBatch()
	defer bt.Close()
	for i, size := range rc.sizes {
		k[0] = byte('a' + i)
		if err := bt.Set(k, make([]byte, size), nil); err != nil {
			return err
		}
	}
	return bt.Commit(pebble.Sync)
}

// signedEnvelopes returns the envelopes of n entries of site in family,
// written by a log of their own (in memory, unsynced) and read back as a
// peer is served them: with perEntry, each entry is its own commit group and
// so signed; without, they are written 1,000 to a group, signed at each
// group's end (runs of a multiple of 1,000 then end signed, as catch-up runs
// do).
func signedEnvelopes(tb testing.TB, family, site string, k keys, n int, perEntry bool) [][]byte {
	tb.Helper()
	db, err := store.Open("db", store.Options{FS: vfs.NewMem()})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	l, err := txlog.Open(txlog.Config{DB: db, Family: family, Self: &txlog.Identity{Site: site, Epoch: 1, Key: k[site]},
		Keys: k, Apply: applyNothing{}, Clock: hlc.New(time.Now), NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	group := 1000
	if perEntry {
		group = 1
	}
	txs := make([][]wire.Op, 0, group)
	for i := range n {
		txs = append(txs, patient(i))
		if len(txs) == group || i == n-1 {
			if _, err := l.WriteMany(context.Background(), txs); err != nil {
				tb.Fatal(err)
			}
			txs = txs[:0]
		}
	}
	envs := make([][]byte, 0, n)
	if err := l.RawRange(site, 1, 0, func(_ uint64, env []byte) (bool, error) {
		envs = append(envs, slices.Clone(env))
		return false, nil
	}); err != nil {
		tb.Fatal(err)
	}
	if len(envs) != n {
		tb.Fatalf("%s holds %d entries, want %d", site, len(envs), n)
	}
	return envs
}

// signedChain is signedEnvelopes decoded, as a peer receives them.
func signedChain(tb testing.TB, family, site string, k keys, n int, perEntry bool) []*wire.Signed {
	tb.Helper()
	envs := signedEnvelopes(tb, family, site, k, n, perEntry)
	out := make([]*wire.Signed, len(envs))
	for i, env := range envs {
		s, err := wire.DecodeEnvelope(env)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = s
	}
	return out
}

// BenchmarkCatchUpIngest measures catch-up: decoding received envelopes,
// checking the chain and last signature, appending and applying contiguous
// batches of 1,000 with one fsync each, against raw Pebble storing the same
// bytes in the same synced batches.
func BenchmarkCatchUpIngest(b *testing.B) {
	const total, batch = 100_000, 1000
	k := keys{"w": newKey(b), "r": newKey(b)}
	envs := signedEnvelopes(b, benchFamily, "w", k, total, false)
	for b.Loop() {
		db, err := store.Open(b.TempDir(), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := 0; i < total; i += batch {
			bt := db.NewBatch()
			for j := i; j < i+batch; j++ {
				bt.Set(binary.BigEndian.AppendUint64([]byte("l"), uint64(j)), envs[j], nil)
			}
			if err := bt.Commit(pebble.Sync); err != nil {
				b.Fatal(err)
			}
			bt.Close()
		}
		raw := float64(total) / time.Since(start).Seconds()
		db.Close()

		dst := openCore(b, b.TempDir(), "r", k, false)
		start = time.Now()
		// Two stages, as a catch-up stream runs: the receiver decodes the next
		// batch while the log commits the previous one.
		runs := make(chan []*wire.Signed, 2)
		go func() {
			defer close(runs)
			for i := 0; i < total; i += batch {
				run := make([]*wire.Signed, 0, batch)
				for j := i; j < i+batch; j++ {
					s, err := wire.DecodeEnvelope(envs[j])
					if err != nil {
						b.Error(err)
						return
					}
					run = append(run, s)
				}
				runs <- run
			}
		}()
		for run := range runs {
			if res, err := dst.log.AppendRun(context.Background(), run); err != nil || res.Appended != batch {
				b.Fatalf("append run: %+v %v", res, err)
			}
		}
		ours := float64(total) / time.Since(start).Seconds()
		dst.close()
		b.ReportMetric(raw, "raw-pebble-entries/s")
		b.ReportMetric(ours, "ppsync-entries/s")
		b.ReportMetric(ours/raw, "ratio")
	}
}

// BenchmarkRebuild1M builds a log of 1,000,000 single-op entries (1,000,000
// records), then measures the state digest and the maintenance rebuild
// (clear the state, replay every log entry, digest again), with peak heap.
func BenchmarkRebuild1M(b *testing.B) {
	const total, batch = 1_000_000, 1000
	k := keys{"a": newKey(b)}
	c := openCore(b, b.TempDir(), "a", k, true)
	defer c.close()
	txs := make([][]wire.Op, 0, batch)
	for i := 0; i < total; i++ {
		txs = append(txs, patient(i))
		if len(txs) == batch {
			if _, err := c.log.WriteMany(context.Background(), txs); err != nil {
				b.Fatal(err)
			}
			txs = txs[:0]
		}
	}
	for b.Loop() {
		peak := trackPeakHeap()
		start := time.Now()
		before, err := c.st.Digest()
		if err != nil {
			b.Fatal(err)
		}
		digestSecs := time.Since(start).Seconds()
		start = time.Now()
		if err := c.st.Clear(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := c.log.Replay(context.Background(), c.st, 1000, nil); err != nil {
			b.Fatal(err)
		}
		after, err := c.st.Digest()
		if err != nil {
			b.Fatal(err)
		}
		rebuildSecs := time.Since(start).Seconds()
		if before != after {
			b.Fatalf("rebuild changed the digest: %s -> %s", before, after)
		}
		b.ReportMetric(digestSecs, "digest-s")
		b.ReportMetric(rebuildSecs, "rebuild+digest-s")
		b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
	}
}

// trackPeakHeap samples the heap until the returned function is called, and
// returns the highest in-use heap seen.
func trackPeakHeap() func() uint64 {
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(stop); <-done; return peak.Load() }
}
