package lock

import (
	"errors"
	"fmt"
)

// Binding is what ties a node to its place: the machine fingerprint, the
// database ID and the operating system account that set it up.
type Binding struct {
	Fingerprint string
	DatabaseID  string
	// Account is compared by ID; an empty ID on either side is not checked
	// (a node set up before accounts were recorded takes the first account
	// that runs it).
	Account Account
}

// BindingError refuses to start a node away from the machine or database it
// is registered to. It wraps [ErrWrongMachine], [ErrWrongDatabase] or
// [ErrWrongAccount], and so [ErrRefused].
type BindingError struct {
	// Err is ErrWrongMachine, ErrWrongDatabase or ErrWrongAccount.
	Err error
	// Want is the registered binding, Have this node's.
	Want, Have Binding
}

// Error explains the refusal in words for the clinic, with short forms of
// the two values for support.
func (e *BindingError) Error() string {
	const why = "Two copies of one site would split the practice's data, so it will not start"
	if errors.Is(e.Err, ErrWrongAccount) {
		return fmt.Sprintf("This ppsync node was set up by the account %s and runs only as that account; this is the account %s. "+
			"Run ppsync as %s (the service that `ppsync service install` sets up does), "+
			"or ask support to move the node to this account (`ppsync init` as this account, then `ppsync family move`)",
			e.Want.Account, e.Have.Account, nameOf(e.Want.Account))
	}
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
// certificate and node.json) with this node's (have). It returns nil when
// they match and a [*BindingError] when they do not; the account is checked
// first, then the machine. An empty fingerprint or database ID never
// matches: it is an error.
func CheckBinding(want, have Binding) error {
	if want.Fingerprint == "" || want.DatabaseID == "" || have.Fingerprint == "" || have.DatabaseID == "" {
		return errors.New("lock: check binding: missing machine fingerprint or database ID")
	}
	// The account first: the fingerprint includes the account's name, so
	// another account would otherwise read as another machine.
	if !sameAccount(want.Account, have.Account) {
		return &BindingError{Err: ErrWrongAccount, Want: want, Have: have}
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

// CheckAccount refuses to run a node as another account than the one that
// set it up (want; an empty ID checks nothing). The error is a
// [*BindingError] wrapping [ErrWrongAccount].
func CheckAccount(want, have Account) error {
	if !sameAccount(want, have) {
		return &BindingError{Err: ErrWrongAccount, Want: Binding{Account: want}, Have: Binding{Account: have}}
	}
	return nil
}

func sameAccount(want, have Account) bool {
	return want.ID == "" || have.ID == "" || want.ID == have.ID
}

// nameOf is the account's name, or its ID when it has none.
func nameOf(a Account) string {
	if a.Name != "" {
		return a.Name
	}
	return a.ID
}
