//go:build linux

package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/internal/wire"
)

var _ db.Connector = (*Conn)(nil)

// node stands for the ppsync node in the tests: the merged rows in memory,
// keyed (table, key), a feed of the keys that changed (the cursor is an
// index into it), and the captured batches with their positions.
type node struct {
	mu      sync.Mutex
	pos     uint64
	batches []db.Batch
	merged  map[string]db.Row
	feed    []string
	history []db.Row // each feed position's row as it was then
	// snapshots makes Changed return each position's row as it was then,
	// as a reader of the real feed sees a row that changed again between
	// two of its pages: the same key twice, the older version first.
	snapshots bool
	events    []string
	// onCaptured, when set, runs in Captured before the batches are taken.
	onCaptured func([]db.Batch)
}

func newNode() *node { return &node{merged: map[string]db.Row{}} }

func rowKey(table, key string) string { return table + "\x00" + key }

func (n *node) CapturePos() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pos
}

func (n *node) Captured(_ context.Context, bs []db.Batch) error {
	if n.onCaptured != nil {
		n.onCaptured(bs)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, "captured")
	for _, b := range bs {
		if len(b.Ops) == 0 {
			continue
		}
		if b.Pos <= n.pos {
			return fmt.Errorf("batch position %d is not after %d", b.Pos, n.pos)
		}
		n.batches = append(n.batches, b)
		n.pos = b.Pos
		for _, op := range b.Ops {
			if op.Kind == wire.OpDelete {
				n.mergeLocked(op.Table, op.Key, nil)
			} else {
				n.mergeLocked(op.Table, op.Key, op.Fields)
			}
		}
	}
	return nil
}

func (n *node) mergeLocked(table, key string, fields map[string]any) {
	k := rowKey(table, key)
	if fields == nil {
		n.merged[k] = db.Row{Table: table, Key: key}
	} else {
		r := n.merged[k]
		f := map[string]any{}
		for name, v := range r.Fields {
			f[name] = v
		}
		for name, v := range fields {
			f[name] = v
		}
		n.merged[k] = db.Row{Table: table, Key: key, Fields: f}
	}
	n.feed = append(n.feed, k)
	n.history = append(n.history, n.merged[k])
}

// remote merges a change of another site (nil fields: a delete).
func (n *node) remote(table, key string, fields map[string]any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mergeLocked(table, key, fields)
}

func (n *node) Changed(after uint64, limit int) ([]db.Row, uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, "changed")
	var rows []db.Row
	i := int(after)
	for ; i < len(n.feed) && len(rows) < limit; i++ {
		if n.snapshots {
			rows = append(rows, n.history[i])
			continue
		}
		rows = append(rows, n.merged[n.feed[i]])
	}
	return rows, uint64(i), nil
}

func (n *node) Merged(table, key string) (db.Row, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, ok := n.merged[rowKey(table, key)]
	if !ok {
		return db.Row{Table: table, Key: key}, nil
	}
	return r, nil
}

func (n *node) ops() []wire.Op {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []wire.Op
	for _, b := range n.batches {
		out = append(out, b.Ops...)
	}
	return out
}

// capture runs the node's capture loop once: capture, commit, ack.
func (n *node) capture(t testing.TB, c *Conn) []db.Batch {
	t.Helper()
	ctx := context.Background()
	var all []db.Batch
	for {
		bs, err := c.Capture(ctx, n.CapturePos(), 2000)
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) == 0 {
			return all
		}
		if err := n.Captured(ctx, bs); err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(ctx, bs[len(bs)-1].Pos); err != nil {
			t.Fatal(err)
		}
		all = append(all, bs...)
	}
}

// open opens the connector on url, reads the schema and installs the
// triggers, as node does at start.
func open(t testing.TB, url string) *Conn {
	t.Helper()
	ctx := context.Background()
	c, err := Open(ctx, url, Options{PollInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := c.Schema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(ctx, s); err != nil {
		t.Fatal(err)
	}
	c.SetSchema(s)
	return c
}

func apply(t testing.TB, c *Conn, n *node) db.ApplyResult {
	t.Helper()
	res, err := c.Apply(context.Background(), n, 5000)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func put(table, key string, fields map[string]any) wire.Op {
	return wire.Op{Kind: wire.OpPut, Table: table, Key: key, Fields: fields}
}

func del(table, key string) wire.Op { return wire.Op{Kind: wire.OpDelete, Table: table, Key: key} }

func sameOps(t testing.TB, got, want []wire.Op) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ops:\n got %s\nwant %s", fmtOps(got), fmtOps(want))
	}
}

func fmtOps(ops []wire.Op) string {
	var b strings.Builder
	for _, op := range ops {
		fmt.Fprintf(&b, "\n  %s %s/%s %#v", op.Kind, op.Table, op.Key, op.Fields)
	}
	return b.String()
}

func tableRows(t testing.TB, c *Conn, table string) map[string]map[string]any {
	t.Helper()
	s := c.currentSchema()
	tab, ok := s.Table(table)
	if !ok {
		t.Fatalf("no table %s", table)
	}
	out := map[string]map[string]any{}
	if err := c.Rows(context.Background(), tab, func(r db.Row) error {
		out[r.Key] = r.Fields
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t testing.TB, p *pgxpool.Pool, q string, args ...any) int {
	t.Helper()
	var n int
	if err := p.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func TestCaptureInsertUpdateDeleteKeyChange(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE patient (id int PRIMARY KEY, name text, born date, note text)`)
	c := open(t, url)
	n := newNode()
	mustExec(t, p, `INSERT INTO patient VALUES (1, 'Ann', '1980-01-02', NULL)`)
	mustExec(t, p, `UPDATE patient SET name = 'Anna' WHERE id = 1`)
	mustExec(t, p, `UPDATE patient SET note = note WHERE id = 1`) // changes nothing
	mustExec(t, p, `UPDATE patient SET id = 2 WHERE id = 1`)
	mustExec(t, p, `DELETE FROM patient WHERE id = 2`)
	bs := n.capture(t, c)
	if len(bs) != 4 {
		t.Fatalf("%d batches, want 4 (one per transaction that changed something): %+v", len(bs), bs)
	}
	for i := 1; i < len(bs); i++ {
		if bs[i].Pos <= bs[i-1].Pos {
			t.Fatalf("positions do not grow: %d then %d", bs[i-1].Pos, bs[i].Pos)
		}
	}
	sameOps(t, n.ops(), []wire.Op{
		put("patient", "1", map[string]any{"id": int64(1), "name": "Ann", "born": "1980-01-02", "note": nil}),
		put("patient", "1", map[string]any{"name": "Anna"}),
		del("patient", "1"),
		put("patient", "2", map[string]any{"id": int64(2), "name": "Anna", "born": "1980-01-02", "note": nil}),
		del("patient", "2"),
	})
	if st := c.Stats(); st.PendingCapture != 0 || st.Captured != 5 {
		t.Fatalf("stats %+v", st)
	}
}

func TestOneTransactionOneBatch(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id text PRIMARY KEY, v int)`)
	c := open(t, url)
	n := newNode()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, p, func(tx pgx.Tx) error {
		mustExec(t, tx, `INSERT INTO a VALUES (1, 'x')`)
		mustExec(t, tx, `INSERT INTO b VALUES ('k', 7)`)
		mustExec(t, tx, `UPDATE a SET v = 'y' WHERE id = 1`)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, p, `INSERT INTO a VALUES (2, 'z')`)
	bs := n.capture(t, c)
	if len(bs) != 2 || len(bs[0].Ops) != 3 || len(bs[1].Ops) != 1 {
		t.Fatalf("batches %+v, want one of 3 ops then one of 1", bs)
	}
	sameOps(t, bs[0].Ops, []wire.Op{
		put("a", "1", map[string]any{"id": int64(1), "v": "x"}),
		put("b", "k", map[string]any{"id": "k", "v": int64(7)}),
		put("a", "1", map[string]any{"v": "y"}),
	})

	// A transaction larger than maxOps is cut into consecutive batches.
	mustExec(t, p, `INSERT INTO a SELECT g, 'r' FROM generate_series(10, 14) g`)
	bs, err = c.Capture(ctx, n.CapturePos(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 3 || len(bs[0].Ops) != 2 || len(bs[1].Ops) != 2 || len(bs[2].Ops) != 1 || bs[1].Pos != bs[0].Pos+1 || bs[2].Pos != bs[1].Pos+1 {
		t.Fatalf("a 5-row transaction with maxOps 2: %+v", bs)
	}
}

// TestConcurrentCommitOutOfIDOrder is the classic gap: T1 takes the lower
// change id, T2 the higher one and commits first.
func TestConcurrentCommitOutOfIDOrder(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text)`)
	c := open(t, url)
	n := newNode()
	ctx := context.Background()
	t1, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Rollback(ctx)
	mustExec(t, t1, `INSERT INTO a VALUES (1, 't1')`)
	mustExec(t, p, `INSERT INTO a VALUES (2, 't2')`) // T2, committed
	bs := n.capture(t, c)
	if len(bs) != 1 || bs[0].Ops[0].Key != "2" {
		t.Fatalf("first capture %+v, want only T2", bs)
	}
	first := bs[0].Pos
	mustExec(t, t1, `INSERT INTO a VALUES (3, 't1')`)
	if err := t1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	bs = n.capture(t, c)
	if len(bs) != 1 || bs[0].Pos <= first {
		t.Fatalf("second capture %+v, want T1 after position %d", bs, first)
	}
	sameOps(t, n.ops(), []wire.Op{
		put("a", "2", map[string]any{"id": int64(2), "v": "t2"}),
		put("a", "1", map[string]any{"id": int64(1), "v": "t1"}),
		put("a", "3", map[string]any{"id": int64(3), "v": "t1"}),
	})
	if bs := n.capture(t, c); len(bs) != 0 {
		t.Fatalf("captured again: %+v", bs)
	}
}

// TestCaptureOrderFollowsConflicts: an older transaction (lower xid) that
// writes a row after a younger one committed its write of the same row comes
// after it, as in the database.
func TestCaptureOrderFollowsConflicts(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE r (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY); INSERT INTO r VALUES (1, 'start')`)
	c := open(t, url)
	n := newNode()
	ctx := context.Background()
	old, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Rollback(ctx)
	mustExec(t, old, `INSERT INTO other VALUES (1)`) // takes the lower xid and change id
	mustExec(t, p, `UPDATE r SET v = 'young' WHERE id = 1`)
	mustExec(t, old, `UPDATE r SET v = 'old' WHERE id = 1`)
	if err := old.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	n.capture(t, c)
	if got := n.merged[rowKey("r", "1")].Fields["v"]; got != "old" {
		t.Fatalf("replaying the batches gives v = %v, the database has 'old': %s", got, fmtOps(n.ops()))
	}
}

// TestConcurrentWritersExactlyOnce: many writers and a capture loop at once;
// every row inserted is captured exactly once and the positions grow.
func TestConcurrentWritersExactlyOnce(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, w int)`)
	c := open(t, url)
	n := newNode()
	ctx := context.Background()
	const writers, perWriter = 6, 60
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w)))
			for i := 0; i < perWriter; i++ {
				tx, err := p.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := tx.Exec(ctx, `INSERT INTO a VALUES ($1, $2)`, w*1000+i, w); err != nil {
					t.Error(err)
				}
				if r.Intn(3) == 0 {
					time.Sleep(time.Duration(r.Intn(3)) * time.Millisecond)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	go func() { wg.Wait(); close(done) }()
	for loop := true; loop; {
		select {
		case <-done:
			loop = false
		default:
		}
		n.capture(t, c)
	}
	n.capture(t, c)
	seen := map[string]int{}
	for _, op := range n.ops() {
		seen[op.Key]++
	}
	if len(seen) != writers*perWriter {
		t.Fatalf("%d rows captured, want %d", len(seen), writers*perWriter)
	}
	for k, m := range seen {
		if m != 1 {
			t.Fatalf("row %s captured %d times", k, m)
		}
	}
}

// TestCrashBetweenCapturedAndAck: a batch stored by the node but not
// acknowledged is not handed out again; one not stored is handed out again
// with the same position and ops.
func TestCrashBetweenCapturedAndAck(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text)`)
	ctx := context.Background()
	n := newNode()

	c1 := open(t, url)
	mustExec(t, p, `INSERT INTO a VALUES (1, 'one')`)
	bs, err := c1.Capture(ctx, n.CapturePos(), 100)
	if err != nil || len(bs) != 1 {
		t.Fatalf("capture: %v %+v", err, bs)
	}
	if err := n.Captured(ctx, bs); err != nil { // stored with its position, then a crash: no Ack
		t.Fatal(err)
	}
	c1.Close()

	c2 := open(t, url)
	if bs, err := c2.Capture(ctx, n.CapturePos(), 100); err != nil || len(bs) != 0 {
		t.Fatalf("after the restart: %v %+v, want nothing", err, bs)
	}
	// Now a crash before the node stored the batch.
	mustExec(t, p, `INSERT INTO a VALUES (2, 'two')`)
	lost, err := c2.Capture(ctx, n.CapturePos(), 100)
	if err != nil || len(lost) != 1 {
		t.Fatalf("capture: %v %+v", err, lost)
	}
	c2.Close()
	mustExec(t, p, `INSERT INTO a VALUES (3, 'three')`)

	c3 := open(t, url)
	again, err := c3.Capture(ctx, n.CapturePos(), 100)
	if err != nil || len(again) != 2 {
		t.Fatalf("after the second restart: %v %+v", err, again)
	}
	if !reflect.DeepEqual(again[0], lost[0]) {
		t.Fatalf("handed out again as %+v, first as %+v", again[0], lost[0])
	}
	if err := n.Captured(ctx, again); err != nil {
		t.Fatal(err)
	}
	if err := c3.Ack(ctx, n.CapturePos()); err != nil {
		t.Fatal(err)
	}
	sameOps(t, n.ops(), []wire.Op{
		put("a", "1", map[string]any{"id": int64(1), "v": "one"}),
		put("a", "2", map[string]any{"id": int64(2), "v": "two"}),
		put("a", "3", map[string]any{"id": int64(3), "v": "three"}),
	})
	if got := count(t, p, `SELECT count(*) FROM ppsync.changes`); got != 0 {
		t.Fatalf("%d change rows left", got)
	}
	// A node ahead of the database: restored from an older backup.
	if _, err := c3.Capture(ctx, n.CapturePos()+5, 100); !errors.Is(err, db.ErrRestored) {
		t.Fatalf("capture after a position the database never handed out: %v, want ErrRestored", err)
	}
}

func TestEchoSuppression(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text, w int)`)
	c := open(t, url)
	n := newNode()
	n.remote("a", "1", map[string]any{"id": int64(1), "v": "remote", "w": int64(5)})
	n.remote("a", "2", map[string]any{"id": int64(2), "v": "remote", "w": nil})
	res := apply(t, c, n)
	if res.Rows != 2 || res.Captured != 0 || len(res.Conflicts) != 0 || res.Cursor != 2 {
		t.Fatalf("apply %+v", res)
	}
	n.remote("a", "1", map[string]any{"v": "changed"}) // only some columns
	n.remote("a", "2", nil)
	res = apply(t, c, n)
	if res.Rows != 2 || res.Cursor != 4 {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT count(*) FROM ppsync.changes`); got != 0 {
		t.Fatalf("the apply's writes were captured: %d change rows", got)
	}
	if bs := n.capture(t, c); len(bs) != 0 {
		t.Fatalf("captured %+v", bs)
	}
	rows := tableRows(t, c, "a")
	if !reflect.DeepEqual(rows, map[string]map[string]any{"1": {"id": int64(1), "v": "changed", "w": int64(5)}}) {
		t.Fatalf("rows %v", rows)
	}
	if cur, err := c.ApplyCursor(context.Background()); err != nil || cur != 4 {
		t.Fatalf("cursor %d %v", cur, err)
	}
	// The practice software's own writes are still captured.
	mustExec(t, p, `UPDATE a SET w = 6 WHERE id = 1`)
	sameOps(t, opsOf(n.capture(t, c)), []wire.Op{put("a", "1", map[string]any{"w": int64(6)})})
}

func opsOf(bs []db.Batch) []wire.Op {
	var out []wire.Op
	for _, b := range bs {
		out = append(out, b.Ops...)
	}
	return out
}

// TestApplyDrainsLocalChangeFirst: a local change not captured yet reaches
// Syncer.Captured before the merged rows are written, so it takes part in
// the merge instead of being overwritten.
func TestApplyDrainsLocalChangeFirst(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, x text, y text); INSERT INTO a VALUES (1, 'x0', 'y0')`)
	c := open(t, url)
	n := newNode()
	n.remote("a", "1", map[string]any{"id": int64(1), "x": "x0", "y": "y0"})
	n.feed = nil // already in the database
	mustExec(t, p, `UPDATE a SET x = 'local' WHERE id = 1`)
	n.remote("a", "1", map[string]any{"y": "remote"})
	var written []int
	n.onCaptured = func([]db.Batch) {
		// The apply has not written its rows yet: y is still the old value
		// even inside the database (no uncommitted write waits on the row).
		written = append(written, count(t, p, `SELECT count(*) FROM a WHERE y = 'remote'`))
	}
	res := apply(t, c, n)
	if res.Captured != 1 || len(n.events) == 0 || n.events[0] != "captured" {
		t.Fatalf("apply %+v, events %v: the local change was not captured first", res, n.events)
	}
	if len(written) == 0 || written[0] != 0 {
		t.Fatalf("rows were written before the local change was captured: %v", written)
	}
	rows := tableRows(t, c, "a")
	if want := (map[string]any{"id": int64(1), "x": "local", "y": "remote"}); !reflect.DeepEqual(rows["1"], want) {
		t.Fatalf("row %v, want %v", rows["1"], want)
	}
	if got := count(t, p, `SELECT count(*) FROM ppsync.changes`); got != 0 {
		t.Fatalf("%d change rows left after the apply", got)
	}
	sameOps(t, n.ops(), []wire.Op{put("a", "1", map[string]any{"x": "local"})})
}

func TestForeignKeys(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE parent (id int PRIMARY KEY, name text);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id), name text);
		CREATE TABLE person (id int PRIMARY KEY, email text UNIQUE)`)
	c := open(t, url)
	n := newNode()
	// The child comes first in the batch.
	n.remote("child", "1", map[string]any{"id": int64(1), "parent_id": int64(1), "name": "c1"})
	n.remote("parent", "1", map[string]any{"id": int64(1), "name": "p1"})
	n.remote("person", "1", map[string]any{"id": int64(1), "email": "a@example.org"})
	res := apply(t, c, n)
	if res.Rows != 3 || len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	// A parent still referenced cannot go, a duplicate e-mail cannot come:
	// both are conflicts, the rest applies.
	n.remote("parent", "1", nil)
	n.remote("parent", "2", map[string]any{"id": int64(2), "name": "p2"})
	n.remote("child", "2", map[string]any{"id": int64(2), "parent_id": int64(2), "name": "c2"})
	n.remote("person", "2", map[string]any{"id": int64(2), "email": "a@example.org"})
	n.remote("person", "3", map[string]any{"id": int64(3), "email": "b@example.org"})
	res = apply(t, c, n)
	if res.Rows != 3 || len(res.Conflicts) != 2 {
		t.Fatalf("apply %+v", res)
	}
	sort.Slice(res.Conflicts, func(i, j int) bool { return res.Conflicts[i].Table < res.Conflicts[j].Table })
	if k := res.Conflicts[0]; k.Table != "parent" || k.Key != "1" || !strings.Contains(k.Reason, "foreign key") || k.Fields != nil {
		t.Fatalf("conflict %+v", k)
	}
	if k := res.Conflicts[1]; k.Table != "person" || k.Key != "2" || !strings.Contains(k.Reason, "unique") || k.Fields["email"] != "a@example.org" {
		t.Fatalf("conflict %+v", k)
	}
	if got := count(t, p, `SELECT count(*) FROM parent`); got != 2 {
		t.Fatalf("%d parents, want 2 (the referenced one kept)", got)
	}
	if got := count(t, p, `SELECT count(*) FROM child WHERE id = 2`); got != 1 {
		t.Fatal("child 2 was not written")
	}
	if res.Cursor != 8 {
		t.Fatalf("cursor %d", res.Cursor)
	}
	// Deletes go children first; the refused delete of parent 1 is written
	// now, the refused person 2 is tried again and still refused (kept in
	// ppsync.refused with the apply position).
	n.remote("parent", "1", nil)
	n.remote("child", "1", nil)
	if res := apply(t, c, n); res.Rows != 2 || res.Resolved != 1 || len(res.Conflicts) != 1 || res.Conflicts[0].Key != "2" {
		t.Fatalf("apply %+v", res)
	}
	if got, err := c.Refused(context.Background()); err != nil || len(got) != 1 || got[0].Table != "person" || got[0].Key != "2" {
		t.Fatalf("Refused = %+v, %v", got, err)
	}
	if row, ok, err := c.Row(context.Background(), mustTable(t, c, "person"), "1"); err != nil || !ok || row.Fields["email"] != "a@example.org" {
		t.Fatalf("Row(person, 1) = %+v, %v, %v", row, ok, err)
	}
	if _, ok, err := c.Row(context.Background(), mustTable(t, c, "person"), "2"); err != nil || ok {
		t.Fatalf("Row(person, 2) = %v, %v: want none", ok, err)
	}
	// Once person 1 gives up the e-mail, person 2 is written by the next
	// apply.
	n.remote("person", "1", map[string]any{"id": int64(1), "email": "a1@example.org"})
	if res := apply(t, c, n); res.Resolved != 1 || len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	if got, err := c.Refused(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("Refused = %+v, %v", got, err)
	}

	// A tree in one table (children before their parents) and a deferrable
	// key: the rows that can be written are, a dangling one is a conflict.
	mustExec(t, p, `CREATE TABLE node (id int PRIMARY KEY, up int REFERENCES node (id));
		CREATE TABLE note (id int PRIMARY KEY, person int REFERENCES person (id) DEFERRABLE INITIALLY DEFERRED)`)
	s, err := c.Schema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	c.SetSchema(s)
	n.remote("node", "3", map[string]any{"id": int64(3), "up": int64(2)})
	n.remote("node", "2", map[string]any{"id": int64(2), "up": int64(1)})
	n.remote("node", "1", map[string]any{"id": int64(1), "up": nil})
	n.remote("note", "1", map[string]any{"id": int64(1), "person": int64(99)}) // no such person
	n.remote("note", "2", map[string]any{"id": int64(2), "person": int64(1)})
	res = apply(t, c, n)
	if res.Rows != 4 || len(res.Conflicts) != 1 || res.Conflicts[0].Table != "note" || res.Conflicts[0].Key != "1" {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT count(*) FROM node`) + count(t, p, `SELECT count(*) FROM note`); got != 4 {
		t.Fatalf("%d rows", got)
	}
	// A small maxRows: the cursor moves as far as the rows written.
	n.remote("person", "4", map[string]any{"id": int64(4), "email": "d@example.org"})
	n.remote("person", "5", map[string]any{"id": int64(5), "email": "e@example.org"})
	before := res.Cursor
	res, err = c.Apply(context.Background(), n, 1)
	if err != nil || res.Rows != 1 || res.Cursor != before+1 {
		t.Fatalf("apply of 1 row: %+v %v", res, err)
	}
	if res = apply(t, c, n); res.Rows != 1 || res.Cursor != before+2 {
		t.Fatalf("apply of the rest: %+v", res)
	}
	if res = apply(t, c, n); res.Rows != 0 || res.Cursor != before+2 {
		t.Fatalf("idle apply: %+v", res)
	}
}

const typedTable = `CREATE TABLE typed (
	id bigint PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
	n numeric, n2 numeric(12,4), t text, vc varchar(20), ch char(4), b boolean, by bytea,
	tz timestamptz, ts timestamp, ts0 timestamp(0), d date, u uuid, j jsonb, js json, arr int[], iv interval);
	CREATE TABLE keys (k1 text, k2 int, k3 bytea, v text, PRIMARY KEY (k1, k2, k3));
	CREATE TABLE ukey (id uuid PRIMARY KEY, v text)`

const typedRows = `SET TIME ZONE 'America/New_York';
	INSERT INTO typed VALUES
	(1, 32767, -2147483648, 9223372036854775807, 0.1, 0.1, 12345678901234567890.123456789012, 1.5000,
	 E'Grüße 😀 \\ " ''', 'varchar', 'ab', true, '\x00ff10', '2024-03-10 01:59:59.999999-05', '2024-01-01 00:00:00',
	 '2024-01-01 12:00:01', '0099-12-31', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2.50], "a": {"$blob": "x"}}',
	 '{"z":1,  "a":2}', '{1,NULL,3}', '1 year 2 mons 3 days 04:05:06.7'),
	(2, -32768, 0, -9223372036854775808, 3.4028235e38, 1e308, 'NaN', -0.0001, '', '', '', false, '',
	 'infinity', '-infinity', '2024-01-01', '2024-02-29', '00000000-0000-0000-0000-000000000000', '"just a string"',
	 'null', '{}', '-1 days'),
	(3, NULL, NULL, NULL, 'NaN', '-Infinity', 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
	(4, 1, 1, 1, -0, 5e-324, 1e-20, 99999999.9999, 'x', 'x', 'x', true, '\xdeadbeef', '1970-01-01 00:00:00+00', '1999-12-31 23:59:59.000001',
	 '1999-12-31 23:59:59', '1970-01-01', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '[1, "two", null, true, 1e400]', '[1 , 2]', '{{1,2},{3,4}}', '00:00:00.000001');
	INSERT INTO keys VALUES ('a', 1, '\x00', 'one'), ('[not json', 2, '\xff', 'two'), ('', -3, '', 'three');
	INSERT INTO ukey VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'u')`

// TestTypesRoundTrip: every type is captured from one database and applied
// into another, and both read back identical, by the connector and by
// PostgreSQL's own text of the rows.
func TestTypesRoundTrip(t *testing.T) {
	url1, url2 := newDB(t), newDB(t)
	p1, p2 := sqlConn(t, url1), sqlConn(t, url2)
	mustExec(t, p1, typedTable)
	mustExec(t, p2, typedTable)
	c1, c2 := open(t, url1), open(t, url2)
	mustExec(t, p1, typedRows)
	n := newNode()
	n.capture(t, c1)

	rows1 := tableRows(t, c1, "typed")
	r1 := rows1["1"]
	want := map[string]any{
		"id": int64(1), "i2": int64(32767), "i4": int64(-2147483648), "i8": int64(9223372036854775807),
		"f4": 0.1, "f8": 0.1, "n": "12345678901234567890.123456789012", "n2": "1.5000",
		"t": "Grüße 😀 \\ \" '", "vc": "varchar", "ch": "ab  ", "b": true, "by": db.Blob([]byte{0, 0xff, 0x10}),
		"tz": "2024-03-10T06:59:59.999999Z", "ts": "2024-01-01T00:00:00.000000", "ts0": "2024-01-01T12:00:01.000000",
		"d": "0099-12-31", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": `{"a": {"$blob": "x"}, "b": [1, 2.50]}`,
		"js": `{"z":1,  "a":2}`, "arr": "[1,null,3]", "iv": "1 year 2 mons 3 days 04:05:06.7",
	}
	if !reflect.DeepEqual(r1, want) {
		for k := range want {
			if !reflect.DeepEqual(r1[k], want[k]) {
				t.Errorf("%s: got %#v, want %#v", k, r1[k], want[k])
			}
		}
		t.FailNow()
	}
	// A json value that is the JSON literal null reads as NULL: row_to_json
	// cannot tell them apart.
	if v := rows1["2"]; v["f8"] != 1e308 || v["n"] != "NaN" || v["tz"] != "infinity" || v["ts"] != "-infinity" || v["j"] != `"just a string"` || v["js"] != nil {
		t.Fatalf("row 2: %#v", v)
	}
	if v := rows1["3"]; v["f4"] != "NaN" || v["f8"] != "-Infinity" || v["t"] != nil {
		t.Fatalf("row 3: %#v", v)
	}

	// Capture reads values exactly as a table read does.
	captured := map[string]map[string]any{}
	for _, op := range n.ops() {
		if op.Table == "typed" {
			captured[op.Key] = op.Fields
		}
	}
	if !reflect.DeepEqual(captured, rows1) {
		t.Fatalf("captured %#v\nread %#v", captured, rows1)
	}

	// The second database's node receives the first one's changes.
	n2 := newNode()
	forward := func(ops []wire.Op) {
		for _, op := range ops {
			n2.remote(op.Table, op.Key, op.Fields)
		}
	}
	forward(n.ops())
	res := apply(t, c2, n2)
	if len(res.Conflicts) != 0 || res.Rows != 8 {
		t.Fatalf("apply %+v", res)
	}
	same := func() {
		t.Helper()
		for _, table := range []string{"typed", "keys", "ukey"} {
			a, b := tableRows(t, c1, table), tableRows(t, c2, table)
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("%s differs:\n%#v\n%#v", table, a, b)
			}
			q := `SELECT string_agg(row_to_json(x)::text, E'\n' ORDER BY row_to_json(x)::text) FROM ` + table + ` x`
			text := func(p *pgxpool.Pool) string {
				var s string
				err := pgx.BeginFunc(context.Background(), p, func(tx pgx.Tx) error {
					mustExec(t, tx, `SET LOCAL TIME ZONE 'UTC'`)
					return tx.QueryRow(context.Background(), q).Scan(&s)
				})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			s1, s2 := text(p1), text(p2)
			if s1 != s2 {
				t.Fatalf("%s differs in PostgreSQL's text:\n%s\n%s", table, s1, s2)
			}
		}
	}
	same()
	keys := tableRows(t, c2, "keys")
	if _, ok := keys[`["[not json",2,{"$blob":"/w=="}]`]; !ok || len(keys) != 3 {
		t.Fatalf("keys %v", keys)
	}

	// Changed columns only, then applied.
	mustExec(t, p1, `UPDATE typed SET n2 = 2.25, j = '{"x": 1}', by = NULL WHERE id = 1; UPDATE keys SET v = 'uno' WHERE k2 = 1; DELETE FROM keys WHERE k2 = -3`)
	bs := n.capture(t, c1)
	ops := opsOf(bs)
	sameOps(t, ops, []wire.Op{
		put("typed", "1", map[string]any{"n2": "2.2500", "j": `{"x": 1}`, "by": nil}),
		put("keys", `["a",1,{"$blob":"AA=="}]`, map[string]any{"v": "uno"}),
		del("keys", `["",-3,{"$blob":""}]`),
	})
	forward(ops)
	apply(t, c2, n2)
	same()
	if got := count(t, p2, `SELECT count(*) FROM ppsync.changes`); got != 0 {
		t.Fatalf("the apply was captured: %d change rows", got)
	}
}

// TestValueRefused: a value a column cannot hold is refused, naming table,
// key and column; in an apply it is a conflict and the other rows apply.
func TestValueRefused(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, typedTable)
	c := open(t, url)
	ctx := context.Background()
	cases := []struct {
		col string
		v   any
	}{
		{"i2", int64(70000)},
		{"i4", 1.5},
		{"n2", "1.23456"},
		{"n2", "123456789"},
		{"f4", 0.123456789},
		{"vc", strings.Repeat("x", 21)},
		{"ts0", "2024-01-01T00:00:00.5"},
		{"b", "maybe"},
		{"u", "not-a-uuid"},
		{"j", "{not json"},
		{"t", db.Blob([]byte{1})},
		{"d", "2024-02-30"},
	}
	for _, tc := range cases {
		err := c.Write(ctx, []db.Row{{Table: "typed", Key: "7", Fields: map[string]any{"id": int64(7), tc.col: tc.v}}})
		if err == nil {
			t.Errorf("%s = %#v was written", tc.col, tc.v)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "typed") || !strings.Contains(msg, "7") || (!strings.Contains(msg, "column "+tc.col) && tc.col != "d") {
			t.Errorf("%s = %#v: %v (does not name table, key and column)", tc.col, tc.v, err)
		}
	}
	if got := count(t, p, `SELECT count(*) FROM typed`); got != 0 {
		t.Fatalf("%d rows written", got)
	}
	n := newNode()
	n.remote("typed", "1", map[string]any{"id": int64(1), "i2": int64(70000)})
	n.remote("typed", "2", map[string]any{"id": int64(2), "vc": strings.Repeat("y", 30)})
	n.remote("typed", "3", map[string]any{"id": int64(3), "i2": int64(7)})
	res := apply(t, c, n)
	if res.Rows != 1 || len(res.Conflicts) != 2 {
		t.Fatalf("apply %+v", res)
	}
	for _, k := range res.Conflicts {
		if !strings.Contains(k.Reason, "column") || !errors.Is(db.ErrValue, db.ErrValue) {
			t.Fatalf("conflict %+v", k)
		}
	}
	if got := count(t, p, `SELECT count(*) FROM typed WHERE id = 3 AND i2 = 7`); got != 1 {
		t.Fatal("the good row was not written")
	}
}

// TestSnapshotConcurrentWrites: rows written while the snapshot reads are
// either in it or captured after it, never missed nor both.
func TestSnapshotConcurrentWrites(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v int); INSERT INTO a SELECT g, 0 FROM generate_series(1, 300) g`)
	ctx := context.Background()
	c, err := Open(ctx, url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Schema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(ctx, s); err != nil { // triggers first, as node does
		t.Fatal(err)
	}
	c.SetSchema(s)
	mustExec(t, p, `INSERT INTO a VALUES (1000, 1); UPDATE a SET v = 1 WHERE id = 1`) // before the snapshot, not captured yet

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w)))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := 2000 + w*10000 + i
				if _, err := p.Exec(ctx, `INSERT INTO a VALUES ($1, 0)`, id); err != nil {
					t.Error(err)
					return
				}
				if _, err := p.Exec(ctx, `UPDATE a SET v = v + 1 WHERE id = $1`, 1+r.Intn(300)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	time.Sleep(20 * time.Millisecond)
	state := map[string]map[string]any{}
	pos, err := c.Snapshot(ctx, s, 50, func(ops []wire.Op) error {
		for _, op := range ops {
			state[op.Key] = op.Fields
		}
		time.Sleep(2 * time.Millisecond) // let writers commit meanwhile
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	snap := map[string]bool{}
	for k := range state {
		snap[k] = true
	}
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()

	n := newNode()
	n.pos = pos
	n.capture(t, c)
	inserted := map[string]int{}
	for _, op := range n.ops() {
		if op.Kind != wire.OpPut {
			t.Fatalf("unexpected %v", op)
		}
		if _, whole := op.Fields["id"]; whole {
			inserted[op.Key]++
			if snap[op.Key] {
				t.Fatalf("row %s is in the snapshot and captured as inserted after it", op.Key)
			}
		}
		f := state[op.Key]
		if f == nil {
			f = map[string]any{}
			state[op.Key] = f
		}
		for k, v := range op.Fields {
			f[k] = v
		}
	}
	for k, m := range inserted {
		if m != 1 {
			t.Fatalf("row %s inserted %d times", k, m)
		}
	}
	final := tableRows(t, c, "a")
	if !reflect.DeepEqual(state, final) {
		t.Fatalf("snapshot + captured changes (%d rows) differ from the table (%d rows)", len(state), len(final))
	}
	if len(inserted) == 0 || len(snap) <= 301 {
		t.Logf("little overlap: %d captured inserts, %d rows in the snapshot", len(inserted), len(snap))
	}
}

func TestIdentitySchemaWake(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE with_serial (id serial PRIMARY KEY, v text);
		CREATE TABLE with_identity (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, g int GENERATED ALWAYS AS (length(v)) STORED);
		CREATE TABLE plain (id int PRIMARY KEY);
		CREATE TABLE nokey (v text);
		CREATE TABLE skipme (id int PRIMARY KEY);
		CREATE TABLE ver (n int); INSERT INTO ver VALUES (42)`)
	ctx := context.Background()
	c, err := Open(ctx, url, Options{Exclude: []string{"skipme", "ver"}, VersionQuery: `SELECT n FROM ver`})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id1, err := c.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sysid string
	if err := p.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sysid); err != nil {
		t.Fatal(err)
	}
	if len(id1.ID) != 32 || !strings.Contains(id1.Detail, sysid) || !strings.Contains(id1.Detail, `"`+strings.TrimPrefix(url[strings.LastIndex(url, "/"):strings.Index(url, "?")], "/")+`"`) {
		t.Fatalf("identity %+v", id1)
	}
	s, err := c.Schema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	auto := map[string]bool{}
	for _, tab := range s.Tables {
		names = append(names, tab.Name)
		auto[tab.Name] = tab.Autoincrement
	}
	if !reflect.DeepEqual(names, []string{"plain", "with_identity", "with_serial"}) || !auto["with_serial"] || !auto["with_identity"] || auto["plain"] {
		t.Fatalf("tables %v, autoincrement %v", names, auto)
	}
	if len(s.Skipped) != 1 || s.Skipped[0].Table != "nokey" || s.Version != 42 {
		t.Fatalf("skipped %+v, version %d", s.Skipped, s.Version)
	}
	wi, _ := s.Table("with_identity")
	if len(wi.Columns) != 2 || wi.Columns[0].PK != 1 || wi.Columns[0].Type != "bigint" {
		t.Fatalf("with_identity columns %+v (the generated column is not synced)", wi.Columns)
	}
	seqs, err := c.Sequences(ctx, s)
	if err != nil || len(seqs["with_serial"]) != 1 || len(seqs["with_identity"]) != 1 {
		t.Fatalf("sequences %v %v", seqs, err)
	}
	if err := c.Install(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := c.Install(ctx, s); err != nil { // idempotent
		t.Fatal(err)
	}
	c.SetSchema(s)
	if got := count(t, p, `SELECT count(*) FROM pg_trigger WHERE tgname = '_ppsync_capture'`); got != 3 {
		t.Fatalf("%d triggers", got)
	}

	// Wake: a commit by another program wakes capture.
	drainWake(c)
	mustExec(t, p, `INSERT INTO with_identity (v) VALUES ('hello')`)
	select {
	case <-c.Wake():
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up after a commit")
	}
	n := newNode()
	sameOps(t, opsOf(n.capture(t, c)), []wire.Op{put("with_identity", "1", map[string]any{"id": int64(1), "v": "hello"})})
	// An identity column GENERATED ALWAYS takes the merged key.
	n.remote("with_identity", "50", map[string]any{"id": int64(50), "v": "remote"})
	if res := apply(t, c, n); len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT g FROM with_identity WHERE id = 50`); got != 6 {
		t.Fatalf("generated column %d", got)
	}

	// A reopened connector names the same database.
	c.Close()
	c2, err := Open(ctx, url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	id2, err := c2.Identity(ctx)
	if err != nil || id2 != id1 {
		t.Fatalf("identity after reopening %+v %v, was %+v", id2, err, id1)
	}
	// Another database on the same server has another identity.
	c3, err := Open(ctx, newDB(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	id3, err := c3.Identity(ctx)
	if err != nil || id3.ID == id1.ID || id3.Detail == id1.Detail {
		t.Fatalf("another database: %+v", id3)
	}
}

func drainWake(c *Conn) {
	for {
		select {
		case <-c.Wake():
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

// TestSchemaChangesKeepWritesWorking: the practice software adds, drops and
// renames columns of a synced table; its writes never fail in the trigger,
// and capture follows the table.
func TestSchemaChangesKeepWritesWorking(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, old text, v text)`)
	c := open(t, url)
	n := newNode()
	mustExec(t, p, `ALTER TABLE a DROP COLUMN old; ALTER TABLE a ADD COLUMN extra numeric(5,1); ALTER TABLE a RENAME COLUMN v TO w`)
	mustExec(t, p, `INSERT INTO a VALUES (1, 'w', 2.5); UPDATE a SET extra = 3.5 WHERE id = 1`)
	sameOps(t, opsOf(n.capture(t, c)), []wire.Op{
		put("a", "1", map[string]any{"id": int64(1), "w": "w", "extra": "2.5"}),
		put("a", "1", map[string]any{"extra": "3.5"}),
	})
	// The key changes: the trigger is replaced.
	mustExec(t, p, `ALTER TABLE a DROP CONSTRAINT a_pkey; ALTER TABLE a ADD PRIMARY KEY (id, w)`)
	mustExec(t, p, `UPDATE a SET extra = 4 WHERE id = 1`) // still captured with the old key until Install
	s, err := c.Schema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	c.SetSchema(s)
	mustExec(t, p, `UPDATE a SET extra = 5 WHERE id = 1`)
	ops := opsOf(n.capture(t, c))
	if len(ops) == 0 || ops[len(ops)-1].Key != `[1,"w"]` {
		t.Fatalf("after the key change: %s", fmtOps(ops))
	}
}

func TestPassword(t *testing.T) {
	url := newDB(t)
	ctx := context.Background()
	mustExec(t, cluster.admin, `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pwuser') THEN
		CREATE ROLE pwuser LOGIN PASSWORD 'right-secret-1' SUPERUSER; END IF; END $$`)
	name := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	pwURL := dbURL("pwuser", name)
	withPW := strings.Replace(pwURL, "pwuser@", "pwuser:wrong-secret-9@", 1)
	_, err := Open(ctx, withPW, Options{})
	if err == nil || strings.Contains(err.Error(), "wrong-secret-9") {
		t.Fatalf("wrong password in the URL: %v", err)
	}
	if _, err := Open(ctx, pwURL, Options{Password: "wrong-secret-9"}); err == nil || strings.Contains(err.Error(), "wrong-secret-9") {
		t.Fatalf("wrong password option: %v", err)
	}
	c, err := Open(ctx, pwURL, Options{Password: "right-secret-1"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("right-secret-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, withPW, Options{PasswordFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id, err := c.Identity(ctx)
	if err != nil || strings.Contains(id.Detail, "secret") {
		t.Fatalf("identity %+v %v", id, err)
	}
	if _, err := Open(ctx, "postgres://pwuser:wrong-secret-9@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Options{}); err == nil || strings.Contains(err.Error(), "wrong-secret-9") {
		t.Fatalf("unreachable server: %v", err)
	}
}

// TestTruncateAndPartitions: a TRUNCATE is captured as a delete of every row
// it removed; a partitioned table is synced as one table under its own name.
func TestTruncateAndPartitions(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text);
		CREATE TABLE visit (site text, id int, v text, PRIMARY KEY (site, id)) PARTITION BY LIST (site);
		CREATE TABLE visit_a PARTITION OF visit FOR VALUES IN ('a');
		CREATE TABLE visit_b PARTITION OF visit FOR VALUES IN ('b')`)
	c := open(t, url)
	if s := c.currentSchema(); len(s.Tables) != 2 || s.Tables[1].Name != "visit" {
		t.Fatalf("tables %+v", s.Tables)
	}
	n := newNode()
	mustExec(t, p, `INSERT INTO a VALUES (1, 'x'), (2, 'y'); INSERT INTO visit VALUES ('a', 1, 'v'), ('b', 1, 'w')`)
	mustExec(t, p, `TRUNCATE a`)
	mustExec(t, p, `UPDATE visit SET site = 'b', id = 2 WHERE site = 'a'`) // moves to the other partition
	sameOps(t, opsOf(n.capture(t, c)), []wire.Op{
		put("a", "1", map[string]any{"id": int64(1), "v": "x"}),
		put("a", "2", map[string]any{"id": int64(2), "v": "y"}),
		put("visit", `["a",1]`, map[string]any{"site": "a", "id": int64(1), "v": "v"}),
		put("visit", `["b",1]`, map[string]any{"site": "b", "id": int64(1), "v": "w"}),
		del("a", "1"),
		del("a", "2"),
		del("visit", `["a",1]`),
		put("visit", `["b",2]`, map[string]any{"site": "b", "id": int64(2), "v": "v"}),
	})
	n.remote("visit", `["a",5]`, map[string]any{"site": "a", "id": int64(5), "v": "remote"})
	if res := apply(t, c, n); len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT count(*) FROM visit_a WHERE id = 5`); got != 1 {
		t.Fatal("the row did not reach its partition")
	}
	if bs := n.capture(t, c); len(bs) != 0 {
		t.Fatalf("the apply was captured: %+v", bs)
	}
}

// TestApplyWaitsForLocalWriter: an apply locks the tables it writes, so a
// local transaction in flight on one of them finishes first and its change
// takes part in the merge; a local writer that comes later waits for the
// apply instead.
func TestApplyWaitsForLocalWriter(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, x text, y text); INSERT INTO a VALUES (1, 'x0', 'y0')`)
	c := open(t, url)
	n := newNode()
	n.remote("a", "1", map[string]any{"id": int64(1), "x": "x0", "y": "y0"})
	n.feed = nil
	ctx := context.Background()
	local, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Rollback(ctx)
	mustExec(t, local, `UPDATE a SET x = 'local' WHERE id = 1`)
	n.remote("a", "1", map[string]any{"y": "remote"})
	done := make(chan db.ApplyResult)
	go func() {
		res, err := c.Apply(ctx, n, 100)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	// Longer than one lock wait: the apply gives up its wait and tries again.
	time.Sleep(1200 * time.Millisecond)
	select {
	case res := <-done:
		t.Fatalf("the apply did not wait for the local transaction: %+v", res)
	default:
	}
	if err := local.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Captured != 1 || res.Rows != 1 { // the row once, merged with the local change
		t.Fatalf("apply %+v", res)
	}
	rows := tableRows(t, c, "a")
	if want := (map[string]any{"id": int64(1), "x": "local", "y": "remote"}); !reflect.DeepEqual(rows["1"], want) {
		t.Fatalf("row %v, want %v", rows["1"], want)
	}
}

// TestRestoredFromOlderBackup: a database whose positions are behind the
// node's is refused until Rebase; then new changes get positions after the
// node's.
func TestRestoredFromOlderBackup(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE a (id int PRIMARY KEY, v text)`)
	c := open(t, url)
	n := newNode()
	ctx := context.Background()
	mustExec(t, p, `INSERT INTO a VALUES (1, 'x')`)
	n.capture(t, c)
	n.remote("a", "9", map[string]any{"id": int64(9), "v": "r"})
	apply(t, c, n)
	mustExec(t, p, `INSERT INTO a VALUES (2, 'y')`)
	n.capture(t, c)
	seq, cur, err := c.Positions(ctx)
	if err != nil || seq != n.CapturePos() || cur != 2 {
		t.Fatalf("positions %d %d %v (node %d)", seq, cur, err, n.CapturePos())
	}
	// The backup: ppsync's tables as they were after the first capture.
	mustExec(t, p, `UPDATE ppsync.meta SET v = '1' WHERE k = 'capture_pos'; UPDATE ppsync.meta SET v = '0' WHERE k = 'apply_cursor';
		INSERT INTO ppsync.changes (tbl, op, pk, vals) VALUES ('a', 'p', '["id", 2]', '{"id": 2, "v": "y"}')`)
	if seq, cur, _ := c.Positions(ctx); seq >= n.CapturePos() || cur != 0 {
		t.Fatalf("positions after the restore %d %d", seq, cur)
	}
	if _, err := c.Capture(ctx, n.CapturePos(), 100); !errors.Is(err, db.ErrRestored) {
		t.Fatalf("capture of a restored database: %v", err)
	}
	if err := c.Rebase(ctx, n.CapturePos()); err != nil {
		t.Fatal(err)
	}
	mustExec(t, p, `INSERT INTO a VALUES (3, 'z')`)
	sameOps(t, opsOf(n.capture(t, c)), []wire.Op{put("a", "3", map[string]any{"id": int64(3), "v": "z"})})
}

// mustTable returns the synced table named name.
func mustTable(t *testing.T, c *Conn, name string) *db.Table {
	t.Helper()
	s, err := c.Schema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tab, ok := s.Table(name)
	if !ok {
		t.Fatalf("no table %s", name)
	}
	return tab
}

// A row that changed again while the apply read the merged rows page by
// page (put, then delete) is written once, as its newest version: the older
// put must not follow the delete (deletes of a table nothing refers to go
// before the upserts).
func TestApplyRowChangedBetweenPages(t *testing.T) {
	url := newDB(t)
	p := sqlConn(t, url)
	mustExec(t, p, `CREATE TABLE parent (id int PRIMARY KEY, name text);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id), name text)`)
	c := open(t, url)
	n := newNode()
	n.snapshots = true
	n.remote("parent", "1", map[string]any{"id": int64(1), "name": "p1"})
	n.remote("child", "1", map[string]any{"id": int64(1), "parent_id": int64(1), "name": "c1"})
	n.remote("child", "1", nil)
	n.remote("parent", "1", nil)
	res := apply(t, c, n)
	if len(res.Conflicts) != 0 {
		t.Fatalf("apply %+v", res)
	}
	if got := count(t, p, `SELECT count(*) FROM child`) + count(t, p, `SELECT count(*) FROM parent`); got != 0 {
		t.Fatalf("%d rows left: an older version was written after the delete", got)
	}
}
