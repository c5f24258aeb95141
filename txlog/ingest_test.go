package txlog

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// withIngester gives the env's log an ingester on the env's file system.
func withIngester(e *env) func(*Config) {
	return func(c *Config) {
		in, err := store.NewIngester(c.DB, "ingest", store.Options{FS: e.fs})
		if err != nil {
			e.t.Fatal(err)
		}
		c.Ingest = in
	}
}

// ingested returns how many ingestions the database took (one table each
// here), placed in a level or, over a memtable they overlap, queued to be
// flushed.
func ingested(db *pebble.DB) uint64 { return db.Metrics().Ingest.Count }

// storedEntries returns site's stored envelopes, seq 1 up to its head.
func storedEntries(t *testing.T, l *Log, site string) [][]byte {
	t.Helper()
	var out [][]byte
	if err := l.RawRange(site, 1, 0, func(seq uint64, env []byte) (bool, error) {
		if seq != uint64(len(out))+1 {
			return true, fmt.Errorf("seq %d after %d", seq, len(out))
		}
		out = append(out, bytes.Clone(env))
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// Long runs of a peer's entries (catch-up batches) are stored as tables, a
// short one and a large own group (an import) through the batch; the log
// holds, serves, applies and verifies them exactly as a log that stores
// everything through its batches.
func TestLongRunsAreIngested(t *testing.T) {
	const long = 2*ingestMin + 3
	var run []*wire.Signed
	fill := func(e *env) {
		for _, r := range [][]*wire.Signed{run[:ingestMin], run[ingestMin : ingestMin+3], run[ingestMin+3:]} {
			if _, err := e.log.AppendRun(bg, r); err != nil {
				t.Fatal(err)
			}
		}
		txs := make([][]wire.Op, ingestMin)
		for i := range txs {
			txs[i] = put("t", fmt.Sprint(i), map[string]any{"i": int64(i)})
		}
		if _, err := e.log.WriteMany(bg, txs); err != nil {
			t.Fatal(err)
		}
		if _, err := e.log.Write(bg, put("t", "last", nil)); err != nil {
			t.Fatal(err)
		}
	}
	plain := newEnv(t, "a", nil)
	run = chain(t, "b", 1, plain.keys.add(t, "b", 1), 0, wire.Hash{}, long, "x")
	fill(plain)
	e := newEnv(t, "a", nil)
	e.keys = plain.keys
	e.self = plain.self
	e.reopen(withIngester(e))
	fill(e)
	last := run[len(run)-1]
	if got := ingested(e.db); got != 2 {
		t.Errorf("%d ingestions, want 2 (the two long parts of b's run; a's own import group goes through the batch)", got)
	}
	if got := ingested(plain.db); got != 0 {
		t.Errorf("the log without an ingester ingested %d times", got)
	}
	if h := e.log.Head("b"); h.Seq != long || h.Hash != last.Hash {
		t.Errorf("b's head %+v, want seq %d", h, long)
	}
	if h := e.log.Head("a"); h.Seq != ingestMin+1 {
		t.Errorf("a's head %d, want %d", h.Seq, ingestMin+1)
	}
	if got, want := storedEntries(t, e.log, "b"), storedEntries(t, plain.log, "b"); len(got) != long || !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("b's stored entries differ from the plain log's (%d, %d)", len(got), len(want))
	}
	if got := e.marks.count(); got != plain.marks.count() {
		t.Errorf("%d apply calls, the plain log %d", got, plain.marks.count())
	}
	for _, id := range []wire.ID{{Site: "b", Seq: 1}, {Site: "b", Seq: long}, {Site: "a", Seq: 1}, {Site: "a", Seq: ingestMin + 1}} {
		if !e.applied(id) {
			t.Errorf("%s not applied", id)
		}
	}
	e.reopen(withIngester(e))
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) > 0 || rep.Entries != long+ingestMin+1 {
		t.Errorf("verify after reopen: %d entries, %v, %v", rep.Entries, rep.Damage, err)
	}
	// An overlap with what is held is settled through the ingested table.
	res, err := e.log.AppendRun(bg, run[long-5:])
	if err != nil || res.Duplicates != 5 || res.Appended != 0 {
		t.Errorf("a repeated tail: %+v, %v", res, err)
	}
}

// Entries stored as a table whose group's batch never became durable (the
// node stopped between the two) are above the site's head: the log neither
// serves nor counts them, drops them when it opens, and stores what arrives
// for those seqs next, even another branch, as if they had never been.
func TestEntriesAboveTheHeadAfterACrashAreDropped(t *testing.T) {
	e := newEnv(t, "a", nil)
	e.reopen(withIngester(e))
	bKey := e.keys.add(t, "b", 1)
	first := chain(t, "b", 1, bKey, 0, wire.Hash{}, 10, "")
	if _, err := e.log.AppendRun(bg, first); err != nil {
		t.Fatal(err)
	}
	// What storeEntries ingests before a crash lost the batch: b#11.. of one
	// branch, and entries of a site that has no head here at all.
	lost := chain(t, "b", 1, bKey, 10, first[9].Hash, ingestMin, "lost")
	cKey := e.keys.add(t, "c", 1)
	orphan := chain(t, "c", 1, cKey, 0, wire.Hash{}, 3, "")
	var tables [][]store.KV
	for _, run := range [][]*wire.Signed{lost, orphan} {
		var tb []store.KV
		for _, s := range run {
			tb = append(tb, store.KV{Key: e.log.keys.entry(s.Site, s.Seq), Value: s.Marshal()})
		}
		tables = append(tables, tb)
	}
	if err := e.log.cfg.Ingest.Ingest(bg, tables); err != nil {
		t.Fatal(err)
	}
	if got := len(storedEntries(t, e.log, "b")); got != 10 {
		t.Errorf("%d of b's entries served, want its 10 up to the head", got)
	}

	e.reopen(withIngester(e))
	rep, err := e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) > 0 || rep.Entries != 10 {
		t.Fatalf("verify after reopen: %d entries, %v, %v", rep.Entries, rep.Damage, err)
	}
	// Another branch for the same seqs, long enough to be ingested itself
	// over the dropped range.
	before := ingested(e.db)
	other := chain(t, "b", 1, bKey, 10, first[9].Hash, ingestMin+5, "other branch")
	res, err := e.log.AppendRun(bg, other)
	if err != nil || res.Appended != ingestMin+5 {
		t.Fatalf("b#11.. of another branch: %+v, %v", res, err)
	}
	if ingested(e.db) == before {
		t.Error("the other branch's run was not ingested")
	}
	if f := e.log.Forks(); len(f) != 0 {
		t.Errorf("forks: %v", f)
	}
	got := storedEntries(t, e.log, "b")
	if len(got) != 10+ingestMin+5 {
		t.Fatalf("b holds %d entries", len(got))
	}
	for i, s := range other {
		if !bytes.Equal(got[10+i], s.Marshal()) {
			t.Fatalf("b#%d is not the new branch's", s.Seq)
		}
	}
	if _, err := e.log.AppendRun(bg, chain(t, "c", 1, cKey, 0, wire.Hash{}, 2, "new")); err != nil {
		t.Fatal(err)
	}
	e.reopen(withIngester(e))
	rep, err = e.log.Verify(bg, nil)
	if err != nil || len(rep.Damage) > 0 || rep.Entries != 10+ingestMin+5+2 {
		t.Errorf("verify: %d entries, %v, %v", rep.Entries, rep.Damage, err)
	}
}
