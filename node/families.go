package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/state"
	"github.com/ppsync/ppsync/txlog"
)

// A relay serves any number of families from one process: one libp2p host
// and port, one Pebble database, one API. Its first family is the one it
// was set up for (`ppsync init --role relay`), kept in DATA as any node's.
// Each further family has a directory DATA/families/<family ID> (its
// family.json, node.json and certificates; the node key, API key and
// database are DATA's) and a key space of its own in the database
// (store.FamilySpace). `ppsync relay join` makes the directory and the join
// request; installing the family's certificate starts serving it, running or
// not; `ppsync relay remove-family` stops serving it and erases its data.

// FamiliesDir is the directory, in a relay's data directory, of the families
// it serves besides its first.
const FamiliesDir = "families"

// shared is what a further family's node takes from its relay's first node.
type shared struct {
	primary *Node
	db      *pebble.DB
	ingest  *store.Ingester
	host    *mesh.Host
	space   store.Space
}

// relayFamilies are the further families a relay serves, by family ID.
// Guarded by its own mutex; no lock is held while a family opens or closes.
type relayFamilies struct {
	mu  sync.Mutex
	m   map[string]*Node
	ops sync.Mutex // one opening or removal at a time
}

// familyDir is the directory of family id in relay data directory dir.
func familyDir(dir, id string) string { return filepath.Join(dir, FamiliesDir, id) }

// RelayJoinResult says what RelayJoin created.
type RelayJoinResult struct {
	FamilyID    string `json:"family_id"`
	Name        string `json:"name"`
	Site        string `json:"site"`
	JoinRequest string `json:"join_request"`
	PeerID      string `json:"peer_id"`
}

// JoinRequestFileFor is the name of a relay's join request for a further
// family.
func JoinRequestFileFor(familyID string) string { return "join-request-" + familyID + ".json" }

// RelayJoin prepares the relay in dataDir to serve one more family: it makes
// DATA/families/<id> and writes the join request for that family's support
// (DATA/join-request-<id>.json). The relay keeps its identity: one node key
// for every family. It works whether the relay runs or not.
func RelayJoin(dataDir, familyFile, site string, env func(string) string, now func() time.Time) (RelayJoinResult, error) {
	var res RelayJoinResult
	if env == nil {
		env = func(string) string { return "" }
	}
	if now == nil {
		now = time.Now
	}
	id, err := datadir.ReadIdentity(dataDir)
	if err != nil {
		return res, err
	}
	if id.Role != family.RoleRelay {
		return res, fmt.Errorf("node: %s holds the node of site %q, not a relay: only a relay serves several families (set one up with `ppsync init --role relay`)", dataDir, id.Site)
	}
	info, err := family.LoadInfo(familyFile)
	if err != nil {
		return res, err
	}
	if info.FamilyID == id.FamilyID {
		return res, fmt.Errorf("node: %s already serves family %s (%s): it is the family this relay was set up for", dataDir, info.Name, info.FamilyID)
	}
	if site == "" {
		site = id.Site
	}
	res = RelayJoinResult{FamilyID: info.FamilyID, Name: info.Name, Site: site, PeerID: id.PeerID}
	dir := familyDir(dataDir, info.FamilyID)
	if fid, err := datadir.ReadIdentity(dir); err == nil {
		if r, err := datadir.LoadRoster(dir); err == nil && hasOwnCertificate(r, fid) {
			return res, fmt.Errorf("node: %s already serves family %s (%s)", dataDir, info.Name, info.FamilyID)
		}
	}
	key, err := datadir.ReadNodeKey(filepath.Join(dataDir, NodeKeyFile))
	if err != nil {
		return res, err
	}
	own, err := relayOwnCertificate(dataDir, id)
	if err != nil {
		return res, err
	}
	fp, err := lock.Fingerprint(info.FamilyID, env)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(dir, CertsDir), 0o700); err != nil {
		return res, fmt.Errorf("node: create %s: %w", dir, err)
	}
	if err := family.SaveInfo(filepath.Join(dir, FamilyFile), info); err != nil {
		return res, err
	}
	// The database named in the request is the relay's one store, as in
	// the certificate of its first family.
	req, err := family.NewJoinRequest(info, site, family.RoleRelay, key.Public().(ed25519PublicKey), fp, own.DatabaseID, now())
	if err != nil {
		return res, err
	}
	rb, err := req.Marshal()
	if err != nil {
		return res, err
	}
	res.JoinRequest = filepath.Join(dataDir, JoinRequestFileFor(info.FamilyID))
	if err := datadir.WriteFileAtomic(res.JoinRequest, rb, 0o644); err != nil {
		return res, err
	}
	if err := datadir.WriteIdentity(dir, datadir.Identity{Format: 1, FamilyID: info.FamilyID, Site: site, Role: family.RoleRelay,
		PeerID: id.PeerID, CreatedAt: now().UTC().Truncate(time.Second), Account: id.Account}); err != nil {
		return res, err
	}
	return res, nil
}

// relayOwnCertificate returns the relay's current certificate of its first
// family.
func relayOwnCertificate(dataDir string, id datadir.Identity) (*family.Certificate, error) {
	r, err := datadir.LoadRoster(dataDir)
	if err != nil {
		return nil, err
	}
	var mine *family.Certificate
	for _, c := range r.Certificates() {
		if c.Site == id.Site && c.PeerID.String() == id.PeerID && (mine == nil || c.Epoch > mine.Epoch) {
			mine = c
		}
	}
	if mine == nil {
		return nil, fmt.Errorf("node: the relay in %s has no certificate of its first family yet: install it (ppsync install) before it joins another family", dataDir)
	}
	return mine, nil
}

func hasOwnCertificate(r *family.Roster, id datadir.Identity) bool {
	for _, c := range r.Certificates() {
		if c.Site == id.Site && c.PeerID.String() == id.PeerID {
			return true
		}
	}
	return false
}

// FamilyOfDocument returns the family a certificate or revocation is for.
func FamilyOfDocument(data []byte) (string, error) {
	c, rv, err := family.ParseInstallable(bytes.TrimSpace(data))
	if err != nil {
		return "", err
	}
	if c != nil {
		return c.FamilyID, nil
	}
	return rv.FamilyID, nil
}

// InstallAt installs a certificate or revocation into the node of dataDir
// when it is not running; at a relay, a document of a further family goes
// to that family's directory.
func InstallAt(dataDir string, data []byte) (api.InstallResult, error) {
	dir, err := installDir(dataDir, data)
	if err != nil {
		return api.InstallResult{}, err
	}
	if dir == dataDir {
		return datadir.InstallOffline(dataDir, data)
	}
	lk, err := lock.Acquire(dataDir)
	if err != nil {
		return api.InstallResult{}, err
	}
	defer lk.Release()
	r, err := datadir.LoadRoster(dir)
	if err != nil {
		return api.InstallResult{}, err
	}
	return datadir.InstallFile(dir, r, bytes.TrimSpace(data))
}

// installDir is where a document for the node of dataDir goes: dataDir, or
// at a relay the directory of the further family it is for.
func installDir(dataDir string, data []byte) (string, error) {
	fid, err := FamilyOfDocument(data)
	if err != nil {
		return dataDir, nil // InstallFile says what is wrong with it
	}
	id, err := datadir.ReadIdentity(dataDir)
	if err != nil || id.FamilyID == fid || id.Role != family.RoleRelay {
		return dataDir, nil
	}
	dir := familyDir(dataDir, fid)
	if _, err := datadir.ReadIdentity(dir); err != nil {
		return "", fmt.Errorf("node: this is a certificate of family %.16s…, which the relay in %s does not serve: run `ppsync relay join --data %s --family FAMILY_JSON` first and have that family's support admit the request it writes", fid, dataDir, dataDir)
	}
	return dir, nil
}

// openFamilies starts every further family with a current certificate
// (those still waiting for theirs are skipped, and listed as such).
func (n *Node) openFamilies() error {
	if n.id.Role != family.RoleRelay || n.shared != nil {
		return nil
	}
	n.fams = &relayFamilies{m: map[string]*Node{}}
	ents, err := os.ReadDir(filepath.Join(n.cfg.DataDir, FamiliesDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node: read %s: %w", FamiliesDir, err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if err := n.startFamily(e.Name()); err != nil {
			if errors.Is(err, errNoCertificateYet) {
				n.log.Info("a family this relay joined waits for its certificate", "family", e.Name())
				continue
			}
			return err
		}
	}
	return nil
}

var errNoCertificateYet = errors.New("no certificate installed yet")

// errFamilyFull refuses a relay family's entries over its storage limit.
var errFamilyFull = errors.New("node: this family is over its storage limit on this relay ([relay] family_max_mb)")

// startFamily opens and starts serving further family id.
func (n *Node) startFamily(id string) error {
	n.fams.ops.Lock()
	defer n.fams.ops.Unlock()
	n.fams.mu.Lock()
	_, running := n.fams.m[id]
	n.fams.mu.Unlock()
	if running {
		return nil
	}
	dir := familyDir(n.cfg.DataDir, id)
	fid, err := datadir.ReadIdentity(dir)
	if err != nil {
		return fmt.Errorf("node: family %s: %w", id, err)
	}
	if fid.FamilyID != id {
		return fmt.Errorf("node: %s holds family %s, not the family its name says; move it back or remove it", dir, fid.FamilyID)
	}
	r, err := datadir.LoadRoster(dir)
	if err != nil {
		return err
	}
	if !hasOwnCertificate(r, fid) {
		return errNoCertificateYet
	}
	space, err := store.FamilySpace(id)
	if err != nil {
		return err
	}
	cfg := n.currentConfig()
	cfg.DataDir = dir
	cfg.Logger = n.log.With("family", id[:min(12, len(id))])
	m := &Node{cfg: cfg, log: cfg.Logger, settings: cfg, start: cfg.Now(), settingsTurn: make(chan struct{}, 1),
		shared: &shared{primary: n, db: n.db, ingest: n.ingest, host: n.mesh.Host(), space: space}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.events = newEventHub(cfg.Now)
	m.sched = n.sched // one goroutine runs every family's periodic work
	if err := m.openMember(); err != nil {
		_ = m.closeAll()
		return fmt.Errorf("node: family %s: %w", id, err)
	}
	n.fams.mu.Lock()
	n.fams.m[id] = m
	n.fams.mu.Unlock()
	n.log.Info("serving a further family", "family", id, "name", m.roster.Info().Name, "site", m.id.Site)
	return nil
}

// openMember opens a further family of a relay on its first node's key,
// database and libp2p host.
func (n *Node) openMember() error {
	sh := n.shared
	p := sh.primary
	id, err := datadir.ReadIdentity(n.cfg.DataDir)
	if err != nil {
		return err
	}
	n.id = id
	n.key, n.apiKey = p.key, p.apiKey
	if n.roster, err = datadir.LoadRoster(n.cfg.DataDir); err != nil {
		return err
	}
	if n.roster.FamilyID() != id.FamilyID {
		return fmt.Errorf("its family.json is for family %.16s…; restore the right family.json", n.roster.FamilyID())
	}
	if n.cert, err = n.ownCertificate(); err != nil {
		return err
	}
	fp, err := lock.Fingerprint(id.FamilyID, n.cfg.Env)
	if err != nil {
		return err
	}
	if err := lock.CheckBinding(lock.Binding{Fingerprint: n.cert.MachineFingerprint, DatabaseID: n.cert.DatabaseID, Account: p.id.Account},
		lock.Binding{Fingerprint: fp, DatabaseID: p.cert.DatabaseID, Account: p.id.Account}); err != nil {
		return err
	}
	n.db, n.ingest = sh.db, sh.ingest
	if n.state, err = state.Open(n.db, n.log); err != nil { // a relay's state is empty: it applies nothing
		return err
	}
	n.clock = hlc.New(n.cfg.Now)
	if n.txlog, err = txlog.Open(txlog.Config{DB: n.db, Ingest: n.ingest, Space: sh.space, Family: id.FamilyID, Keys: members{n},
		Apply: noState{}, Clock: n.clock, Logger: n.log, App: n.appVersion}); err != nil {
		return err
	}
	n.openFrontier = n.txlog.Frontier()
	if err := n.startMesh(n.ctx); err != nil {
		return err
	}
	if err := n.startAlerts(); err != nil {
		return err
	}
	// A further family's activity feed is kept in memory only (no file,
	// no writer goroutine per family): status and the page show it while
	// the relay runs.
	return nil
}

// family returns the further family id this relay serves, or nil.
func (n *Node) family(id string) *Node {
	if n.fams == nil {
		return nil
	}
	n.fams.mu.Lock()
	defer n.fams.mu.Unlock()
	return n.fams.m[id]
}

// families returns the further families, by ID.
func (n *Node) families() []*Node {
	if n.fams == nil {
		return nil
	}
	n.fams.mu.Lock()
	defer n.fams.mu.Unlock()
	out := make([]*Node, 0, len(n.fams.m))
	for _, m := range n.fams.m {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id.FamilyID < out[j].id.FamilyID })
	return out
}

// closeFamilies stops every further family (before the first node's host
// and database close under them).
func (n *Node) closeFamilies() []error {
	var errs []error
	for _, m := range n.families() {
		errs = append(errs, m.Close())
	}
	return errs
}

// routeFamily hands a request for a further family (the FamilyHeader, or
// for GET /metrics, which a scraper configures more easily, ?family=ID) to
// that family's API; one for the first family, or naming none, to next.
// ?family=all is the metrics handler's (every family's, labelled).
func (n *Node) routeFamily(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fid := strings.TrimSpace(r.Header.Get(api.FamilyHeader))
		if q := strings.TrimSpace(r.URL.Query().Get("family")); fid == "" && r.URL.Path == "/metrics" && q != "all" {
			fid = q
		}
		if fid == "" || fid == n.id.FamilyID {
			next.ServeHTTP(w, r)
			return
		}
		m := n.family(fid)
		if m == nil {
			n.writeErr(w, unknownFamily(fid))
			return
		}
		m.familyAPI().ServeHTTP(w, r)
	})
}

// familyAPI returns a further family's API, made at its first request.
func (n *Node) familyAPI() *http.ServeMux {
	n.familyMuxOnce.Do(func() { n.familyMux = n.apiMux() })
	return n.familyMux
}

// unknownFamily is the error for a request about a family this node does
// not serve.
func unknownFamily(fid string) error {
	return newAPIError(http.StatusNotFound, codeUnknownFamily, nil,
		"this node serves no family %s; `ppsync relay families --data DATA` lists the families it serves", fid)
}

// Families lists the families this node serves: its first and, at a relay,
// every further one (also those waiting for their certificate).
func (n *Node) Families(ctx context.Context) ([]api.FamilyInfo, error) {
	out := []api.FamilyInfo{n.familyInfo(ctx, true)}
	running := map[string]bool{n.id.FamilyID: true}
	for _, m := range n.families() {
		out = append(out, m.familyInfo(ctx, false))
		running[m.id.FamilyID] = true
	}
	ents, _ := os.ReadDir(filepath.Join(n.cfg.DataDir, FamiliesDir))
	for _, e := range ents {
		if !e.IsDir() || running[e.Name()] {
			continue
		}
		fi := api.FamilyInfo{FamilyID: e.Name(), State: "waiting for its certificate"}
		if info, err := family.LoadInfo(filepath.Join(n.cfg.DataDir, FamiliesDir, e.Name(), FamilyFile)); err == nil {
			fi.Name = info.Name
		}
		out = append(out, fi)
	}
	return out, nil
}

// familyInfo describes the family this node serves.
func (n *Node) familyInfo(ctx context.Context, first bool) api.FamilyInfo {
	fi := api.FamilyInfo{FamilyID: n.id.FamilyID, Name: n.roster.Info().Name, Site: n.id.Site, First: first, State: "serving",
		Frontier: n.txlog.Frontier()}
	for _, mem := range n.roster.Members() {
		fi.Sites = append(fi.Sites, mem.Site)
	}
	slices.Sort(fi.Sites)
	space := store.Space(nil)
	if n.shared != nil {
		space = n.shared.space
	}
	if size, err := store.SpaceSize(n.db, space.Prefix(store.PrefixTxlog)); err == nil {
		fi.BytesStored = size
	}
	fi.OverStorage = n.storage.over.Load()
	if st, err := n.Status(ctx); err == nil {
		fi.Online, fi.Peers, fi.LastSync = st.Online, st.Peers, st.LastSync
	}
	if ps, err := n.Peers(ctx); err == nil {
		for _, p := range ps {
			fi.Backlog += p.Lag
			if p.LastSeen != nil && (fi.LastContact == nil || p.LastSeen.After(*fi.LastContact)) {
				t := *p.LastSeen
				fi.LastContact = &t
			}
		}
	}
	return fi
}

// RemoveFamily stops serving further family id and erases its data: its
// key space in the database and its directory. The first family of a relay
// cannot be removed this way (its data directory is the relay's).
func (n *Node) RemoveFamily(ctx context.Context, id string) (api.RemoveFamilyResult, error) {
	if id == n.id.FamilyID {
		return api.RemoveFamilyResult{}, newAPIError(http.StatusConflict, codeBadRequest, nil,
			"family %s is the one this relay was set up for: its data directory is the relay's own; stop the relay and remove the data directory instead", id)
	}
	if n.fams == nil {
		return api.RemoveFamilyResult{}, newAPIError(http.StatusNotFound, codeUnknownFamily, nil, "this node is not a relay: it serves one family")
	}
	dir := familyDir(n.cfg.DataDir, id)
	if _, err := os.Stat(dir); err != nil {
		return api.RemoveFamilyResult{}, newAPIError(http.StatusNotFound, codeUnknownFamily, nil,
			"this relay serves no family %s; `ppsync relay families --data DATA` lists the families it serves", id)
	}
	n.fams.ops.Lock()
	defer n.fams.ops.Unlock()
	n.fams.mu.Lock()
	m := n.fams.m[id]
	delete(n.fams.m, id)
	n.fams.mu.Unlock()
	res := api.RemoveFamilyResult{FamilyID: id}
	if m != nil {
		res.Name = m.roster.Info().Name
		if err := m.Close(); err != nil {
			n.log.Warn("a removed family did not stop cleanly", "family", id, "err", err)
		}
	}
	if err := eraseFamily(n.db, n.cfg.DataDir, id); err != nil {
		return res, err
	}
	n.log.Info("removed a family and erased its data", "family", id)
	return res, nil
}

// eraseFamily erases further family id's key space and directory.
func eraseFamily(db *pebble.DB, dataDir, id string) error {
	space, err := store.FamilySpace(id)
	if err != nil {
		return err
	}
	if err := store.DeleteSpace(db, space); err != nil {
		return err
	}
	if err := os.RemoveAll(familyDir(dataDir, id)); err != nil {
		return fmt.Errorf("node: remove %s: %w", familyDir(dataDir, id), err)
	}
	_ = os.Remove(filepath.Join(dataDir, JoinRequestFileFor(id)))
	return nil
}

// RemoveFamilyOffline is `ppsync relay remove-family` on a relay that is not
// running.
func RemoveFamilyOffline(dataDir, id string) (api.RemoveFamilyResult, error) {
	lk, err := lock.Acquire(dataDir)
	if err != nil {
		return api.RemoveFamilyResult{}, err
	}
	defer lk.Release()
	self, err := datadir.ReadIdentity(dataDir)
	if err != nil {
		return api.RemoveFamilyResult{}, err
	}
	if self.FamilyID == id {
		return api.RemoveFamilyResult{}, fmt.Errorf("family %s is the one this relay was set up for: its data directory is the relay's own; remove the data directory instead", id)
	}
	res := api.RemoveFamilyResult{FamilyID: id}
	if info, err := family.LoadInfo(filepath.Join(familyDir(dataDir, id), FamilyFile)); err == nil {
		res.Name = info.Name
	} else if _, serr := os.Stat(familyDir(dataDir, id)); serr != nil {
		return res, fmt.Errorf("the relay in %s serves no family %s; `ppsync relay families --data %s` lists them", dataDir, id, dataDir)
	}
	db, err := store.Open(filepath.Join(dataDir, DBDir), store.Options{})
	if err != nil {
		return res, err
	}
	err = eraseFamily(db, dataDir, id)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("node: close database: %w", cerr)
	}
	return res, err
}

// installFurther installs a document of further family fid at a running
// relay: into that family's directory, then into the running family (which
// spreads it) or, when it is the relay's own certificate, by starting to
// serve the family.
func (n *Node) installFurther(ctx context.Context, fid string, data []byte) (api.InstallResult, error) {
	if m := n.family(fid); m != nil {
		return m.Install(ctx, data)
	}
	dir, err := installDir(n.cfg.DataDir, data)
	if err != nil {
		return api.InstallResult{}, newAPIError(http.StatusNotFound, codeUnknownFamily, err, "%s", strings.TrimPrefix(err.Error(), "node: "))
	}
	r, err := datadir.LoadRoster(dir)
	if err != nil {
		return api.InstallResult{}, err
	}
	res, err := datadir.InstallFile(dir, r, bytes.TrimSpace(data))
	if err != nil {
		return api.InstallResult{}, installError(err)
	}
	res.Running = true
	if err := n.startFamily(fid); err != nil && !errors.Is(err, errNoCertificateYet) {
		return res, err
	}
	n.events.emit(EvInstalled, res)
	return res, nil
}

// storageGate keeps a relay family's stored bytes under [relay]
// family_max_mb: the size is measured again every storageCheckEvery, or as
// soon as the entries taken since the last measurement add up to a
// sixteenth of the limit, by whichever call finds it due; no lock is held
// while it is measured.
type storageGate struct {
	checked atomic.Int64 // unix nanoseconds of the last measurement
	since   atomic.Int64 // bytes taken since
	over    atomic.Bool
	logged  atomic.Int64 // unix nanoseconds of the last warning
}

const storageCheckEvery = 10 * time.Second

// overStorage reports whether this relay family is over its storage limit,
// counting run as taken: its new entries are then refused (its sites keep
// them).
func (n *Node) overStorage(run []*wire.Signed) bool {
	if n.id.Role != family.RoleRelay {
		return false
	}
	limit := n.currentConfig().Relay.MaxMB << 20
	if limit <= 0 {
		n.storage.over.Store(false)
		return false
	}
	var size int64
	for _, e := range run {
		size += int64(len(e.Body) + len(e.Sig))
	}
	since := n.storage.since.Add(size)
	now := n.cfg.Now().UnixNano()
	last := n.storage.checked.Load()
	if (now-last >= int64(storageCheckEvery) || since >= limit/16) && n.storage.checked.CompareAndSwap(last, now) {
		n.storage.since.Store(0)
		space := store.Space(nil)
		if n.shared != nil {
			space = n.shared.space
		}
		if stored, err := store.SpaceSize(n.db, space.Prefix(store.PrefixTxlog)); err == nil {
			n.storage.over.Store(int64(stored) >= limit)
		}
	}
	if !n.storage.over.Load() {
		return false
	}
	if l := n.storage.logged.Load(); now-l >= int64(time.Minute) && n.storage.logged.CompareAndSwap(l, now) {
		n.log.Warn("this family is over its storage limit on this relay ([relay] family_max_mb): its new entries are refused until the limit is raised; its sites keep them",
			"family", n.id.FamilyID, "limit_mb", limit>>20)
	}
	return true
}
