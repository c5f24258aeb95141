package lock

import (
	"errors"
	"regexp"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/store"
)

func openMem(t *testing.T, fs vfs.FS) *pebble.DB {
	t.Helper()
	db, err := store.Open("db", store.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestDatabaseID(t *testing.T) {
	fs := vfs.NewMem()
	db := openMem(t, fs)
	if id, ok, err := DatabaseID(db); err != nil || ok || id != "" {
		t.Fatalf("DatabaseID of a new database = %q, %v, %v", id, ok, err)
	}
	id, err := CreateDatabaseID(db)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
		t.Fatalf("database ID %q is not 128 bits of hex", id)
	}
	if got, ok, err := DatabaseID(db); err != nil || !ok || got != id {
		t.Fatalf("DatabaseID = %q, %v, %v; want %q", got, ok, err, id)
	}
	if _, err := CreateDatabaseID(db); !errors.Is(err, ErrDatabaseIDExists) {
		t.Fatalf("second CreateDatabaseID: %v, want ErrDatabaseIDExists", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openMem(t, fs) // survives reopening
	defer db.Close()
	if got, ok, err := DatabaseID(db); err != nil || !ok || got != id {
		t.Fatalf("DatabaseID after reopen = %q, %v, %v; want %q", got, ok, err, id)
	}
	if k := []byte(databaseIDKey); k[0] != store.PrefixMeta {
		t.Errorf("database ID key %q is outside the metadata prefix", k)
	}
}

func TestDatabaseIDsDiffer(t *testing.T) {
	a, b := openMem(t, vfs.NewMem()), openMem(t, vfs.NewMem())
	defer a.Close()
	defer b.Close()
	ida, err := CreateDatabaseID(a)
	if err != nil {
		t.Fatal(err)
	}
	idb, err := CreateDatabaseID(b)
	if err != nil {
		t.Fatal(err)
	}
	if ida == idb {
		t.Fatalf("two databases got the same ID %s", ida)
	}
}

func TestDatabaseIDDamaged(t *testing.T) {
	db := openMem(t, vfs.NewMem())
	defer db.Close()
	if err := db.Set([]byte(databaseIDKey), []byte("not-an-id"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := DatabaseID(db); err == nil || ok {
		t.Fatalf("DatabaseID of a damaged value: ok=%v err=%v, want an error", ok, err)
	}
	if _, err := CreateDatabaseID(db); err == nil || errors.Is(err, ErrDatabaseIDExists) {
		t.Fatalf("CreateDatabaseID over a damaged value: %v, want a plain error", err)
	}
}
