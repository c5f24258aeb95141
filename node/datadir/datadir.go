// Package datadir is a node's data directory: its file names, its identity
// (node.json), its keys, the family roster built from family.json and the
// installed certificates and revocations, and installing one. Open, init,
// install and verify share it. It knows nothing of the log, the state or the
// network.
package datadir

import (
	"fmt"
	"os"

	"github.com/ppsync/ppsync/internal/atomicfile"
	"github.com/ppsync/ppsync/node/api"
)

// Files in a node's data directory.
const (
	ConfigFile      = "ppsync.toml"
	NodeFile        = "node.json" // the node's identity
	NodeKeyFile     = "node.key"
	APIKeyFile      = api.APIKeyFile
	FamilyFile      = "family.json"
	JoinRequestFile = "join-request.json"
	RuntimeFile     = api.RuntimeFile
	CertsDir        = "certs"
	DBDir           = "db"
	// IngestDir holds tables of log entries on their way into the database
	// (store.Ingester); empty but for a moment.
	IngestDir = "db-ingest"
)

// WriteFileAtomic writes data to path so that a crash leaves the old file or
// the new one (see internal/atomicfile).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	return nil
}
