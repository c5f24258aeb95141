package state

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/cpu"

	"github.com/ppsync/ppsync/internal/store"
)

// The presence filter says of a record key that no record was ever stored
// under it, or that one may have been: a Bloom filter over every record key
// the state held when it was built and every key an apply call wrote since.
// A read of a record that the filter says was never stored is skipped: most
// writes of a clinic create records (an appointment, a note, an invoice), and
// each such read was a miss that went through every level of the store (a
// writer's read ahead, the committer's read, or a seek of a catch-up run).
//
// A filter only ever gains keys; deleting a record or Clear leaves its key in,
// which costs a read, never a wrong answer. What the answer must never be is
// "never stored" for a record the store or the batch being applied holds.
// The argument:
//   - every record key is written in one place, applyOp, which adds the key
//     to the filter (built, or being built) before it puts the record in the
//     batch;
//   - a filter being built is installed before anything else, so every apply
//     call that begins after that adds to it; of the calls begun before, only
//     the last can still be under way (calls run one at a time, each batch
//     committed or discarded before the next call begins), and the build
//     waits until a later call has begun, so that the last one's batch is
//     committed, before it opens the snapshot it scans;
//   - a reader asks the filter only once its scan is complete;
//   - a filter that grows appends a layer and never drops one, and a reader
//     asks every layer, so a key lands in a layer a reader asks whichever
//     layer was newest when it was added.
//
// Prefetch asks after loading the count of apply calls begun, which it already
// does for its own argument (see ApplyPrefetched): the calls before that count
// have committed, and each added its keys before its commit; later calls'
// writes are read again by the apply, as for any read ahead.

// presenceBitsPerKey and presenceProbes give a false-positive rate of about
// 1 % for a layer at its capacity (a blocked filter: all probes of a key in
// one 512-bit block, one cache line).
const (
	presenceBitsPerKey = 10
	presenceProbes     = 6
	presenceMinKeys    = 1 << 16 // the smallest first layer: 80 KiB
	blockWords         = 8       // 512 bits
)

// presence is a Bloom filter of record keys that grows without reading the
// store again: once its newest layer holds as many keys as it was sized for,
// a layer twice as large takes the keys added next, and a key is held if any
// layer holds it. (A node starting with many records sizes its first layer
// for twice their number, so layers are added only as records grow; each
// adds about 1 % of false positives at its capacity.) add and mayHold are
// safe for concurrent use.
type presence struct {
	seed   maphash.Seed
	layers atomic.Pointer[[]*presenceLayer] // oldest first; only ever appended to
	grow   sync.Mutex                       // held to append a layer
}

type presenceLayer struct {
	words    []atomic.Uint64
	blocks   uint64
	capacity uint64 // keys it was sized for
	// adds counts the keys added to it (not those whose bits were all set),
	// on a cache line of its own: every add writes it, and readers on other
	// cores would otherwise fetch the line of words and blocks again each time.
	_    cpu.CacheLinePad
	adds atomic.Uint64
	_    cpu.CacheLinePad
}

func newPresence(capacity uint64) *presence {
	p := &presence{seed: maphash.MakeSeed()}
	layers := []*presenceLayer{newPresenceLayer(capacity)}
	p.layers.Store(&layers)
	return p
}

func newPresenceLayer(capacity uint64) *presenceLayer {
	capacity = max(capacity, 1)
	blocks := (capacity*presenceBitsPerKey + 511) / 512
	return &presenceLayer{words: make([]atomic.Uint64, blocks*blockWords), blocks: blocks, capacity: capacity}
}

// capacity is the keys the filter holds at about 1 % false positives per
// layer: the sum of its layers'.
func (p *presence) capacity() uint64 {
	var c uint64
	for _, l := range *p.layers.Load() {
		c += l.capacity
	}
	return c
}

// hash returns key's hash: the block of each layer comes from it and the
// probes within the block from a remix of it (remix), so that keys sharing a
// block do not share their probes.
func (p *presence) hash(key []byte) uint64 { return maphash.Bytes(p.seed, key) }

func remix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	return h ^ h>>33
}

// block returns the index of the first word of h's block in l.
func (l *presenceLayer) block(h uint64) uint64 {
	b, _ := bits.Mul64(h, l.blocks) // h scaled into [0, blocks)
	return b * blockWords
}

func (p *presence) add(key []byte) {
	h := p.hash(key)
	layers := *p.layers.Load()
	l := layers[len(layers)-1]
	base := l.block(h)
	added := false // a key whose bits are all set already (written again) is not counted
	for i, x := 0, remix(h); i < presenceProbes; i, x = i+1, x>>9 {
		bit := x & 511
		if w, m := &l.words[base+bit/64], uint64(1)<<(bit%64); w.Load()&m == 0 {
			w.Or(m)
			added = true
		}
	}
	if added && l.adds.Add(1) == l.capacity {
		p.addLayer(l)
	}
}

// addLayer appends a layer twice as large as full, the newest layer, which
// holds as many keys as it was sized for.
func (p *presence) addLayer(full *presenceLayer) {
	p.grow.Lock()
	defer p.grow.Unlock()
	layers := *p.layers.Load()
	if layers[len(layers)-1] != full {
		return
	}
	grown := append(layers[:len(layers):len(layers)], newPresenceLayer(2*full.capacity))
	p.layers.Store(&grown)
}

// mayHold reports whether a record may have been stored under key: false
// means it never was, since the filter's scan.
func (p *presence) mayHold(key []byte) bool {
	h := p.hash(key)
	probes := remix(h)
	for _, l := range *p.layers.Load() {
		if l.holds(l.block(h), probes) {
			return true
		}
	}
	return false
}

func (l *presenceLayer) holds(base, x uint64) bool {
	for range presenceProbes {
		bit := x & 511
		if l.words[base+bit/64].Load()&(1<<(bit%64)) == 0 {
			return false
		}
		x >>= 9
	}
	return true
}

// noteStored adds key to the filter, if one is built or being built: called
// before a record is put under it.
func (s *State) noteStored(key []byte) {
	if p := s.filter.Load(); p != nil {
		p.add(key)
	}
}

// inUse returns the filter readers may ask: nil until its scan is complete.
func (s *State) inUse() *presence {
	if !s.filterReady.Load() {
		return nil
	}
	return s.filter.Load()
}

// neverStored reports whether the filter in use says no record was ever
// stored under key (false when no filter is in use yet).
func (s *State) neverStored(key []byte) bool {
	p := s.inUse()
	return p != nil && !p.mayHold(key)
}

// BuildPresence builds the presence filter once the node writes records of
// its own (the first Prefetch: a site that only receives, a backup say, or a
// node that only serves a catch-up, reads its records with one iterator per
// run and gains little from it) and publishes it; the filter then grows as
// records are written, without reading the store again. Until it is
// published every read is made. A node runs it on a goroutine of its own (a
// site; a relay's state is empty). It returns once the filter is published,
// or ctx's error, or a store error (no filter is then used).
func (s *State) BuildPresence(ctx context.Context) error {
	select {
	case <-s.ownWrites:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.buildPresence(ctx)
}

// buildPresence builds a filter sized for twice the records stored and
// publishes it.
func (s *State) buildPresence(ctx context.Context) error {
	c, err := loadCounts(s.db, "presence")
	if err != nil {
		return fmt.Errorf("state: presence filter: %w", err)
	}
	next := newPresence(max(2*c.Records, s.presenceMin))
	s.filter.Store(next) // from here every apply call adds to it
	ready := false
	defer func() {
		if !ready {
			s.filter.Store(nil)
		}
	}()
	if err := s.awaitLaterCall(ctx, s.applies.Load()); err != nil {
		return err
	}
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{
		LowerBound: []byte{store.PrefixState, spaceRecord},
		UpperBound: []byte{store.PrefixState, spaceRecord + 1},
	})
	if err != nil {
		return fmt.Errorf("state: presence filter: %w", err)
	}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		next.add(it.Key())
		if n++; n%4096 == 0 && ctx.Err() != nil {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("state: presence filter: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ready = true
	s.filterReady.Store(true)
	s.log.Debug("presence filter built", "records", n, "capacity", next.capacity())
	return nil
}

// awaitLaterCall returns once the apply call numbered begun, if one began, is
// over: its batch committed or discarded, which the next call's beginning
// shows. With begun 0 no call has begun and there is nothing to wait for.
func (s *State) awaitLaterCall(ctx context.Context, begun uint64) error {
	for begun != 0 && s.applies.Load() <= begun {
		select {
		case <-s.callBegun:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
