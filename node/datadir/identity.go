package datadir

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/lock"
)

// Identity is DATA/node.json: which site and family this directory serves.
type Identity struct {
	Format    int         `json:"format"`
	FamilyID  string      `json:"family_id"`
	Site      string      `json:"site"`
	Role      family.Role `json:"role"`
	PeerID    string      `json:"peer_id"`
	CreatedAt time.Time   `json:"created_at"`
	// The practice database init bound the node to (empty without one): the
	// random ID ppsync stored in it and what it was ("sqlite:/srv/pps.db").
	DBID     string `json:"db_id,omitempty"`
	DBDetail string `json:"db,omitempty"`
	// Account is the operating system account that set the node up; the
	// node runs only as it. Empty in directories set up before ppsync
	// recorded it: the first start records its own.
	Account lock.Account `json:"account,omitzero"`
}

// WriteIdentity writes DATA/node.json.
func WriteIdentity(dataDir string, id Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("node: encode identity: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dataDir, NodeFile), append(b, '\n'), 0o644)
}

// BindingID is the database ID a certificate names: the node store's own,
// combined with the practice database's when there is one, so the
// certificate binds the node to both.
func BindingID(storeID, practiceID string) string {
	if practiceID == "" {
		return storeID
	}
	sum := sha256.Sum256([]byte("ppsync binding v1\n" + storeID + "\n" + practiceID))
	return hex.EncodeToString(sum[:16])
}

func ReadIdentity(dataDir string) (Identity, error) {
	var id Identity
	path := filepath.Join(dataDir, NodeFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return id, fmt.Errorf("node: %s is not a ppsync data directory (no %s); set it up with `ppsync init --data %s --family FAMILY_JSON --site SITE`", dataDir, NodeFile, dataDir)
	}
	if err != nil {
		return id, fmt.Errorf("node: read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, fmt.Errorf("node: %s is damaged (%v); restore it from a backup or set the node up again", path, err)
	}
	if id.Format > 1 {
		return id, fmt.Errorf("node: %s was written by a newer ppsync (format %d); upgrade ppsync", path, id.Format)
	}
	return id, nil
}

// WriteNodeKey creates the node's Ed25519 key (libp2p's encoding).
func WriteNodeKey(path string) (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node: generate key: %w", err)
	}
	lk, err := crypto.UnmarshalEd25519PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("node: encode key: %w", err)
	}
	b, err := crypto.MarshalPrivateKey(lk)
	if err != nil {
		return nil, fmt.Errorf("node: encode key: %w", err)
	}
	if err := WriteFileAtomic(path, b, 0o600); err != nil {
		return nil, err
	}
	return priv, nil
}

func ReadNodeKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node: read the node key %s: %w", path, err)
	}
	lk, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("node: the node key %s is damaged: %v", path, err)
	}
	raw, err := lk.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("node: the node key %s is not an Ed25519 key", path)
	}
	return ed25519.PrivateKey(raw), nil
}

func WriteAPIKey(path string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("node: generate API key: %w", err)
	}
	return WriteFileAtomic(path, []byte(hex.EncodeToString(b)+"\n"), 0o600)
}

func ReadAPIKey(dataDir string) (string, error) {
	path := filepath.Join(dataDir, APIKeyFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("node: read the API key %s: %w", path, err)
	}
	k := strings.TrimSpace(string(b))
	if len(k) < 32 {
		return "", fmt.Errorf("node: the API key in %s is too short; delete the file and run `ppsync init` again", path)
	}
	return k, nil
}
