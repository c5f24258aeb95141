package mesh

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
)

// openStreams opens, in rm, one inbound stream of proto from each of n
// peers, each charged the initial window yamux charges a new stream
// (256 KiB), as members keeping a gossip stream to a relay are; it returns
// how many rm admitted and closes them all.
func openStreams(t *testing.T, rm network.ResourceManager, proto protocol.ID, n int) int {
	t.Helper()
	var open []network.StreamManagementScope
	defer func() {
		for _, s := range open {
			s.Done()
		}
	}()
	for i := range n {
		_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		p, err := peer.IDFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		s, err := rm.OpenStream(p, network.DirInbound)
		if err != nil {
			return i
		}
		open = append(open, s)
		if s.SetProtocol(proto) != nil || s.ReserveMemory(256<<10, network.ReservationPriorityAlways) != nil {
			return i
		}
	}
	return n
}

// A relay's resource manager admits the streams of thousands of members
// at once (here 5,000 sites, each with one gossip stream charged its whole
// window): libp2p's defaults, scaled to this machine, refuse them well
// before, whatever memory the process actually uses.
func TestRelayResourceManagerAdmitsThousandsOfMembers(t *testing.T) {
	const sites = 5000
	const gossip = protocol.ID("/meshsub/1.1.0")
	rm, err := relayResourceManager()
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	if got := openStreams(t, rm, gossip, sites); got != sites {
		t.Fatalf("the relay's resource manager admitted %d of %d members' gossip streams", got, sites)
	}

	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	def, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	got := openStreams(t, def, gossip, sites)
	if got == sites {
		t.Fatalf("libp2p's default limits admitted all %d streams too: this test no longer shows what the relay's limits are for", sites)
	}
	t.Logf("libp2p's defaults admitted %d of %d members' gossip streams; the relay's, all", got, sites)
}

// Neither a relay's nor a site's host keeps libp2p's resource statistics:
// libp2p keeps them unless told not to, passing every connection, stream
// and memory reservation through a trace into the process's default
// Prometheus registry, which nothing here reads (12 % of a relay's CPU with
// 900 sites connected). The registry is the process's, which other tests
// of this package fill with libp2p's own hosts, so the check runs in a
// process of its own.
func TestHostsKeepNoResourceStatistics(t *testing.T) {
	if os.Getenv("PPSYNC_RCMGR_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHostsKeepNoResourceStatistics$", "-test.v")
		cmd.Env = append(os.Environ(), "PPSYNC_RCMGR_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the check in a process of its own failed: %v\n%s", err, out)
		}
		return
	}
	ir, is := newIdentity(t, "relay"), newIdentity(t, "site")
	relay, err := NewHost(context.Background(), HostConfig{Key: ir.key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Relay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	site, err := NewHost(context.Background(), HostConfig{Key: is.key})
	if err != nil {
		t.Fatal(err)
	}
	defer site.Close()
	// A connection and its refusal (neither serves a family) pass through
	// both resource managers.
	ai := peer.AddrInfo{ID: relay.ID(), Addrs: relay.h.Addrs()}
	_ = site.h.Connect(context.Background(), ai)
	reg := prometheus.NewRegistry() // libp2p's statistics are the process's, whatever registry shows them
	rcmgr.MustRegisterWith(reg)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "libp2p_rcmgr") {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetGauge().GetValue() != 0 || m.GetCounter().GetValue() != 0 || m.GetHistogram().GetSampleCount() != 0 {
				t.Errorf("a host kept libp2p's resource statistics (%s)", f.GetName())
				break
			}
		}
	}
}
