package state

import (
	"reflect"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
)

func mustConflicts(t *testing.T, s *State) []Conflict {
	t.Helper()
	cs, err := s.Conflicts(0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Conflicts != uint64(len(cs)) {
		t.Fatalf("stats count %d conflicts, Conflicts returned %d", st.Conflicts, len(cs))
	}
	return cs
}

// bothOrders runs f with the entries in the given order and reversed.
func bothOrders(t *testing.T, x, y *wire.Signed, f func(t *testing.T, s *State, first, second *wire.Signed)) {
	for _, order := range [][2]*wire.Signed{{x, y}, {y, x}} {
		t.Run(order[0].ID().String()+"_first", func(t *testing.T) {
			s, db := openMem(t)
			apply(t, s, db, order[0], order[1])
			f(t, s, order[0], order[1])
		})
	}
}

func TestConflictConcurrentFieldWrites(t *testing.T) {
	a := ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": "from a", "only_a": true}))
	b := ent("b", 1, 20, nil, put("t", "k", map[string]any{"x": "from b"}))
	bothOrders(t, a, b, func(t *testing.T, s *State, first, second *wire.Signed) {
		cs := mustConflicts(t, s)
		if len(cs) != 1 {
			t.Fatalf("got %d conflicts, want 1: %+v", len(cs), cs)
		}
		c := cs[0]
		if c.Table != "t" || c.Key != "k" || c.Field != "x" {
			t.Fatalf("conflict on %s/%s/%s, want t/k/x", c.Table, c.Key, c.Field)
		}
		if c.Incoming.Version.Entry() != second.ID() || c.Existing.Version.Entry() != first.ID() {
			t.Fatalf("incoming %v existing %v, want %v and %v", c.Incoming.Version, c.Existing.Version, second.ID(), first.ID())
		}
		if c.Winner != b.ID() {
			t.Fatalf("winner %v, want %v", c.Winner, b.ID())
		}
		vals := map[string]any{c.Incoming.Version.Site: c.Incoming.Value, c.Existing.Version.Site: c.Existing.Value}
		if !reflect.DeepEqual(vals, map[string]any{"a": "from a", "b": "from b"}) {
			t.Fatalf("values %v", vals)
		}
		if c.Incoming.Deleted || c.Existing.Deleted {
			t.Fatal("a put side is marked deleted")
		}
	})
}

// Two sites that bring the same row (the same values under one key, as two
// copies of a practice database do on their first sync) make one row, no
// conflict; a field whose values differ is still one.
func TestNoConflictForEqualValues(t *testing.T) {
	a := ent("a", 1, 10, nil, put("t", "k", map[string]any{"name": "Ann", "dob": "1980-01-02"}))
	b := ent("b", 1, 20, nil, put("t", "k", map[string]any{"name": "Ann", "dob": "1980-02-01"}))
	bothOrders(t, a, b, func(t *testing.T, s *State, _, _ *wire.Signed) {
		cs := mustConflicts(t, s)
		if len(cs) != 1 || cs[0].Field != "dob" {
			t.Fatalf("got conflicts %+v, want one, on dob", cs)
		}
	})
}

func TestNoConflictWhenCausallyOrdered(t *testing.T) {
	a := ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": "from a"}))
	b := ent("b", 1, 20, map[string]uint64{"a": 1}, put("t", "k", map[string]any{"x": "from b"})) // b saw a
	bothOrders(t, a, b, func(t *testing.T, s *State, _, _ *wire.Signed) {
		if cs := mustConflicts(t, s); len(cs) != 0 {
			t.Fatalf("got conflicts %+v, want none", cs)
		}
		if r, _ := mustGet(t, s, "t", "k"); r.Fields["x"] != "from b" {
			t.Fatalf("x = %v", r.Fields["x"])
		}
	})
	// The writer saw only an older entry of the other site: still concurrent.
	a2 := ent("a", 2, 11, nil, put("t", "k", map[string]any{"x": "a again"}))
	s, db := openMem(t)
	apply(t, s, db, a, a2, b)
	if cs := mustConflicts(t, s); len(cs) != 1 || cs[0].Existing.Version.Entry() != a2.ID() {
		t.Fatalf("got %+v, want one conflict with a#2", cs)
	}
}

func TestNoConflictWithinOneSite(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db,
		ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})),
		ent("a", 2, 11, nil, put("t", "k", map[string]any{"x": int64(2)}), del("t", "k")),
	)
	if cs := mustConflicts(t, s); len(cs) != 0 {
		t.Fatalf("got %+v", cs)
	}
}

func TestConflictDeleteRacesPut(t *testing.T) {
	p := ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1), "y": "v"}))
	d := ent("b", 1, 20, nil, del("t", "k"))
	bothOrders(t, p, d, func(t *testing.T, s *State, first, second *wire.Signed) {
		cs := mustConflicts(t, s)
		if len(cs) != 1 {
			t.Fatalf("got %d conflicts, want 1: %+v", len(cs), cs)
		}
		c := cs[0]
		if c.Field != "" || c.Winner != d.ID() {
			t.Fatalf("field %q winner %v, want whole record won by %v", c.Field, c.Winner, d.ID())
		}
		delSide, putSide := c.Incoming, c.Existing
		if second == p {
			delSide, putSide = putSide, delSide
		}
		if !delSide.Deleted || delSide.Value != nil || putSide.Deleted {
			t.Fatalf("sides %+v %+v", c.Incoming, c.Existing)
		}
		if !reflect.DeepEqual(putSide.Value, map[string]any{"x": int64(1), "y": "v"}) {
			t.Fatalf("put side value %#v", putSide.Value)
		}
		if _, ok := mustGet(t, s, "t", "k"); ok {
			t.Fatal("record exists after a newer delete")
		}
	})
	// A delete that saw the put is no conflict, in either arrival order.
	d2 := ent("b", 1, 20, map[string]uint64{"a": 1}, del("t", "k"))
	bothOrders(t, p, d2, func(t *testing.T, s *State, _, _ *wire.Signed) {
		if cs := mustConflicts(t, s); len(cs) != 0 {
			t.Fatalf("got %+v", cs)
		}
	})
}

func TestConflictsNewestFirstAndLimit(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db,
		ent("a", 1, 10, nil, put("t", "1", map[string]any{"x": int64(1)}), put("t", "2", map[string]any{"x": int64(1)})),
		ent("b", 1, 20, nil, put("t", "1", map[string]any{"x": int64(2)})),
		ent("b", 2, 21, nil, put("t", "2", map[string]any{"x": int64(2)})),
	)
	cs, err := s.Conflicts(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Key != "2" {
		t.Fatalf("Conflicts(1) = %+v, want the conflict on t/2", cs)
	}
	all := mustConflicts(t, s)
	if len(all) != 2 || all[0].ID <= all[1].ID {
		t.Fatalf("Conflicts = %+v, want 2 newest first", all)
	}
}

// TestDepsIndexOnlyForWinners checks that an entry that won nothing leaves
// no deps behind (it can never be the current writer of anything).
func TestDepsIndexOnlyForWinners(t *testing.T) {
	s, db := openMem(t)
	apply(t, s, db,
		ent("a", 1, 20, nil, put("t", "k", map[string]any{"x": int64(1)})),
		ent("b", 1, 10, map[string]uint64{"c": 3}, put("t", "k", map[string]any{"x": int64(2)})), // loses
		ent("b", 2, 30, map[string]uint64{"b": 1, "c": 4}, put("t", "k", map[string]any{"y": int64(2)})),
	)
	if _, ok, _ := getCopy(db, depsKey("b", 1)); ok {
		t.Fatal("deps kept for an entry that won nothing")
	}
	raw, ok, err := getCopy(db, depsKey("b", 2))
	if err != nil || !ok {
		t.Fatalf("deps of b#2: %v %v", ok, err)
	}
	deps, err := decodeDeps(raw)
	if err != nil || !reflect.DeepEqual(deps, map[string]uint64{"c": 4}) {
		t.Fatalf("deps of b#2 = %v (%v), want the other sites only", deps, err)
	}
}
