package mesh

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Limits bound what one family may take of a host it shares with other
// families (a relay), so that one family's flood or bug cannot starve the
// others. Exceeding one refuses the one connection, stream, session or
// message that would go over (it is counted under "limit_..." in
// Rejections and logged at most once a minute), never the family. Zero means
// no limit: a site's node serves one family and needs none.
type Limits struct {
	Conns    int     // connections to the family's members at once
	Streams  int     // streams the family's members open to this node at once (gossip's included)
	Catchups int     // catch-up sessions served to the family's members at once
	Gossip   float64 // gossip messages (entries and heartbeats) taken from the family per second, bursts of 2 s
}

// RelayLimits are the limits a relay serving many families gives each of
// them unless configured otherwise: far above what a practice of a few
// sites needs (a family absorbs some 15,000 entries a second at most), far
// below what would let one family take the whole host.
func RelayLimits() Limits {
	return Limits{Conns: 64, Streams: 1024, Catchups: 8, Gossip: 50000}
}

// Validate reports a limit that cannot be meant.
func (l Limits) Validate() error {
	if l.Conns < 0 || l.Streams < 0 || l.Catchups < 0 || l.Gossip < 0 {
		return fmt.Errorf("mesh: a family's limits must not be negative (%+v); 0 means no limit", l)
	}
	return nil
}

// limitHit counts a refusal at a family's limit and logs it at most once a
// minute per kind.
func (m *Mesh) limitHit(kind string, limit any) {
	now := m.cfg.Now()
	m.mu.Lock()
	m.counts["limit_"+kind]++
	if m.limitLogged == nil {
		m.limitLogged = map[string]time.Time{}
	}
	last := m.limitLogged[kind]
	log := now.Sub(last) >= time.Minute
	if log {
		m.limitLogged[kind] = now
	}
	m.mu.Unlock()
	if log {
		m.log.Warn("the family reached one of its limits on this node; what went over is refused and tried again later",
			"family", m.cfg.Family.ID(), "limit", kind, "value", limit)
	}
}

// overConns reports whether one more connection to a member would go over
// the family's connection limit.
func (m *Mesh) overConns() bool {
	if m.cfg.Limits.Conns <= 0 {
		return false
	}
	m.mu.Lock()
	n := len(m.conns)
	m.mu.Unlock()
	if n >= m.cfg.Limits.Conns {
		m.limitHit("conns", m.cfg.Limits.Conns)
		return true
	}
	return false
}

// enterStream counts one more stream a member opened to this node; false if
// it would go over the family's stream limit. leaveStream ends it.
func (m *Mesh) enterStream() bool {
	if m.cfg.Limits.Streams <= 0 {
		return true
	}
	m.mu.Lock()
	over := m.streams >= m.cfg.Limits.Streams
	if !over {
		m.streams++
	}
	m.mu.Unlock()
	if over {
		m.limitHit("streams", m.cfg.Limits.Streams)
	}
	return !over
}

func (m *Mesh) leaveStream() {
	if m.cfg.Limits.Streams <= 0 {
		return
	}
	m.mu.Lock()
	m.streams--
	m.mu.Unlock()
}

// takeGossip reports whether one more gossip message of the family may be
// taken now.
func (m *Mesh) takeGossip() bool {
	if m.cfg.Limits.Gossip <= 0 {
		return true
	}
	now := m.cfg.Now()
	m.mu.Lock()
	if m.gossipBucket == nil {
		m.gossipBucket = &bucket{tokens: 2 * m.cfg.Limits.Gossip, at: now, rate: m.cfg.Limits.Gossip, burst: 2 * m.cfg.Limits.Gossip}
	}
	ok := m.gossipBucket.take(now)
	m.mu.Unlock()
	if !ok {
		m.limitHit("gossip", m.cfg.Limits.Gossip)
	}
	return ok
}

const (
	// maxServing is how many catch-up sessions a peer may have served at
	// once; a third is refused.
	maxServing = 2
	// startBurst and startRate bound how often a peer may start catch-up
	// sessions: startBurst at once, then startRate per second.
	startBurst = 20
	startRate  = 5.0
	// maxBuckets bounds the rate limit's memory (one bucket per peer).
	maxBuckets = 4096
)

// bucket is a token bucket: it holds up to burst tokens and gains rate per
// second (startBurst and startRate when zero); each use takes one.
type bucket struct {
	tokens      float64
	at          time.Time // when tokens was last brought up to date
	rate, burst float64
}

// take brings the bucket up to now and takes one token if there is one.
func (b *bucket) take(now time.Time) bool {
	rate, burst := b.rate, b.burst
	if rate == 0 {
		rate, burst = startRate, startBurst
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// startServing decides whether p may start one more catch-up session now.
// It returns why not, in plain words, or "" and counts the session; the
// caller calls stopServing when it ends.
func (m *Mesh) startServing(p peer.ID) string {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.serving[p] >= maxServing {
		m.counts["catchup_busy"]++
		return "this node already serves 2 catch-up sessions to this peer; try again when one has ended"
	}
	if lim := m.cfg.Limits.Catchups; lim > 0 && m.servingAll >= lim {
		m.mu.Unlock()
		m.limitHit("catchups", lim)
		m.mu.Lock()
		return fmt.Sprintf("this node already serves the family's limit of %d catch-up sessions; try again when one has ended", lim)
	}
	b := m.starts[p]
	if b == nil {
		if len(m.starts) >= maxBuckets {
			m.pruneBucketsLocked(now)
		}
		b = &bucket{tokens: startBurst, at: now}
		m.starts[p] = b
	}
	if !b.take(now) {
		m.counts["catchup_rate_limited"]++
		return "this peer starts catch-up sessions too often; try again in a second"
	}
	m.serving[p]++
	m.servingAll++
	return ""
}

func (m *Mesh) stopServing(p peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.servingAll--
	if m.serving[p]--; m.serving[p] <= 0 {
		delete(m.serving, p)
	}
}

// pruneBucketsLocked drops the buckets that are full again (their peers are
// as good as new).
func (m *Mesh) pruneBucketsLocked(now time.Time) {
	for p, b := range m.starts {
		if b.tokens+now.Sub(b.at).Seconds()*startRate >= startBurst {
			delete(m.starts, p)
		}
	}
}
