package lock

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors of these classes wrap the sentinel (test with
// errors.Is).
var (
	// ErrHeld: another process holds the data directory's lock. The error is
	// a [*HeldError].
	ErrHeld = errors.New("lock: data directory in use by another ppsync")
	// ErrRefused: the node must not start here; the parent of
	// [ErrWrongMachine], [ErrWrongDatabase] and [ErrWrongAccount].
	ErrRefused = errors.New("lock: refused")
	// ErrWrongMachine: the node is registered to another machine.
	ErrWrongMachine = fmt.Errorf("lock: registered to another machine: %w", ErrRefused)
	// ErrWrongDatabase: the node is registered to another database.
	ErrWrongDatabase = fmt.Errorf("lock: registered to another database: %w", ErrRefused)
	// ErrWrongAccount: the node was set up by another operating system account.
	ErrWrongAccount = fmt.Errorf("lock: set up by another account: %w", ErrRefused)
	// ErrNoMachineID: the operating system's machine ID cannot be found and
	// PPSYNC_MACHINE_ID is not set.
	ErrNoMachineID = errors.New("lock: no machine ID")
	// ErrDatabaseIDExists: the database already has an ID.
	ErrDatabaseIDExists = errors.New("lock: database ID already exists")
)
