package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ppsync/ppsync/db"
)

// SetSchema gives the connector the tables it writes (node calls it after
// Install, and again when the schema changes).
func (c *Conn) SetSchema(s *db.Schema) {
	c.mu.Lock()
	c.schema = s
	c.mu.Unlock()
}

func (c *Conn) currentSchema() *db.Schema {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.schema
}

// ApplyCursor implements db.Connector.
func (c *Conn) ApplyCursor(ctx context.Context) (uint64, error) {
	return c.cursor(ctx, c.r)
}

func (c *Conn) cursor(ctx context.Context, q querier) (uint64, error) {
	v, err := c.meta(ctx, q, "apply_cursor")
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sqlite: apply position %q in %s is damaged: %w", v, metaTable, err)
	}
	return n, nil
}

// SetApplyCursor stores the apply position outside an apply (a repair, or a
// schema change that makes every merged row worth writing again).
func (c *Conn) SetApplyCursor(ctx context.Context, n uint64) error {
	if _, err := c.w.ExecContext(ctx, `INSERT INTO `+metaTable+`(k, v) VALUES ('apply_cursor', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`, strconv.FormatUint(n, 10)); err != nil {
		return fmt.Errorf("sqlite: store the apply position: %w", err)
	}
	return nil
}

// Apply implements db.Connector.
func (c *Conn) Apply(ctx context.Context, s db.Syncer, maxRows int) (db.ApplyResult, error) {
	res, rows, next, err := c.applyOnce(ctx, s, maxRows, nil, 0)
	if err == nil || !errors.Is(err, errRowRefused) {
		return res, err
	}
	// Some merged row was refused (a foreign key, a unique constraint, a
	// STRICT column's type): write row by row, each in a savepoint, with
	// immediate foreign key checks, retrying the refused ones while any
	// succeeds (so parents and children land whatever their order), and
	// report the rest as conflicts instead of failing the batch.
	if rows == nil {
		rows = []db.Row{}
	}
	res, _, _, err = c.applyOnce(ctx, s, maxRows, rows, next)
	return res, err
}

var errRowRefused = errors.New("sqlite: a row was refused")

// Refused implements db.Connector.
func (c *Conn) Refused(ctx context.Context) ([]db.RowConflict, error) {
	return readRefused(ctx, c.r)
}

func readRefused(ctx context.Context, q rowsQuerier) ([]db.RowConflict, error) {
	rs, err := q.QueryContext(ctx, `SELECT tbl, key, reason FROM `+refusedTable+` ORDER BY rowid`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read the refused rows: %w", err)
	}
	defer rs.Close()
	var out []db.RowConflict
	for rs.Next() {
		var k db.RowConflict
		if err := rs.Scan(&k.Table, &k.Key, &k.Reason); err != nil {
			return nil, fmt.Errorf("sqlite: read the refused rows: %w", err)
		}
		out = append(out, k)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read the refused rows: %w", err)
	}
	return out, nil
}

// applyOnce runs one apply transaction. With careful set (the rows of a
// refused fast attempt, the retried ones included), rows are written one at
// a time.
func (c *Conn) applyOnce(ctx context.Context, s db.Syncer, maxRows int, careful []db.Row, carefulNext uint64) (res db.ApplyResult, rows []db.Row, next uint64, err error) {
	sch := c.currentSchema()
	if sch == nil {
		return res, nil, 0, errors.New("sqlite: apply before the schema was read")
	}
	conn, err := c.w.Conn(ctx)
	if err != nil {
		return res, nil, 0, fmt.Errorf("sqlite: apply: %w", err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil) // BEGIN IMMEDIATE: the write lock
	if err != nil {
		return res, nil, 0, fmt.Errorf("sqlite: apply: take the write lock: %w", err)
	}
	defer tx.Rollback()

	// 1. Capture what is pending, so local changes take part in the merge.
	pos := s.CapturePos()
	var last uint64
	for {
		bs, err := readChanges(ctx, tx, sch, pos, 5000)
		if err != nil {
			return res, nil, 0, err
		}
		if len(bs) == 0 {
			break
		}
		if err := s.Captured(ctx, bs); err != nil {
			return res, nil, 0, fmt.Errorf("sqlite: apply: commit the local changes first: %w", err)
		}
		for _, b := range bs {
			res.Captured += len(b.Ops)
			pos, last = b.Pos, b.Pos
		}
	}
	if pos > 0 { // also what an earlier, rolled back attempt captured
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+changesTable+` WHERE id <= ?`, pos); err != nil {
			return res, nil, 0, fmt.Errorf("sqlite: apply: delete captured changes: %w", err)
		}
	}
	if last > 0 {
		c.note(func(st *db.Stats) { st.Captured += uint64(res.Captured); st.LastCapture = time.Now() })
	}

	// 2. Write the merged rows changed since the stored position, then try
	// again the rows refused before.
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+applyingTable+`(x) VALUES (1)`); err != nil {
		return res, nil, 0, fmt.Errorf("sqlite: apply: suppress capture: %w", err)
	}
	cursor, err := c.cursor(ctx, tx)
	if err != nil {
		return res, nil, 0, err
	}
	before, err := readRefused(ctx, tx)
	if err != nil {
		return res, nil, 0, err
	}
	next = cursor
	var retries []db.Row
	if careful != nil {
		rows, next = careful, carefulNext
	} else {
		for len(rows) < maxRows {
			batch, n, err := s.Changed(next, maxRows-len(rows))
			if err != nil {
				return res, nil, 0, fmt.Errorf("sqlite: apply: read the merged rows: %w", err)
			}
			rows = append(rows, batch...)
			if n == next {
				break
			}
			next = n
		}
		rows = db.Newest(rows)
		if retries, err = db.Retries(rows, before, s); err != nil {
			return res, nil, 0, err
		}
	}
	w := newWriter(tx, sch)
	if careful == nil {
		if _, err := tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = ON`); err != nil {
			return res, nil, 0, fmt.Errorf("sqlite: apply: %w", err)
		}
		for _, r := range rows {
			if err := w.write(ctx, r); err != nil {
				return res, append(rows, retries...), next, fmt.Errorf("%w: %s/%s: %v", errRowRefused, r.Table, r.Key, err)
			}
		}
		// The retried rows one at a time with immediate checks: one still
		// refused is rolled back alone and stays refused, without sending
		// the whole batch down the careful path.
		if len(retries) > 0 {
			if _, err := tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = OFF`); err != nil {
				return res, nil, 0, fmt.Errorf("sqlite: apply: %w", err)
			}
			res.Conflicts = c.writeCarefully(ctx, tx, w, retries)
		}
	} else {
		res.Conflicts = c.writeCarefully(ctx, tx, w, rows)
	}
	res.Rows = w.written
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+applyingTable); err != nil {
		return res, nil, 0, fmt.Errorf("sqlite: apply: %w", err)
	}
	if res.Resolved, err = storeRefused(ctx, tx, before, res.Conflicts); err != nil {
		return res, nil, 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+metaTable+`(k, v) VALUES ('apply_cursor', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`, strconv.FormatUint(next, 10)); err != nil {
		return res, nil, 0, fmt.Errorf("sqlite: apply: store the position: %w", err)
	}
	if err := tx.Commit(); err != nil {
		if careful == nil && strings.Contains(err.Error(), "FOREIGN KEY") {
			return res, append(rows, retries...), next, fmt.Errorf("%w: %v", errRowRefused, err)
		}
		return res, nil, 0, fmt.Errorf("sqlite: apply: commit: %w", err)
	}
	res.Cursor = next
	c.note(func(st *db.Stats) {
		st.Applied += uint64(res.Rows)
		if res.Rows > 0 {
			st.LastApply = time.Now()
		}
	})
	return res, nil, 0, nil
}

// storeRefused makes the refused-rows table hold exactly now (keeping when
// each was first refused), and returns how many of before were written.
func storeRefused(ctx context.Context, tx *sql.Tx, before, now []db.RowConflict) (int, error) {
	if len(before) == 0 && len(now) == 0 {
		return 0, nil
	}
	done := db.Resolved(before, now)
	for _, k := range done {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+refusedTable+` WHERE tbl = ? AND key = ?`, k.Table, k.Key); err != nil {
			return 0, fmt.Errorf("sqlite: apply: forget a refused row written at last: %w", err)
		}
	}
	since := time.Now().UTC().Format(time.RFC3339)
	for _, k := range db.NewlyRefused(before, now) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+refusedTable+`(tbl, key, reason, since) VALUES (?, ?, ?, ?) ON CONFLICT(tbl, key) DO UPDATE SET reason = excluded.reason`, k.Table, k.Key, k.Reason, since); err != nil {
			return 0, fmt.Errorf("sqlite: apply: record a refused row: %w", err)
		}
	}
	return len(done), nil
}

// writeCarefully writes rows one at a time in savepoints with immediate
// foreign key checks; it retries refused rows while any succeeds, and
// returns the ones still refused as conflicts.
func (c *Conn) writeCarefully(ctx context.Context, tx *sql.Tx, w *writer, rows []db.Row) []db.RowConflict {
	_, _ = tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = OFF`)
	pending := rows
	reasons := map[int]string{}
	for {
		var still []db.Row
		progress := false
		for _, r := range pending {
			if _, err := tx.ExecContext(ctx, `SAVEPOINT ppsync_row`); err != nil {
				still = append(still, r)
				continue
			}
			if err := w.write(ctx, r); err != nil {
				_, _ = tx.ExecContext(ctx, `ROLLBACK TO ppsync_row`)
				_, _ = tx.ExecContext(ctx, `RELEASE ppsync_row`)
				reasons[len(still)] = err.Error()
				still = append(still, r)
				continue
			}
			_, _ = tx.ExecContext(ctx, `RELEASE ppsync_row`)
			progress = true
		}
		if len(still) == 0 || !progress {
			var out []db.RowConflict
			for i, r := range still {
				out = append(out, db.RowConflict{Table: r.Table, Key: r.Key, Fields: r.Fields, Reason: plainRefusal(reasons[i])})
			}
			return out
		}
		pending, reasons = still, map[int]string{}
	}
}

func plainRefusal(err string) string {
	switch {
	case strings.Contains(err, "FOREIGN KEY"):
		return "the database refused it: a foreign key (a row still refers to one being deleted, or refers to one that does not exist): " + err
	case strings.Contains(err, "UNIQUE"):
		return "the database refused it: a unique constraint (another row already has that value): " + err
	}
	return "the database refused it: " + err
}

// writer writes merged rows with prepared statements per column set.
type writer struct {
	tx      *sql.Tx
	sch     *db.Schema
	stmts   map[string]*sql.Stmt
	plans   map[string]*plan
	written int
}

// plan is what writing a table's rows needs, worked out once per apply.
type plan struct {
	t     *db.Table
	isPK  []bool // by column index
	pkCol []int  // the column index of each key column
	full  string // upsert of every column, in column order
	del   string
}

func newWriter(tx *sql.Tx, sch *db.Schema) *writer {
	return &writer{tx: tx, sch: sch, stmts: map[string]*sql.Stmt{}, plans: map[string]*plan{}}
}

func (w *writer) plan(name string) *plan {
	if p, ok := w.plans[name]; ok {
		return p
	}
	t, ok := w.sch.Table(name)
	if !ok {
		w.plans[name] = nil
		return nil
	}
	p := &plan{t: t, isPK: make([]bool, len(t.Columns))}
	var names, marks, sets, where, conflict []string
	for _, k := range t.PK {
		for j, col := range t.Columns {
			if col.Name == k {
				p.isPK[j] = true
				p.pkCol = append(p.pkCol, j)
			}
		}
		where = append(where, quote(k)+" = ?")
		conflict = append(conflict, quote(k))
	}
	for j, col := range t.Columns {
		names, marks = append(names, quote(col.Name)), append(marks, "?")
		if !p.isPK[j] {
			sets = append(sets, quote(col.Name)+" = excluded."+quote(col.Name))
		}
	}
	p.full = `INSERT INTO ` + quote(t.Name) + ` (` + strings.Join(names, ", ") + `) VALUES (` + strings.Join(marks, ", ") + `) ON CONFLICT (` + strings.Join(conflict, ", ") + `) DO `
	if len(sets) == 0 {
		p.full += `NOTHING`
	} else {
		p.full += `UPDATE SET ` + strings.Join(sets, ", ")
	}
	p.del = `DELETE FROM ` + quote(t.Name) + ` WHERE ` + strings.Join(where, " AND ")
	w.plans[name] = p
	return p
}

func (w *writer) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := w.stmts[q]; ok {
		return st, nil
	}
	st, err := w.tx.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	w.stmts[q] = st
	return st, nil
}

// write upserts or deletes one merged row. Fields of columns this database
// lacks (a newer practice software elsewhere) are left out; a table it lacks
// is skipped: node writes every row again once the schema changes.
func (w *writer) write(ctx context.Context, r db.Row) error {
	p := w.plan(r.Table)
	if p == nil {
		return nil
	}
	t := p.t
	keyVals, err := db.DecodeKey(t, r.Key)
	if err != nil {
		return err
	}
	if r.Fields == nil {
		st, err := w.stmt(ctx, p.del)
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(ctx, toSQLAll(keyVals)...); err != nil {
			return err
		}
		w.written++
		return nil
	}
	// Every column present (a whole row): the table's one upsert.
	full := true
	for _, col := range t.Columns {
		if _, ok := r.Fields[col.Name]; !ok {
			full = false
			break
		}
	}
	if full {
		args := make([]any, len(t.Columns))
		for j, col := range t.Columns {
			v, err := toSQLChecked(r.Fields[col.Name])
			if err != nil {
				return fmt.Errorf("column %s: %w", col.Name, err)
			}
			args[j] = v
		}
		for i, j := range p.pkCol {
			args[j] = toSQL(keyVals[i])
		}
		st, err := w.stmt(ctx, p.full)
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(ctx, args...); err != nil {
			return err
		}
		w.written++
		return nil
	}
	// Some columns (the family never set the others): an upsert of those.
	names, marks, sets := []string{}, []string{}, []string{}
	args := []any{}
	for i, k := range t.PK {
		names, marks = append(names, quote(k)), append(marks, "?")
		args = append(args, toSQL(keyVals[i]))
	}
	for j, col := range t.Columns {
		v, ok := r.Fields[col.Name]
		if !ok || p.isPK[j] {
			continue
		}
		sv, err := toSQLChecked(v)
		if err != nil {
			return fmt.Errorf("column %s: %w", col.Name, err)
		}
		names, marks = append(names, quote(col.Name)), append(marks, "?")
		sets = append(sets, quote(col.Name)+" = excluded."+quote(col.Name))
		args = append(args, sv)
	}
	conflict := make([]string, len(t.PK))
	for i, k := range t.PK {
		conflict[i] = quote(k)
	}
	q := `INSERT INTO ` + quote(t.Name) + ` (` + strings.Join(names, ", ") + `) VALUES (` + strings.Join(marks, ", ") + `) ON CONFLICT (` + strings.Join(conflict, ", ") + `) DO `
	if len(sets) == 0 {
		q += `NOTHING`
	} else {
		q += `UPDATE SET ` + strings.Join(sets, ", ")
	}
	st, err := w.stmt(ctx, q)
	if err != nil {
		return err
	}
	if _, err := st.ExecContext(ctx, args...); err != nil {
		return err
	}
	w.written++
	return nil
}

func toSQLAll(vs []any) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = toSQL(v)
	}
	return out
}

func toSQL(v any) any {
	out, err := toSQLChecked(v)
	if err != nil {
		return nil
	}
	return out
}

// toSQLChecked turns a field value into what SQLite stores: integers, reals,
// text, blobs, NULL; true/false as 1/0; arrays and other objects as JSON text.
func toSQLChecked(v any) (any, error) {
	switch x := v.(type) {
	case nil, int64, float64, string, []byte:
		return x, nil
	case bool:
		if x {
			return int64(1), nil
		}
		return int64(0), nil
	case map[string]any:
		if b, ok := db.AsBlob(x); ok {
			return b, nil
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", db.ErrValue, err)
	}
	return string(b), nil
}

// Write implements db.Connector: rows written as an apply writes them, with
// capture suppressed, in one transaction (for `db check --repair`).
func (c *Conn) Write(ctx context.Context, rows []db.Row) error {
	sch := c.currentSchema()
	if sch == nil {
		return errors.New("sqlite: write before the schema was read")
	}
	tx, err := c.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: repair: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = ON`); err != nil {
		return fmt.Errorf("sqlite: repair: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+applyingTable+`(x) VALUES (1)`); err != nil {
		return fmt.Errorf("sqlite: repair: %w", err)
	}
	w := newWriter(tx, sch)
	for _, r := range rows {
		if err := w.write(ctx, r); err != nil {
			return fmt.Errorf("sqlite: repair %s/%s: %w", r.Table, r.Key, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+applyingTable); err != nil {
		return fmt.Errorf("sqlite: repair: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: repair: commit: %w", err)
	}
	return nil
}
