package store

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestIngesterStoresTablesWhole(t *testing.T) {
	fs := vfs.NewMem()
	o := Options{FS: fs}
	db, err := Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// A file left by an ingestion a crash interrupted.
	if err := fs.MkdirAll("ingest", 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Create("ingest/7.sst", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	in, err := NewIngester(db, "ingest", o)
	if err != nil {
		t.Fatal(err)
	}
	left := func() []string {
		names, err := fs.List("ingest")
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	if l := left(); len(l) != 0 {
		t.Fatalf("the ingestion directory holds %v after opening", l)
	}
	table := func(prefix string, n int) []KV {
		var t []KV
		for i := range n {
			t = append(t, KV{Key: fmt.Appendf(nil, "%s%04d", prefix, i), Value: fmt.Appendf(nil, "v%d", i)})
		}
		return t
	}
	if err := db.Set([]byte("b0001"), []byte("old"), nil); err != nil {
		t.Fatal(err)
	}
	if err := in.Ingest(t.Context(), [][]KV{table("c", 100), nil, table("a", 50), table("b", 3)}); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"a0000": "v0", "a0049": "v49", "c0099": "v99", "b0001": "v1"} {
		v, c, err := db.Get([]byte(key))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if !bytes.Equal(v, []byte(want)) {
			t.Errorf("%s = %q, want %q", key, v, want)
		}
		c.Close()
	}
	if l := left(); len(l) != 0 {
		t.Errorf("the ingestion directory holds %v after an ingestion", l)
	}
	// Overlapping tables: refused, nothing stored, nothing left behind.
	err = in.Ingest(t.Context(), [][]KV{table("d", 10), table("d", 5)})
	if err == nil {
		t.Fatal("overlapping tables were ingested")
	}
	if _, _, err := db.Get([]byte("d0000")); err == nil {
		t.Error("a refused ingestion stored d0000")
	}
	if l := left(); len(l) != 0 {
		t.Errorf("the ingestion directory holds %v after a refused ingestion", l)
	}
}
