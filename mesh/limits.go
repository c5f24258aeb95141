package mesh

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

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

// bucket is a token bucket: it holds up to startBurst tokens and gains
// startRate per second; starting a session takes one.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// take brings the bucket up to now and takes one token if there is one.
func (b *bucket) take(now time.Time) bool {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(startBurst, b.tokens+d.Seconds()*startRate)
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
	return ""
}

func (m *Mesh) stopServing(p peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
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
