package node

import (
	"sync"
	"time"
)

// Gossip budget: the node gossips each own entry once (a commit group's
// entries in one message), but every gossiped
// message costs memory for a while after it is sent (the publish queue,
// pubsub's message cache and seen-message map, the peers' outbound queues).
// A fast import or batch writer would otherwise keep hundreds of megabytes
// of them. Entries beyond the budget are not gossiped; peers fetch them by
// catch-up, in compressed batches, once a heartbeat shows this site's log
// ahead (as for the entries of an initial load).
const (
	// gossipRate is the sustained number of bytes of own entries gossiped
	// per second: about 24,000 entries of 250 bytes, far more than a
	// clinic's busiest writer, so live writes go by gossip, and enough for a
	// site writing flat out (about 15,000 tx/s each when three sites share
	// this 2-core machine; at 4 MiB a second, a third to a half of their
	// entries went by catch-up: docs/performance.md). What pubsub keeps of
	// them (its message cache holds a message for five heartbeats, a second
	// each, encoded only: the receiver drops the decoded entries once taken)
	// stays within about 30 MiB at each end.
	gossipRate = 6 << 20
	// gossipBurst is how many bytes may go at once after a quiet spell.
	gossipBurst = 4 << 20
	// gossipQueueBytes caps the encoded entries waiting to be published.
	gossipQueueBytes = 4 << 20
)

// gossipBudget is a token bucket of bytes to gossip, refilled at rate per
// second up to burst, on an injected clock.
type gossipBudget struct {
	rate, burst float64
	now         func() time.Time

	mu     sync.Mutex // guards the fields below
	tokens float64
	last   time.Time
}

func newGossipBudget(rate, burst float64, now func() time.Time) *gossipBudget {
	return &gossipBudget{rate: rate, burst: burst, now: now, tokens: burst}
}

// take reports whether n more bytes (one message) fit the budget now, and
// spends them. A message larger than the burst never fits.
func (b *gossipBudget) take(n int) bool {
	t := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && t.After(b.last) {
		b.tokens = min(b.burst, b.tokens+t.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || t.After(b.last) {
		b.last = t
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
