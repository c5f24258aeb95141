package node

import (
	"crypto/ed25519"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/datadir"
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

// DocumentsOf returns what concerns peer p: the certificates that name it
// and, for a peer whose membership ended, its site's revocation and current
// certificate (what tells an old machine it was moved or revoked).
func (m members) DocumentsOf(p peer.ID) [][]byte {
	var out [][]byte
	site, known := m.n.roster.SiteOf(p)
	_, member := m.n.roster.Member(p)
	for _, c := range m.n.roster.Certificates() {
		if c.PeerID != p && (member || !known || c.Site != site) {
			continue
		}
		if b, err := c.Marshal(); err == nil {
			out = append(out, b)
		}
	}
	if known && !member {
		for _, r := range m.n.roster.Revocations() {
			if r.Site != site {
				continue
			}
			if b, err := r.Marshal(); err == nil {
				out = append(out, b)
			}
		}
	}
	return out
}

// Subject reads the peer ID a certificate names, without verifying it.
func (m members) Subject(doc []byte) (peer.ID, bool) {
	c, _, err := family.ParseInstallable(doc)
	if err != nil || c == nil {
		return "", false
	}
	return c.PeerID, true
}

func (m members) Learn(doc []byte) (bool, error) {
	res, err := datadir.InstallFile(m.n.cfg.DataDir, m.n.roster, doc)
	if err != nil {
		return false, err
	}
	if res.Changed {
		m.n.log.Info("learned from a peer", "kind", res.Installed, "site", res.Site, "epoch", res.Epoch)
	}
	return res.Changed, nil
}

// logView is what the mesh reads of the log: durable ranges, the frontier,
// and the proofs of known forks.
type logView struct{ n *Node }

func (v logView) Frontier() map[string]uint64 { return v.n.txlog.Frontier() }

func (v logView) RawRange(site string, from, to uint64, fn func(seq uint64, env []byte) (bool, error)) error {
	return v.n.txlog.RawRange(site, from, to, fn)
}

func (v logView) ForkProofs() [][2][][]byte {
	var out [][2][][]byte
	for _, f := range v.n.txlog.Forks() {
		a, b, err := v.n.txlog.ForkProof(f.Site)
		if err != nil {
			continue
		}
		out = append(out, [2][][]byte{envelopes(a), envelopes(b)})
	}
	return out
}

// envelopes encodes a run of entries.
func envelopes(run []*wire.Signed) [][]byte {
	out := make([][]byte, len(run))
	for i, s := range run {
		out[i] = s.Marshal()
	}
	return out
}
