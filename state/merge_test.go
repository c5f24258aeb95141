package state

import (
	"crypto/ed25519"
	"errors"
	"reflect"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
)

// interleavings returns every order of entries that keeps each site's entries
// in their given order.
func interleavings(entries []*wire.Signed) [][]*wire.Signed {
	bySite := map[string][]*wire.Signed{}
	var sites []string
	for _, e := range entries {
		if _, ok := bySite[e.Site]; !ok {
			sites = append(sites, e.Site)
		}
		bySite[e.Site] = append(bySite[e.Site], e)
	}
	var out [][]*wire.Signed
	pos := map[string]int{}
	var cur []*wire.Signed
	var rec func()
	rec = func() {
		if len(cur) == len(entries) {
			out = append(out, append([]*wire.Signed(nil), cur...))
			return
		}
		for _, site := range sites {
			if pos[site] < len(bySite[site]) {
				cur = append(cur, bySite[site][pos[site]])
				pos[site]++
				rec()
				pos[site]--
				cur = cur[:len(cur)-1]
			}
		}
	}
	rec()
	return out
}

func TestMerge(t *testing.T) {
	type want struct {
		table, key string
		fields     map[string]any // nil: absent
		version    wire.ID        // checked when fields != nil
	}
	cases := []struct {
		name    string
		entries []*wire.Signed
		want    []want
	}{
		{
			name: "last writer wins by HLC",
			entries: []*wire.Signed{
				ent("b", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})),
				ent("a", 1, 20, nil, put("t", "k", map[string]any{"x": int64(2)})),
			},
			want: []want{{"t", "k", map[string]any{"x": int64(2)}, wire.ID{Site: "a", Seq: 1}}},
		},
		{
			name: "equal HLC: higher site ID wins",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": "from a"})),
				ent("b", 1, 10, nil, put("t", "k", map[string]any{"x": "from b"})),
			},
			want: []want{{"t", "k", map[string]any{"x": "from b"}, wire.ID{Site: "b", Seq: 1}}},
		},
		{
			name: "equal HLC and site: higher seq wins",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})),
				ent("a", 2, 10, nil, put("t", "k", map[string]any{"x": int64(2)})),
			},
			want: []want{{"t", "k", map[string]any{"x": int64(2)}, wire.ID{Site: "a", Seq: 2}}},
		},
		{
			name: "tombstone beats older fields",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1), "y": int64(1)})),
				ent("b", 1, 20, nil, del("t", "k")),
			},
			want: []want{{table: "t", key: "k"}},
		},
		{
			name: "newer put resurrects with only the newer fields",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1), "y": int64(1)})),
				ent("b", 1, 20, nil, del("t", "k")),
				ent("a", 2, 30, nil, put("t", "k", map[string]any{"y": int64(2)})),
			},
			want: []want{{"t", "k", map[string]any{"y": int64(2)}, wire.ID{Site: "a", Seq: 2}}},
		},
		{
			name: "old put after a newer delete is invisible",
			entries: []*wire.Signed{
				ent("b", 1, 20, nil, del("t", "k")),
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})),
			},
			want: []want{{table: "t", key: "k"}},
		},
		{
			name: "fields of one put win partially",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1), "y": int64(1)})),
				ent("b", 1, 20, nil, put("t", "k", map[string]any{"y": int64(2)})),
				ent("c", 1, 15, nil, put("t", "k", map[string]any{"x": int64(3), "y": int64(3)})),
			},
			want: []want{{"t", "k", map[string]any{"x": int64(3), "y": int64(2)}, wire.ID{Site: "b", Seq: 1}}},
		},
		{
			name: "delete between two puts keeps only the newer put's fields",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)})),
				ent("b", 1, 30, nil, put("t", "k", map[string]any{"y": int64(2)})),
				ent("c", 1, 20, nil, del("t", "k")),
			},
			want: []want{{"t", "k", map[string]any{"y": int64(2)}, wire.ID{Site: "b", Seq: 1}}},
		},
		{
			name: "later operations of one entry win",
			entries: []*wire.Signed{
				ent("a", 1, 10, nil,
					put("t", "1", map[string]any{"x": int64(1)}), put("t", "1", map[string]any{"x": int64(2)}),
					put("t", "2", map[string]any{"x": int64(1)}), del("t", "2"),
					put("t", "3", map[string]any{"x": int64(1)}), del("t", "3"), put("t", "3", map[string]any{"y": true}),
				),
			},
			want: []want{
				{"t", "1", map[string]any{"x": int64(2)}, wire.ID{Site: "a", Seq: 1}},
				{table: "t", key: "2"},
				{"t", "3", map[string]any{"y": true}, wire.ID{Site: "a", Seq: 1}},
			},
		},
		{
			name:    "a put without fields creates an empty record",
			entries: []*wire.Signed{ent("a", 1, 10, nil, put("t", "k", nil))},
			want:    []want{{"t", "k", map[string]any{}, wire.ID{Site: "a", Seq: 1}}},
		},
		{
			name:    "deleting a record never written leaves nothing visible",
			entries: []*wire.Signed{ent("a", 1, 10, nil, del("t", "k"))},
			want:    []want{{table: "t", key: "k"}},
		},
		{
			name: "every value type round-trips",
			entries: []*wire.Signed{ent("a", 1, 10, nil, put("t", "k", map[string]any{
				"nil": nil, "bool": false, "str": "é\x00z", "int": int64(-7), "float": 1.5,
				"list": []any{int64(1), "two", nil}, "map": map[string]any{"a": []any{}, "b": map[string]any{}},
			}))},
			want: []want{{"t", "k", map[string]any{
				"nil": nil, "bool": false, "str": "é\x00z", "int": int64(-7), "float": 1.5,
				"list": []any{int64(1), "two", nil}, "map": map[string]any{"a": []any{}, "b": map[string]any{}},
			}, wire.ID{Site: "a", Seq: 1}}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var first wire.Hash
			for n, order := range interleavings(tc.entries) {
				s, db := openMem(t)
				apply(t, s, db, order...)
				for _, w := range tc.want {
					r, ok := mustGet(t, s, w.table, w.key)
					if w.fields == nil {
						if ok {
							t.Fatalf("order %d: %s/%s exists with %v, want absent", n, w.table, w.key, r.Fields)
						}
						continue
					}
					if !ok {
						t.Fatalf("order %d: %s/%s is absent, want %v", n, w.table, w.key, w.fields)
					}
					if !reflect.DeepEqual(r.Fields, w.fields) {
						t.Fatalf("order %d: %s/%s = %#v, want %#v", n, w.table, w.key, r.Fields, w.fields)
					}
					if r.Version.Entry() != w.version {
						t.Fatalf("order %d: %s/%s version %v, want entry %v", n, w.table, w.key, r.Version, w.version)
					}
				}
				d := mustDigest(t, s)
				if n == 0 {
					first = d
				} else if d != first {
					t.Fatalf("order %d: digest %s differs from the first order's %s", n, d.Short(), first.Short())
				}
			}
		})
	}
}

func TestVersionCompare(t *testing.T) {
	ordered := []Version{
		{},
		{HLC: 1, Site: "b", Seq: 9, Op: 9},
		{HLC: 2, Site: "a", Seq: 9, Op: 9},
		{HLC: 2, Site: "b", Seq: 1, Op: 9},
		{HLC: 2, Site: "b", Seq: 2, Op: 0},
		{HLC: 2, Site: "b", Seq: 2, Op: 1},
	}
	for i := range ordered {
		for j := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := ordered[i].Compare(ordered[j]); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
}

// TestApplyTwiceChangesNothing documents what happens if the log ever
// applied an entry twice: nothing (records, feed, conflicts, counts).
func TestApplyTwiceChangesNothing(t *testing.T) {
	s, db := openMem(t)
	entries := []*wire.Signed{
		ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)}), put("t", "j", map[string]any{"x": int64(1)})),
		ent("b", 1, 10, nil, put("t", "k", map[string]any{"x": int64(2)})),
		ent("b", 2, 11, nil, del("t", "j")),
	}
	apply(t, s, db, entries...)
	d := mustDigest(t, s)
	st, _ := s.Stats()
	if st.Conflicts == 0 {
		t.Fatal("test setup: expected a conflict")
	}
	for _, e := range entries {
		apply(t, s, db, e)
	}
	if got := mustDigest(t, s); got != d {
		t.Fatal("re-applying entries changed the digest")
	}
	st2, _ := s.Stats()
	if st2 != st {
		t.Fatalf("re-applying entries changed the stats: %+v -> %+v", st, st2)
	}
}

func TestApplyRefusesNewerSchema(t *testing.T) {
	s, db := openMem(t)
	e := ent("a", 1, 10, nil, put("t", "k", map[string]any{"x": int64(1)}))
	e.Schema = wire.SchemaVersion + 1
	b := db.NewIndexedBatch()
	defer b.Close()
	if err := s.Apply(b, e); !errors.Is(err, ErrSchema) {
		t.Fatalf("Apply = %v, want ErrSchema", err)
	}
	if !b.Empty() {
		t.Fatal("a refused entry wrote to the batch")
	}
}

func TestApplySignedEntries(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, db := openMem(t)
	apply(t, s, db,
		signed(t, key, "a", 1, 10, put("t", "k", map[string]any{"n": 5})),
		signed(t, key, "a", 2, 11, put("t", "k", map[string]any{"m": uint8(6)})),
	)
	r, ok := mustGet(t, s, "t", "k")
	if !ok || !reflect.DeepEqual(r.Fields, map[string]any{"n": int64(5), "m": int64(6)}) {
		t.Fatalf("got %v %v", r.Fields, ok)
	}
}
