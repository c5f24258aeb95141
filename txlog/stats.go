package txlog

import (
	"slices"
	"sync/atomic"
	"time"
)

// syncBuckets are the upper bounds of the sync durations SyncStats counts
// (see SyncBucketBounds).
var syncBuckets = [...]time.Duration{
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
}

// SyncBucketBounds returns the upper bounds of the sync durations SyncStats
// counts: Buckets[i] counts the syncs that took at most SyncBucketBounds()[i]
// (and more than the bound before it); the last bucket, the longer ones. A
// clinic's SSD syncs in well under a millisecond to a few; a disk that takes
// tens of them slows every write the practice makes.
func SyncBucketBounds() []time.Duration { return slices.Clone(syncBuckets[:]) }

// SyncStats are the figures of the syncs that made the log's groups durable
// since it opened: how often the disk was asked to save, how long it took,
// and how many entries each sync carried (group commit takes in what arrives
// while the previous sync runs).
type SyncStats struct {
	Syncs   uint64                       // syncs made
	Entries uint64                       // entries they made durable
	Time    time.Duration                // their durations, in all
	Buckets [len(syncBuckets) + 1]uint64 // syncs by duration, see SyncBucketBounds
}

// syncStats is where the syncer counts; read by SyncStats at any time.
type syncStats struct {
	syncs, entries, nanos atomic.Uint64
	buckets               [len(syncBuckets) + 1]atomic.Uint64
}

// add counts one sync of batch that took d (a failed one too: the disk
// took that long to fail).
func (s *syncStats) add(batch []*pending, d time.Duration) {
	n := 0
	for _, p := range batch {
		if len(p.grp) > 0 {
			n += p.n
		}
	}
	s.syncs.Add(1)
	s.entries.Add(uint64(n))
	s.nanos.Add(uint64(max(d, 0)))
	i := 0
	for i < len(syncBuckets) && d > syncBuckets[i] {
		i++
	}
	s.buckets[i].Add(1)
}

// SyncStats returns the figures of the log's syncs since it opened. The
// fields are read one after another while syncs go on, so they may be a
// sync apart.
func (l *Log) SyncStats() SyncStats {
	s := &l.syncs
	out := SyncStats{Syncs: s.syncs.Load(), Entries: s.entries.Load(), Time: time.Duration(s.nanos.Load())}
	for i := range s.buckets {
		out.Buckets[i] = s.buckets[i].Load()
	}
	return out
}
