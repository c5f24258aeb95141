package node

import (
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/lock"
)

type ed25519PublicKey = ed25519.PublicKey

// Errors the command line maps to exit codes.
var (
	// ErrRefused: the machine lock or the database binding refuses this node
	// (wrong machine, wrong database, superseded or revoked certificate). Exit 4.
	ErrRefused = lock.ErrRefused
	// ErrLocked: another node process already runs on this data directory. Exit 5.
	ErrLocked = lock.ErrHeld
	// ErrNoCertificate: the node has no certificate installed yet.
	ErrNoCertificate = errors.New("node: no certificate installed")
	// ErrCatchingUp: own writes wait until the node's own log has caught up.
	ErrCatchingUp = errors.New("node: catching up")
)

// refused wraps a certificate problem (superseded, revoked) as a refusal.
func refused(site string, err error) error {
	switch {
	case errors.Is(err, family.ErrRevoked):
		return fmt.Errorf("%w: site %q has been revoked from the family, so this node may not run. Ask support if this is a mistake. (%v)", ErrRefused, site, err)
	case errors.Is(err, family.ErrSuperseded):
		return fmt.Errorf("%w: site %q has been moved to another machine or data directory (its certificate was re-issued), so this copy may not run: two copies of one site would split the practice's data. Ask support if this is a mistake. (%v)", ErrRefused, site, err)
	}
	return err
}
