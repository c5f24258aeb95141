package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/node/datadir"
)

// InitOptions are the inputs of `ppsync init`.
type InitOptions struct {
	DataDir    string
	FamilyFile string // the family's family.json
	Site       string
	Role       string              // "site" (default) or "relay"
	Env        func(string) string // environment (PPSYNC_MACHINE_ID); nil: empty
	Now        func() time.Time
	// DB is the practice database to bind and sync (sqlite:PATH); empty: none.
	DB             string
	DBTables       []string
	DBExclude      []string
	DBPasswordFile string // PostgreSQL: a file holding the password (else PPSYNC_DB_PASSWORD)
}

// InitResult says what Init created.
type InitResult struct {
	JoinRequest string // path of the join request to send to support
	PeerID      string
	DatabaseID  string
	Fingerprint string
	// The practice database, when one was given: its identity, the tables
	// that will be synced and those that will not (with why).
	DB       string   `json:"db,omitempty"`
	DBTables []string `json:"db_tables,omitempty"`
	DBSkip   []string `json:"db_skipped,omitempty"`
}

// Init sets up a new node in opts.DataDir: its key, API key, database and
// database ID, machine fingerprint, config file, a copy of family.json, and
// the join request that support turns into a certificate.
func Init(opts InitOptions) (InitResult, error) {
	var res InitResult
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Env == nil {
		opts.Env = func(string) string { return "" }
	}
	if opts.Role == "" {
		opts.Role = string(family.RoleSite)
	}
	role := family.Role(opts.Role)
	if err := role.Validate(); err != nil {
		return res, err
	}
	if err := wire.ValidateSiteID(opts.Site); err != nil {
		return res, err
	}
	info, err := family.LoadInfo(opts.FamilyFile)
	if err != nil {
		return res, err
	}
	if opts.DataDir == "" {
		return res, errors.New("node: no data directory given (use --data DIR)")
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return res, fmt.Errorf("node: create data directory: %w", err)
	}
	lk, err := lock.Acquire(opts.DataDir)
	if err != nil {
		return res, err
	}
	defer lk.Release()
	if id, err := datadir.ReadIdentity(opts.DataDir); err == nil {
		if _, terr := datadir.Tighten(opts.DataDir); terr != nil {
			return res, terr
		}
		return res, fmt.Errorf("node: %s already holds the node of site %q (its keys and database are now readable by this account only); use an empty directory for a new node", opts.DataDir, id.Site)
	}

	var practice db.Identity
	if opts.DB != "" {
		c, err := openConnector(context.Background(), opts.DB, opts.DBTables, opts.DBExclude, pgAuthOf(opts.DBPasswordFile, opts.Env), nil)
		if err != nil {
			return res, err
		}
		practice, err = c.Identity(context.Background())
		if err == nil {
			var sch *db.Schema
			if sch, err = c.Schema(context.Background()); err == nil {
				for _, t := range sch.Tables {
					res.DBTables = append(res.DBTables, t.Name)
				}
				for _, k := range sch.Skipped {
					res.DBSkip = append(res.DBSkip, k.Table+": "+k.Reason)
				}
			}
		}
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return res, err
		}
		res.DB = practice.Detail
	}
	fp, err := lock.Fingerprint(info.FamilyID, opts.Env)
	if err != nil {
		return res, err
	}
	priv, err := datadir.WriteNodeKey(filepath.Join(opts.DataDir, NodeKeyFile))
	if err != nil {
		return res, err
	}
	pid, err := family.PeerIDOf(priv.Public().(ed25519PublicKey))
	if err != nil {
		return res, err
	}
	if err := datadir.WriteAPIKey(filepath.Join(opts.DataDir, APIKeyFile)); err != nil {
		return res, err
	}
	if _, err := datadir.LoadOrCreateAPICert(opts.DataDir, apiCertNames(), opts.Now()); err != nil {
		return res, err
	}
	if err := family.SaveInfo(filepath.Join(opts.DataDir, FamilyFile), info); err != nil {
		return res, err
	}
	db, err := store.Open(filepath.Join(opts.DataDir, DBDir), store.Options{})
	if err != nil {
		return res, err
	}
	dbID, err := lock.CreateDatabaseID(db)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("node: close database: %w", cerr)
	}
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(opts.DataDir, CertsDir), 0o700); err != nil {
		return res, fmt.Errorf("node: create %s: %w", CertsDir, err)
	}
	req, err := family.NewJoinRequest(info, opts.Site, role, priv.Public().(ed25519PublicKey), fp, datadir.BindingID(dbID, practice.ID), opts.Now())
	if err != nil {
		return res, err
	}
	rb, err := req.Marshal()
	if err != nil {
		return res, err
	}
	res.JoinRequest = filepath.Join(opts.DataDir, JoinRequestFile)
	if err := datadir.WriteFileAtomic(res.JoinRequest, rb, 0o644); err != nil {
		return res, err
	}
	cfg := DefaultConfig(opts.DataDir)
	cfg.DB, cfg.DBTables, cfg.DBExclude, cfg.DBPasswordFile = opts.DB, opts.DBTables, opts.DBExclude, opts.DBPasswordFile
	if role == family.RoleRelay {
		cfg.MemoryLimit = DefaultRelayMemoryLimit
	}
	if err := SaveConfig(cfg); err != nil {
		return res, err
	}
	if _, err := datadir.Tighten(opts.DataDir); err != nil {
		return res, err
	}
	acct, err := lock.CurrentAccount()
	if err != nil {
		return res, err
	}
	// node.json last: its presence marks a complete setup.
	if err := datadir.WriteIdentity(opts.DataDir, datadir.Identity{Format: 1, FamilyID: info.FamilyID, Site: opts.Site, Role: role,
		PeerID: pid.String(), CreatedAt: opts.Now().UTC().Truncate(time.Second), DBID: practice.ID, DBDetail: practice.Detail, Account: acct}); err != nil {
		return res, err
	}
	res.PeerID, res.DatabaseID, res.Fingerprint = pid.String(), datadir.BindingID(dbID, practice.ID), fp
	return res, nil
}

// TightenResult says what TightenExisting changed.
type TightenResult struct {
	Site    string   `json:"site"`
	Changed []string `json:"changed"` // the paths whose permissions were tightened
}

// TightenExisting is `ppsync init --data DATA` on a directory that already
// holds a node: it makes the node's keys and database readable by its
// account only (on Windows, that account and Administrators), so that
// `ppsync run` accepts them.
func TightenExisting(dataDir string) (TightenResult, error) {
	id, err := datadir.ReadIdentity(dataDir)
	if err != nil {
		return TightenResult{}, err
	}
	if _, err := datadir.LoadOrCreateAPICert(dataDir, apiCertNames(), time.Now()); err != nil {
		return TightenResult{Site: id.Site}, err
	}
	changed, err := datadir.Tighten(dataDir)
	return TightenResult{Site: id.Site, Changed: changed}, err
}

// apiCertNames are the names the API's certificate is made for besides
// localhost and loopback: this machine's host name.
func apiCertNames() []string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return []string{h}
	}
	return nil
}
