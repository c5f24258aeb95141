package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// APITLSCertFile and APITLSKeyFile are the API's self-signed certificate and
// its key, used when the API listens on a non-loopback address.
const (
	APITLSCertFile = "api-tls.crt"
	APITLSKeyFile  = "api-tls.key"
)

// ErrExposed: a key or the node's database can be read by other users of the
// machine. The error's message names the file and the command that fixes it.
var ErrExposed = errors.New("node: readable by other users")

// secret is a file or directory of the data directory that only the node's
// account may read.
type secret struct {
	name string // relative to the data directory
	what string // for people: "the node key"
	dir  bool
}

// secrets are what CheckPrivate checks and Tighten fixes. The node's
// database is a directory of many files, created as the store needs them:
// the directory is what keeps them private.
var secrets = []secret{
	{name: NodeKeyFile, what: "the node key"},
	{name: APIKeyFile, what: "the API key"},
	{name: APITLSKeyFile, what: "the API's TLS key"},
	{name: DBDir, what: "the node's database", dir: true},
}

// CheckPrivate refuses a data directory whose keys or database other users
// of the machine can read (Unix: any group or other permission bit; Windows:
// an access control entry that lets Everyone, Users or Authenticated Users
// read). A secret that does not exist yet is not checked.
func CheckPrivate(dataDir string) error {
	for _, s := range secrets {
		path := filepath.Join(dataDir, s.name)
		info, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("node: check who can read %s: %w", path, err)
		}
		who, err := exposure(path, info)
		if err != nil {
			return fmt.Errorf("node: check who can read %s: %w", path, err)
		}
		if who != "" {
			return fmt.Errorf("%w: %s %s can be read by other users of this machine (%s); the node will not start so. Fix it with `%s` (or `ppsync init --data %s`, which tightens every file of the data directory), then start it again",
				ErrExposed, s.what, path, who, fixCommand(path, s.dir), dataDir)
		}
	}
	return nil
}

// Tighten makes the data directory, its keys and its database readable by
// the node's account only (on Windows, that account and Administrators).
// It returns the paths it changed.
func Tighten(dataDir string) ([]string, error) {
	var changed []string
	for _, s := range append([]secret{{name: ".", what: "the data directory", dir: true}}, secrets...) {
		path := filepath.Join(dataDir, s.name)
		info, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("node: tighten %s: %w", path, err)
		}
		did, err := restrict(path, info, s.dir && s.name != ".")
		if err != nil {
			return changed, fmt.Errorf("node: make %s private: %w", path, err)
		}
		if did {
			changed = append(changed, path)
		}
	}
	return changed, nil
}
