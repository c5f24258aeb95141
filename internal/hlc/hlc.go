// Package hlc is a hybrid logical clock: timestamps that follow wall-clock time
// but never go backwards and always exceed every timestamp seen from a peer, so
// that "later" in ppsync's last-writer-wins order respects causality even when
// machines' clocks disagree.
//
// A timestamp packs milliseconds since the Unix epoch into the high 48 bits and
// a logical counter into the low 16 bits.
package hlc

import (
	"sync"
	"time"
)

const logicalBits = 16

// Timestamp is a packed hybrid logical clock value.
type Timestamp uint64

// Make packs a wall time in milliseconds and a logical counter.
func Make(ms int64, logical uint16) Timestamp {
	return Timestamp(uint64(ms)<<logicalBits | uint64(logical))
}

// Millis returns the wall-clock part in milliseconds since the Unix epoch.
func (t Timestamp) Millis() int64 { return int64(uint64(t) >> logicalBits) }

// Logical returns the logical counter.
func (t Timestamp) Logical() uint16 { return uint16(t) }

// Time returns the wall-clock part as a time.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.Millis()).UTC() }

// Clock issues timestamps. It is safe for concurrent use.
type Clock struct {
	now func() time.Time

	mu   sync.Mutex
	last Timestamp
}

// New returns a clock that reads wall time from now (time.Now in production,
// a fake in tests).
func New(now func() time.Time) *Clock { return &Clock{now: now} }

func (c *Clock) wall() Timestamp { return Make(c.now().UnixMilli(), 0) }

// Now returns a timestamp greater than every one issued or observed before.
func (c *Clock) Now() Timestamp {
	w := c.wall()
	c.mu.Lock()
	defer c.mu.Unlock()
	if w > c.last {
		c.last = w
	} else {
		c.last++ // a full logical counter carries into the millisecond, keeping order
	}
	return c.last
}

// Observe merges a timestamp seen from a peer, so that the next Now is later.
// It returns how far the timestamp is ahead of this machine's wall clock
// (zero or negative when it is not ahead), which callers use to report skew.
func (c *Clock) Observe(t Timestamp) time.Duration {
	w := c.wall()
	c.mu.Lock()
	if t > c.last {
		c.last = t
	}
	c.mu.Unlock()
	return time.Duration(t.Millis()-w.Millis()) * time.Millisecond
}

// Last returns the newest timestamp issued or observed.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
