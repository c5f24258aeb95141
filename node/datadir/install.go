package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/node/api"
)

// LoadRoster builds the family roster from DATA/family.json and every
// certificate and revocation installed in DATA/certs.
func LoadRoster(dataDir string) (*family.Roster, error) {
	info, err := family.LoadInfo(filepath.Join(dataDir, FamilyFile))
	if err != nil {
		return nil, err
	}
	r, err := family.NewRoster(info)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(dataDir, CertsDir)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node: read %s: %w", dir, err)
	}
	var certs []*family.Certificate
	var revs []*family.Revocation
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("node: read %s: %w", path, err)
		}
		c, rv, err := family.ParseInstallable(b)
		if err != nil {
			return nil, fmt.Errorf("node: installed file %s is damaged (%v); install it again", path, err)
		}
		if c != nil {
			certs = append(certs, c)
		} else {
			revs = append(revs, rv)
		}
	}
	sort.Slice(certs, func(i, j int) bool {
		if certs[i].Site != certs[j].Site {
			return certs[i].Site < certs[j].Site
		}
		return certs[i].Epoch < certs[j].Epoch
	})
	for _, c := range certs {
		// Older epochs are kept as history (their entries stay verifiable);
		// Add reports them as superseded, which is expected here.
		if _, err := r.Add(c); err != nil && !errors.Is(err, family.ErrSuperseded) && !errors.Is(err, family.ErrRevoked) {
			return nil, fmt.Errorf("node: installed certificate of site %q epoch %d: %w", c.Site, c.Epoch, err)
		}
	}
	for _, rv := range revs {
		if _, err := r.AddRevocation(rv); err != nil {
			return nil, fmt.Errorf("node: installed revocation of site %q: %w", rv.Site, err)
		}
	}
	return r, nil
}

// InstallFile checks a certificate or revocation against the roster, stores
// it in DATA/certs and then adds it to the roster: what the running node
// acts on is on disk first, so a restart never forgets it.
func InstallFile(dataDir string, r *family.Roster, data []byte) (api.InstallResult, error) {
	var res api.InstallResult
	c, rv, err := family.ParseInstallable(data)
	if err != nil {
		return res, err
	}
	var name string
	if c != nil {
		res.Installed, res.Site, res.Epoch = "certificate", c.Site, c.Epoch
		// An older epoch is kept as history (entries signed under it stay
		// verifiable); anything else Check refuses, Add would too.
		if err := r.Check(c); err != nil && !errors.Is(err, family.ErrSuperseded) {
			return res, err
		}
		name = fmt.Sprintf("%s-e%d.json", c.Site, c.Epoch)
		data, err = c.Marshal()
	} else {
		res.Installed, res.Site, res.Epoch = "revocation", rv.Site, rv.Epoch
		if err := r.CheckRevocation(rv); err != nil {
			return res, err
		}
		name = fmt.Sprintf("%s-revoked-e%d.json", rv.Site, rv.Epoch)
		data, err = rv.Marshal()
	}
	if err != nil {
		return res, err
	}
	dir := filepath.Join(dataDir, CertsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, fmt.Errorf("node: create %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	_, statErr := os.Stat(path)
	existed := statErr == nil
	if err := WriteFileAtomic(path, data, 0o644); err != nil {
		return res, err
	}
	if c != nil {
		res.Changed, err = r.Add(c)
		if err != nil && !(res.Changed && errors.Is(err, family.ErrSuperseded)) {
			if !existed {
				os.Remove(path) // refused after all (a revocation came in meanwhile)
			}
			return res, err
		}
	} else if res.Changed, err = r.AddRevocation(rv); err != nil {
		if !existed {
			os.Remove(path)
		}
		return res, err
	}
	return res, nil
}

// InstallOffline installs a certificate or revocation into a node that is not
// running. (A running node takes it through its API and gossips it.)
func InstallOffline(dataDir string, data []byte) (api.InstallResult, error) {
	lk, err := lock.Acquire(dataDir)
	if err != nil {
		return api.InstallResult{}, err
	}
	defer lk.Release()
	if _, err := ReadIdentity(dataDir); err != nil {
		return api.InstallResult{}, err
	}
	r, err := LoadRoster(dataDir)
	if err != nil {
		return api.InstallResult{}, err
	}
	return InstallFile(dataDir, r, data)
}
