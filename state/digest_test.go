package state

import (
	"errors"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

func digestEntries() []*wire.Signed {
	return []*wire.Signed{
		ent("a", 1, 10, nil, put("t", "1", map[string]any{"x": int64(1)}), put("u", "1", map[string]any{"x": int64(1)})),
		ent("b", 1, 10, nil, put("t", "1", map[string]any{"x": int64(2)}), del("u", "1")), // conflicts with a#1
		ent("b", 2, 12, nil, put("t", "2", map[string]any{"y": "z"})),
	}
}

func TestDigestIgnoresConflictsAndFeed(t *testing.T) {
	e := digestEntries()
	s1, db1 := openMem(t)
	apply(t, s1, db1, e...)
	s2, db2 := openMem(t)
	apply(t, s2, db2, e[1], e[2], e[0]) // other order: other conflict sides, other feed
	if mustDigest(t, s1) != mustDigest(t, s2) {
		t.Fatal("same entries in another order give another digest")
	}
	c1, _ := s1.Conflicts(0)
	if len(c1) == 0 {
		t.Fatal("test setup: expected conflicts")
	}

	// Writing into every space but the records leaves the digest alone.
	d := mustDigest(t, s1)
	b := db1.NewBatch()
	for _, k := range [][]byte{conflictKey(999), feedKey(999), lastKey("t", "9"), depsKey("z", 1), metaKey("x"),
		conflictSeenKey("t", "1", "x", wire.ID{Site: "a", Seq: 9}, wire.ID{Site: "b", Seq: 9})} {
		if err := b.Set(k, []byte("noise"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, s1); got != d {
		t.Fatal("digest covers more than the records")
	}

	// Any record change changes it.
	apply(t, s1, db1, ent("c", 1, 1, nil, del("t", "never")))
	if got := mustDigest(t, s1); got == d {
		t.Fatal("a new tombstone did not change the digest")
	}
}

func TestClearThenReapplyGivesSameDigest(t *testing.T) {
	s, db := openMem(t)
	empty := mustDigest(t, s)
	apply(t, s, db, digestEntries()...)
	d := mustDigest(t, s)
	if d == empty {
		t.Fatal("digest of a state equals the empty digest")
	}
	mustClear(t, s)
	if got := mustDigest(t, s); got != empty {
		t.Fatal("digest after Clear is not the empty digest")
	}
	if tables, _ := s.Tables(); len(tables) != 0 {
		t.Fatalf("tables after Clear: %q", tables)
	}
	applyBatch(t, s, db, digestEntries()...)
	if got := mustDigest(t, s); got != d {
		t.Fatal("digest after Clear and re-apply differs")
	}
	if cs, _ := s.Conflicts(0); len(cs) == 0 {
		t.Fatal("conflicts not found again after the rebuild")
	}
}

func TestDamagedRecordIsAnErrorNotAPanic(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db, ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)}), put("t", "ok", nil)))
	good, _, _ := getCopy(db, recordKey("t", "k"))

	damages := map[string][]byte{
		"garbage":        []byte("\xde\xad\xbe\xef"),
		"empty":          {},
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte{}, good...), 0),
		"unknown format": append([]byte{0x7f}, good[1:]...),
		"field value not msgpack": func() []byte {
			r, _ := decodeRecord(good)
			r.Fields[0].Val = []byte{0xc1}
			return r.encode()
		}(),
	}
	for name, bad := range damages {
		t.Run(name, func(t *testing.T) {
			if err := db.Set(recordKey("t", "k"), bad, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "ppsync verify") || !strings.HasPrefix(err.Error(), "state: ") {
					t.Fatalf("%s: error %v, want a damaged-state error that says to run ppsync verify", op, err)
				}
			}
			_, _, err := s.Get("t", "k")
			check("get", err)
			_, err = s.List("t", "", 0)
			check("list", err)
			_, _, err = s.Changes(0, 0)
			check("changes", err)
			if name != "field value not msgpack" {
				_, err = s.Tables()
				check("tables", err)
				b := db.NewIndexedBatch()
				err = s.Apply(b, ent("a", 2, 11, nil, put("t", "k", map[string]any{"x": int64(2)})))
				_ = b.Close()
				check("apply", err)
			}
			if _, ok := mustGet(t, s, "t", "ok"); !ok {
				t.Fatal("an undamaged record is unreadable")
			}
			if _, err := s.Digest(); err != nil {
				t.Fatalf("digest: %v", err) // it hashes bytes: damage shows as a differing digest
			}
		})
	}
}

func TestDamagedIndexesAreErrors(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db, ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})))
	for _, kv := range [][2][]byte{
		{feedKey(1), []byte("\x00")},
		{conflictKey(1), []byte("\xc1")},
		{metaKey(metaCounts), []byte("short")},
	} {
		if err := db.Set(kv[0], kv[1], pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Changes(0, 0); !errors.Is(err, ErrDamaged) {
		t.Fatalf("changes: %v", err)
	}
	if _, err := s.Conflicts(0); !errors.Is(err, ErrDamaged) {
		t.Fatalf("conflicts: %v", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrDamaged) {
		t.Fatalf("stats: %v", err)
	}
	if err := db.Set(depsKey("b", 1), []byte{0xff}, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	b := db.NewIndexedBatch()
	defer b.Close()
	// a#1's deps are fine (none); b#1 wrote nothing yet. Make b#1 the writer
	// of a field, with damaged deps, and let a concurrent entry meet it.
	if err := db.Set(recordKey("t", "j"), (&storedRecord{
		Put:    Version{HLC: 1, Site: "b", Seq: 1},
		Fields: []storedField{{Name: "x", Ver: Version{HLC: 1, Site: "b", Seq: 1}, Val: []byte{1}}},
	}).encode(), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(b, ent("a", 2, 11, nil, put("t", "j", map[string]any{"x": int64(2)}))); !errors.Is(err, ErrDamaged) {
		t.Fatalf("apply meeting damaged deps: %v", err)
	}
}
