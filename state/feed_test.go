package state

import (
	"log/slog"
	"testing"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

func mustChanges(t *testing.T, s *State, after uint64, limit int) ([]Change, uint64) {
	t.Helper()
	cs, next, err := s.Changes(after, limit)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(cs); i++ {
		if cs[i].Cursor <= cs[i-1].Cursor {
			t.Fatalf("cursors not increasing: %d then %d", cs[i-1].Cursor, cs[i].Cursor)
		}
	}
	if len(cs) > 0 && next != cs[len(cs)-1].Cursor {
		t.Fatalf("next %d, last change %d", next, cs[len(cs)-1].Cursor)
	}
	if len(cs) == 0 && next != after {
		t.Fatalf("no changes but next %d != after %d", next, after)
	}
	return cs, next
}

func keysOf(cs []Change) []string {
	var out []string
	for _, c := range cs {
		k := c.Table + "/" + c.Key
		if c.Deleted {
			k += "(deleted)"
		}
		out = append(out, k)
	}
	return out
}

func TestChangeFeed(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db,
		ent("a", 1, 10, nil, put("t", "1", map[string]any{"x": int64(1)}), put("t", "2", map[string]any{"x": int64(1)})),
		ent("a", 2, 11, nil, put("t", "3", map[string]any{"x": int64(1)})),
	)
	cs, next := mustChanges(t, s, 0, 0)
	if got := keysOf(cs); len(got) != 3 || got[0] != "t/1" || got[1] != "t/2" || got[2] != "t/3" {
		t.Fatalf("changes %v", got)
	}
	if cs[0].Fields["x"] != int64(1) || cs[0].Version.Entry().String() != "a#1" {
		t.Fatalf("change content %+v", cs[0])
	}

	// Page through with a limit.
	page, pnext := mustChanges(t, s, 0, 2)
	if len(page) != 2 || pnext != page[1].Cursor {
		t.Fatalf("page %v next %d", keysOf(page), pnext)
	}
	rest, _ := mustChanges(t, s, pnext, 2)
	if got := keysOf(rest); len(got) != 1 || got[0] != "t/3" {
		t.Fatalf("second page %v", got)
	}

	// A record changed twice is fed once, at its latest change; a deleted
	// record is marked deleted.
	apply(t, s, db,
		ent("b", 1, 20, map[string]uint64{"a": 2}, put("t", "1", map[string]any{"x": int64(2)})),
		ent("b", 2, 21, nil, del("t", "2"), put("t", "1", map[string]any{"y": int64(3)})),
	)
	cs2, next2 := mustChanges(t, s, next, 0)
	// b#2 changed t/2 and then t/1 again: t/1's entry moved after t/2's.
	if got := keysOf(cs2); len(got) != 2 || got[0] != "t/2(deleted)" || got[1] != "t/1" {
		t.Fatalf("changes after %d: %v", next, got)
	}
	if cs2[1].Fields["x"] != int64(2) || cs2[1].Fields["y"] != int64(3) {
		t.Fatalf("t/1 content %v", cs2[1].Fields)
	}
	if cs2[0].Fields != nil || cs2[0].Version.Entry().String() != "b#2" {
		t.Fatalf("deleted change %+v", cs2[0])
	}
	all, _ := mustChanges(t, s, 0, 0)
	if got := keysOf(all); len(got) != 3 || got[0] != "t/3" {
		t.Fatalf("whole feed %v, want one entry per record, t/3 oldest", got)
	}

	// Changes nothing visible: an old put after a newer delete, a delete of
	// a record never written, a write that loses everywhere.
	apply(t, s, db,
		ent("c", 1, 5, nil, put("t", "2", map[string]any{"x": int64(9)}), del("t", "never"),
			put("t", "1", map[string]any{"x": int64(0)})),
	)
	if cs3, _ := mustChanges(t, s, next2, 0); len(cs3) != 0 {
		t.Fatalf("invisible writes were fed: %v", keysOf(cs3))
	}
	if st, _ := s.Stats(); st.Cursor != next2 {
		t.Fatalf("stats cursor %d, want %d", st.Cursor, next2)
	}
}

func TestChangeFeedSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	apply(t, s, db,
		ent("a", 1, 10, nil, put("t", "1", map[string]any{"x": int64(1)})),
		ent("a", 2, 11, nil, put("t", "2", map[string]any{"x": int64(1)})),
		ent("a", 3, 12, nil, put("t", "1", map[string]any{"x": int64(2)})), // moves t/1 to the head
	)
	_, last := mustChanges(t, s, 0, 0)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err = Open(db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Stats(); st.Cursor != last || st.Records != 2 {
		t.Fatalf("after reopen: %+v, want cursor %d and 2 records", st, last)
	}
	apply(t, s, db, ent("a", 4, 13, nil, del("t", "2")))
	cs, _ := mustChanges(t, s, last, 0)
	if len(cs) != 1 || cs[0].Cursor <= last || !cs[0].Deleted {
		t.Fatalf("after reopen: %+v, want t/2 deleted after cursor %d", cs, last)
	}
}

func TestChangeFeedAcrossClear(t *testing.T) {
	s, db := openMem(t)
	entries := []*wire.Signed{
		ent("a", 1, 10, nil, put("t", "1", map[string]any{"x": int64(1)})),
		ent("a", 2, 11, nil, put("t", "2", map[string]any{"x": int64(1)})),
	}
	apply(t, s, db, entries...)
	_, before := mustChanges(t, s, 0, 0)
	mustClear(t, s)
	st, _ := s.Stats()
	if st.ClearedAt != before || st.Records != 0 || st.Conflicts != 0 {
		t.Fatalf("stats after clear %+v", st)
	}
	if cs, _ := mustChanges(t, s, 0, 0); len(cs) != 0 {
		t.Fatalf("feed after clear: %v", keysOf(cs))
	}
	apply(t, s, db, entries...)
	cs, _ := mustChanges(t, s, before, 0)
	if got := keysOf(cs); len(got) != 2 {
		t.Fatalf("a follower at %d sees %v after the rebuild, want both records again", before, got)
	}
	for _, c := range cs {
		if c.Cursor <= before {
			t.Fatalf("cursor %d not after the pre-clear cursor %d", c.Cursor, before)
		}
	}
}

// TestChangeFeedManyOpsOneEntry feeds each record once per Apply, however
// many operations of the entry touch it.
func TestChangeFeedManyOpsOneEntry(t *testing.T) {
	s, db := openMem(t)
	var ops []wire.Op
	for i := range 60 {
		ops = append(ops, put("t", string(rune('a'+i%20)), map[string]any{"i": int64(i)}))
	}
	apply(t, s, db, ent("a", 1, 10, nil, ops...))
	cs, _ := mustChanges(t, s, 0, 0)
	if len(cs) != 20 {
		t.Fatalf("%d changes, want 20: %v", len(cs), keysOf(cs))
	}
	for i, c := range cs {
		if want := string(rune('a' + i)); c.Key != want || c.Fields["i"] != int64(40+i) {
			t.Fatalf("change %d: %s = %v, want %s with i=%d", i, c.Key, c.Fields, want, 40+i)
		}
	}
}
