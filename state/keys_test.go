package state

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
)

func TestNameEncodingOrderAndRoundTrip(t *testing.T) {
	names := []string{"", "\x00", "\x00\x00", "\x00\x01", "\x00\xff", "\x01", "a", "a\x00", "a\x00b", "a\x01", "ab", "b", "é", "\xff"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		b := make([]byte, rng.IntN(6))
		for i := range b {
			b[i] = []byte{0, 1, 2, 'a', 0xfe, 0xff}[rng.IntN(6)]
		}
		names = append(names, string(b))
	}
	for _, x := range names {
		ex := appendName(nil, x)
		got, rest, err := readName(append(ex, "tail"...))
		if err != nil || got != x || string(rest) != "tail" {
			t.Fatalf("readName(appendName(%q)) = %q, %q, %v", x, got, rest, err)
		}
		for _, y := range names {
			ey := appendName(nil, y)
			if want, got := cmpStrings(x, y), bytes.Compare(ex, ey); want != got {
				t.Fatalf("order of %q, %q: encoded %d, raw %d", x, y, got, want)
			}
			if x != y && bytes.HasPrefix(ey, ex) {
				t.Fatalf("encoding of %q is a prefix of %q's", x, y)
			}
		}
	}
	for _, bad := range []string{"abc", "a\x00", "a\x00\x02", "\x00\xff"} {
		if _, _, err := readName([]byte(bad)); err == nil {
			t.Errorf("readName(%q) accepted a bad component", bad)
		}
	}
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestRecordKeysGroupByTable(t *testing.T) {
	// Keys of table "t" sort together and by key, even next to table "t\x00"
	// and keys that contain 0x00.
	k1, k2 := recordKey("t", "a"), recordKey("t", "a\x00")
	other := recordKey("t\x00", "")
	for _, k := range [][]byte{k1, k2} {
		if bytes.Compare(k, tablePrefix("t")) <= 0 || bytes.Compare(k, tableEnd("t")) >= 0 {
			t.Fatalf("%q outside the range of table t", k)
		}
	}
	if bytes.Compare(other, tableEnd("t")) < 0 {
		t.Fatal("a record of table t\\x00 falls inside table t's range")
	}
	table, key, err := splitRecordKey(k2)
	if err != nil || table != "t" || key != "a\x00" {
		t.Fatalf("split %q: %q %q %v", k2, table, key, err)
	}
}

func TestListTablesAndPaging(t *testing.T) {
	s, db := openMem(t)
	keys := []string{"b", "a\x00", "a", "c", "\x00", "z"}
	var ops []wire.Op
	for _, k := range keys {
		ops = append(ops, put("t", k, map[string]any{"k": k}))
	}
	ops = append(ops,
		put("t\x00", "x", nil),                  // a table whose name extends "t"
		put("gone", "x", nil), del("gone", "x"), // a table with only a deleted record
		del("t", "z"),
	)
	apply(t, s, db, ent("a", 1, 10, nil, ops...))

	tables, err := s.Tables()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"t", "t\x00"}; !slices.Equal(tables, want) {
		t.Fatalf("tables %q, want %q", tables, want)
	}
	want := []string{"\x00", "a", "a\x00", "b", "c"}
	var got []string
	after := ""
	for {
		page, err := s.List("t", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			if r.Table != "t" || r.Fields["k"] != r.Key {
				t.Fatalf("record %+v", r)
			}
			got = append(got, r.Key)
		}
		after = page[len(page)-1].Key
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %q, want %q", got, want)
	}
	if recs, _ := s.List("nope", "", 0); len(recs) != 0 {
		t.Fatalf("list of an unknown table: %v", recs)
	}
	if st, _ := s.Stats(); st.Records != 6 {
		t.Fatalf("stats %+v, want 6 records", st)
	}
}

func TestRecordCodecRoundTrip(t *testing.T) {
	put := Version{HLC: 1 << 60, Site: "site-a", Seq: 300, Op: 2}
	recs := []storedRecord{
		{Del: Version{HLC: 5, Site: "b", Seq: 1}},
		{Put: put},
		{Put: put, Del: Version{HLC: 1, Site: "c", Seq: 1}, Fields: []storedField{
			{Name: "a", Ver: put, Val: []byte{0xc0}},
			{Name: "b\x00", Ver: Version{HLC: 2, Site: "z", Seq: 1}, Val: []byte("\xa1x")},
		}},
	}
	for _, r := range recs {
		// Without a feed cursor (format 0x01) and with one (0x02): the same
		// body, which is what the digest hashes.
		var body []byte
		for _, cursor := range []uint64{0, 1, 300, 1 << 62} {
			r.Cursor = cursor
			enc := r.encode()
			if want := byte(recordFormat + min(cursor, 1)); enc[0] != want {
				t.Fatalf("cursor %d: format %d, want %d", cursor, enc[0], want)
			}
			got, err := decodeRecord(enc)
			if err != nil {
				t.Fatalf("decode %+v: %v", r, err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip %+v -> %+v", r, got)
			}
			c, b, err := splitRecord(enc)
			if err != nil || c != cursor {
				t.Fatalf("split %+v: cursor %d, %v", r, c, err)
			}
			if body == nil {
				body = b
			} else if !bytes.Equal(b, body) {
				t.Fatalf("cursor %d: body %x, without a cursor %x", cursor, b, body)
			}
		}
	}
	// A format 0x02 record must carry a cursor: one of 0 is spelled 0x01.
	zero := append([]byte{recordFormatCursor, 0}, recs[1].encode()[1:]...)
	if _, err := decodeRecord(zero); err == nil {
		t.Fatal("a record with a feed cursor of 0 accepted")
	}
	// A field version spelled out although it equals the put version is not
	// canonical, and refused.
	r := recs[2]
	enc := r.encode()
	alt := bytes.Replace(enc, []byte("\x01a\x00"), append([]byte("\x01a\x01"), appendVersion(nil, put)...), 1)
	if bytes.Equal(alt, enc) {
		t.Fatal("test setup: no replacement")
	}
	if _, err := decodeRecord(alt); err == nil {
		t.Fatal("non-canonical record accepted")
	}
}

// TestEncodeValuesMatchesWireMarshal checks that splitting one encoded list
// gives exactly wire.Marshal of each value.
func TestEncodeValuesMatchesWireMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var vals []any
	for range 300 {
		vals = append(vals, randomValue(rng, 0))
	}
	vals[1] = make([]any, 70000) // a 32-bit array header inside
	for _, n := range []int{0, 1, 15, 16, 17, 300} {
		parts, err := encodeValues(vals[:n])
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals[:n] {
			want, err := wire.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(parts[i], want) {
				t.Fatalf("value %d %#v: split %x, wire.Marshal %x", i, v, parts[i], want)
			}
		}
	}
}

func randomValue(rng *rand.Rand, depth int) any {
	k := rng.IntN(10)
	if depth > 3 && k >= 8 {
		k = 0
	}
	switch k {
	case 0:
		return nil
	case 1:
		return rng.IntN(2) == 0
	case 2:
		return []int64{0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 1 << 31, -1 << 31, 1<<32 + 1, -1 << 63, 1<<63 - 1}[rng.IntN(16)]
	case 3:
		return []float64{0, -0.5, 1e300, 3.25}[rng.IntN(4)]
	case 4, 5:
		return string(bytes.Repeat([]byte("é"), []int{0, 1, 15, 16, 128, 40000}[rng.IntN(6)]))
	case 6:
		return fmt.Sprint(rng.Int64())
	case 7:
		return int64(rng.Int64())
	case 8:
		l := make([]any, []int{0, 1, 15, 16, 17}[rng.IntN(5)])
		for i := range l {
			l[i] = randomValue(rng, depth+1)
		}
		return l
	default:
		m := map[string]any{}
		for i := range rng.IntN(20) {
			m[fmt.Sprint("k", i)] = randomValue(rng, depth+1)
		}
		return m
	}
}

func FuzzDecodeRecord(f *testing.F) {
	v := Version{HLC: 7, Site: "a", Seq: 1}
	f.Add((&storedRecord{Put: v, Fields: []storedField{{Name: "x", Ver: v, Val: []byte{1}}}}).encode())
	f.Add((&storedRecord{Del: v}).encode())
	f.Add((&storedRecord{Put: v, Fields: []storedField{{Name: "x", Ver: v, Val: []byte{1}}}, Cursor: 1 << 40}).encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		// Canonical: what decodes re-encodes to the same bytes.
		if enc := r.encode(); !bytes.Equal(enc, b) {
			t.Fatalf("decoded %x re-encodes to %x", b, enc)
		}
		r.Cursor = 0 // the digested bytes leave the cursor out
		if _, body, err := splitRecord(b); err != nil || !bytes.Equal(append([]byte{recordFormat}, body...), r.encode()) {
			t.Fatalf("body of %x: %x, %v; want %x", b, body, err, r.encode()[1:])
		}
		_, _ = r.toRecord("t", "k") // may fail on a bad value; must not panic
	})
}

func FuzzDecodeDeps(f *testing.F) {
	f.Add(encodeDeps(map[string]uint64{"a": 1, "b": 300}))
	f.Add([]byte{0x05})
	f.Fuzz(func(t *testing.T, b []byte) {
		deps, err := decodeDeps(b)
		if err != nil {
			return
		}
		if len(deps) > len(b) {
			t.Fatalf("%d deps from %d bytes", len(deps), len(b))
		}
	})
}

func FuzzMsgpackValue(f *testing.F) {
	f.Add([]byte{0x93, 0x01, 0xa1, 'x', 0xc0})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := decoder{b: b}
		v := d.msgpackValue()
		if d.err == nil && len(v)+len(d.b) != len(b) {
			t.Fatalf("value %d + rest %d != %d bytes", len(v), len(d.b), len(b))
		}
	})
}
