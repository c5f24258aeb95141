package lock

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// Account is an operating system account: the one that set a node up, and
// the one running it. ID is what is compared: the numeric user ID on Unix,
// the SID on Windows. Name is for people.
type Account struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// String names the account for people: "alice (1000)".
func (a Account) String() string {
	if a.Name == "" || a.Name == a.ID {
		return a.ID
	}
	return a.Name + " (" + a.ID + ")"
}

// CurrentAccount returns the account this process runs as. Without a user
// database entry (a container with an arbitrary UID) the ID alone.
func CurrentAccount() (Account, error) {
	u, err := user.Current()
	if err == nil && u.Uid != "" {
		return Account{ID: u.Uid, Name: u.Username}, nil
	}
	if uid := os.Getuid(); uid >= 0 {
		return Account{ID: strconv.Itoa(uid)}, nil
	}
	if err == nil {
		err = errors.New("no user ID")
	}
	return Account{}, fmt.Errorf("lock: find the account this program runs as: %w", err)
}
