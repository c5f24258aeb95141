package store

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestFamilySpace(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	s, err := FamilySpace(id)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := hex.DecodeString(id)
	if want := append([]byte{'F'}, raw...); !bytes.Equal(s, want) || len(s) != 33 {
		t.Fatalf("space %x, want %x", []byte(s), want)
	}
	if p := s.Prefix(PrefixTxlog); !bytes.Equal(p, append(append([]byte{}, s...), 't')) {
		t.Fatalf("prefix %x", p)
	}
	if p := (Space(nil)).Prefix(PrefixAlert); !bytes.Equal(p, []byte{'a'}) {
		t.Fatalf("empty space prefix %x", p)
	}
	for _, bad := range []string{
		"",
		id[:63],
		id + "0",
		strings.ToUpper(id),
		id[:62] + "g0",
		id[:62] + " 0",
		"fam0123456789",
	} {
		if _, err := FamilySpace(bad); err == nil || !strings.Contains(err.Error(), "family ID") {
			t.Errorf("FamilySpace(%q) = %v, want a family ID error", bad, err)
		}
	}
}

func TestDeleteSpaceAndSize(t *testing.T) {
	fs := vfs.NewMem()
	db, err := Open("db", Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	a, _ := FamilySpace(strings.Repeat("aa", 32))
	b, _ := FamilySpace(strings.Repeat("ab", 32))
	if err := DeleteSpace(db, nil); err == nil {
		t.Fatal("DeleteSpace accepted the empty space")
	}
	if _, err := SpaceSize(db, Space{}); err == nil {
		t.Fatal("SpaceSize accepted the empty space")
	}
	before, err := SpaceSize(db, a)
	if err != nil {
		t.Fatal(err)
	}
	// Keys of the primary family, of a and of b.
	val := bytes.Repeat([]byte("x"), 1000)
	bt := db.NewBatch()
	for i := 0; i < 200; i++ {
		for _, s := range []Space{nil, a, b} {
			if err := bt.Set(append(s.Prefix(PrefixState), fmt.Sprintf("r%04d", i)...), val, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := bt.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	after, err := SpaceSize(db, a)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before || after < 1000 {
		t.Fatalf("space size %d before writes, %d after 200 KB of writes", before, after)
	}
	if err := DeleteSpace(db, a); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open("db", Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	count := func(s Space) int {
		lo := s.Prefix(PrefixState)
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: PrefixEnd(lo)})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		n := 0
		for it.First(); it.Valid(); it.Next() {
			n++
		}
		return n
	}
	if n := count(a); n != 0 {
		t.Fatalf("deleted space holds %d keys after reopen", n)
	}
	if n, m := count(b), count(nil); n != 200 || m != 200 {
		t.Fatalf("other space holds %d keys, primary %d; want 200 each", n, m)
	}
}
