package state

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// dumpState returns every key and value of the state's key space.
func dumpState(t testing.TB, db *pebble.DB) [][2][]byte {
	t.Helper()
	p := []byte{store.PrefixState}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out [][2][]byte
	for it.First(); it.Valid(); it.Next() {
		out = append(out, [2][]byte{bytes.Clone(it.Key()), bytes.Clone(it.Value())})
	}
	return out
}

// TestApplyLoadMatchesApplyAll: entries of initial loads applied with
// ApplyLoad leave exactly the bytes ApplyAll leaves (records, feed, deps,
// conflicts, counts), whatever else writes the same tables before, during
// and between loads: other sites' puts and deletes of the same keys, own
// non-load writes, a second load of the same table.
func TestApplyLoadMatchesApplyAll(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			fast, fdb := openMem(t)
			slow, sdb := openMem(t)
			tables := []string{"patients", "notes"}
			hlc := uint64(100)
			seq := map[string]uint64{}
			next := func(site string) (uint64, uint64) {
				seq[site]++
				hlc += uint64(rng.IntN(3))
				return seq[site], hlc
			}
			fields := func(k int) map[string]any {
				return map[string]any{"id": int64(k), "name": fmt.Sprint("p", rng.IntN(4)), "n": int64(rng.IntN(3))}
			}
			// other writes an entry of another site (or own, not a load),
			// often on keys a load writes too.
			other := func() *wire.Signed {
				site := []string{"b", "c", "a"}[rng.IntN(3)]
				s, h := next(site)
				var ops []wire.Op
				for range 1 + rng.IntN(3) {
					tb, k := tables[rng.IntN(len(tables))], rng.IntN(60)
					if rng.IntN(4) == 0 {
						ops = append(ops, del(tb, fmt.Sprint(k)))
					} else {
						ops = append(ops, put(tb, fmt.Sprint(k), fields(k)))
					}
				}
				deps := map[string]uint64{}
				if rng.IntN(2) == 0 {
					deps["a"] = seq["a"]
				}
				return ent(site, s, h, deps, ops...)
			}
			var load uint64
			var loadKeys map[string]bool // keys this load has put
			for range 60 {
				if rng.IntN(8) == 0 {
					load = fast.NewLoad() // a new load of the tables (a restart, say)
					slow.NewLoad()
					loadKeys = map[string]bool{}
				}
				var es []*wire.Signed
				var loads []uint64
				for range 1 + rng.IntN(4) {
					if load != 0 && rng.IntN(3) > 0 {
						// A load entry: puts of keys this load has not put.
						s, h := next("a")
						var ops []wire.Op
						for range 1 + rng.IntN(6) {
							tb, k := tables[rng.IntN(len(tables))], rng.IntN(60)
							name := tb + "/" + fmt.Sprint(k)
							if loadKeys[name] {
								continue
							}
							loadKeys[name] = true
							ops = append(ops, put(tb, fmt.Sprint(k), fields(k)))
						}
						if len(ops) == 0 {
							continue
						}
						es = append(es, ent("a", s, h, map[string]uint64{"b": seq["b"]}, ops...))
						loads = append(loads, load)
						continue
					}
					es = append(es, other())
					loads = append(loads, 0)
				}
				applyBoth(t, fdb, sdb, slow, es, func(b *pebble.Batch) error { return fast.ApplyLoad(b, es, loads) })
			}
			mustMatch(t, "ApplyLoad", fast, fdb, slow, sdb)
		})
	}
}

// TestApplyLoadSkipsReadsOnlyWhileFresh: the puts of a load into an empty
// table skip their reads; once another entry wrote the table, or for a
// table that held records, they read again.
func TestApplyLoadSkipsReadsOnlyWhileFresh(t *testing.T) {
	s, db := openMem(t)
	applyLoad := func(es []*wire.Signed, loads []uint64) {
		t.Helper()
		b := db.NewIndexedBatch()
		defer b.Close()
		if err := s.ApplyLoad(b, es, loads); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	apply(t, s, db, ent("b", 1, 1, nil, put("old", "1", map[string]any{"x": int64(1)})))
	load := s.NewLoad()
	applyLoad([]*wire.Signed{ent("a", 1, 2, nil, put("new", "1", nil), put("old", "2", nil))}, []uint64{load})
	if f := s.fresh["new"]; f.load != load || !f.empty {
		t.Fatalf("the empty table is not taken as fresh: %+v", f)
	}
	if f := s.fresh["old"]; f.load != load || f.empty {
		t.Fatalf("a table that held a record is taken as fresh: %+v", f)
	}
	apply(t, s, db, ent("b", 2, 3, nil, put("new", "2", nil)))
	if _, ok := s.fresh["new"]; ok {
		t.Fatal("another site's write did not end what was known of the table")
	}
	applyLoad([]*wire.Signed{ent("a", 2, 4, nil, put("new", "2", map[string]any{"y": int64(2)}))}, []uint64{load})
	if f := s.fresh["new"]; f.empty {
		t.Fatal("the table another site wrote is taken as fresh again")
	}
	r, ok := mustGet(t, s, "new", "2")
	if !ok || r.Version.Site != "a" || len(r.Fields) != 1 {
		t.Fatalf("the load's put did not merge with the record: %+v", r)
	}
	if st, err := s.Stats(); err != nil || st.Records != 4 {
		t.Fatalf("records %d (%v), want 4", st.Records, err)
	}
	mustClear(t, s)
	if s.fresh != nil {
		t.Fatal("Clear kept what was known of the tables")
	}
}

// TestEncodeScalarsMatchesMarshal: the hand-written encoding of scalar field
// values is byte for byte what wire.Marshal gives (stored records are
// compared across nodes by their digest).
func TestEncodeScalarsMatchesMarshal(t *testing.T) {
	vals := []any{nil, true, false, 0.0, math.Copysign(0, -1), 1.5, -3.25, 1e300, math.SmallestNonzeroFloat64, math.MaxFloat64}
	for _, b := range []int64{0, 1 << 7, 1 << 8, 1 << 15, 1 << 16, 1 << 31, 1 << 32, 1 << 62} {
		for _, d := range []int64{-2, -1, 0, 1} {
			vals = append(vals, b+d, -(b + d))
		}
	}
	vals = append(vals, int64(math.MaxInt64), int64(math.MinInt64), int64(-32), int64(-33), int64(127), int64(-128), int64(-129))
	for _, n := range []int{0, 1, 31, 32, 33, 255, 256, 257, 65535, 65536, 70000} {
		vals = append(vals, strings.Repeat("é", n/2)+strings.Repeat("a", n%2))
		vals = append(vals, strings.Repeat("x", n))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		switch rng.IntN(3) {
		case 0:
			vals = append(vals, int64(rng.Uint64())>>rng.IntN(64))
		case 1:
			vals = append(vals, math.Float64frombits(rng.Uint64()&^(0x7ff<<52)|uint64(rng.IntN(0x7ff))<<52))
		default:
			vals = append(vals, strings.Repeat("p", rng.IntN(300)))
		}
	}
	for _, v := range vals {
		want, err := wire.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendScalar(nil, v); !bytes.Equal(got, want) {
			t.Fatalf("%T %v: %x, wire.Marshal gives %x", v, v, got, want)
		}
	}
	fast, ok := encodeScalars(vals)
	if !ok {
		t.Fatal("scalars not taken")
	}
	enc, err := wire.Marshal(vals)
	if err != nil {
		t.Fatal(err)
	}
	d := decoder{b: enc}
	d.msgpackArrayHeader()
	for i := range vals {
		if want := d.msgpackValue(); !bytes.Equal(fast[i], want) {
			t.Fatalf("value %d (%v): %x, want %x", i, vals[i], fast[i], want)
		}
	}
	if _, ok := encodeScalars([]any{int64(1), map[string]any{"$blob": "AA=="}}); ok {
		t.Fatal("a map was taken as a scalar")
	}
}
