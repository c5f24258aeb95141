package state

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// randomEntries returns n entries of a few sites writing to a few records
// (so that they collide), with HLCs that often tie.
func randomEntries(rng *rand.Rand, n int) []*wire.Signed {
	sites := []string{"a", "b", "c", "d", "e"}[:3+rng.IntN(3)]
	tables := []string{"t", "u\x00"}
	keys := []string{"k", "k\x00", "l", ""}
	fields := []string{"x", "y", "z"}
	seq := map[string]uint64{}
	hlc := map[string]uint64{}
	var out []*wire.Signed
	for range n {
		site := sites[rng.IntN(len(sites))]
		seq[site]++
		hlc[site] += uint64(rng.IntN(3)) // ties within and across sites
		// Usually the writer had seen everything written so far (causally
		// ordered writes); sometimes only part of it (concurrent writes).
		deps := map[string]uint64{}
		for _, o := range sites {
			switch {
			case o == site || seq[o] == 0:
			case rng.IntN(3) > 0:
				deps[o] = seq[o]
			default:
				deps[o] = uint64(rng.IntN(int(seq[o]) + 1))
			}
		}
		var ops []wire.Op
		for range 1 + rng.IntN(3) {
			table, key := tables[rng.IntN(len(tables))], keys[rng.IntN(len(keys))]
			if key == "" {
				key = "m"
			}
			if rng.IntN(4) == 0 {
				ops = append(ops, del(table, key))
				continue
			}
			f := map[string]any{}
			for range rng.IntN(3) {
				var v any
				switch rng.IntN(4) {
				case 0:
					v = int64(rng.IntN(5))
				case 1:
					v = fmt.Sprint("s", rng.IntN(5))
				case 2:
					v = nil
				default:
					v = []any{int64(rng.IntN(2)), map[string]any{"q": rng.IntN(2) == 0}}
				}
				f[fields[rng.IntN(len(fields))]] = v
			}
			ops = append(ops, put(table, key, f))
		}
		out = append(out, ent(site, seq[site], hlc[site], deps, ops...))
	}
	return out
}

// shuffleKeepingSiteOrder returns a random interleaving of entries that keeps
// each site's entries in order.
func shuffleKeepingSiteOrder(rng *rand.Rand, entries []*wire.Signed) []*wire.Signed {
	bySite := map[string][]*wire.Signed{}
	for _, e := range entries {
		bySite[e.Site] = append(bySite[e.Site], e)
	}
	// Shuffle the sequence of site names, then give each slot its site's next
	// entry: every interleaving that keeps site order is equally likely.
	slots := make([]string, 0, len(entries))
	for _, e := range entries {
		slots = append(slots, e.Site)
	}
	rng.Shuffle(len(slots), func(i, j int) { slots[i], slots[j] = slots[j], slots[i] })
	out := make([]*wire.Signed, 0, len(entries))
	for _, site := range slots {
		out = append(out, bySite[site][0])
		bySite[site] = bySite[site][1:]
	}
	return out
}

// model computes the expected records from the set of entries, directly from
// the rules in the package doc.
func model(entries []*wire.Signed) map[[2]string]Record {
	type acc struct {
		del, put Version
		fields   map[string]Version
		vals     map[string]any
	}
	recs := map[[2]string]*acc{}
	for _, e := range entries {
		for i, op := range e.Ops {
			v := Version{HLC: e.HLC, Site: e.Site, Seq: e.Seq, Op: uint32(i)}
			id := [2]string{op.Table, op.Key}
			r := recs[id]
			if r == nil {
				r = &acc{fields: map[string]Version{}, vals: map[string]any{}}
				recs[id] = r
			}
			if op.Kind == wire.OpDelete {
				if v.Compare(r.del) > 0 {
					r.del = v
				}
				continue
			}
			if v.Compare(r.put) > 0 {
				r.put = v
			}
			for name, val := range op.Fields {
				if v.Compare(r.fields[name]) > 0 {
					r.fields[name], r.vals[name] = v, val
				}
			}
		}
	}
	out := map[[2]string]Record{}
	for id, r := range recs {
		if r.put.Compare(r.del) <= 0 {
			continue
		}
		rec := Record{Table: id[0], Key: id[1], Version: r.put, Fields: map[string]any{}}
		for name, v := range r.fields {
			if v.Compare(r.del) > 0 {
				rec.Fields[name] = r.vals[name]
			}
		}
		out[id] = rec
	}
	return out
}

// TestPropertyOrderIndependence applies random sets of colliding entries in
// many random orders (each site's entries in order), one entry per batch or
// several, into fresh databases or into a database cleared by Clear, and
// checks that every order gives the same digest and the records the model
// says.
func TestPropertyOrderIndependence(t *testing.T) {
	sets, perSet := 50, 60 // 3,000 interleavings of 40 entries
	switch {
	case testing.Short():
		sets, perSet = 10, 10
	case raceEnabled:
		sets, perSet = 25, 40 // 1,000: the race detector slows pebble down ten times
	}
	for set := range sets {
		seed := uint64(set) + 1
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 0x5eed))
			entries := randomEntries(rng, 40)
			want := model(entries)
			var first wire.Hash
			var s *State
			var db *pebble.DB
			defer func() {
				if db != nil {
					_ = db.Close()
				}
			}()
			for run := range perSet {
				order := shuffleKeepingSiteOrder(rng, entries)
				if db != nil && rng.IntN(2) == 0 {
					mustClear(t, s) // reuse the database: a rebuild
				} else {
					if db != nil {
						if err := db.Close(); err != nil {
							t.Fatal(err)
						}
					}
					s, db = openMemNoCleanup(t)
				}
				applyInBatches(t, rng, s, db, order)
				d := mustDigest(t, s)
				if run == 0 {
					first = d
					checkModel(t, s, want, seed)
				} else if d != first {
					t.Fatalf("seed %d run %d: digest %s, first run %s", seed, run, d.Short(), first.Short())
				}
			}
			checkModel(t, s, want, seed)
		})
	}
}

// applyInBatches applies entries one per batch or several per batch, at random.
func applyInBatches(t *testing.T, rng *rand.Rand, s *State, db *pebble.DB, entries []*wire.Signed) {
	t.Helper()
	maxBatch := 1
	if rng.IntN(2) == 0 {
		maxBatch = 8
	}
	for len(entries) > 0 {
		n := min(1+rng.IntN(maxBatch), len(entries))
		applyBatch(t, s, db, entries[:n]...)
		entries = entries[n:]
	}
}

func checkModel(t *testing.T, s *State, want map[[2]string]Record, seed uint64) {
	t.Helper()
	var tables []string
	for id, w := range want {
		got, ok := mustGet(t, s, id[0], id[1])
		if !ok {
			t.Fatalf("seed %d: %q/%q missing, want %v", seed, id[0], id[1], w.Fields)
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("seed %d: %q/%q = %+v, want %+v", seed, id[0], id[1], got, w)
		}
		if !slices.Contains(tables, id[0]) {
			tables = append(tables, id[0])
		}
	}
	slices.Sort(tables)
	gotTables, err := s.Tables()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotTables, tables) {
		t.Fatalf("seed %d: tables %q, want %q", seed, gotTables, tables)
	}
	n := 0
	for _, table := range tables {
		recs, err := s.List(table, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if _, ok := want[[2]string{r.Table, r.Key}]; !ok {
				t.Fatalf("seed %d: List returned %q/%q, which should not exist", seed, r.Table, r.Key)
			}
		}
		n += len(recs)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) || st.Records != uint64(len(want)) {
		t.Fatalf("seed %d: listed %d records, stats say %d, want %d", seed, n, st.Records, len(want))
	}
	checkFeed(t, s.db)
}
