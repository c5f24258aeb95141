package node

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/db/postgres"
	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/node/keyring"
	"github.com/ppsync/ppsync/state"
	"github.com/ppsync/ppsync/txlog"
)

// Node is one running ppsync node. Open starts it, Run serves until its
// context ends, Close stops everything Open started and waits for it.
type Node struct {
	cfg       Config
	gossipOut atomic.Pointer[syncer] // the syncer, once the mesh runs: where committed groups go
	log       *slog.Logger
	id        datadir.Identity
	key       ed25519.PrivateKey
	apiKey    string
	roster    *family.Roster
	cert      *family.Certificate // own current certificate
	lock      *lock.Lock
	db        *pebble.DB
	ingest    *store.Ingester // stores long runs of entries as tables (txlog.Config.Ingest)
	state     *state.State
	txlog     *txlog.Log
	ring      *keyring.Ring           // the family's data keys (nil at a relay)
	opener    *keyring.Opener         // the log's applier at a site
	keyRoster atomic.Pointer[keyView] // the roster as the keys see it, as of the last change of membership
	keyPoke   chan struct{}
	tapFile   *os.File // PPSYNC_MESH_TAP, closed at the end
	// openFrontier is the log's frontier when the node opened: what the
	// practice database can have seen of the other sites before it runs.
	openFrontier map[string]uint64
	// openCursor is the state's change cursor when the node opened: what
	// it kept of the changes it had handed to the practice database.
	openCursor uint64
	clock      *hlc.Clock
	ln         net.Listener
	srv        *http.Server
	tlsFP      string // the API certificate's fingerprint when it serves HTTPS
	start      time.Time
	mesh       *mesh.Mesh
	sync       *syncer
	dbs        *dbsync      // the practice database, nil without one
	dbc        db.Connector // its connector
	events     *eventHub
	counters   counters
	alerts     *alerter

	ctx    context.Context // ends when the node closes
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines started by goTracked, and runs of scheduled jobs
	goMu   sync.Mutex     // guards stopping and jobs, and wg.Add against Close's wg.Wait
	// stopping is set once Close has begun: goTracked starts nothing more.
	stopping bool
	// sched runs the node's periodic work (schedule.go): its own, or at a
	// relay's further family its first node's, shared by every family.
	sched *scheduler
	jobs  []*job // this node's jobs on sched, stopped by Close
	// settingsTurn is the turn to change the settings (one slot): one change
	// at a time reads them, saves ppsync.toml and applies them. Only changes
	// of the settings wait for it, and a waiting request gives up when it
	// ends; mu is not held while the file is written.
	settingsTurn chan struct{}
	// bodies bounds the bytes of write requests being handled (reqbudget.go).
	bodies *bodyBudget
	schema *Schema // DATA/schema.json, nil when absent; set by Open only

	// shared is set on a relay's further family: what it takes from the
	// relay's first node (key, database, libp2p host). fams is set on a
	// relay's first node: the further families it serves (families.go).
	shared  *shared
	fams    *relayFamilies
	storage storageGate // a relay family's storage limit
	// familyMux is a further family's API, made at its first request.
	familyMux     *http.ServeMux
	familyMuxOnce sync.Once

	mu       sync.Mutex // guards the fields below
	settings Config
	refused  error // set when the node's own certificate stopped being current
	closed   bool
}

// goTracked runs f on a goroutine that Close waits for; once Close has
// begun it starts nothing and returns false.
func (n *Node) goTracked(f func()) bool {
	if !n.enter() {
		return false
	}
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// enter counts a run of the node's work that Close waits for (the caller
// calls n.wg.Done when it ends); once Close has begun it returns false.
func (n *Node) enter() bool {
	n.goMu.Lock()
	defer n.goMu.Unlock()
	if n.stopping {
		return false
	}
	n.wg.Add(1)
	return true
}

// schedule makes a job of this node on its scheduler (not scheduled yet:
// see job.reset). Close stops it and waits for a run under way; once Close
// has begun, f runs no more.
func (n *Node) schedule(f func()) *job {
	j := n.sched.newJob(func() {
		if !n.enter() {
			return
		}
		defer n.wg.Done()
		f()
	})
	n.goMu.Lock()
	n.jobs = append(n.jobs, j)
	n.goMu.Unlock()
	return j
}

func (n *Node) currentConfig() Config {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.settings
}

// Open checks that this node may run here (lock, certificate, machine and
// database binding), opens its database, log and state, and binds the API.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Env == nil {
		cfg.Env = func(string) string { return "" }
	}
	if cfg.Account == nil {
		cfg.Account = lock.CurrentAccount
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger, settings: cfg, start: cfg.Now(), settingsTurn: make(chan struct{}, 1),
		bodies: newBodyBudget(writeBodyBudget)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.events = newEventHub(cfg.Now)
	n.sched = newScheduler()
	n.goTracked(func() { n.sched.run(n.ctx) })
	ok := false
	defer func() {
		if !ok {
			n.closeAll()
		}
	}()
	if err := n.open(ctx); err != nil {
		return nil, err
	}
	ok = true
	return n, nil
}

func (n *Node) open(ctx context.Context) error {
	dir := n.cfg.DataDir
	acct, err := n.cfg.Account()
	if err != nil {
		return err
	}
	id, err := datadir.ReadIdentity(dir)
	if errors.Is(err, fs.ErrPermission) {
		return notOwnerError(dir, filepath.Join(dir, datadir.NodeFile))
	}
	if err != nil {
		return err
	}
	n.id = id
	if err := lock.CheckAccount(id.Account, acct); err != nil {
		return err
	}
	if n.lock, err = lock.Acquire(dir); err != nil {
		return err
	}
	if err := datadir.CheckPrivate(dir); err != nil {
		return err
	}
	if n.key, err = datadir.ReadNodeKey(filepath.Join(dir, NodeKeyFile)); err != nil {
		return err
	}
	if n.apiKey, err = datadir.ReadAPIKey(dir); err != nil {
		return err
	}
	if n.roster, err = datadir.LoadRoster(dir); err != nil {
		return err
	}
	if n.roster.FamilyID() != id.FamilyID {
		return fmt.Errorf("node: %s belongs to family %.16s…, but its family.json is for family %.16s…; restore the right family.json", dir, id.FamilyID, n.roster.FamilyID())
	}
	if n.cert, err = n.ownCertificate(); err != nil {
		return err
	}
	if n.schema, err = loadSchema(dir); err != nil {
		return err
	}
	fp, err := lock.Fingerprint(id.FamilyID, n.cfg.Env)
	if err != nil {
		return err
	}
	// A store made here (a new node, or one replaced) is private from the
	// start: the permission check refuses one others can read.
	if err := os.Mkdir(filepath.Join(dir, DBDir), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("node: create the database directory: %w", err)
	}
	so := store.ForMemory(n.cfg.Memory())
	so.Logger = n.log
	if n.db, err = store.Open(filepath.Join(dir, DBDir), so); err != nil {
		return err
	}
	if n.ingest, err = store.NewIngester(n.db, filepath.Join(dir, IngestDir), so); err != nil {
		return err
	}
	dbID, found, err := lock.DatabaseID(n.db)
	if err != nil {
		return err
	}
	if !found {
		dbID = "missing" // the store was replaced or recreated: not the database the certificate names
	}
	if id.DBID != "" || n.cfg.DB != "" {
		if err := n.openPracticeDB(ctx); err != nil {
			return err
		}
		practice, err := n.dbc.Identity(ctx)
		if err != nil {
			return err
		}
		dbID = datadir.BindingID(dbID, practice.ID)
	}
	if err := lock.CheckBinding(lock.Binding{Fingerprint: n.cert.MachineFingerprint, DatabaseID: n.cert.DatabaseID, Account: id.Account},
		lock.Binding{Fingerprint: fp, DatabaseID: dbID, Account: acct}); err != nil {
		return err
	}
	if err := n.recordAccount(acct); err != nil {
		return err
	}
	if n.state, err = state.Open(n.db, n.log); err != nil {
		return err
	}
	ss, err := n.state.Stats()
	if err != nil {
		return err
	}
	n.openCursor = ss.Cursor
	n.clock = hlc.New(n.cfg.Now)
	var self *txlog.Identity
	if n.cert.Role == family.RoleSite {
		self = &txlog.Identity{Site: n.cert.Site, Epoch: n.cert.Epoch, Key: n.key}
	}
	if err := n.openKeys(); err != nil {
		return err
	}
	tc := txlog.Config{DB: n.db, Ingest: n.ingest, Family: id.FamilyID, Self: self, Keys: members{n},
		Apply: noState{}, Clock: n.clock, Logger: n.log, App: n.appVersion, Committed: n.committed}
	if n.ring != nil {
		tc.Apply, tc.Take, tc.Seal, tc.Ready = n.opener, n.opener.Take, n.sealEntry, n.ring.Ready
		if n.cfg.plain {
			tc.Seal = nil
		}
	} else if err := n.forgetRelayState(ctx); err != nil {
		return err
	}
	if n.txlog, err = txlog.Open(tc); err != nil {
		return err
	}
	n.openFrontier = n.txlog.Frontier() // before any peer's entry arrives
	if err := n.startMesh(ctx); err != nil {
		return err
	}
	if err := n.startAlerts(); err != nil {
		return err
	}
	if err := n.openFamilies(); err != nil {
		return err
	}
	if err := n.mesh.Host().Listen(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if n.ring != nil {
		n.goTracked(func() { n.runKeys(n.ctx) })
		n.goTracked(func() {
			// Skips the reads of records never stored; without it every
			// read is made, so a failure is only logged.
			if err := n.state.BuildPresence(n.ctx); err != nil && n.ctx.Err() == nil {
				n.log.Warn("the state's presence filter could not be built; every record is read, as before", "err", err)
			}
		})
	}
	if n.dbc != nil {
		n.dbs = newDBSync(n, n.dbc)
		if err := n.dbs.loadRefused(ctx); err != nil {
			// Not fatal: the owner goroutine reads them again when it starts.
			n.log.Warn("the rows the practice database refused could not be read yet", "err", err)
		}
		n.goTracked(func() { n.dbs.run(n.ctx) })
	}
	if err := n.listenAPI(); err != nil {
		return err
	}
	n.srv = &http.Server{Handler: n.handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return n.ctx }}
	n.keepActivity()
	return nil
}

// recordAccount binds a node set up before ppsync recorded the account to
// the account that runs it first, and says so in the log.
func (n *Node) recordAccount(acct lock.Account) error {
	if n.id.Account.ID != "" {
		return nil
	}
	n.id.Account = acct
	if err := datadir.WriteIdentity(n.cfg.DataDir, n.id); err != nil {
		return fmt.Errorf("%w; the node records the account that runs it in %s", err, datadir.NodeFile)
	}
	n.log.Info("this node had no account recorded (it was set up by an older ppsync): it is now bound to the account running it, and refuses to run as any other", "account", acct.String())
	return nil
}

// listenAPI binds the API. On loopback it serves plain HTTP; on any other
// address HTTPS with the data directory's self-signed certificate (made on
// first need), or plain HTTP with a warning when api_insecure is set.
func (n *Node) listenAPI() error {
	ln, err := net.Listen("tcp", n.cfg.API)
	if err != nil {
		return fmt.Errorf("node: the API cannot listen on %s (%v); choose another address with --api HOST:PORT or in %s", n.cfg.API, err, ConfigFile)
	}
	n.ln = ln
	if isLoopbackHost(n.cfg.API) {
		return nil
	}
	if n.cfg.APIInsecure {
		n.log.Warn("the API listens on "+n.cfg.API+", beyond this machine, over plain HTTP (api_insecure = true): anyone on the network can read the API key, the sync page's session and the practice's data on the way; remove api_insecure from "+ConfigFile+" to serve HTTPS", "api", n.cfg.API)
		return nil
	}
	host, _, _ := net.SplitHostPort(n.cfg.API)
	c, err := datadir.LoadOrCreateAPICert(n.cfg.DataDir, append([]string{host}, n.cfg.APIHosts...), n.cfg.Now())
	if err != nil {
		return fmt.Errorf("%w; the API listens on %s, beyond this machine, and is served over HTTPS only (or set api = \"127.0.0.1:7474\", or api_insecure = true, in %s)", err, n.cfg.API, ConfigFile)
	}
	n.tlsFP = c.Fingerprint
	n.ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{c.Cert}})
	n.log.Info("the API serves HTTPS with the certificate "+datadir.APITLSCertFile+"; clients pin its fingerprint from "+RuntimeFile, "fingerprint", c.Fingerprint)
	return nil
}

// baseURL is the API's address as clients should use it: https:// when it
// serves TLS, and a loopback address when it listens on every interface.
func (n *Node) baseURL() string {
	scheme := "http"
	if n.tlsFP != "" {
		scheme = "https"
	}
	host, port, _ := net.SplitHostPort(n.ln.Addr().String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// openPracticeDB opens the practice database the configuration names and
// refuses (exit 4) one that is not the database init bound this node to.
func (n *Node) openPracticeDB(ctx context.Context) error {
	if n.cfg.DB == "" {
		return refusedError(db.ErrBinding, "this node was set up with the practice database %s, but %s names none (db = ...): restore the setting, or ask support to move the node", n.id.DBDetail, ConfigFile)
	}
	c, err := n.connectPracticeDB(ctx)
	if err != nil {
		return err
	}
	n.dbc = c
	got, err := c.Identity(ctx)
	if err != nil {
		return err
	}
	if n.id.DBID == "" {
		return refusedError(db.ErrBinding, "this node was set up without a practice database, but %s names %s: a database is bound when the node is set up (ppsync init --db); ask support to move the node", ConfigFile, n.cfg.DB)
	}
	// The random ID travels with every copy of the database (a file copy, a
	// CREATE DATABASE ... TEMPLATE): the database must also be where it was
	// (the same file; the same PostgreSQL database on the same server).
	if got.ID != n.id.DBID || (n.id.DBDetail != "" && got.Detail != n.id.DBDetail) {
		return refusedError(db.ErrBinding, "%s is not the practice database this node was set up with (expected %s, database ID %.12s…; this one has %.12s…): a copy or another database would split the practice's data; point db = at the right database, or ask support to move the node", got.Detail, n.id.DBDetail, n.id.DBID, got.ID)
	}
	return nil
}

// connectPracticeDB opens the practice database's connector. A database
// server that is not up yet (the machine is starting, PostgreSQL restarts)
// is waited for, with the reason in the log, until ctx ends: the binding can
// only be checked against the database itself, so the node starts once it
// answers.
func (n *Node) connectPracticeDB(ctx context.Context) (db.Connector, error) {
	wait := 500 * time.Millisecond
	for {
		c, err := openConnector(ctx, n.cfg.DB, n.cfg.DBTables, n.cfg.DBExclude, pgAuthOf(n.cfg.DBPasswordFile, n.cfg.Env), n)
		var down *postgres.ServerDownError
		if err == nil || !errors.As(err, &down) {
			return c, err
		}
		n.log.Warn("waiting for the practice database's server before starting", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up waiting: %v)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 10*time.Second)
	}
}

// appVersion is the practice software's schema version at this site: the
// practice database's (SQLite user_version, or the configured query), else
// schema.json's version, else 0.
func (n *Node) appVersion() uint32 {
	if n.dbs != nil {
		return n.dbs.appVersion()
	}
	if n.schema != nil && n.schema.Version > 0 {
		return uint32(n.schema.Version)
	}
	return 0
}

// appVersion is the practice database's schema version (0 until its tables
// have been read).
func (d *dbsync) appVersion() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.schema != nil {
		return d.schema.Version
	}
	return 0
}

// ownCertificate finds this node's current certificate and refuses to run
// when its site was moved elsewhere or revoked.
func (n *Node) ownCertificate() (*family.Certificate, error) {
	var mine *family.Certificate
	for _, c := range n.roster.Certificates() {
		if c.Site == n.id.Site && c.PeerID.String() == n.id.PeerID && (mine == nil || c.Epoch > mine.Epoch) {
			mine = c
		}
	}
	if mine == nil && n.roster.Status(n.id.Site).State == family.StateRevoked {
		return nil, refused(n.id.Site, fmt.Errorf("%w: site %q", family.ErrRevoked, n.id.Site))
	}
	if mine == nil {
		return nil, fmt.Errorf("%w for site %q: send %s to support and install the certificate they return with `ppsync install --data %s CERT`",
			ErrNoCertificate, n.id.Site, filepath.Join(n.cfg.DataDir, JoinRequestFile), n.cfg.DataDir)
	}
	if err := n.roster.Check(mine); err != nil {
		return nil, refused(n.id.Site, err)
	}
	return mine, nil
}

// rosterKeys lets the log verify entries against the family roster.
type rosterKeys struct{ r *family.Roster }

func (k rosterKeys) SiteKey(site string, epoch uint64) (ed25519.PublicKey, error) {
	return k.r.KeyFor(site, epoch)
}

// Run serves the API and writes DATA/runtime.json until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- n.srv.Serve(n.ln) }()
	rt := api.Runtime{PID: os.Getpid(), API: n.baseURL(), PeerID: n.id.PeerID, Addrs: n.mesh.Addrs(), TLSFingerprint: n.tlsFP}
	b, err := json.MarshalIndent(rt, "", "  ")
	if err != nil {
		return fmt.Errorf("node: encode runtime: %w", err)
	}
	if err := datadir.WriteFileAtomic(filepath.Join(n.cfg.DataDir, RuntimeFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	n.log.Info("ppsync node running", "site", n.id.Site, "role", n.id.Role, "api", rt.API, "version", n.cfg.Version)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("node: API server: %w", err)
	}
}

// Close stops the API (in-flight requests finish), the log (in-flight writes
// finish or fail, nothing half-written), closes the database, removes
// runtime.json and releases the lock.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	return n.closeAll()
}

func (n *Node) closeAll() error {
	var errs []error
	// Everything the node started ends first, requests and event streams
	// included (they live under n.ctx), so that an open sync page does not
	// hold up the API's shutdown.
	n.cancel()
	n.goMu.Lock()
	n.stopping = true
	jobs := n.jobs
	n.goMu.Unlock()
	for _, j := range jobs {
		j.stop()
	}
	if n.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := n.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("node: stop API: %w", err))
		}
		cancel()
	} else if n.ln != nil {
		n.ln.Close()
	}
	if n.mesh != nil && n.shared == nil && n.id.Role == family.RoleRelay {
		n.mesh.Host().StopListening() // no member redials into a half-closed relay
		n.mesh.Host().CloseConnections()
	}
	errs = append(errs, n.closeFamilies()...) // before the host and database they share
	if n.mesh != nil {
		errs = append(errs, n.mesh.Close())
	}
	if n.tapFile != nil {
		errs = append(errs, n.tapFile.Close())
	}
	n.wg.Wait()
	if n.alerts != nil {
		n.alerts.saveAll() // the monitor has stopped: the next start counts outages from here
	}
	if n.dbc != nil {
		errs = append(errs, n.dbc.Close())
	}
	if n.txlog != nil {
		errs = append(errs, n.txlog.Close())
	}
	if n.db != nil && n.shared == nil { // a further family's is its relay's
		errs = append(errs, n.db.Close())
	}
	if n.lock != nil {
		if n.srv != nil {
			os.Remove(filepath.Join(n.cfg.DataDir, RuntimeFile))
		}
		errs = append(errs, n.lock.Release())
	}
	return errors.Join(errs...)
}

// Addr returns the API's listening address.
func (n *Node) Addr() string { return n.apiListener().Addr().String() }

// apiListener is the listener of the API that serves this node: its own,
// or at a relay's further family the relay's.
func (n *Node) apiListener() net.Listener {
	if n.shared != nil {
		return n.shared.primary.ln
	}
	return n.ln
}

// startMesh joins the family's network and starts the sync loop.
func (n *Node) startMesh(ctx context.Context) error {
	n.sync = newSyncer(n)
	n.gossipOut.Store(n.sync)
	boot := append(append([]string(nil), n.cfg.Bootstrap...), n.roster.Info().Bootstrap...)
	var err error
	mc := mesh.Config{
		Key: n.key, Listen: n.cfg.Listen, Bootstrap: boot, Relay: n.id.Role == family.RoleRelay,
		Family: members{n}, Log: logView{n}, Handler: n.sync, Logger: n.log, MDNS: n.cfg.MDNS,
		HeartbeatInterval: n.cfg.HeartbeatInterval, Heartbeat: n.heartbeat,
	}
	if n.opener != nil {
		mc.Prepare = n.opener.OpenAll
	}
	if path := n.cfg.Env("PPSYNC_MESH_TAP"); path != "" {
		// An audit copy of everything this node sends and receives on the
		// mesh, after transport decryption: what a member is given.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("node: PPSYNC_MESH_TAP=%s: %w", path, err)
		}
		n.tapFile, mc.Tap = f, f
		n.log.Warn("PPSYNC_MESH_TAP is set: every byte this node sends and receives on the mesh is copied to a file (an audit aid; unset it for normal running)", "file", path)
	}
	if n.id.Role == family.RoleRelay {
		mc.Limits = n.cfg.Relay.meshLimits() // one family's flood cannot starve the others it serves
		mc.DeferListen = n.shared == nil     // listen once every family is back (openFamilies)
		// A family without a connected member costs no goroutine, stream or
		// connection: its gossip and loops start with its first member.
		mc.Lazy, mc.SleepAfter = true, n.cfg.SleepAfter
	}
	if n.shared != nil {
		n.mesh, err = n.shared.host.Attach(n.ctx, mc)
	} else {
		n.mesh, err = mesh.New(n.ctx, mc)
	}
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.sync.start()
	if n.id.Role != family.RoleRelay { // a relay writes no entries of its own
		n.goTracked(func() { n.sync.publishLoop(n.ctx) })
	}
	return nil
}

// heartbeat is what this node gossips about itself.
func (n *Node) heartbeat() mesh.Heartbeat {
	status := "ok"
	if n.txlog != nil && n.ownForked() {
		status = "forked"
	}
	hb := mesh.Heartbeat{Site: n.id.Site, Role: string(n.id.Role), Version: n.cfg.Version, Protocol: mesh.ProtocolVersion,
		Schema: wire.SchemaVersion, Wall: n.cfg.Now().UTC(), Status: status}
	if n.txlog != nil {
		hb.Frontier, hb.Heads = n.frontierWithHeads()
	}
	if n.ring != nil {
		hb.Want = n.ring.Wanted()
	}
	return hb
}

// recheckCertificate runs when membership changed: a node whose own
// certificate was superseded or revoked stops writing at once.
func (n *Node) recheckCertificate() {
	if _, err := n.ownCertificate(); err != nil && errors.Is(err, ErrRefused) {
		n.mu.Lock()
		first := n.refused == nil
		n.refused = err
		n.mu.Unlock()
		if first {
			n.log.Error("this node may no longer write", "err", err)
		}
	}
}

// writeBlocked says why own writes are refused now, or nil. Each reason is
// decided here, with its message and the API's answer.
func (n *Node) writeBlocked() error { return n.writeBlockedFor(0) }

// writeBlockedFor is writeBlocked for a write of about size bytes: the
// free-space check counts what it will take on disk (see checkSpaceFor).
// Every own write goes through it once, with its estimate.
func (n *Node) writeBlockedFor(size uint64) error {
	n.mu.Lock()
	refusedErr := n.refused
	n.mu.Unlock()
	if refusedErr != nil {
		return refusedErr
	}
	if n.id.Role == family.RoleRelay {
		return errReadOnly
	}
	if err := n.checkSpaceFor(size); err != nil {
		return err
	}
	if why := n.sync.writeGate(); why != "" {
		return catchingUp(why)
	}
	if n.ownForked() {
		return n.forkedError()
	}
	return nil
}

// catchingUp: own writes wait until the own log has caught up (why says
// what it waits for).
func catchingUp(why string) error {
	return newAPIError(http.StatusConflict, codeCatchingUp, ErrCatchingUp, "catching up: %s", why)
}

// errReadOnly: a relay writes nothing of its own.
var errReadOnly = &apiError{status: http.StatusConflict, code: codeReadOnly, err: txlog.ErrReadOnly,
	msg: "this node is a relay: it stores and forwards the family's logs but writes no transactions of its own"}

// ownForked reports whether this site's own log has forked.
func (n *Node) ownForked() bool {
	for _, f := range n.txlog.Forks() {
		if f.Site == n.id.Site {
			return true
		}
	}
	return false
}

func (n *Node) forkedError() error {
	return newAPIError(http.StatusConflict, codeForked, txlog.ErrForked,
		"another copy of this site (%q) has written entries this node did not; writes are stopped until support resolves the fork", n.id.Site)
}

// ownWriteError gives the API's answer to what the log refused of an own
// write: a fork or a move it found at commit time, a stop, an entry over a
// limit. Anything else is left as it is.
func (n *Node) ownWriteError(err error) error {
	switch {
	case errors.Is(err, txlog.ErrForked):
		return n.forkedError()
	case errors.Is(err, txlog.ErrEpoch):
		return newAPIError(http.StatusConflict, codeRefused, err,
			"this node's certificate has epoch %d but its site's log is at epoch %d: the site was moved to another machine", n.cert.Epoch, n.txlog.Head(n.id.Site).Epoch)
	case errors.Is(err, txlog.ErrClosed):
		return newAPIError(http.StatusServiceUnavailable, codeStopping, err, "the node is stopping; try again once it runs")
	case errors.Is(err, txlog.ErrReadOnly):
		return errReadOnly
	}
	return invalidOps(err)
}

// checkSpace refuses writes (own and received) while the data directory's
// disk has less than DiskReserve free: a write that ran the disk full would
// make the store fail hard; refused, nothing is half-written, and writes
// resume by themselves once space returns.
func (n *Node) checkSpace() error { return n.checkSpaceFor(0) }

// checkSpaceFor also counts what a write of about size bytes will take on
// disk before compaction reclaims anything (the WAL, the memtable's flush and
// the entries' own copy: three times the size).
func (n *Node) checkSpaceFor(size uint64) error {
	reserve := n.cfg.DiskReserve
	if reserve <= 0 {
		return nil
	}
	free, err := freeBytes(n.cfg.DataDir)
	if err != nil || free >= reserve+3*size {
		return nil
	}
	if size > 0 {
		return newAPIError(http.StatusInsufficientStorage, codeDiskFull, ErrDiskFull, "disk almost full: the disk holding %s has %d MiB free, but this write needs about %d MiB on top of the %d MiB ppsync keeps free so that nothing is half-written; free some space there, or send smaller batches", n.cfg.DataDir, free>>20, (3*size)>>20, reserve>>20)
	}
	return newAPIError(http.StatusInsufficientStorage, codeDiskFull, ErrDiskFull, "disk almost full: the disk holding %s has %d MiB free; free some space there (ppsync stops writing below %d MiB so that nothing is half-written, and resumes by itself)", n.cfg.DataDir, free>>20, reserve>>20)
}

// committed gossips a durable commit group's own entries (txlog's
// Committed): the syncer's, once the mesh runs. Entries of an initial load
// are not gossiped: peers fetch them by catch-up, in compressed batches, once
// a heartbeat shows this site's log ahead.
func (n *Node) committed(es []*wire.Signed) {
	if s := n.gossipOut.Load(); s != nil {
		s.published(es)
	}
}
