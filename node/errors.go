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
	// ErrDiskFull: the data directory's disk is almost full; writes wait.
	ErrDiskFull = errors.New("node: disk almost full")
)

// refusal is a certificate problem that stops the node (exit 4). Its message
// is written for a clinic; it matches ErrRefused and unwraps to its cause.
type refusal struct {
	msg   string
	cause error
}

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Unwrap() error        { return r.cause }
func (r *refusal) Is(target error) bool { return target == ErrRefused }

// refused turns a certificate problem (superseded, revoked) into a refusal.
func refused(site string, err error) error {
	switch {
	case errors.Is(err, family.ErrRevoked):
		return &refusal{cause: err, msg: fmt.Sprintf("site %q has been revoked from the family, so this node may not run. Ask support if this is a mistake.", site)}
	case errors.Is(err, family.ErrSuperseded):
		return &refusal{cause: err, msg: fmt.Sprintf("site %q has been moved to another machine or data directory (support re-issued its certificate), so this copy may not run: two copies of one site would split the practice's data. Ask support if this is a mistake.", site)}
	}
	return err
}
