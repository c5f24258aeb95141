package lock

import (
	"errors"
	"fmt"
)

// Binding is what ties a node to its place: the machine fingerprint and the
// database ID.
type Binding struct {
	Fingerprint string
	DatabaseID  string
}

// BindingError refuses to start a node away from the machine or database it
// is registered to. It wraps [ErrWrongMachine] or [ErrWrongDatabase], and so
// [ErrRefused].
type BindingError struct {
	// Err is ErrWrongMachine or ErrWrongDatabase.
	Err error
	// Want is the registered binding, Have this node's.
	Want, Have Binding
}

// Error explains the refusal in words for the clinic, with short forms of
// the two values for support.
func (e *BindingError) Error() string {
	const why = "Two copies of one site would split the practice's data, so it will not start"
	if errors.Is(e.Err, ErrWrongDatabase) {
		return fmt.Sprintf("This ppsync node is registered to another database (data directory). %s on this one. "+
			"Ask support to move it to this data directory (they run `ppsync family move`). "+
			"(registered database %s, this database %s)", why, short(e.Want.DatabaseID), short(e.Have.DatabaseID))
	}
	return fmt.Sprintf("This ppsync node is registered to another machine. %s here. "+
		"Ask support to move it to this machine (they run `ppsync family move`). "+
		"(registered machine %s, this machine %s)", why, short(e.Want.Fingerprint), short(e.Have.Fingerprint))
}

// Unwrap returns Err.
func (e *BindingError) Unwrap() error { return e.Err }

// CheckBinding compares the registered binding (want, from the member
// certificate) with this node's (have). It returns nil when they match and a
// [*BindingError] when they do not; the machine is checked first. Empty
// values never match: they are an error.
func CheckBinding(want, have Binding) error {
	if want.Fingerprint == "" || want.DatabaseID == "" || have.Fingerprint == "" || have.DatabaseID == "" {
		return errors.New("lock: check binding: missing machine fingerprint or database ID")
	}
	if want.Fingerprint != have.Fingerprint {
		return &BindingError{Err: ErrWrongMachine, Want: want, Have: have}
	}
	if want.DatabaseID != have.DatabaseID {
		return &BindingError{Err: ErrWrongDatabase, Want: want, Have: have}
	}
	return nil
}

// short returns the first 12 characters of s, enough for support to tell
// values apart.
func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
