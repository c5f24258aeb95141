package mesh

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

const dialTimeout = 10 * time.Second

// dialLoop keeps this node connected to the family: it dials the bootstrap
// addresses, reserves a slot on each relay (sites), and dials every member it
// is not connected to, directly or through a relay.
func (m *Mesh) dialLoop() {
	reservations := map[peer.ID]time.Time{} // relay -> reservation expiry
	t := time.NewTicker(m.cfg.RedialInterval)
	defer t.Stop()
	for {
		m.dialRound(reservations)
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		case <-m.redial:
		}
	}
}

// Redial asks the dial loop to run a round now (Sync Now, a new member).
func (m *Mesh) Redial() {
	select {
	case m.redial <- struct{}{}:
	default:
	}
}

func (m *Mesh) dialRound(reservations map[peer.ID]time.Time) {
	for _, ai := range m.bootAIs {
		if ai.ID == m.host.ID() || m.connected(ai.ID) {
			continue
		}
		m.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
		m.connect(peer.AddrInfo{ID: ai.ID, Addrs: ai.Addrs})
	}
	relays := m.relays()
	if !m.cfg.Relay {
		for _, r := range relays {
			if exp, ok := reservations[r.ID]; ok && time.Until(exp) > 10*time.Minute {
				continue
			}
			ctx, cancel := context.WithTimeout(m.ctx, dialTimeout)
			rsv, err := client.Reserve(ctx, m.host, r)
			cancel()
			if err != nil {
				m.log.Debug("relay reservation failed", "relay", r.ID, "err", err)
				continue
			}
			reservations[r.ID] = rsv.Expiration
			m.log.Debug("relay slot reserved", "relay", r.ID, "until", rsv.Expiration)
		}
	}
	for _, mem := range m.cfg.Family.Members() {
		p := mem.PeerID
		if p == m.host.ID() || m.connected(p) {
			continue
		}
		if addrs := m.host.Peerstore().Addrs(p); len(addrs) > 0 && m.connect(peer.AddrInfo{ID: p, Addrs: addrs}) {
			continue
		}
		for _, r := range relays {
			if r.ID == p {
				continue
			}
			var circ []ma.Multiaddr
			for _, a := range r.Addrs {
				if strings.Contains(a.String(), "/p2p-circuit") {
					continue
				}
				c, err := ma.NewMultiaddr(a.String() + "/p2p/" + r.ID.String() + "/p2p-circuit")
				if err == nil {
					circ = append(circ, c)
				}
			}
			if len(circ) > 0 && m.connect(peer.AddrInfo{ID: p, Addrs: circ}) {
				break
			}
		}
	}
}

// relays returns the relay members this node is connected to, with addresses.
func (m *Mesh) relays() []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, mem := range m.cfg.Family.Members() {
		if !mem.Relay || mem.PeerID == m.host.ID() || !m.connected(mem.PeerID) {
			continue
		}
		var addrs []ma.Multiaddr
		for _, c := range m.host.Network().ConnsToPeer(mem.PeerID) {
			if !isRelayed(c) {
				addrs = append(addrs, c.RemoteMultiaddr())
			}
		}
		if len(addrs) == 0 {
			continue
		}
		out = append(out, peer.AddrInfo{ID: mem.PeerID, Addrs: addrs})
	}
	return out
}

func (m *Mesh) connect(ai peer.AddrInfo) bool {
	ctx, cancel := context.WithTimeout(m.ctx, dialTimeout)
	defer cancel()
	if err := m.host.Connect(ctx, ai); err != nil {
		m.log.Debug("dial failed", "peer", ai.ID, "err", err)
		return false
	}
	return true
}

func (m *Mesh) connected(p peer.ID) bool {
	c := m.host.Network().Connectedness(p)
	return c == network.Connected || c == network.Limited
}

func isRelayed(c network.Conn) bool {
	_, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// PeerInfo describes one member as this node sees it.
type PeerInfo struct {
	Member    Member
	Connected bool
	Via       string // "direct", "relay" or "" when not connected
	LastSeen  time.Time
	Heartbeat *Heartbeat
}

// Peers lists every current member but this node, by site.
func (m *Mesh) Peers() []PeerInfo {
	var out []PeerInfo
	for _, mem := range m.cfg.Family.Members() {
		if mem.PeerID == m.host.ID() {
			continue
		}
		pi := PeerInfo{Member: mem}
		m.mu.Lock()
		if ps := m.peers[mem.PeerID]; ps != nil {
			pi.LastSeen, pi.Heartbeat = ps.lastSeen, ps.heartbeat
			pi.Connected = ps.hello
		}
		m.mu.Unlock()
		pi.Connected = pi.Connected && m.connected(mem.PeerID)
		if pi.Connected {
			pi.Via = "relay"
			for _, c := range m.host.Network().ConnsToPeer(mem.PeerID) {
				if !isRelayed(c) {
					pi.Via = "direct"
					break
				}
			}
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Member.Site < out[j].Member.Site })
	return out
}

// startMDNS announces this node on the LAN and dials members found there.
func (m *Mesh) startMDNS() error {
	id := m.cfg.Family.ID()
	if len(id) > 12 {
		id = id[:12]
	}
	svc := mdns.NewMdnsService(m.host, "_ppsync-"+id+"._udp", mdnsNotifee{m: m})
	if err := svc.Start(); err != nil {
		return err
	}
	m.goTracked(func() {
		<-m.ctx.Done()
		svc.Close()
	})
	return nil
}

type mdnsNotifee struct{ m *Mesh }

func (n mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == n.m.host.ID() || n.m.connected(ai.ID) {
		return
	}
	if _, ok := n.m.cfg.Family.Member(ai.ID); !ok {
		return
	}
	n.m.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
	n.m.goTracked(func() { n.m.connect(ai) })
}
