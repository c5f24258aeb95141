package family

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// The authority's registry of what it issued lives beside authority.key:
// issuedDir/SITE.json holds the newest certificate of each site and
// revokedDir/SITE.json the newest revocation.
const (
	issuedDir  = "issued"
	revokedDir = "revoked"
)

// Admit issues the first certificate (epoch 1) of a new site from a join
// request, and records it in the registry in dir (the authority directory).
// It refuses a site ID the family already has (ErrSiteExists): a site that
// moves to a new machine or data directory is re-homed with Move.
func (a *Authority) Admit(dir string, req *JoinRequest, now time.Time) (*Certificate, error) {
	if err := a.checkRequest(req); err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	cur, err := a.loadIssued(dir, req.Site)
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	if cur != nil {
		return nil, fmt.Errorf("%w: the family already has a site %q (certificate epoch %d); to re-home it on a new machine or data directory use `ppsync family move`, or choose another site ID", ErrSiteExists, req.Site, cur.Epoch)
	}
	if err := a.checkPeerUnused(dir, req); err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	slot, err := a.nextSlot(dir)
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	return a.record(dir, req, 1, slot, now)
}

// nextSlot is the slot for a new site: one more than any issued so far, and
// more than the number of sites (so sites admitted before slots existed keep
// room for one each when they move).
func (a *Authority) nextSlot(dir string) (uint32, error) {
	sites, err := registrySites(dir, issuedDir)
	if err != nil {
		return 0, err
	}
	top := uint32(len(sites))
	for _, s := range sites {
		c, err := a.loadIssued(dir, s)
		if err != nil {
			return 0, err
		}
		if c != nil && c.Slot > top {
			top = c.Slot
		}
	}
	return top + 1, nil
}

// Move re-issues the certificate of an existing site for the node of req (a
// new machine or data directory) with the next epoch, which supersedes every
// earlier certificate of the site. The request's role must match the site's.
// It refuses a site the family does not have (ErrUnknownSite): new sites are
// admitted with Admit.
func (a *Authority) Move(dir string, req *JoinRequest, now time.Time) (*Certificate, error) {
	if err := a.checkRequest(req); err != nil {
		return nil, fmt.Errorf("move: %w", err)
	}
	cur, err := a.loadIssued(dir, req.Site)
	if err != nil {
		return nil, fmt.Errorf("move: %w", err)
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: the family has no site %q to move; to add a new site use `ppsync family admit`", ErrUnknownSite, req.Site)
	}
	if req.Role != cur.Role {
		return nil, fmt.Errorf("%w: the join request is for a %s but site %q is a %s; run `ppsync init` again with --role %s", ErrConflict, req.Role, req.Site, cur.Role, cur.Role)
	}
	if err := a.checkPeerUnused(dir, req); err != nil {
		return nil, fmt.Errorf("move: %w", err)
	}
	epoch := cur.Epoch
	rev, err := a.loadRevoked(dir, req.Site)
	if err != nil {
		return nil, fmt.Errorf("move: %w", err)
	}
	if rev != nil && rev.Epoch > epoch {
		epoch = rev.Epoch
	}
	slot := cur.Slot
	if slot == 0 {
		if slot, err = a.nextSlot(dir); err != nil {
			return nil, fmt.Errorf("move: %w", err)
		}
	}
	return a.record(dir, req, epoch+1, slot, now)
}

// Revoke revokes every certificate issued so far to site (the revocation's
// epoch is the site's newest certificate epoch) and records it in the
// registry in dir. Revoking a site that is already revoked at its newest
// epoch returns the recorded revocation. It refuses a site the family does
// not have (ErrUnknownSite).
func (a *Authority) Revoke(dir, site, reason string, now time.Time) (*Revocation, error) {
	if err := wire.ValidateSiteID(site); err != nil {
		return nil, fmt.Errorf("revoke: %w: %v", ErrFormat, err)
	}
	if err := checkText("reason", reason, maxReasonBytes, true); err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	cur, err := a.loadIssued(dir, site)
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: the family has no site %q to revoke (check the site ID)", ErrUnknownSite, site)
	}
	prev, err := a.loadRevoked(dir, site)
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	if prev != nil && prev.Epoch >= cur.Epoch {
		return prev, nil
	}
	rev, err := a.revoke(site, cur.Epoch, reason, now)
	if err != nil {
		return nil, err
	}
	data, err := rev.Marshal()
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	if err := writeRegistryFile(dir, revokedDir, site, data); err != nil {
		return nil, err
	}
	return rev, nil
}

// Issued returns the registry in dir: the newest certificate of every site
// and every recorded revocation, each sorted by site, all verified against
// the authority key.
func (a *Authority) Issued(dir string) ([]*Certificate, []*Revocation, error) {
	sites, err := registrySites(dir, issuedDir)
	if err != nil {
		return nil, nil, err
	}
	certs := make([]*Certificate, 0, len(sites))
	for _, s := range sites {
		c, err := a.loadIssued(dir, s)
		if err != nil {
			return nil, nil, err
		}
		if c != nil {
			certs = append(certs, c)
		}
	}
	sites, err = registrySites(dir, revokedDir)
	if err != nil {
		return nil, nil, err
	}
	revs := make([]*Revocation, 0, len(sites))
	for _, s := range sites {
		r, err := a.loadRevoked(dir, s)
		if err != nil {
			return nil, nil, err
		}
		if r != nil {
			revs = append(revs, r)
		}
	}
	return certs, revs, nil
}

// checkRequest validates a join request and that it is for this family.
func (a *Authority) checkRequest(req *JoinRequest) error {
	if req == nil {
		return fmt.Errorf("%w: no join request", ErrFormat)
	}
	if req.FamilyID != a.familyID {
		return fmt.Errorf("%w: this join request is for family %.70s, not %s; run `ppsync init` with this family's family.json", ErrWrongFamily, req.FamilyID, a.familyID)
	}
	if err := req.Validate(); err != nil {
		return fmt.Errorf("join request: %w", err)
	}
	return nil
}

// checkPeerUnused refuses a request whose peer ID is the current (newest,
// unrevoked) identity of another site: two sites would share one node key.
func (a *Authority) checkPeerUnused(dir string, req *JoinRequest) error {
	certs, revs, err := a.Issued(dir)
	if err != nil {
		return err
	}
	revoked := make(map[string]uint64, len(revs))
	for _, r := range revs {
		revoked[r.Site] = r.Epoch
	}
	for _, c := range certs {
		if c.Site != req.Site && c.PeerID == req.PeerID && revoked[c.Site] < c.Epoch {
			return fmt.Errorf("%w: peer ID %s already serves site %q; each site needs its own data directory (run `ppsync init` in a new one)", ErrConflict, req.PeerID, c.Site)
		}
	}
	return nil
}

// record issues a certificate and saves it as the site's newest.
func (a *Authority) record(dir string, req *JoinRequest, epoch uint64, slot uint32, now time.Time) (*Certificate, error) {
	cert, err := a.issue(req, epoch, slot, now)
	if err != nil {
		return nil, err
	}
	data, err := cert.Marshal()
	if err != nil {
		return nil, fmt.Errorf("record certificate: %w", err)
	}
	if err := writeRegistryFile(dir, issuedDir, req.Site, data); err != nil {
		return nil, err
	}
	return cert, nil
}

// loadIssued returns the site's newest issued certificate, or nil if none.
func (a *Authority) loadIssued(dir, site string) (*Certificate, error) {
	path := registryPath(dir, issuedDir, site)
	data, err := readFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("family: registry: %w", err)
	}
	c, err := ParseCertificate(data)
	if err == nil {
		err = c.verify(a.familyID, a.PublicKey())
	}
	if err == nil && c.Site != site {
		err = fmt.Errorf("%w: it holds site %q", ErrConflict, c.Site)
	}
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return c, nil
}

// loadRevoked returns the site's recorded revocation, or nil if none.
func (a *Authority) loadRevoked(dir, site string) (*Revocation, error) {
	path := registryPath(dir, revokedDir, site)
	data, err := readFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("family: registry: %w", err)
	}
	r, err := ParseRevocation(data)
	if err == nil {
		err = r.verify(a.familyID, a.PublicKey())
	}
	if err == nil && r.Site != site {
		err = fmt.Errorf("%w: it holds site %q", ErrConflict, r.Site)
	}
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return r, nil
}

// registryPath is the file of a site; site IDs are validated before use, so
// they are safe file names.
func registryPath(dir, sub, site string) string {
	return filepath.Join(dir, sub, site+".json")
}

func writeRegistryFile(dir, sub, site string, data []byte) error {
	if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
		return fmt.Errorf("family: registry: %w", err)
	}
	return writeFileAtomic(registryPath(dir, sub, site), data, 0o644)
}

// registrySites lists the sites that have a file in dir/sub, sorted.
func registrySites(dir, sub string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("family: registry: %w", err)
	}
	var sites []string
	for _, e := range entries {
		name := e.Name()
		site, ok := strings.CutSuffix(name, ".json")
		if !ok || e.IsDir() || wire.ValidateSiteID(site) != nil {
			continue // temporary files and strays
		}
		sites = append(sites, site)
	}
	sort.Strings(sites)
	return sites, nil
}
