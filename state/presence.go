package state

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

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
//     to the filters (the one in use and the one being built) before it puts
//     the record in the batch;
//   - a filter being built is installed before anything else, so every apply
//     call that begins after that adds to it; of the calls begun before, only
//     the last can still be under way (calls run one at a time, each batch
//     committed or discarded before the next call begins), and the build
//     waits until a later call has begun, so that the last one's batch is
//     committed, before it opens the snapshot it scans;
//   - a reader asks only the filter in use, which is published once its scan
//     is complete.
//
// Prefetch asks after loading the count of apply calls begun, which it already
// does for its own argument (see ApplyPrefetched): the calls before that count
// have committed, and each added its keys before its commit; later calls'
// writes are read again by the apply, as for any read ahead.

// presenceBitsPerKey and presenceProbes give a false-positive rate of about
// 1 % for a filter at its capacity (a blocked filter: all probes of a key in
// one 512-bit block, one cache line).
const (
	presenceBitsPerKey = 10
	presenceProbes     = 6
	presenceMinKeys    = 1 << 16 // the smallest capacity: 80 KiB
	blockWords         = 8       // 512 bits
)

// presence is one Bloom filter of record keys. add and mayHold are safe for
// concurrent use.
type presence struct {
	seed     maphash.Seed
	words    []atomic.Uint64
	blocks   uint64
	capacity uint64        // keys it was sized for
	adds     atomic.Uint64 // keys added (a key written again counts again)
	full     chan struct{} // closed once adds exceed capacity: time to build a larger one
}

func newPresence(capacity uint64) *presence {
	capacity = max(capacity, 1)
	blocks := (capacity*presenceBitsPerKey + 511) / 512
	return &presence{
		seed:     maphash.MakeSeed(),
		words:    make([]atomic.Uint64, blocks*blockWords),
		blocks:   blocks,
		capacity: capacity,
		full:     make(chan struct{}),
	}
}

// probes returns the block of key's bits and the hash its bits come from.
func (p *presence) probes(key []byte) (block uint64, h uint64) {
	h = maphash.Bytes(p.seed, key)
	block, _ = bits.Mul64(h, p.blocks) // h scaled into [0, blocks)
	// The block took the high bits; the probes take 9 bits each of a
	// remix of h, so that keys sharing a block do not share their probes.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return block * blockWords, h
}

func (p *presence) add(key []byte) {
	base, h := p.probes(key)
	var mask [blockWords]uint64
	for range presenceProbes {
		bit := h & 511
		mask[bit/64] |= 1 << (bit % 64)
		h >>= 9
	}
	for i, m := range mask {
		if w := &p.words[base+uint64(i)]; m != 0 && w.Load()&m != m {
			w.Or(m)
		}
	}
	if p.adds.Add(1) == p.capacity+1 {
		close(p.full)
	}
}

// mayHold reports whether a record may have been stored under key: false
// means it never was, since the filter's scan.
func (p *presence) mayHold(key []byte) bool {
	base, h := p.probes(key)
	for range presenceProbes {
		bit := h & 511
		if p.words[base+bit/64].Load()&(1<<(bit%64)) == 0 {
			return false
		}
		h >>= 9
	}
	return true
}

// noteStored adds key to the filters: called before a record is put under it.
func (s *State) noteStored(key []byte) {
	if p := s.present.Load(); p != nil {
		p.add(key)
	}
	if p := s.building.Load(); p != nil {
		p.add(key)
	}
}

// neverStored reports whether the filter in use says no record was ever
// stored under key (false when no filter is in use yet).
func (s *State) neverStored(key []byte) bool {
	p := s.present.Load()
	return p != nil && !p.mayHold(key)
}

// KeepPresence builds the presence filter once the node writes records of
// its own (the first Prefetch: a site that only receives, a backup say, or a
// node that only serves a catch-up, reads its records with one iterator per
// run and gains little from it), publishes it, and builds a larger one each
// time the records written outgrow it, until ctx ends. Until the first is
// published every read is made. A node runs it on a goroutine of its own (a
// site; a relay's state is empty); the filter stays correct after it returns,
// since apply calls keep adding to it. It returns ctx's error, or a store
// error (the filter then stays as it was).
func (s *State) KeepPresence(ctx context.Context) error {
	if !s.prefetches.Load() {
		select {
		case <-s.ownWrites:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		if err := s.buildPresence(ctx); err != nil {
			return err
		}
		select {
		case <-s.present.Load().full:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// buildPresence builds a filter sized for twice the records stored and
// publishes it.
func (s *State) buildPresence(ctx context.Context) error {
	c, err := loadCounts(s.db, "presence")
	if err != nil {
		return fmt.Errorf("state: presence filter: %w", err)
	}
	next := newPresence(max(2*c.Records, s.presenceMin))
	s.building.Store(next)
	defer s.building.Store(nil)
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
	s.present.Store(next)
	s.log.Debug("presence filter built", "records", n, "capacity", next.capacity)
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
