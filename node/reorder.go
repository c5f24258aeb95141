package node

import (
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// Gossip delivers entries out of order now and then: the mesh checks
// messages on several cores at once, and with three or more members an entry
// can come by two paths. An entry that arrives before its predecessor is held
// here for a moment instead of being dropped; when the predecessor lands, the
// held ones follow it into the log. Only a gap that stays open longer than
// gapWait starts a catch-up session, which fetches the range anyway.
const (
	gapWait         = 50 * time.Millisecond
	reorderMax      = 4096     // entries held at most, all sites together
	reorderMaxBytes = 16 << 20 // and bytes
)

// heldEntry is one gossiped entry waiting for its predecessor.
type heldEntry struct {
	e    *wire.Signed
	from peer.ID
	at   time.Time
	size int
}

// reorder holds gossiped entries that arrived ahead of the log. It has no
// goroutines and no clock: callers pass the time. Safe for concurrent use.
type reorder struct {
	mu    sync.Mutex
	sites map[string]map[uint64]heldEntry
	n     int
	bytes int
	armed bool // a gap check is scheduled (see arm)
}

func newReorder() *reorder { return &reorder{sites: map[string]map[uint64]heldEntry{}} }

// hold keeps e, received from a peer at now, until its predecessor arrives.
// It reports false when the buffer is full (the caller then fetches the gap
// at once); an entry already held for that (site, seq) is kept as it is.
func (r *reorder) hold(e *wire.Signed, from peer.ID, now time.Time) bool {
	size := len(e.Body) + len(e.Sig) + 64
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.sites[e.Site]
	if _, ok := m[e.Seq]; ok {
		return true
	}
	if r.n+1 > reorderMax || r.bytes+size > reorderMaxBytes {
		return false
	}
	if m == nil {
		m = map[uint64]heldEntry{}
		r.sites[e.Site] = m
	}
	m[e.Seq] = heldEntry{e: e, from: from, at: now, size: size}
	r.n++
	r.bytes += size
	return true
}

// holdRun holds every entry of a gossiped run; it reports false (holding
// what it could) when the buffer is full.
func (r *reorder) holdRun(run []*wire.Signed, from peer.ID, now time.Time) bool {
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
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.sites[site]
	if len(m) == 0 {
		return heldEntry{}, false
	}
	for seq := range m {
		if seq <= head {
			r.dropLocked(site, seq)
		}
	}
	h, ok := m[head+1]
	if !ok {
		return heldEntry{}, false
	}
	r.dropLocked(site, head+1)
	return h, true
}

// expired drops every held entry that has waited gapWait or longer while its
// site's log still lacks its predecessor, and every entry the log holds by
// now; it returns the peers that sent the expired ones, to catch up with, in
// order. head (the log's) is called without the buffer's lock held.
func (r *reorder) expired(now time.Time, head func(site string) uint64) []peer.ID {
	r.mu.Lock()
	sites := make([]string, 0, len(r.sites))
	for site := range r.sites {
		sites = append(sites, site)
	}
	r.mu.Unlock()
	heads := make(map[string]uint64, len(sites))
	for _, site := range sites {
		heads[site] = head(site)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []peer.ID
	seen := map[peer.ID]bool{}
	for site, m := range r.sites {
		h, ok := heads[site]
		if !ok { // held since the heads were read: looked at next time
			continue
		}
		for seq, e := range m {
			switch {
			case seq <= h:
				r.dropLocked(site, seq)
			case now.Sub(e.at) >= gapWait:
				r.dropLocked(site, seq)
				if !seen[e.from] {
					seen[e.from] = true
					out = append(out, e.from)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func (r *reorder) dropLocked(site string, seq uint64) {
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

// arm reports whether the caller should schedule a gap check: true once
// while entries are held and no check is pending. disarm, called by the
// check, reports whether entries remain (and a new check is due).
func (r *reorder) arm() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.armed || r.n == 0 {
		return false
	}
	r.armed = true
	return true
}

func (r *reorder) disarm() (more bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = false
	return r.n > 0
}

// len returns the number of entries held.
func (r *reorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}
