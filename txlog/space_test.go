package txlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// famLog is one family's log in a database shared with other families.
type famLog struct {
	name   string
	family string // family ID, 64 hex digits
	space  store.Space
	keys   *keyring
	marks  *marks
	self   *Identity
	clock  *hlc.Clock
	log    *Log
	own    int // own entries written (site "a")
	remote int // entries of site "b" appended, on the main branch
	forked bool
}

func newFamLog(t *testing.T, name string, primary bool) *famLog {
	t.Helper()
	sum := sha256.Sum256([]byte(name))
	f := &famLog{name: name, family: hex.EncodeToString(sum[:]), keys: newKeyring(), clock: hlc.New(time.Now)}
	if !primary {
		s, err := store.FamilySpace(f.family)
		if err != nil {
			t.Fatal(err)
		}
		f.space = s
	}
	f.marks = &marks{space: f.space}
	// Every family has a site "a" (this node) and a site "b", so that the
	// same (site, seq) exists in each: only the space tells them apart.
	f.self = &Identity{Site: "a", Epoch: 1, Key: f.keys.add(t, "a", 1)}
	return f
}

func (f *famLog) open(t *testing.T, db *pebble.DB, in *store.Ingester) {
	t.Helper()
	l, err := Open(Config{DB: db, Ingest: in, Family: f.family, Space: f.space, Self: f.self, Keys: f.keys, Apply: f.marks, Clock: f.clock})
	if err != nil {
		t.Fatalf("%s: open: %v", f.name, err)
	}
	f.log = l
}

func (f *famLog) applied(t *testing.T, db *pebble.DB, id wire.ID) bool {
	t.Helper()
	_, c, err := db.Get(append(append([]byte(nil), f.space...), markKey(id)...))
	if errors.Is(err, pebble.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return true
}

// check asserts that the log holds exactly this family's entries, heads,
// forks and quarantine, and none of another family's.
func (f *famLog) check(t *testing.T, db *pebble.DB) {
	t.Helper()
	l := f.log
	if h := l.Head("a"); h.Seq != uint64(f.own) {
		t.Fatalf("%s: own head %d, want %d", f.name, h.Seq, f.own)
	}
	if h := l.Head("b"); h.Seq != uint64(f.remote) {
		t.Fatalf("%s: head of b %d, want %d", f.name, h.Seq, f.remote)
	}
	fr := l.Frontier()
	if len(fr) != 2 || fr["a"] != uint64(f.own) || fr["b"] != uint64(f.remote) {
		t.Fatalf("%s: frontier %v, want a:%d b:%d", f.name, fr, f.own, f.remote)
	}
	for _, site := range []string{"a", "b"} {
		es, err := l.Range(site, 1, 1<<20)
		if err != nil || len(es) != int(l.Head(site).Seq) {
			t.Fatalf("%s: range of %s: %d entries, %v", f.name, site, len(es), err)
		}
		for _, e := range es {
			if e.Family != f.family {
				t.Fatalf("%s: holds %s of family %.12s", f.name, e.ID(), e.Family)
			}
			if !f.applied(t, db, e.ID()) {
				t.Fatalf("%s: %s not applied", f.name, e.ID())
			}
		}
	}
	rep, err := l.Verify(bg, nil)
	if err != nil || len(rep.Damage) != 0 || rep.Sites != 2 || rep.Entries != uint64(f.own+f.remote) {
		t.Fatalf("%s: verify %+v %v, want 2 sites, %d entries", f.name, rep, err, f.own+f.remote)
	}
	q, err := l.Quarantined("b")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := l.Evidence("b")
	if err != nil {
		t.Fatal(err)
	}
	forks := l.Forks()
	if f.forked {
		if len(forks) != 1 || forks[0].Site != "b" || len(q) != 2 || len(ev) != 1 {
			t.Fatalf("%s: forks %+v, quarantined %d, evidence %d; want 1 fork of b, 2, 1", f.name, forks, len(q), len(ev))
		}
	} else if len(forks) != 0 || len(q) != 0 || len(ev) != 0 {
		t.Fatalf("%s: forks %+v, quarantined %d, evidence %d; want none", f.name, forks, len(q), len(ev))
	}
}

func TestFamiliesShareOneDatabase(t *testing.T) {
	fs := vfs.NewMem()
	db, err := store.Open("db", store.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	// One ingester for the database, as a relay has: runs of site b long
	// enough to be stored as tables are ingested by two families at once.
	newIngester := func() *store.Ingester {
		in, err := store.NewIngester(db, "ingest", store.Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	in := newIngester()
	primary := newFamLog(t, "primary", true)
	one := newFamLog(t, "one", false)
	two := newFamLog(t, "two", false)
	fams := []*famLog{primary, one, two}
	closeAll := func() {
		for _, f := range fams {
			if f.log != nil {
				f.log.Close()
				f.log = nil
			}
		}
		db.Close()
	}
	defer func() {
		if db != nil {
			closeAll()
		}
	}()
	reopen := func() {
		closeAll()
		db, err = store.Open("db", store.Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		in = newIngester()
		for _, f := range fams {
			f.open(t, db, in)
		}
	}
	for _, f := range fams {
		f.open(t, db, in)
	}

	// Each family writes a different number of own entries and takes a
	// different number of site b's, all in the one database; primary's and
	// two's runs of b are long enough to be stored as tables, and the three
	// runs are appended at once.
	mains := make([][]*wire.Signed, len(fams))
	for i, f := range fams {
		f.own, f.remote = 2+i, 3+2*i
		if f != one {
			f.remote += ingestMin
		}
		for j := 0; j < f.own; j++ {
			if _, err := f.log.Write(bg, put("patients", fmt.Sprint(j), map[string]any{"family": f.name})); err != nil {
				t.Fatalf("%s: write: %v", f.name, err)
			}
		}
		mains[i] = chainOf(t, f.family, "b", 1, f.keys.add(t, "b", 1), 0, wire.Hash{}, f.remote, f.name)
	}
	errs := make([]error, len(fams))
	var wg sync.WaitGroup
	for i, f := range fams {
		wg.Go(func() { _, errs[i] = f.log.AppendRun(bg, mains[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("append: %v", err)
	}
	if n := db.Metrics().Ingest.Count; n != 2 {
		t.Errorf("%d ingestions, want 2 (primary's and two's long runs of b)", n)
	}
	for i, f := range fams {
		main, bKey := mains[i], f.keys.keys["b"][1]
		if f == one {
			// A clone of one's site b wrote another seq 2 onwards: a fork,
			// and its later entries quarantined, in family one only.
			branch := chainOf(t, f.family, "b", 1, bKey, 1, main[0].Hash, 3, "clone")
			if _, err := f.log.AppendRun(bg, branch); !errors.Is(err, ErrForked) {
				t.Fatalf("one: fork: %v", err)
			}
			f.forked = true
		}
	}
	for _, f := range fams {
		f.check(t, db)
	}

	// The primary family's keys are those of a one-family database:
	// 't' 'l' len(site) site seq.
	e1, err := primary.log.Get("a", 1)
	if err != nil {
		t.Fatal(err)
	}
	lit := []byte{'t', 'l', 1, 'a', 0, 0, 0, 0, 0, 0, 0, 1}
	v, c, err := db.Get(lit)
	if err != nil {
		t.Fatalf("primary entry a/1 not at key %x: %v", lit, err)
	}
	if !bytes.Equal(v, e1.Marshal()) {
		c.Close()
		t.Fatal("key t l 1 a 1 does not hold the primary family's entry a/1")
	}
	c.Close()
	if !bytes.Equal(primary.log.keys.entry("a", 1), lit) || !bytes.Equal(primary.log.keys.site(kindHead, "a"), []byte{'t', 'f', 1, 'a'}) {
		t.Fatalf("primary keys changed: %x", primary.log.keys.entry("a", 1))
	}
	// Another family's entry a/1 is under its space, and is its own entry.
	o1, err := one.log.Get("a", 1)
	if err != nil {
		t.Fatal(err)
	}
	v, c, err = db.Get(append(append([]byte(nil), one.space...), lit...))
	if err != nil {
		t.Fatalf("family one's entry a/1 not under its space: %v", err)
	}
	if !bytes.Equal(v, o1.Marshal()) || o1.Family != one.family || o1.Hash == e1.Hash {
		c.Close()
		t.Fatal("family one's key holds another entry")
	}
	c.Close()

	reopen()
	for _, f := range fams {
		f.check(t, db)
	}
	// Each keeps writing after the reopen, continuing its own chain.
	for _, f := range fams {
		s, err := f.log.Write(bg, put("patients", "after", map[string]any{"family": f.name}))
		if err != nil || s.Seq != uint64(f.own+1) || s.Family != f.family {
			t.Fatalf("%s: write after reopen: %v %v", f.name, s, err)
		}
		f.own++
	}

	// Deleting family one's space leaves the others whole.
	closeAll()
	db, err = store.Open("db", store.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteSpace(db, one.space); err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteSpace(db, primary.space); err == nil {
		t.Fatal("DeleteSpace accepted the primary family's empty space")
	}
	reopen()
	one.own, one.remote, one.forked = 0, 0, false
	if fr := one.log.Frontier(); len(fr) != 0 {
		t.Fatalf("deleted family's frontier %v", fr)
	}
	if _, err := one.log.Get("a", 1); err == nil {
		t.Fatal("deleted family still holds a/1")
	}
	if rep, err := one.log.Verify(bg, nil); err != nil || rep.Entries != 0 || len(rep.Damage) != 0 {
		t.Fatalf("deleted family verify: %+v %v", rep, err)
	}
	if q, _ := one.log.Quarantined("b"); len(q) != 0 || len(one.log.Forks()) != 0 {
		t.Fatalf("deleted family keeps %d quarantined, forks %v", len(q), one.log.Forks())
	}
	if one.applied(t, db, wire.ID{Site: "a", Seq: 1}) {
		t.Fatal("deleted family's state mark survived")
	}
	for _, f := range []*famLog{primary, two} {
		f.check(t, db)
	}
	// The deleted family can start again from nothing in its space.
	if s, err := one.log.Write(bg, put("patients", "new", map[string]any{"n": 1})); err != nil || s.Seq != 1 {
		t.Fatalf("write in the emptied space: %v %v", s, err)
	}
}

// An entry key of a family space is the space, then the primary family's key.
func TestSpaceKeysParse(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	sp, err := store.FamilySpace(hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []keys{newKeys(nil), newKeys(sp)} {
		h := wire.Hash{9}
		key := k.hash(kindQuarantine, "site-7", 42, h)
		want := append(append([]byte(nil), sp[:len(k.space)]...), 't', 'q', 6)
		want = append(want, "site-7"...)
		want = binary.BigEndian.AppendUint64(want, 42)
		want = append(want, h[:]...)
		if !bytes.Equal(key, want) {
			t.Fatalf("key %x, want %x", key, want)
		}
		site, seq, err := k.parseSeq(key)
		if err != nil || site != "site-7" || seq != 42 {
			t.Fatalf("parse %x: %q %d %v", key, site, seq, err)
		}
	}
	// A key of another space is refused, not misread.
	if _, _, err := newKeys(sp).parseSeq(newKeys(nil).seq(kindEntry, "a", 1)); err == nil {
		t.Fatal("a key outside the space parsed")
	}
}
