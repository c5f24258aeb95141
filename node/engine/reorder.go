package engine

import (
	"slices"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// Gossip delivers entries out of order now and then: with three or more
// members an entry can come by two paths. An entry that arrives before its predecessor is held
// in the reorder buffer for a moment instead of being dropped; when the
// predecessor lands, the held ones follow it into the log. Only a gap that
// stays open longer than GapWait starts a catch-up session, which fetches the
// range anyway.
const (
	DefaultGapWait  = 50 * time.Millisecond
	ReorderMax      = 4096     // entries held at most, all sites together
	ReorderMaxBytes = 16 << 20 // and bytes
)

// heldEntry is one gossiped entry waiting for its predecessor.
type heldEntry struct {
	e    *wire.Signed
	from string
	at   time.Time
	size int
}

// reorder holds gossiped entries that arrived ahead of the log. It is part of
// the engine: no goroutines, no clock, no lock.
type reorder struct {
	sites    map[string]map[uint64]heldEntry
	n        int
	bytes    int
	maxN     int
	maxBytes int
	oldest   time.Time // no later than the oldest held entry's arrival
}

func newReorder(maxN, maxBytes int) *reorder {
	return &reorder{sites: map[string]map[uint64]heldEntry{}, maxN: maxN, maxBytes: maxBytes}
}

// hold keeps e, received from a peer at now, until its predecessor arrives.
// It reports false when the buffer is full (the caller then fetches the gap
// at once); an entry already held for that (site, seq) is kept as it is.
func (r *reorder) hold(e *wire.Signed, from string, now time.Time) bool {
	size := len(e.Body) + len(e.Sig) + 64
	m := r.sites[e.Site]
	if _, ok := m[e.Seq]; ok {
		return true
	}
	if r.n+1 > r.maxN || r.bytes+size > r.maxBytes {
		return false
	}
	if m == nil {
		m = map[uint64]heldEntry{}
		r.sites[e.Site] = m
	}
	m[e.Seq] = heldEntry{e: e, from: from, at: now, size: size}
	if r.n == 0 || now.Before(r.oldest) {
		r.oldest = now
	}
	r.n++
	r.bytes += size
	return true
}

// holdRun holds every entry of a gossiped run; it reports false (holding
// what it could) when the buffer is full.
func (r *reorder) holdRun(run []*wire.Signed, from string, now time.Time) bool {
	for _, e := range run {
		if !r.hold(e, from, now) {
			return false
		}
	}
	return true
}

// next drops the entries of site the log already holds (seq <= head) and
// takes out the one that extends it (head+1), if held.
func (r *reorder) next(site string, head uint64) (heldEntry, bool) {
	m := r.sites[site]
	if len(m) == 0 {
		return heldEntry{}, false
	}
	for seq := range m {
		if seq <= head {
			r.drop(site, seq)
		}
	}
	h, ok := m[head+1]
	if !ok {
		return heldEntry{}, false
	}
	r.drop(site, head+1)
	return h, true
}

// expired drops every held entry that has waited wait or longer while its
// site's log still lacks its predecessor, and every entry the log holds by
// now; it returns the peers that sent the expired ones, to catch up with, in
// order.
func (r *reorder) expired(now time.Time, wait time.Duration, head func(site string) uint64) []string {
	var out []string
	seen := map[string]bool{}
	oldest := time.Time{}
	for site, m := range r.sites {
		h := head(site)
		for seq, e := range m {
			switch {
			case seq <= h:
				r.drop(site, seq)
			case now.Sub(e.at) >= wait:
				r.drop(site, seq)
				if !seen[e.from] {
					seen[e.from] = true
					out = append(out, e.from)
				}
			default:
				if oldest.IsZero() || e.at.Before(oldest) {
					oldest = e.at
				}
			}
		}
	}
	r.oldest = oldest
	slices.Sort(out)
	return out
}

func (r *reorder) drop(site string, seq uint64) {
	m := r.sites[site]
	h, ok := m[seq]
	if !ok {
		return
	}
	delete(m, seq)
	if len(m) == 0 {
		delete(r.sites, site)
	}
	r.n--
	r.bytes -= h.size
}

// len returns the number of entries held.
func (r *reorder) len() int { return r.n }
