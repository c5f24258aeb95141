package state

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
)

// scanSpace calls fn for every key and value of one state space.
func scanSpace(t testing.TB, db *pebble.DB, space byte, fn func(k, v []byte)) {
	t.Helper()
	p := spacePrefix(space)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		t.Fatal(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		fn(it.Key(), it.Value())
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
}

// checkFeed checks the change feed against the records it indexes: exactly
// one feed entry for each record whose content a reader saw change, at the
// cursor the record carries (or, for a record stored before records carried
// it, the cursor its spaceLast index holds), and no index entry left for a
// record that carries its cursor.
func checkFeed(t testing.TB, db *pebble.DB) {
	t.Helper()
	recs := map[string]storedRecord{}
	scanSpace(t, db, spaceRecord, func(k, v []byte) {
		r, err := decodeRecord(v)
		if err != nil {
			t.Fatalf("record %q: %v", k, err)
		}
		recs[string(k)] = r
	})
	last := map[string]uint64{} // record key -> the cursor in its index entry
	scanSpace(t, db, spaceLast, func(k, v []byte) {
		rk := append([]byte{store.PrefixState, spaceRecord}, k[2:]...)
		r, ok := recs[string(rk)]
		if !ok {
			t.Fatalf("an index entry %q for no record", k)
		}
		if r.Cursor != 0 {
			t.Fatalf("record %q carries cursor %d and still has an index entry", rk, r.Cursor)
		}
		if len(v) != 8 {
			t.Fatalf("index entry %q of %d bytes", k, len(v))
		}
		last[string(rk)] = binary.BigEndian.Uint64(v)
	})
	fed := map[string]bool{}
	scanSpace(t, db, spaceFeed, func(k, v []byte) {
		cursor, err := seqOfKey(k)
		if err != nil {
			t.Fatal(err)
		}
		table, key, err := splitFeedValue(v)
		if err != nil {
			t.Fatal(err)
		}
		rk := string(recordKey(table, key))
		if fed[rk] {
			t.Fatalf("a second feed entry (%d) for %s/%s", cursor, table, key)
		}
		fed[rk] = true
		r, ok := recs[rk]
		if !ok {
			t.Fatalf("feed entry %d for %s/%s, which is not stored", cursor, table, key)
		}
		if want := max(r.Cursor, last[rk]); want != cursor {
			t.Fatalf("feed entry %d for %s/%s, whose cursor is %d", cursor, table, key, want)
		}
	})
	for rk, r := range recs {
		if (r.Cursor != 0 || last[rk] != 0) && !fed[rk] {
			t.Fatalf("record %q has cursor %d and no feed entry", rk, max(r.Cursor, last[rk]))
		}
	}
}

// toLegacy rewrites the state as builds before records carried their feed
// cursor stored it: every record in format 0x01, its cursor in the
// spaceLast index.
func toLegacy(t testing.TB, db *pebble.DB) {
	t.Helper()
	b := db.NewBatch()
	defer b.Close()
	scanSpace(t, db, spaceRecord, func(k, v []byte) {
		r, err := decodeRecord(v)
		if err != nil {
			t.Fatal(err)
		}
		if r.Cursor == 0 {
			return
		}
		table, key, err := splitRecordKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Set(lastKey(table, key), binary.BigEndian.AppendUint64(nil, r.Cursor), nil); err != nil {
			t.Fatal(err)
		}
		r.Cursor = 0
		if err := b.Set(k, r.encode(), nil); err != nil {
			t.Fatal(err)
		}
	})
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// TestRecordsCarryTheirFeedCursor applies random entries to a store as this
// build writes it and, in the same order, to one that held the first part as
// the build before wrote it (cursors in the spaceLast index) and was opened
// again. Both must give the same records, digest and change feed, cursor for
// cursor; the older store's index entries go as their records change.
func TestRecordsCarryTheirFeedCursor(t *testing.T) {
	sets := 40
	if testing.Short() {
		sets = 8
	}
	for set := range sets {
		seed := uint64(set) + 1
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0xc0de))
			entries := shuffleKeepingSiteOrder(rng, randomEntries(rng, 40))
			split := rng.IntN(len(entries))

			s, db := openMem(t)
			apply(t, s, db, entries...)
			checkFeed(t, db)

			ls, ldb := openMem(t)
			apply(t, ls, ldb, entries[:split]...)
			toLegacy(t, ldb)
			checkFeed(t, ldb)
			ls, err := Open(ldb, slog.New(slog.DiscardHandler)) // as the new build finds it
			if err != nil {
				t.Fatal(err)
			}
			apply(t, ls, ldb, entries[split:]...)
			checkFeed(t, ldb)

			if d, ld := mustDigest(t, s), mustDigest(t, ls); d != ld {
				t.Fatalf("digest %s, from the older store %s", d.Short(), ld.Short())
			}
			checkModel(t, ls, model(entries), seed)
			want, _ := mustChanges(t, s, 0, 10_000)
			got, _ := mustChanges(t, ls, 0, 10_000)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("change feed from the older store:\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}
