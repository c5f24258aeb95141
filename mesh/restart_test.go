package mesh

import (
	"testing"
	"time"
)

// A member grafted into the gossip mesh of the groups topic hears this
// node's heartbeat soon, not at its next interval: what reached this node
// before the mesh formed (a site's write just after a relay restarted,
// forwarded to no one) is fetched by whoever lacks it as soon as the
// heartbeat shows it. With an interval of an hour, B hears A's heartbeat
// twice: once as it joins A's heartbeat topic, once as it is grafted.
func TestGraftBringsHeartbeatSoon(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	slow := func(c *Config) { c.HeartbeatInterval = time.Hour }
	a := startNode(t, ia, newFamily(testFamily, ia, ib), nil, slow)
	b := startNode(t, ib, newFamily(testFamily, ia, ib), nil, func(c *Config) {
		slow(c)
		c.Bootstrap = a.m.Addrs()
	})
	waitGossip(t, a, b)
	waitFor(t, "B hears A's heartbeat on joining and on being grafted", func() bool {
		return len(b.h.heartbeatsFrom(ia.id)) >= 2
	})
}
