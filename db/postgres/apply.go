package postgres

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ppsync/ppsync/db"
)

// ApplyCursor implements db.Connector.
func (c *Conn) ApplyCursor(ctx context.Context) (uint64, error) {
	return c.metaUint(ctx, c.pool, "apply_cursor")
}

// SetApplyCursor implements db.Connector.
func (c *Conn) SetApplyCursor(ctx context.Context, n uint64) error {
	if err := setMeta(ctx, c.pool, "apply_cursor", n); err != nil {
		return c.errf("store the apply position", err)
	}
	return nil
}

// drainMaxOps is the size of the captures an apply makes before writing.
const drainMaxOps = 5000

// Apply implements db.Connector (see the package doc). A lock the apply
// waits for too long (another program's transaction holds the table), a
// deadlock or a serialization failure rolls it back and it is tried again.
func (c *Conn) Apply(ctx context.Context, s db.Syncer, maxRows int) (db.ApplyResult, error) {
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		res, err := c.applyOnce(ctx, s, maxRows)
		if err == nil || !retryable(err) || attempt == 10 {
			return res, err
		}
		c.log.Debug("postgres: apply waits", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "55P03", "40001", "40P01": // lock_not_available, serialization_failure, deadlock_detected
		return true
	}
	return false
}

func (c *Conn) applyOnce(ctx context.Context, s db.Syncer, maxRows int) (res db.ApplyResult, err error) {
	sch := c.currentSchema()
	if sch == nil {
		return res, errors.New("postgres: apply before the schema was read")
	}
	if maxRows <= 0 {
		maxRows = 1000
	}
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return res, c.errf("apply", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SET LOCAL `+applyingGUC+` = 'on'`); err != nil {
		return res, c.errf("apply: suppress capture", err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = `+lit(strconv.FormatInt(c.lockTimeout.Milliseconds(), 10)+"ms")); err != nil {
		return res, c.errf("apply", err)
	}
	cursor, err := c.metaUint(ctx, tx, "apply_cursor")
	if err != nil {
		return res, err
	}

	// Drain, read the merged rows, lock their tables, and again while the
	// rows touch a table not locked yet: after the last lock, every local
	// change to those tables is in the merge.
	after := s.CapturePos()
	start := after
	locked := map[string]bool{}
	var rows []db.Row
	next := cursor
	before, err := c.refused(ctx, tx)
	if err != nil {
		return res, err
	}
	for {
		n, err := c.drain(ctx, s, &after)
		if err != nil {
			return res, err
		}
		res.Captured += n
		if rows, next, err = changed(s, cursor, maxRows); err != nil {
			return res, fmt.Errorf("postgres: apply: read the merged rows: %w", err)
		}
		// The rows refused before are tried again after this batch's.
		retries, err := db.Retries(rows, before, s)
		if err != nil {
			return res, err
		}
		rows = append(rows, retries...)
		var need []string
		for _, r := range rows {
			if _, ok := sch.Table(r.Table); ok && !locked[r.Table] {
				locked[r.Table] = true
				need = append(need, r.Table)
			}
		}
		if len(need) == 0 {
			break
		}
		sort.Strings(need)
		q := make([]string, len(need))
		for i, t := range need {
			q[i] = c.qual(t)
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(q, ", ")+` IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return res, c.errf("apply: lock "+strings.Join(need, ", "), err)
		}
	}
	if len(rows) == 0 && next == cursor && after == start {
		res.Cursor = cursor
		return res, nil // nothing to write: no write transaction every idle step
	}
	if after > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM `+changeTable+` WHERE pos <= $1`, int64(after)); err != nil {
			return res, c.errf("apply: delete captured changes", err)
		}
	}

	written, conflicts, err := c.write(ctx, tx, sch, rows, true)
	if err != nil {
		return res, err
	}
	res.Rows, res.Conflicts = written, conflicts
	if res.Resolved, err = storeRefused(ctx, tx, before, conflicts); err != nil {
		return res, c.errf("apply: record the refused rows", err)
	}
	if err := setMeta(ctx, tx, "apply_cursor", next); err != nil {
		return res, c.errf("apply: store the position", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return res, c.errf("apply: commit", err)
	}
	res.Cursor = next
	c.note(func(st *db.Stats) {
		st.Applied += uint64(res.Rows)
		if res.Rows > 0 {
			st.LastApply = time.Now()
		}
	})
	return res, nil
}

// Refused implements db.Connector.
func (c *Conn) Refused(ctx context.Context) ([]db.RowConflict, error) {
	return c.refused(ctx, c.pool)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (c *Conn) refused(ctx context.Context, q querier) ([]db.RowConflict, error) {
	rs, err := q.Query(ctx, `SELECT tbl, key, reason FROM `+refusedTable+` ORDER BY n`)
	if err != nil {
		return nil, c.errf("read the refused rows", err)
	}
	defer rs.Close()
	var out []db.RowConflict
	for rs.Next() {
		var k db.RowConflict
		if err := rs.Scan(&k.Table, &k.Key, &k.Reason); err != nil {
			return nil, c.errf("read the refused rows", err)
		}
		out = append(out, k)
	}
	if err := rs.Err(); err != nil {
		return nil, c.errf("read the refused rows", err)
	}
	return out, nil
}

// storeRefused makes the refused-rows table hold exactly now (keeping when
// each was first refused), and returns how many of before were written.
func storeRefused(ctx context.Context, tx pgx.Tx, before, now []db.RowConflict) (int, error) {
	if len(before) == 0 && len(now) == 0 {
		return 0, nil
	}
	done := db.Resolved(before, now)
	for _, k := range done {
		if _, err := tx.Exec(ctx, `DELETE FROM `+refusedTable+` WHERE tbl = $1 AND key = $2`, k.Table, k.Key); err != nil {
			return 0, err
		}
	}
	for _, k := range db.NewlyRefused(before, now) {
		if _, err := tx.Exec(ctx, `INSERT INTO `+refusedTable+` (tbl, key, reason) VALUES ($1, $2, $3) ON CONFLICT (tbl, key) DO UPDATE SET reason = excluded.reason`, k.Table, k.Key, k.Reason); err != nil {
			return 0, err
		}
	}
	return len(done), nil
}

// drain hands what is pending to s.Captured, each capture committed (and so
// its positions kept) before the node sees it; *after advances.
func (c *Conn) drain(ctx context.Context, s db.Syncer, after *uint64) (int, error) {
	n := 0
	for {
		bs, err := c.Capture(ctx, *after, drainMaxOps)
		if err != nil {
			return n, err
		}
		if len(bs) == 0 {
			return n, nil
		}
		if err := s.Captured(ctx, bs); err != nil {
			return n, fmt.Errorf("postgres: apply: commit the local changes first: %w", err)
		}
		n += countOps(bs)
		*after = bs[len(bs)-1].Pos
	}
}

// changed reads up to maxRows merged rows changed after cursor.
func changed(s db.Syncer, cursor uint64, maxRows int) ([]db.Row, uint64, error) {
	var rows []db.Row
	next := cursor
	for len(rows) < maxRows {
		batch, n, err := s.Changed(next, maxRows-len(rows))
		if err != nil {
			return nil, cursor, err
		}
		rows = append(rows, batch...)
		if n == next {
			break
		}
		next = n
	}
	return db.Newest(rows), next, nil
}

// Write implements db.Connector: rows written as an apply writes them, with
// capture suppressed and their tables locked, in one transaction; any row
// refused fails the whole write.
func (c *Conn) Write(ctx context.Context, rows []db.Row) error {
	sch := c.currentSchema()
	if sch == nil {
		return errors.New("postgres: write before the schema was read")
	}
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return c.errf("repair", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SET LOCAL `+applyingGUC+` = 'on'`); err != nil {
		return c.errf("repair", err)
	}
	seen := map[string]bool{}
	var q []string
	for _, r := range rows {
		if _, ok := sch.Table(r.Table); ok && !seen[r.Table] {
			seen[r.Table] = true
			q = append(q, c.qual(r.Table))
		}
	}
	sort.Strings(q)
	if len(q) > 0 {
		if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(q, ", ")+` IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return c.errf("repair: lock the tables", err)
		}
	}
	if _, _, err := c.write(ctx, tx, sch, rows, false); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return c.errf("repair: commit", err)
	}
	return nil
}

// stmt is one merged row ready to write.
type stmt struct {
	row   db.Row
	sql   string
	arg   string // the row's values as a JSON object
	del   bool
	phase int // 0: deletes nothing refers to, 1: upserts, 2: other deletes
	rank  int
}

// write writes rows in foreign key order, all at once inside a savepoint;
// when one is refused and careful is set, it writes them one at a time
// instead, each in its own savepoint, retried while any succeeds, and returns
// the rest as conflicts. Without careful a refused row is an error.
func (c *Conn) write(ctx context.Context, tx pgx.Tx, sch *db.Schema, rows []db.Row, careful bool) (int, []db.RowConflict, error) {
	g, err := c.fkGraph(ctx)
	if err != nil {
		return 0, nil, err
	}
	var conflicts []db.RowConflict
	var stmts []stmt
	for _, r := range rows {
		st, ok, err := c.prepare(ctx, sch, r)
		if err != nil {
			if !careful || !errors.Is(err, db.ErrValue) {
				return 0, nil, err
			}
			conflicts = append(conflicts, db.RowConflict{Table: r.Table, Key: r.Key, Fields: r.Fields, Reason: err.Error()})
			continue
		}
		if !ok {
			continue
		}
		st.rank = g.rank[r.Table]
		switch {
		case !st.del:
			st.phase = 1
		case g.referenced[r.Table]:
			st.phase, st.rank = 2, -st.rank
		}
		stmts = append(stmts, st)
	}
	sort.SliceStable(stmts, func(i, j int) bool {
		if stmts[i].phase != stmts[j].phase {
			return stmts[i].phase < stmts[j].phase
		}
		return stmts[i].rank < stmts[j].rank
	})
	if len(stmts) == 0 {
		return 0, conflicts, nil
	}
	ferr := c.writeFast(ctx, tx, stmts)
	if ferr == nil {
		return len(stmts), conflicts, nil
	}
	if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT ppsync_fast`); err != nil {
		return 0, nil, c.errf("apply", err)
	}
	if _, ok := refusal(ferr); !ok && !sameRowTwice(ferr) {
		return 0, nil, c.errf("apply", ferr)
	}
	if !careful {
		if err := c.refusedError(ctx, tx, stmts, ferr); err != nil {
			return 0, nil, err
		}
		return len(stmts), conflicts, nil
	}
	written, more, err := c.writeCarefully(ctx, tx, stmts)
	if err != nil {
		return 0, nil, err
	}
	return written, append(conflicts, more...), nil
}

// writeFast writes every statement inside the savepoint ppsync_fast, with
// deferrable constraints deferred to its end, in one round trip: the rows
// of one table with the same columns become one statement over all their
// values (json_populate_recordset instead of json_populate_record, so each
// value is read exactly as the row's own statement reads it), in the
// statements' order (each table has its own rank, so a group never jumps
// ahead of a table it depends on). A row the database refuses fails the
// whole savepoint; the rows are then written one at a time.
func (c *Conn) writeFast(ctx context.Context, tx pgx.Tx, stmts []stmt) error {
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT ppsync_fast`)
	b.Queue(`SET CONSTRAINTS ALL DEFERRED`)
	for _, g := range groupStmts(stmts) {
		b.Queue(g.sql, g.arg)
	}
	b.Queue(`SET CONSTRAINTS ALL IMMEDIATE`) // checks what was deferred
	b.Queue(`RELEASE SAVEPOINT ppsync_fast`)
	br := tx.SendBatch(ctx, b)
	var first error
	for i := 0; i < b.Len(); i++ {
		if _, err := br.Exec(); err != nil && first == nil {
			first = err
		}
	}
	if err := br.Close(); err != nil && first == nil {
		first = err
	}
	return first
}

// maxGroupBytes bounds the JSON of one grouped statement.
const maxGroupBytes = 8 << 20

// stmtGroup is one statement for many rows: a JSON array of their objects.
type stmtGroup struct {
	sql string
	arg string
}

// groupStmts turns the statements into one statement per table and set of
// columns (the rows whose single-row statements are the same text), in the
// order of each group's first statement.
func groupStmts(stmts []stmt) []stmtGroup {
	type acc struct {
		sql string
		buf strings.Builder
	}
	var order []*acc
	open := map[string]*acc{}
	for _, st := range stmts {
		a := open[st.sql]
		if a != nil && a.buf.Len()+len(st.arg) > maxGroupBytes {
			a = nil // full: a new group after it
		}
		if a == nil {
			a = &acc{sql: strings.Replace(st.sql, "json_populate_record(", "json_populate_recordset(", 1)}
			a.buf.WriteByte('[')
			open[st.sql] = a
			order = append(order, a)
		} else {
			a.buf.WriteByte(',')
		}
		a.buf.WriteString(st.arg)
	}
	out := make([]stmtGroup, len(order))
	for i, a := range order {
		a.buf.WriteByte(']')
		out[i] = stmtGroup{sql: a.sql, arg: a.buf.String()}
	}
	return out
}

// writeCarefully writes statements one at a time, each in a savepoint with
// constraints checked at once.
func (c *Conn) writeCarefully(ctx context.Context, tx pgx.Tx, stmts []stmt) (int, []db.RowConflict, error) {
	if _, err := tx.Exec(ctx, `SET CONSTRAINTS ALL IMMEDIATE`); err != nil {
		return 0, nil, c.errf("apply", err)
	}
	written := 0
	pending := stmts
	for {
		var still []stmt
		var reasons []string
		progress := false
		for _, st := range pending {
			b := &pgx.Batch{}
			b.Queue(`SAVEPOINT ppsync_row`)
			b.Queue(st.sql, st.arg)
			b.Queue(`RELEASE SAVEPOINT ppsync_row`)
			br := tx.SendBatch(ctx, b)
			_, err1 := br.Exec()
			_, err2 := br.Exec()
			_, err3 := br.Exec()
			cerr := br.Close()
			if err1 != nil {
				return 0, nil, c.errf("apply", err1)
			}
			rerr := err2
			if rerr == nil {
				rerr = err3
			}
			if rerr == nil && cerr != nil {
				return 0, nil, c.errf("apply", cerr)
			}
			if rerr == nil {
				written++
				progress = true
				continue
			}
			if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT ppsync_row`); err != nil {
				return 0, nil, c.errf("apply", err)
			}
			if _, err := tx.Exec(ctx, `RELEASE SAVEPOINT ppsync_row`); err != nil {
				return 0, nil, c.errf("apply", err)
			}
			reason, ok := refusal(rerr)
			if !ok {
				return 0, nil, c.errf("apply", rerr)
			}
			if col := c.diagnose(ctx, tx, st, rerr); col != "" {
				var pe *pgconn.PgError
				errors.As(rerr, &pe)
				reason = fmt.Sprintf("%v: table %s, key %s, column %s: %s", db.ErrValue, st.row.Table, st.row.Key, col, pe.Message)
			}
			still = append(still, st)
			reasons = append(reasons, reason)
		}
		if len(still) == 0 || !progress {
			out := make([]db.RowConflict, len(still))
			for i, st := range still {
				out[i] = db.RowConflict{Table: st.row.Table, Key: st.row.Key, Fields: st.row.Fields, Reason: reasons[i]}
			}
			return written, out, nil
		}
		pending = still
	}
}

// sameRowTwice says whether err is an upsert of many rows meeting one row
// twice (two keys the column's type reads as one value): the rows are then
// written one at a time.
func sameRowTwice(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "21000"
}

// refusal says whether err is the database refusing a row (a constraint, a
// value, a trigger of the practice software raising an error), and why.
func refusal(err error) (string, bool) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return "", false
	}
	msg := pe.Message
	if pe.Detail != "" {
		msg += " (" + pe.Detail + ")"
	}
	switch {
	case pe.Code == "23503":
		return "the database refused it: a foreign key (a row still refers to one being deleted, or refers to one that does not exist): " + msg, true
	case pe.Code == "23505":
		return "the database refused it: a unique constraint (another row already has that value): " + msg, true
	case strings.HasPrefix(pe.Code, "23"), strings.HasPrefix(pe.Code, "22"), strings.HasPrefix(pe.Code, "P0"):
		return "the database refused it: " + msg, true
	}
	return "", false
}

// diagnose finds the column whose value the database cannot read when a row
// failed with a data exception ("" when it is not one value's fault).
func (c *Conn) diagnose(ctx context.Context, tx pgx.Tx, st stmt, err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || !strings.HasPrefix(pe.Code, "22") {
		return ""
	}
	if pe.ColumnName != "" {
		return pe.ColumnName
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal([]byte(st.arg), &obj) != nil {
		return ""
	}
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		one, _ := json.Marshal(map[string]json.RawMessage{name: obj[name]})
		b := &pgx.Batch{}
		b.Queue(`SAVEPOINT ppsync_probe`)
		b.Queue(`SELECT json_populate_record(NULL::`+c.qual(st.row.Table)+`, $1::json) IS NULL`, string(one))
		br := tx.SendBatch(ctx, b)
		_, e1 := br.Exec()
		_, e2 := br.Exec()
		_ = br.Close()
		_, _ = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT ppsync_probe`)
		_, _ = tx.Exec(ctx, `RELEASE SAVEPOINT ppsync_probe`)
		if e1 == nil && e2 != nil {
			return name
		}
	}
	return ""
}

// refusedError finds the row the database refused, for a write that must
// not leave any out; nil when every row could be written one at a time.
func (c *Conn) refusedError(ctx context.Context, tx pgx.Tx, stmts []stmt, ferr error) error {
	_, conflicts, err := c.writeCarefully(ctx, tx, stmts)
	if err != nil {
		return err
	}
	if len(conflicts) > 0 {
		k := conflicts[0]
		if strings.HasPrefix(k.Reason, db.ErrValue.Error()) {
			return fmt.Errorf("%w%s", db.ErrValue, strings.TrimPrefix(k.Reason, db.ErrValue.Error()))
		}
		return fmt.Errorf("postgres: %s/%s: %s", k.Table, k.Key, k.Reason)
	}
	if sameRowTwice(ferr) {
		return nil // every row written one at a time
	}
	return c.errf("write", ferr)
}

// prepare builds the statement of one merged row; ok is false for a table
// this database does not have (node writes every row again once it has).
func (c *Conn) prepare(ctx context.Context, sch *db.Schema, r db.Row) (stmt, bool, error) {
	t, ok := sch.Table(r.Table)
	if !ok {
		return stmt{}, false, nil
	}
	ti, err := c.info(ctx, r.Table, false)
	if err != nil {
		return stmt{}, false, err
	}
	if ti == nil {
		return stmt{}, false, nil
	}
	if r.Fields != nil {
		for name := range r.Fields {
			if ti.col(name) == nil {
				if _, declared := t.Column(name); declared { // added since the types were read
					if ti, err = c.info(ctx, r.Table, true); err != nil || ti == nil {
						return stmt{}, false, err
					}
					break
				}
			}
		}
	}
	keyVals, err := db.DecodeKey(t, r.Key)
	if err != nil {
		return stmt{}, false, err
	}
	if len(keyVals) != len(ti.pk) {
		return stmt{}, false, fmt.Errorf("%w: key %q of table %s does not name its %d key columns", db.ErrValue, r.Key, r.Table, len(ti.pk))
	}
	isPK := map[string]bool{}
	for _, k := range ti.pk {
		isPK[k] = true
	}
	var obj bytes.Buffer
	obj.WriteByte('{')
	add := func(name string, raw []byte) {
		if obj.Len() > 1 {
			obj.WriteByte(',')
		}
		n, _ := json.Marshal(name)
		obj.Write(n)
		obj.WriteByte(':')
		obj.Write(raw)
	}
	fail := func(col string, err error) error {
		return fmt.Errorf("%w: table %s, key %s, column %s: %v", db.ErrValue, r.Table, r.Key, col, err)
	}
	var names, sets, where []string
	for i, k := range ti.pk {
		raw, err := encodeValue(ti.col(k), keyVals[i])
		if err != nil {
			return stmt{}, false, fail(k, err)
		}
		add(k, raw)
		names = append(names, quote(k))
		where = append(where, "x."+quote(k)+" = r."+quote(k))
	}
	q := c.qual(r.Table)
	if r.Fields == nil {
		obj.WriteByte('}')
		return stmt{row: r, del: true, arg: obj.String(),
			sql: `DELETE FROM ` + q + ` x USING json_populate_record(NULL::` + q + `, $1::json) r WHERE ` + strings.Join(where, " AND ")}, true, nil
	}
	for _, ci := range ti.cols {
		v, present := r.Fields[ci.name]
		if !present || ci.generated || isPK[ci.name] {
			continue
		}
		raw, err := encodeValue(&ci, v)
		if err != nil {
			return stmt{}, false, fail(ci.name, err)
		}
		add(ci.name, raw)
		names = append(names, quote(ci.name))
		sets = append(sets, quote(ci.name)+" = excluded."+quote(ci.name))
	}
	obj.WriteByte('}')
	conflict := make([]string, len(ti.pk))
	for i, k := range ti.pk {
		conflict[i] = quote(k)
	}
	sel := make([]string, len(names))
	for i, n := range names {
		sel[i] = "r." + n
	}
	sql := `INSERT INTO ` + q + ` (` + strings.Join(names, ", ") + `) OVERRIDING SYSTEM VALUE SELECT ` + strings.Join(sel, ", ") +
		` FROM json_populate_record(NULL::` + q + `, $1::json) r ON CONFLICT (` + strings.Join(conflict, ", ") + `) DO `
	if len(sets) == 0 {
		sql += `NOTHING`
	} else {
		sql += `UPDATE SET ` + strings.Join(sets, ", ")
	}
	return stmt{row: r, sql: sql, arg: obj.String()}, true, nil
}

var (
	numericRE = regexp.MustCompile(`^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,6})?$`)
	fracRE    = regexp.MustCompile(`\d:\d\d\.(\d+)`)
)

// encodeValue turns a field value into the JSON that json_populate_record
// reads into a column of ci's type, refusing what the column cannot hold
// exactly.
func encodeValue(ci *colInfo, v any) (json.RawMessage, error) {
	if v == nil {
		return json.RawMessage("null"), nil
	}
	if b, ok := v.([]byte); ok {
		v = db.Blob(b)
	}
	if n, ok := v.(json.Number); ok {
		if i, err := n.Int64(); err == nil {
			v = i
		} else if f, err := n.Float64(); err == nil {
			v = f
		}
	}
	jstr := func(s string) json.RawMessage { b, _ := json.Marshal(s); return b }
	_, isBlob := db.AsBlob(v)
	if isBlob && ci.kind != kBytea {
		return nil, fmt.Errorf("a byte string does not fit a %s column", ci.decl)
	}
	switch ci.kind {
	case kInt:
		var i int64
		switch x := v.(type) {
		case int64:
			i = x
		case float64:
			if x != math.Trunc(x) || x < -9.223372036854775808e18 || x >= 9.223372036854775808e18 {
				return nil, fmt.Errorf("%v is not an integer %s can hold", x, ci.decl)
			}
			i = int64(x)
		case string:
			n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not an integer", x)
			}
			i = n
		default:
			return nil, fmt.Errorf("%T %v is not an integer", v, v)
		}
		if ci.bits < 64 && (i < -(1<<(ci.bits-1)) || i >= 1<<(ci.bits-1)) {
			return nil, fmt.Errorf("%d is out of range for %s", i, ci.decl)
		}
		return strconv.AppendInt(nil, i, 10), nil
	case kFloat4, kFloat8:
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case int64:
			f = float64(x)
			if f >= 9.223372036854775807e18 || int64(f) != x {
				return nil, fmt.Errorf("%d has more digits than %s keeps", x, ci.decl)
			}
		case string:
			switch strings.ToLower(strings.TrimSpace(x)) {
			case "nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf":
				return jstr(x), nil
			}
			n, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", x)
			}
			f = n
		default:
			return nil, fmt.Errorf("%T %v is not a number", v, v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return jstr(strconv.FormatFloat(f, 'g', -1, 64)), nil // NaN, +Inf, -Inf
		}
		if ci.kind == kFloat4 {
			f32 := float32(f)
			if math.IsInf(float64(f32), 0) {
				return nil, fmt.Errorf("%v is out of range for %s", f, ci.decl)
			}
			back, _ := strconv.ParseFloat(strconv.FormatFloat(float64(f32), 'g', -1, 32), 64)
			if back != f {
				return nil, fmt.Errorf("%v has more digits than %s keeps (it would become %v)", f, ci.decl, back)
			}
		}
		return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
	case kNumeric:
		s, err := numericText(ci, v)
		if err != nil {
			return nil, err
		}
		return jstr(s), nil
	case kBool:
		switch x := v.(type) {
		case bool:
			return json.Marshal(x)
		case int64:
			if x == 0 || x == 1 {
				return json.Marshal(x == 1)
			}
		case string:
			switch strings.ToLower(strings.TrimSpace(x)) {
			case "t", "true", "y", "yes", "on", "1":
				return json.RawMessage("true"), nil
			case "f", "false", "n", "no", "off", "0":
				return json.RawMessage("false"), nil
			}
		}
		return nil, fmt.Errorf("%v is not a boolean", v)
	case kBytea:
		if b, ok := db.AsBlob(v); ok {
			return jstr(`\x` + hex.EncodeToString(b)), nil
		}
		if s, ok := v.(string); ok {
			return jstr(`\x` + hex.EncodeToString([]byte(s))), nil
		}
		return nil, fmt.Errorf("%T %v is not a byte string", v, v)
	case kJSON:
		if s, ok := v.(string); ok {
			if !json.Valid([]byte(s)) {
				return nil, fmt.Errorf("%.40q is not JSON", s)
			}
			return json.RawMessage(s), nil
		}
		return json.Marshal(v)
	case kStruct:
		if s, ok := v.(string); ok {
			t := strings.TrimSpace(s)
			if t != "" && (t[0] == '[' || t[0] == '{') && json.Valid([]byte(t)) {
				return json.RawMessage(t), nil
			}
			return jstr(s), nil // PostgreSQL's own literal, e.g. {1,2}
		}
		switch v.(type) {
		case []any, map[string]any:
			return json.Marshal(v)
		}
		return nil, fmt.Errorf("%T %v is not a value of %s", v, v, ci.decl)
	case kTimestamp, kTimestamptz, kDate:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%T %v is not a date or time text", v, v)
		}
		if ci.frac >= 0 {
			if m := fracRE.FindStringSubmatch(s); m != nil && len(m[1]) > ci.frac && strings.Trim(m[1][ci.frac:], "0") != "" {
				return nil, fmt.Errorf("%s has more fractional digits than %s keeps", s, ci.decl)
			}
		}
		return jstr(s), nil
	}
	switch x := v.(type) { // text and every other type: the text form
	case string:
		return jstr(x), nil
	case int64:
		return jstr(strconv.FormatInt(x, 10)), nil
	case float64:
		return jstr(strconv.FormatFloat(x, 'g', -1, 64)), nil
	case bool:
		return jstr(strconv.FormatBool(x)), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jstr(string(b)), nil
}

// numericText checks a value for a numeric(p,s) column: exact, never rounded.
func numericText(ci *colInfo, v any) (string, error) {
	var s string
	switch x := v.(type) {
	case string:
		s = strings.TrimSpace(x)
	case int64:
		s = strconv.FormatInt(x, 10)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			s = strconv.FormatFloat(x, 'g', -1, 64)
		} else {
			s = strconv.FormatFloat(x, 'f', -1, 64)
		}
	default:
		return "", fmt.Errorf("%T %v is not a number", v, v)
	}
	switch strings.ToLower(s) {
	case "nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf":
		return s, nil // numeric(p,s) refuses infinity itself
	}
	if !numericRE.MatchString(s) {
		return "", fmt.Errorf("%q is not a number", s)
	}
	if ci.precision < 0 {
		return s, nil
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return "", fmt.Errorf("%q is not a number", s)
	}
	pow := func(n int) *big.Rat {
		p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(n))), nil)
		if n < 0 {
			return new(big.Rat).SetFrac(big.NewInt(1), p)
		}
		return new(big.Rat).SetInt(p)
	}
	if !new(big.Rat).Mul(r, pow(ci.scale)).IsInt() {
		return "", fmt.Errorf("%s has more digits after the point than %s keeps", s, ci.decl)
	}
	if new(big.Rat).Abs(r).Cmp(pow(ci.precision-ci.scale)) >= 0 {
		return "", fmt.Errorf("%s has more digits before the point than %s keeps", s, ci.decl)
	}
	return s, nil
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
