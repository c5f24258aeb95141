package lock

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
)

// databaseIDKey is where the database ID is kept, in the store's metadata
// key space.
const databaseIDKey = string(store.PrefixMeta) + "database-id"

// databaseIDBytes is the database ID's length before hex encoding (128 bits).
const databaseIDBytes = 16

// DatabaseID returns the database ID stored by [CreateDatabaseID]; ok is
// false when the database has none.
func DatabaseID(db *pebble.DB) (id string, ok bool, err error) {
	v, closer, err := db.Get([]byte(databaseIDKey))
	if errors.Is(err, pebble.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("lock: database ID: %w", err)
	}
	id = string(v)
	if err := closer.Close(); err != nil {
		return "", false, fmt.Errorf("lock: database ID: %w", err)
	}
	if !validDatabaseID(id) {
		return "", false, fmt.Errorf("lock: database ID: stored value %q is not a database ID; the database is damaged", id)
	}
	return id, true, nil
}

// CreateDatabaseID gives the database a new random 128-bit ID (lower-case
// hex), written durably, and returns it. It refuses, with an error wrapping
// [ErrDatabaseIDExists], when the database already has one. It is meant to
// run once, at init, before anything else writes to the database.
func CreateDatabaseID(db *pebble.DB) (string, error) {
	old, ok, err := DatabaseID(db)
	if err != nil {
		return "", fmt.Errorf("lock: create database ID: %w", err)
	}
	if ok {
		return "", fmt.Errorf("lock: create database ID: %w (%s)", ErrDatabaseIDExists, old)
	}
	b := make([]byte, databaseIDBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("lock: create database ID: %w", err)
	}
	id := hex.EncodeToString(b)
	if err := db.Set([]byte(databaseIDKey), []byte(id), pebble.Sync); err != nil {
		return "", fmt.Errorf("lock: create database ID: %w", err)
	}
	return id, nil
}

func validDatabaseID(s string) bool {
	if len(s) != 2*databaseIDBytes {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
