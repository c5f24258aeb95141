package node

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/node/keyring"
	"github.com/ppsync/ppsync/state"
	"github.com/ppsync/ppsync/txlog"
)

// VerifyReport is what Verify found.
type VerifyReport struct {
	Sites        int      `json:"sites"`
	Entries      uint64   `json:"entries"`
	Damage       []string `json:"damage"`
	DigestBefore string   `json:"digest_before"`
	DigestAfter  string   `json:"digest_after"`
	Rebuilt      bool     `json:"rebuilt"`  // the state was rebuilt from the logs
	Repaired     bool     `json:"repaired"` // the rebuilt state differs from what was stored
}

// Verify is the maintenance "re-index" of a stopped node: it re-checks every
// chain and signature, rebuilds the state from the logs and compares the
// digests. Damage is reported, never a panic; a damaged log is not used to
// rebuild.
func Verify(ctx context.Context, dataDir string, progress func(stage string, done, total uint64)) (VerifyReport, error) {
	rep := VerifyReport{Damage: []string{}}
	if progress == nil {
		progress = func(string, uint64, uint64) {}
	}
	if _, err := datadir.ReadIdentity(dataDir); err != nil {
		return rep, err
	}
	lk, err := lock.Acquire(dataDir)
	if err != nil {
		return rep, err
	}
	defer lk.Release()
	roster, err := datadir.LoadRoster(dataDir)
	if err != nil {
		return rep, err
	}
	db, err := store.Open(filepath.Join(dataDir, DBDir), store.Options{})
	if err != nil {
		return rep, err
	}
	defer db.Close()
	st, err := state.Open(db, nil)
	if err != nil {
		return rep, err
	}
	// A site rebuilds through its keyring (sealed entries open with the keys
	// it holds; others stay held); a relay keeps no state at all.
	var apply txlog.Applier = noState{}
	tc := txlog.Config{DB: db, Family: roster.FamilyID(), Keys: rosterKeys{roster}, Apply: st, Clock: hlc.New(time.Now)}
	if id, err := datadir.ReadIdentity(dataDir); err == nil && id.Role == family.RoleSite {
		key, err := datadir.ReadNodeKey(filepath.Join(dataDir, NodeKeyFile))
		if err != nil {
			return rep, err
		}
		ring, err := keyring.Open(db, roster.FamilyID(), slog.New(slog.DiscardHandler))
		if err != nil {
			return rep, err
		}
		self := keyring.Self{Site: id.Site, Key: key}
		for _, c := range roster.Certificates() {
			if c.Site == id.Site && c.PeerID.String() == id.PeerID && c.Epoch > self.Epoch {
				self.Epoch = c.Epoch
			}
		}
		op := &keyring.Opener{Ring: ring, Self: self, State: st}
		apply, tc.Apply = op, op
		tc.Ready = ring.Ready
	}
	tc.Apply = apply
	lg, err := txlog.Open(tc)
	if err != nil {
		return rep, err
	}
	defer lg.Close()

	before, err := st.Digest()
	if err != nil {
		rep.Damage = append(rep.Damage, fmt.Sprintf("the state cannot be read: %v", err))
	} else {
		rep.DigestBefore = before.String()
	}
	lr, err := lg.Verify(ctx, func(done, total uint64) { progress("checking chains and signatures", done, total) })
	if err != nil {
		return rep, err
	}
	rep.Sites, rep.Entries = lr.Sites, lr.Entries
	for _, d := range lr.Damage {
		rep.Damage = append(rep.Damage, d.String())
	}
	if len(lr.Damage) > 0 {
		rep.Damage = append(rep.Damage, "the state was not rebuilt: the logs themselves are damaged; restore the data directory from a backup, or ask support (a peer holds every entry)")
		return rep, nil
	}
	if err := st.Clear(ctx); err != nil {
		return rep, err
	}
	if err := lg.Replay(ctx, apply, 1000, func(done, total uint64) { progress("rebuilding the state", done, total) }); err != nil {
		return rep, err
	}
	rep.Rebuilt = true
	after, err := st.Digest()
	if err != nil {
		return rep, err
	}
	rep.DigestAfter = after.String()
	if rep.DigestBefore != rep.DigestAfter {
		rep.Repaired = true
		rep.Damage = append(rep.Damage, "the stored state did not match the logs; it has been rebuilt from them")
	}
	return rep, nil
}
