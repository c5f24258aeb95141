package node

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
)

// members lets the mesh ask the node's roster about membership.
type members struct{ n *Node }

func (m members) ID() string { return m.n.roster.FamilyID() }

func toMeshMember(x family.Member) mesh.Member {
	return mesh.Member{Site: x.Site, Relay: x.Role == family.RoleRelay, PeerID: x.PeerID, Epoch: x.Epoch}
}

func (m members) Member(p peer.ID) (mesh.Member, bool) {
	x, ok := m.n.roster.Member(p)
	if !ok {
		return mesh.Member{}, false
	}
	return toMeshMember(x), true
}

func (m members) Members() []mesh.Member {
	xs := m.n.roster.Members()
	out := make([]mesh.Member, 0, len(xs))
	for _, x := range xs {
		out = append(out, toMeshMember(x))
	}
	return out
}

// Banned: a peer named by a revoked or superseded certificate and by no
// current one.
func (m members) Banned(p peer.ID) bool { return m.n.roster.Banned(p) }

func (m members) SiteKey(site string, epoch uint64) (ed25519.PublicKey, error) {
	return m.n.roster.KeyFor(site, epoch)
}

func (m members) Documents() [][]byte {
	var out [][]byte
	for _, c := range m.n.roster.Certificates() {
		if b, err := c.Marshal(); err == nil {
			out = append(out, b)
		}
	}
	for _, r := range m.n.roster.Revocations() {
		if b, err := r.Marshal(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

func (m members) Learn(doc []byte) (bool, error) {
	res, err := installFile(m.n.cfg.DataDir, m.n.roster, doc)
	if err != nil {
		return false, err
	}
	if res.Changed {
		m.n.log.Info("learned from a peer", "kind", res.Installed, "site", res.Site, "epoch", res.Epoch)
	}
	return res.Changed, nil
}

// Fenced: an entry written under an old epoch of its site after a newer
// epoch's certificate was issued comes from the site's old machine after the
// move; it is kept as evidence and never applied.
func (m members) Fenced(e *wire.Signed) error {
	wall := hlc.Timestamp(e.HLC).Time()
	for _, c := range m.n.roster.Certificates() {
		if c.Site == e.Site && c.Epoch > e.Epoch && c.IssuedAt.Before(wall) {
			return fmt.Errorf("site %q moved (epoch %d issued %s) before this epoch-%d entry was written", e.Site, c.Epoch, c.IssuedAt.UTC().Format(time.RFC3339), e.Epoch)
		}
	}
	return nil
}
