package node

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
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

// apiError is an error whose message is written for the clinic, with the
// answer the API gives it (docs/api.md lists the statuses and codes). It is
// created where the error is decided; on the way up, code adds plain context
// only (fmt.Errorf("transaction %d: %w", ...)), and writeErr answers with
// the whole message, as it is. It unwraps to its cause, so errors.Is still
// finds the sentinels (ErrCatchingUp, wire.ErrTooLarge, ...).
type apiError struct {
	status int    // HTTP status
	code   string // APIError.Code
	msg    string
	err    error // the cause; may be nil
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.err }

// API error codes (APIError.Code).
const (
	codeBadRequest   = "bad_request"
	codeUnauthorized = "unauthorized"
	codeForbidden    = "forbidden"
	codeNotFound     = "not_found"
	codeTooLarge     = "too_large"
	codeCatchingUp   = "catching_up"
	codeForked       = "forked"
	codeReadOnly     = "read_only"
	codeRefused      = "refused"
	codeDiskFull     = "disk_full"
	codeStopping     = "stopping"
	codeInternal     = "internal"
	codeSendFailed   = "send_failed"
	codeRelayBlind   = "relay_blind"
	// codeUnknownFamily: a request names a family this node does not serve.
	codeUnknownFamily = "unknown_family"
)

func newAPIError(status int, code string, cause error, format string, a ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, a...), err: cause}
}

// badRequest: the request itself is wrong (400).
func badRequest(format string, a ...any) error {
	return newAPIError(http.StatusBadRequest, codeBadRequest, nil, format, a...)
}

// notFound: what was asked for does not exist (404).
// relayBlind: a relay was asked for records (409): it holds none it can read.
func relayBlind() error {
	return newAPIError(http.StatusConflict, codeRelayBlind, ErrRelayBlind, "%s", ErrRelayBlind.Error())
}

func notFound(format string, a ...any) error {
	return newAPIError(http.StatusNotFound, codeNotFound, nil, format, a...)
}

// tooLarge: the request is over a limit, which the message names (413).
func tooLarge(format string, a ...any) error {
	return newAPIError(http.StatusRequestEntityTooLarge, codeTooLarge, wire.ErrTooLarge, format, a...)
}

// refusedError is a certificate or database problem that stops the node
// (exit 4) or its writes (409 refused). Its message is written for a clinic;
// it matches ErrRefused and unwraps to its cause.
func refusedError(cause error, format string, a ...any) error {
	return newAPIError(http.StatusConflict, codeRefused, fmt.Errorf("%w (%w)", ErrRefused, cause), format, a...)
}

// refused turns a certificate problem (superseded, revoked) into a refusal.
func refused(site string, err error) error {
	switch {
	case errors.Is(err, family.ErrRevoked):
		return refusedError(err, "site %q has been revoked from the family, so this node may not run. Ask support if this is a mistake.", site)
	case errors.Is(err, family.ErrSuperseded):
		return refusedError(err, "site %q has been moved to another machine or data directory (support re-issued its certificate), so this copy may not run: two copies of one site would split the practice's data. Ask support if this is a mistake.", site)
	}
	return err
}

// invalidOps gives the API's answer to operations the one check of
// operations refused (a wire rule: 413 over a limit, else 400), with its
// message as it is.
func invalidOps(err error) error {
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		return &apiError{status: http.StatusRequestEntityTooLarge, code: codeTooLarge, msg: err.Error(), err: err}
	case errors.Is(err, wire.ErrInvalid), errors.Is(err, wire.ErrMalformed):
		return &apiError{status: http.StatusBadRequest, code: codeBadRequest, msg: err.Error(), err: err}
	}
	return err
}

// installError gives the API's answer to a certificate or revocation the
// roster refuses (of another family, badly signed or formed, superseded,
// revoked, in conflict): 400, with family's message as it is.
func installError(err error) error {
	for _, refusal := range []error{family.ErrWrongFamily, family.ErrBadSignature, family.ErrFormat,
		family.ErrSuperseded, family.ErrRevoked, family.ErrConflict} {
		if errors.Is(err, refusal) {
			return &apiError{status: http.StatusBadRequest, code: codeBadRequest, msg: err.Error(), err: err}
		}
	}
	return err
}
