package family

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// State is where a certificate (a site at an epoch) stands in a Roster.
type State int

// States.
const (
	StateUnknown    State = iota // no certificate of that site/epoch is known
	StateCurrent                 // the newest certificate of its site, not revoked
	StateSuperseded              // a newer epoch of the site exists; still valid history
	StateRevoked                 // revoked at that epoch
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateCurrent:
		return "current"
	case StateSuperseded:
		return "superseded"
	case StateRevoked:
		return "revoked"
	default:
		return "unknown"
	}
}

// SiteStatus is what a Roster knows of one site.
type SiteStatus struct {
	Site         string
	State        State  // StateCurrent, StateRevoked or StateUnknown
	Epoch        uint64 // newest certificate epoch known (0: none)
	RevokedEpoch uint64 // epochs at or below this are revoked (0: none)
}

// Roster is the set of certificates and revocations a node knows for its
// family, and the members they make current. It is safe for concurrent use;
// it does no I/O (callers persist Certificates and Revocations themselves).
//
// Every valid certificate is kept, by site and epoch, as long as it is not
// revoked: entries signed under a superseded epoch stay verifiable through
// KeyFor. Only the newest unrevoked certificate of a site makes a current
// member (Member, Site, Members).
type Roster struct {
	familyID  string
	info      *Info // immutable copy
	authority ed25519.PublicKey

	mu     sync.RWMutex
	sites  map[string]*siteRecord
	byPeer map[peer.ID]string // current members; "" marks a peer ID two sites claim
	former map[peer.ID]string // peer IDs of revoked certificates -> site
	// named: the peer IDs of every certificate held (current or
	// superseded) -> site, so that Banned and SiteOf are one lookup: a
	// relay asks them of every family it serves for each connection.
	named map[peer.ID]string
}

type siteRecord struct {
	certs  map[uint64]*Certificate // unrevoked certificates by epoch
	newest uint64                  // highest epoch ever accepted (even if since revoked)
	rev    *Revocation             // the highest-epoch revocation, or nil
}

func (s *siteRecord) revokedAt(epoch uint64) bool { return s.rev != nil && epoch <= s.rev.Epoch }

// current returns the site's current certificate, or nil.
func (s *siteRecord) current() *Certificate {
	if s.revokedAt(s.newest) {
		return nil
	}
	return s.certs[s.newest]
}

// NewRoster returns an empty roster for the family info describes.
func NewRoster(info *Info) (*Roster, error) {
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("new roster: %w", err)
	}
	in := info.Clone()
	return &Roster{
		familyID:  in.FamilyID,
		info:      in,
		authority: in.AuthorityKey(),
		sites:     make(map[string]*siteRecord),
		byPeer:    make(map[peer.ID]string),
		former:    make(map[peer.ID]string),
		named:     make(map[peer.ID]string),
	}, nil
}

// FamilyID returns the ID of the roster's family.
func (r *Roster) FamilyID() string { return r.familyID }

// Info returns a copy of the family info the roster was built with.
func (r *Roster) Info() *Info { return r.info.Clone() }

// Add verifies a certificate and adds it. It returns changed=false and no
// error for a certificate already held. It refuses a certificate of another
// family (ErrWrongFamily), one the authority did not sign or that was altered
// (ErrBadSignature), one whose site is revoked at its epoch (ErrRevoked), and
// one that differs from the certificate held for the same site and epoch
// (ErrConflict).
//
// A certificate older than the newest known for its site gets an error
// wrapping ErrSuperseded, which says which epoch supersedes it; it is still
// kept as history (changed reports whether it was new) so that entries signed
// under its epoch stay verifiable. Adding certificates in the order
// Certificates returns them never yields ErrSuperseded.
func (r *Roster) Add(cert *Certificate) (changed bool, err error) {
	if cert == nil {
		return false, fmt.Errorf("%w: no certificate", ErrFormat)
	}
	if err := cert.verify(r.familyID, r.authority); err != nil {
		return false, err
	}
	c := cert.Clone()
	c.Type = ""

	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.sites[c.Site]
	if rec == nil {
		rec = &siteRecord{certs: make(map[uint64]*Certificate)}
		r.sites[c.Site] = rec
	}
	if rec.revokedAt(c.Epoch) {
		r.former[c.PeerID] = c.Site
		return false, revokedError(c.Site, c.Epoch, rec.rev)
	}
	if old := rec.certs[c.Epoch]; old != nil {
		if old.Equal(c) {
			return false, nil
		}
		return false, fmt.Errorf("%w: two different certificates of site %q with epoch %d (peer IDs %s and %s); the authority issued twice from a copied registry: ask support to move the site again", ErrConflict, c.Site, c.Epoch, old.PeerID, c.PeerID)
	}
	rec.certs[c.Epoch] = c
	r.named[c.PeerID] = c.Site
	if c.Epoch < rec.newest {
		return true, supersededError(c.Site, c.Epoch, rec.newest)
	}
	rec.newest = c.Epoch
	r.reindexLocked()
	return true, nil
}

// AddRevocation verifies a revocation and adds it. It refuses one of another
// family (ErrWrongFamily) or not signed by the authority (ErrBadSignature).
// A revocation at or below the epoch of one already held changes nothing
// (of two different ones at the same epoch, every roster keeps the same one:
// the earlier issued, then the smaller signature). A revocation removes the
// certificates it revokes.
func (r *Roster) AddRevocation(rev *Revocation) (changed bool, err error) {
	if rev == nil {
		return false, fmt.Errorf("%w: no revocation", ErrFormat)
	}
	if err := rev.verify(r.familyID, r.authority); err != nil {
		return false, err
	}
	v := rev.Clone()
	v.Type = ""

	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.sites[v.Site]
	if rec == nil {
		rec = &siteRecord{certs: make(map[uint64]*Certificate)}
		r.sites[v.Site] = rec
	}
	if old := rec.rev; old != nil {
		if v.Epoch < old.Epoch || v.Epoch == old.Epoch && !revocationBefore(v, old) {
			return false, nil
		}
	}
	rec.rev = v
	for e, c := range rec.certs {
		if e <= v.Epoch {
			r.former[c.PeerID] = c.Site
			delete(rec.certs, e)
		}
	}
	r.reindexLocked()
	return true, nil
}

// revocationBefore orders two revocations of the same site and epoch.
func revocationBefore(a, b *Revocation) bool {
	if !a.IssuedAt.Equal(b.IssuedAt) {
		return a.IssuedAt.Before(b.IssuedAt)
	}
	if c := bytes.Compare(a.SignedBytes(), b.SignedBytes()); c != 0 {
		return c < 0
	}
	return bytes.Compare(a.Signature, b.Signature) < 0
}

// reindexLocked rebuilds the peer indexes of current members and of
// certificates held. r.mu must be held.
func (r *Roster) reindexLocked() {
	clear(r.byPeer)
	clear(r.named)
	for site, rec := range r.sites {
		for _, c := range rec.certs {
			r.named[c.PeerID] = site
		}
		c := rec.current()
		if c == nil {
			continue
		}
		if _, dup := r.byPeer[c.PeerID]; dup {
			r.byPeer[c.PeerID] = "" // two sites claim one peer: trust neither
			continue
		}
		r.byPeer[c.PeerID] = site
	}
}

// Member returns the current member with that peer ID. Peers whose
// certificate is superseded or revoked are not members.
func (r *Roster) Member(id peer.ID) (Member, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	site, ok := r.byPeer[id]
	if !ok || site == "" {
		return Member{}, false
	}
	return r.sites[site].current().Member(), true
}

// Site returns the current member serving site.
func (r *Roster) Site(site string) (Member, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	rec := r.sites[site]
	if rec == nil {
		return Member{}, false
	}
	c := rec.current()
	if c == nil {
		return Member{}, false
	}
	return c.Member(), true
}

// Members returns the current members, sorted by site.
func (r *Roster) Members() []Member {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Member, 0, len(r.sites))
	for _, rec := range r.sites {
		if c := rec.current(); c != nil {
			out = append(out, c.Member())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// KeyFor returns the public key of site's certificate of that epoch, current
// or superseded, to verify what the site signed under it. It fails with
// ErrRevoked if the site is revoked at that epoch and ErrUnknownSite if no
// such certificate is known.
func (r *Roster) KeyFor(site string, epoch uint64) (ed25519.PublicKey, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	rec := r.sites[site]
	if rec != nil && rec.revokedAt(epoch) {
		return nil, revokedError(site, epoch, rec.rev)
	}
	if rec == nil || len(rec.certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate of site %q is known; get the family's certificates from a peer or install it", ErrUnknownSite, site)
	}
	c := rec.certs[epoch]
	if c == nil {
		return nil, fmt.Errorf("%w: no certificate of site %q for epoch %d is known (newest known: %d); get the family's certificates from a peer", ErrUnknownSite, site, epoch, rec.newest)
	}
	return c.Key(), nil
}

// Status returns what the roster knows of site.
func (r *Roster) Status(site string) SiteStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	st := SiteStatus{Site: site}
	rec := r.sites[site]
	if rec == nil {
		return st
	}
	st.Epoch = rec.newest
	if rec.rev != nil {
		st.RevokedEpoch = rec.rev.Epoch
	}
	switch {
	case rec.current() != nil:
		st.State = StateCurrent
	case rec.rev != nil:
		st.State = StateRevoked
	}
	return st
}

// StateOf returns where site's certificate of epoch stands.
func (r *Roster) StateOf(site string, epoch uint64) State {
	r.mu.RLock()
	defer r.mu.RUnlock()
	rec := r.sites[site]
	switch {
	case rec == nil:
		return StateUnknown
	case rec.revokedAt(epoch):
		return StateRevoked
	case rec.certs[epoch] == nil:
		return StateUnknown
	case epoch < rec.newest:
		return StateSuperseded
	default:
		return StateCurrent
	}
}

// Check tells whether cert (typically the node's own) may still act for its
// site: it verifies it like Add, then returns an error wrapping ErrRevoked if
// the site is revoked at its epoch, ErrSuperseded if a newer epoch of the
// site is known, ErrConflict if a different certificate holds its epoch, and
// nil otherwise (current, or not yet added and not contradicted). It does not
// add the certificate.
func (r *Roster) Check(cert *Certificate) error {
	if cert == nil {
		return fmt.Errorf("%w: no certificate", ErrFormat)
	}
	if err := cert.verify(r.familyID, r.authority); err != nil {
		return err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	rec := r.sites[cert.Site]
	if rec == nil {
		return nil
	}
	if rec.revokedAt(cert.Epoch) {
		return revokedError(cert.Site, cert.Epoch, rec.rev)
	}
	if cert.Epoch < rec.newest {
		return supersededError(cert.Site, cert.Epoch, rec.newest)
	}
	if old := rec.certs[cert.Epoch]; old != nil && !old.Equal(cert) {
		return fmt.Errorf("%w: another certificate of site %q epoch %d (peer ID %s) is known; ask support to move the site again", ErrConflict, cert.Site, cert.Epoch, old.PeerID)
	}
	return nil
}

// CheckRevocation verifies a revocation like AddRevocation, without adding
// it.
func (r *Roster) CheckRevocation(rev *Revocation) error {
	if rev == nil {
		return fmt.Errorf("%w: no revocation", ErrFormat)
	}
	return rev.verify(r.familyID, r.authority)
}

// Certificates returns copies of every certificate held, sorted by site and
// epoch: what a node persists and offers to its peers.
func (r *Roster) Certificates() []*Certificate {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*Certificate
	for _, rec := range r.sites {
		for _, c := range rec.certs {
			out = append(out, c.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *Certificate) int {
		if c := strings.Compare(a.Site, b.Site); c != 0 {
			return c
		}
		switch {
		case a.Epoch < b.Epoch:
			return -1
		case a.Epoch > b.Epoch:
			return 1
		}
		return 0
	})
	return out
}

// Revocations returns copies of every revocation held (the newest per site),
// sorted by site.
func (r *Roster) Revocations() []*Revocation {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*Revocation
	for _, rec := range r.sites {
		if rec.rev != nil {
			out = append(out, rec.rev.Clone())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

func revokedError(site string, epoch uint64, rev *Revocation) error {
	why := ""
	if rev.Reason != "" {
		why = " (" + rev.Reason + ")"
	}
	return fmt.Errorf("%w: the certificate of site %q epoch %d is revoked by the family authority%s; this node must not sync as that site: ask support", ErrRevoked, site, epoch, why)
}

func supersededError(site string, epoch, newest uint64) error {
	return fmt.Errorf("%w: the certificate of site %q epoch %d is superseded by epoch %d (the site was moved to another machine or data directory); this copy must not write as that site: ask support", ErrSuperseded, site, epoch, newest)
}

// SiteOf returns the site a peer ID serves or served: by a current
// certificate, a superseded one, or a revoked one.
func (r *Roster) SiteOf(p peer.ID) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if site, ok := r.byPeer[p]; ok && site != "" {
		return site, true
	}
	if site, ok := r.former[p]; ok {
		return site, true
	}
	site, ok := r.named[p]
	return site, ok
}

// Banned reports a peer ID that must not take part in the family: it was
// named by a certificate that has since been revoked or superseded, and no
// current certificate names it.
func (r *Roster) Banned(p peer.ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if site, ok := r.byPeer[p]; ok && site != "" {
		return false
	}
	if _, ok := r.former[p]; ok {
		return true
	}
	_, ok := r.named[p]
	return ok
}
