package sqlite

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/internal/wire"
)

// quote quotes an SQL identifier.
func quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// lit quotes an SQL string literal.
func lit(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// val is the JSON that records one value with its storage class:
// ["integer",17], ["real","0.10000000000000001"], ["text","x"],
// ["blob","0aff"], ["null",null]. Reals go as 17 significant digits, which
// round-trip every double exactly.
func val(ref string) string {
	return `json_array(typeof(` + ref + `), CASE typeof(` + ref + `) WHEN 'blob' THEN hex(` + ref + `) WHEN 'real' THEN printf('%.17g', ` + ref + `) ELSE ` + ref + ` END)`
}

func pkJSON(t *db.Table, row string) string {
	parts := make([]string, len(t.PK))
	for i, k := range t.PK {
		parts[i] = val(row + "." + quote(k))
	}
	return "json_array(" + strings.Join(parts, ", ") + ")"
}

// objJSON builds a JSON object of the columns of row, or with changedOnly,
// of those whose value differs between OLD and NEW.
func objJSON(t *db.Table, row string, changedOnly bool) string {
	parts := make([]string, len(t.Columns))
	for i, col := range t.Columns {
		member := `',' || json_quote(` + lit(col.Name) + `) || ':' || ` + val(row+"."+quote(col.Name))
		if changedOnly {
			member = `CASE WHEN OLD.` + quote(col.Name) + ` IS NOT NEW.` + quote(col.Name) + ` THEN ` + member + ` ELSE '' END`
		}
		parts[i] = member
	}
	return `'{' || substr(` + strings.Join(parts, " || ") + `, 2) || '}'`
}

func anyChanged(t *db.Table, cols []db.Column) string {
	parts := make([]string, len(cols))
	for i, col := range cols {
		parts[i] = `OLD.` + quote(col.Name) + ` IS NOT NEW.` + quote(col.Name)
	}
	if len(parts) == 0 {
		return "0"
	}
	return "(" + strings.Join(parts, " OR ") + ")"
}

func pkCols(t *db.Table) []db.Column {
	var out []db.Column
	for _, k := range t.PK {
		c, _ := t.Column(k)
		out = append(out, c)
	}
	return out
}

// maxMaskColumns is the widest table whose changed columns fit a mask.
const maxMaskColumns = 62

// rowidCapture reports whether t's changes are recorded by rowid (read at
// capture time) rather than by value.
func rowidCapture(t *db.Table) bool { return !t.WithoutRowid && len(t.Columns) <= maxMaskColumns }

// triggerSQL returns the three capture triggers of t; rowidKey says that
// t's key is its rowid (a single INTEGER PRIMARY KEY column, the rowid's
// alias: see keyIsRowid).
//
// For a rowid table the triggers record as little as they can, so that the
// practice software's writes stay fast: an insert records the rowid, an
// update the rowid and a mask of the columns it changed, and the values are
// read from the row when the change is captured (a value a later
// transaction wrote is then sent twice, which changes nothing, and a row
// deleted since is left to its delete). A delete records its key's values,
// which cannot be read afterwards; so does an update that changes the key
// (a delete of the old key and an insert). A WITHOUT ROWID table, or one of
// more than 62 columns, records every value in the trigger.
//
// A rowid is the row's only while the row exists when it is the key. Any
// other rowid table (a composite or non-INTEGER key) gives a new row the
// rowid of a deleted one that had the highest, and VACUUM may renumber its
// rowids; so its inserts and updates also record the row's key, and capture
// reads a row's values only for the key the change recorded (readChanges).
func triggerSQL(t *db.Table, rowidKey bool) []string {
	if !rowidCapture(t) {
		return valueTriggerSQL(t)
	}
	name := func(kind string) string { return quote(triggerPrefix + t.Name + "_" + kind) }
	notApplying := `NOT EXISTS (SELECT 1 FROM ` + applyingTable + `)`
	ins := `INSERT INTO ` + changesTable + `(tbl, op, pk, vals, rid, mask) `
	mask := make([]string, len(t.Columns))
	for i, col := range t.Columns {
		mask[i] = `(CASE WHEN OLD.` + quote(col.Name) + ` IS NOT NEW.` + quote(col.Name) + ` THEN ` + strconv.FormatInt(int64(1)<<i, 10) + ` ELSE 0 END)`
	}
	newKey := pkJSON(t, "NEW")
	if rowidKey {
		newKey = `''`
	}
	pkChanged := anyChanged(t, pkCols(t))
	return []string{
		`CREATE TRIGGER ` + name("ins") + ` AFTER INSERT ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `VALUES (` + lit(t.Name) + `, 'i', ` + newKey + `, NULL, NEW.rowid, NULL); END`,
		`CREATE TRIGGER ` + name("upd") + ` AFTER UPDATE ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `SELECT ` + lit(t.Name) + `, 'u', ` + newKey + `, NULL, NEW.rowid, ` + strings.Join(mask, " | ") +
			` WHERE NOT ` + pkChanged + ` AND ` + anyChanged(t, t.Columns) + `; ` +
			ins + `SELECT ` + lit(t.Name) + `, 'delete', ` + pkJSON(t, "OLD") + `, NULL, NULL, NULL WHERE ` + pkChanged + `; ` +
			ins + `SELECT ` + lit(t.Name) + `, 'i', ` + newKey + `, NULL, NEW.rowid, NULL WHERE ` + pkChanged + `; END`,
		`CREATE TRIGGER ` + name("del") + ` AFTER DELETE ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `VALUES (` + lit(t.Name) + `, 'delete', ` + pkJSON(t, "OLD") + `, NULL, NULL, NULL); END`,
	}
}

// keyIsRowid reports whether table's key is its rowid: a rowid table whose
// primary key has no index of its own (a single INTEGER PRIMARY KEY column,
// the rowid's alias; "INTEGER PRIMARY KEY DESC" and "INT PRIMARY KEY" are
// not, and get an index like any other key).
func keyIsRowid(ctx context.Context, q querier, t *db.Table) (bool, error) {
	if t.WithoutRowid || len(t.PK) != 1 {
		return false, nil
	}
	var n int
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM pragma_index_list(?) WHERE origin = 'pk'`, t.Name).Scan(&n); err != nil {
		return false, fmt.Errorf("sqlite: read the key of %s: %w", t.Name, err)
	}
	return n == 0, nil
}

// valueTriggerSQL returns capture triggers that record every value.
func valueTriggerSQL(t *db.Table) []string {

	name := func(kind string) string { return quote(triggerPrefix + t.Name + "_" + kind) }
	notApplying := `NOT EXISTS (SELECT 1 FROM ` + applyingTable + `)`
	ins := `INSERT INTO ` + changesTable + `(tbl, op, pk, vals) `
	return []string{
		`CREATE TRIGGER ` + name("ins") + ` AFTER INSERT ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `VALUES (` + lit(t.Name) + `, 'put', ` + pkJSON(t, "NEW") + `, ` + objJSON(t, "NEW", false) + `); END`,
		// An update that keeps the key records the changed columns; one that
		// changes the key is a delete of the old key and a put of the new.
		`CREATE TRIGGER ` + name("upd") + ` AFTER UPDATE ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `SELECT ` + lit(t.Name) + `, 'put', ` + pkJSON(t, "NEW") + `, ` + objJSON(t, "NEW", true) +
			` WHERE NOT ` + anyChanged(t, pkCols(t)) + ` AND ` + anyChanged(t, t.Columns) + `; ` +
			ins + `SELECT ` + lit(t.Name) + `, 'delete', ` + pkJSON(t, "OLD") + `, NULL WHERE ` + anyChanged(t, pkCols(t)) + `; ` +
			ins + `SELECT ` + lit(t.Name) + `, 'put', ` + pkJSON(t, "NEW") + `, ` + objJSON(t, "NEW", false) + ` WHERE ` + anyChanged(t, pkCols(t)) + `; END`,
		`CREATE TRIGGER ` + name("del") + ` AFTER DELETE ON ` + quote(t.Name) + ` WHEN ` + notApplying + ` BEGIN ` +
			ins + `VALUES (` + lit(t.Name) + `, 'delete', ` + pkJSON(t, "OLD") + `, NULL); END`,
	}
}

// Install implements db.Connector: the triggers of every synced table are
// (re)created in one transaction, so a table's new columns are captured from
// the next commit on. Changes recorded by an earlier version's triggers and
// still waiting are brought to this version's format in the same
// transaction (upgradeChanges).
func (c *Conn) Install(ctx context.Context, s *db.Schema) error {
	tx, err := c.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: install the capture triggers: %w", err)
	}
	defer tx.Rollback()
	for _, t := range s.Tables {
		for _, kind := range []string{"ins", "upd", "del"} {
			if _, err := tx.ExecContext(ctx, `DROP TRIGGER IF EXISTS `+quote(triggerPrefix+t.Name+"_"+kind)); err != nil {
				return fmt.Errorf("sqlite: replace the capture triggers of %s: %w", t.Name, err)
			}
		}
		rowidKey, err := keyIsRowid(ctx, tx, &t)
		if err != nil {
			return err
		}
		if rowidCapture(&t) && !rowidKey {
			if err := upgradeChanges(ctx, tx, &t); err != nil {
				return err
			}
		}
		for _, q := range triggerSQL(&t, rowidKey) {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("sqlite: create the capture triggers of %s: %w", t.Name, err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: install the capture triggers: %w", err)
	}
	return nil
}

// upgradeChanges gives the waiting inserts and updates of t (whose key is
// not its rowid) that an earlier version recorded by rowid alone (an empty
// pk) the key they belong to, so that they are captured exactly once:
//   - one followed by an insert at the same rowid belongs to a row that was
//     deleted, or whose key changed, since (a row takes a rowid only when no
//     row holds it): that row's recorded delete covers it, so it goes;
//   - one whose rowid no row holds now belongs to a row deleted since, and
//     goes too;
//   - any other belongs to the row at its rowid now, and gets its key.
//
// Changes already in this version's format (a key recorded) are left alone,
// so this can run at every Install.
func upgradeChanges(ctx context.Context, tx *sql.Tx, t *db.Table) error {
	stmts := []string{
		`DELETE FROM ` + changesTable + ` WHERE id IN (SELECT c.id FROM ` + changesTable + ` AS c JOIN (SELECT rid, max(id) AS last FROM ` + changesTable +
			` WHERE tbl = ?1 AND op = 'i' GROUP BY rid) AS l ON l.rid = c.rid WHERE c.tbl = ?1 AND c.op IN ('i', 'u') AND c.pk = '' AND c.id < l.last)`,
		`DELETE FROM ` + changesTable + ` WHERE tbl = ?1 AND op IN ('i', 'u') AND pk = '' AND NOT EXISTS (SELECT 1 FROM ` + quote(t.Name) + ` WHERE rowid = ` + changesTable + `.rid)`,
		`UPDATE ` + changesTable + ` SET pk = coalesce((SELECT ` + pkJSON(t, quote(t.Name)) + ` FROM ` + quote(t.Name) + ` WHERE rowid = ` + changesTable + `.rid), '') WHERE tbl = ?1 AND op IN ('i', 'u') AND pk = ''`,
	}
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q, t.Name); err != nil {
			return fmt.Errorf("sqlite: bring the waiting changes of %s to this version's format: %w", t.Name, err)
		}
	}
	return nil
}

// decodeVal turns one recorded [class, value] into a field value.
func decodeVal(raw json.RawMessage) (any, error) {
	var pair [2]json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil {
		return nil, err
	}
	var class string
	if err := json.Unmarshal(pair[0], &class); err != nil {
		return nil, err
	}
	switch class {
	case "null":
		return nil, nil
	case "integer":
		return strconv.ParseInt(string(pair[1]), 10, 64)
	case "real":
		var s string
		if err := json.Unmarshal(pair[1], &s); err != nil {
			return nil, err
		}
		return strconv.ParseFloat(s, 64)
	case "text":
		var s string
		err := json.Unmarshal(pair[1], &s)
		return s, err
	case "blob":
		var s string
		if err := json.Unmarshal(pair[1], &s); err != nil {
			return nil, err
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, err
		}
		return db.Blob(b), nil
	}
	return nil, fmt.Errorf("unknown storage class %q", class)
}

type changeRow struct {
	id          uint64
	tbl, op, pk string
	vals        sql.NullString
	rid, mask   sql.NullInt64
}

func (r changeRow) keyOf() (string, error) {
	var pk []json.RawMessage
	if err := json.Unmarshal([]byte(r.pk), &pk); err != nil {
		return "", fmt.Errorf("sqlite: change %d of %s: key %q: %w", r.id, r.tbl, r.pk, err)
	}
	keyVals := make([]any, len(pk))
	for i, p := range pk {
		v, err := decodeVal(p)
		if err != nil {
			return "", fmt.Errorf("sqlite: change %d of %s: key: %w", r.id, r.tbl, err)
		}
		keyVals[i] = v
	}
	return db.EncodeKey(keyVals)
}

// valueOp turns a change recorded by value into an op.
func (r changeRow) valueOp() (wire.Op, error) {
	key, err := r.keyOf()
	if err != nil {
		return wire.Op{}, err
	}
	if r.op == "delete" {
		return wire.Op{Kind: wire.OpDelete, Table: r.tbl, Key: key}, nil
	}
	var cols map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.vals.String), &cols); err != nil {
		return wire.Op{}, fmt.Errorf("sqlite: change %d of %s: values: %w", r.id, r.tbl, err)
	}
	fields := make(map[string]any, len(cols))
	for name, raw := range cols {
		v, err := decodeVal(raw)
		if err != nil {
			return wire.Op{}, fmt.Errorf("sqlite: change %d of %s, column %s: %w", r.id, r.tbl, name, err)
		}
		fields[name] = v
	}
	return wire.Op{Kind: wire.OpPut, Table: r.tbl, Key: key, Fields: fields}, nil
}

type rowsQuerier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// readChanges reads committed changes after pos, up to about maxOps, as
// batches, reading the values of changes recorded by rowid from their rows
// in the same read. Transactions cannot be told apart inside SQLite, so a
// batch holds whatever whole transactions were committed between two reads;
// a transaction of more than maxOps changes spans several batches.
//
// An insert or update that recorded its row's key (a table whose key is not
// its rowid) is left to the delete of that key when one was recorded after
// it: the row it changed was deleted or re-keyed since, even if a row has
// the key again by now (that row's insert is recorded). Otherwise it takes
// the values of the row at its rowid if that row has the key, or else of
// the row with the key wherever it is now (rowFinder).
func readChanges(ctx context.Context, q rowsQuerier, sch *db.Schema, after uint64, maxOps int) ([]db.Batch, error) {
	if sch == nil {
		return nil, errors.New("sqlite: capture before the schema was read")
	}
	rows, err := q.QueryContext(ctx, `SELECT id, tbl, op, pk, vals, rid, mask FROM `+changesTable+` WHERE id > ? ORDER BY id LIMIT ?`, after, maxOps)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read changes: %w", err)
	}
	var crs []changeRow
	byRowid := map[string][]int64{}
	keyed := map[string]bool{} // tables with changes that recorded a key
	for rows.Next() {
		var r changeRow
		if err := rows.Scan(&r.id, &r.tbl, &r.op, &r.pk, &r.vals, &r.rid, &r.mask); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: read changes: %w", err)
		}
		crs = append(crs, r)
		if r.op == "i" || r.op == "u" {
			byRowid[r.tbl] = append(byRowid[r.tbl], r.rid.Int64)
			if r.pk != "" {
				keyed[r.tbl] = true
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read changes: %w", err)
	}
	if len(crs) == 0 {
		return nil, nil
	}
	current := map[string]map[int64]currentRow{}
	for tbl, rids := range byRowid {
		t, ok := sch.Table(tbl)
		if !ok {
			continue // a table no longer synced (or dropped): nothing to send
		}
		m, err := readRows(ctx, q, t, rids, keyed[tbl])
		if err != nil {
			return nil, err
		}
		current[tbl] = m
	}
	// The row each insert and update changed (nil: gone since).
	rowOf := make([]*currentRow, len(crs))
	var moved []int // changes whose key the row at their rowid does not have
	find := rowFinder{q: q, crs: crs, full: len(crs) >= maxOps}
	for i, r := range crs {
		if r.op != "i" && r.op != "u" {
			continue
		}
		row, ok := current[r.tbl][r.rid.Int64]
		switch {
		case r.pk == "": // the key is the rowid (or an old change not upgraded)
		case find.deletedLater(i):
			ok = false
		case !ok || row.key != r.pk:
			moved, ok = append(moved, i), false
		}
		if ok {
			rowOf[i] = &row
		}
	}
	if err := find.byKey(ctx, sch, moved, rowOf); err != nil {
		return nil, err
	}
	b := db.Batch{Pos: crs[len(crs)-1].id}
	for i, r := range crs {
		var op wire.Op
		switch r.op {
		case "i", "u":
			t, ok := sch.Table(r.tbl)
			if !ok {
				continue
			}
			if rowOf[i] == nil {
				continue // deleted since: its delete follows
			}
			op = rowOp(t, rowOf[i].vals, r)
		default:
			if op, err = r.valueOp(); err != nil {
				return nil, err
			}
		}
		b.Ops = append(b.Ops, op)
	}
	if len(b.Ops) == 0 {
		b.Ops = nil // only changes of rows gone since: the position still moves
	}
	return []db.Batch{b}, nil
}

// currentRow is a row's values as capture reads them, and its key as the
// triggers record it (when asked for).
type currentRow struct {
	vals []any
	key  string
}

// rowFinder finds the rows of changes that recorded their key.
type rowFinder struct {
	q    rowsQuerier
	crs  []changeRow // the changes read, in id order
	full bool        // more changes may follow crs in the change table
	// deleted: the last id of a recorded delete per table and key, in crs.
	deleted map[[2]string]uint64
}

// deletedLater reports whether a delete of the key that crs[i] recorded
// follows it among the changes read.
func (f *rowFinder) deletedLater(i int) bool {
	if f.deleted == nil {
		f.deleted = map[[2]string]uint64{}
		for _, c := range f.crs {
			if c.op == "delete" {
				f.deleted[[2]string{c.tbl, c.pk}] = c.id
			}
		}
	}
	r := f.crs[i]
	return f.deleted[[2]string{r.tbl, r.pk}] > r.id
}

// byKey sets rowOf[i] for the changes crs[i] of moved, whose rowid's row
// does not have the key they recorded. A delete of the key recorded after
// the change, among the changes not read this time, means that the row was
// deleted or re-keyed since: it stays nil. Otherwise the row moved to
// another rowid (VACUUM may renumber the rowids of a table whose key is not
// its rowid, as older SQLite versions do, and an UPDATE may set a rowid), and
// is read by its key, if it is still there.
func (f *rowFinder) byKey(ctx context.Context, sch *db.Schema, moved []int, rowOf []*currentRow) error {
	if len(moved) == 0 {
		return nil
	}
	later := map[[2]string]bool{}
	if f.full {
		last := f.crs[len(f.crs)-1].id
		const chunk = 500
		for off := 0; off < len(moved); off += chunk {
			part := moved[off:min(off+chunk, len(moved))]
			args := []any{last}
			for _, i := range part {
				args = append(args, f.crs[i].pk)
			}
			rows, err := f.q.QueryContext(ctx, `SELECT tbl, pk FROM `+changesTable+` WHERE id > ? AND op = 'delete' AND pk IN (`+
				strings.TrimSuffix(strings.Repeat("?,", len(part)), ",")+`)`, args...)
			if err != nil {
				return fmt.Errorf("sqlite: read changes: %w", err)
			}
			for rows.Next() {
				var k [2]string
				if err := rows.Scan(&k[0], &k[1]); err != nil {
					rows.Close()
					return fmt.Errorf("sqlite: read changes: %w", err)
				}
				later[k] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("sqlite: read changes: %w", err)
			}
		}
	}
	for _, i := range moved {
		r := f.crs[i]
		t, ok := sch.Table(r.tbl)
		if !ok || later[[2]string{r.tbl, r.pk}] {
			continue
		}
		row, ok, err := f.lookup(ctx, t, r)
		if err != nil {
			return err
		}
		if ok {
			rowOf[i] = &row
		}
	}
	return nil
}

// lookup reads the row of t with the key that r recorded.
func (f *rowFinder) lookup(ctx context.Context, t *db.Table, r changeRow) (currentRow, bool, error) {
	var pk []json.RawMessage
	if err := json.Unmarshal([]byte(r.pk), &pk); err != nil {
		return currentRow{}, false, fmt.Errorf("sqlite: change %d of %s: key %q: %w", r.id, r.tbl, r.pk, err)
	}
	if len(pk) != len(t.PK) {
		return currentRow{}, false, nil // recorded under another key (the table changed since)
	}
	where := make([]string, len(pk))
	var args []any
	for j, p := range pk {
		v, err := decodeVal(p)
		if err != nil {
			return currentRow{}, false, fmt.Errorf("sqlite: change %d of %s: key: %w", r.id, r.tbl, err)
		}
		if v == nil {
			where[j] = quote(t.PK[j]) + ` IS NULL`
			continue
		}
		where[j] = quote(t.PK[j]) + ` = ?`
		args = append(args, toSQL(v))
	}
	rows, err := f.q.QueryContext(ctx, `SELECT `+strings.Join(valueCols(t), ", ")+` FROM `+quote(t.Name)+` WHERE `+strings.Join(where, " AND ")+` LIMIT 1`, args...)
	if err != nil {
		return currentRow{}, false, fmt.Errorf("sqlite: read changed rows of %s: %w", t.Name, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return currentRow{}, false, rows.Err()
	}
	vals := make([]any, len(t.Columns))
	ptrs := make([]any, len(vals))
	for j := range vals {
		ptrs[j] = &vals[j]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return currentRow{}, false, fmt.Errorf("sqlite: read changed rows of %s: %w", t.Name, err)
	}
	for j := range vals {
		vals[j] = fromSQL(vals[j])
	}
	return currentRow{vals: vals, key: r.pk}, true, nil
}

// valueCols are t's columns as capture selects them: unary + keeps the
// value and its storage class but hides the declared type, so the driver
// never turns a DATE column's text into a time.Time.
func valueCols(t *db.Table) []string {
	cols := make([]string, len(t.Columns))
	for i, col := range t.Columns {
		cols[i] = "+" + quote(col.Name)
	}
	return cols
}

// rowOp makes the put of an insert (every column) or an update (the
// columns of its mask) from the row's current values.
func rowOp(t *db.Table, vals []any, r changeRow) wire.Op {
	kv := make([]any, len(t.PK))
	for i, k := range t.PK {
		for j, col := range t.Columns {
			if col.Name == k {
				kv[i] = vals[j]
			}
		}
	}
	key, _ := db.EncodeKey(kv)
	fields := make(map[string]any, len(t.Columns))
	for j, col := range t.Columns {
		if r.op == "u" && r.mask.Int64&(int64(1)<<j) == 0 {
			continue
		}
		fields[col.Name] = vals[j]
	}
	return wire.Op{Kind: wire.OpPut, Table: t.Name, Key: key, Fields: fields}
}

// readRows reads the current values of t's rows with the given rowids and,
// with withKey, each row's key as the triggers record it.
func readRows(ctx context.Context, q rowsQuerier, t *db.Table, rids []int64, withKey bool) (map[int64]currentRow, error) {
	cols := valueCols(t)
	key := `''`
	if withKey {
		key = pkJSON(t, quote(t.Name))
	}
	out := make(map[int64]currentRow, len(rids))
	const chunk = 500
	for off := 0; off < len(rids); off += chunk {
		part := rids[off:min(off+chunk, len(rids))]
		marks := strings.TrimSuffix(strings.Repeat("?,", len(part)), ",")
		args := make([]any, len(part))
		for i, id := range part {
			args[i] = id
		}
		rows, err := q.QueryContext(ctx, `SELECT rowid, `+key+`, `+strings.Join(cols, ", ")+` FROM `+quote(t.Name)+` WHERE rowid IN (`+marks+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("sqlite: read changed rows of %s: %w", t.Name, err)
		}
		for rows.Next() {
			var rid int64
			var r currentRow
			r.vals = make([]any, len(cols))
			ptrs := make([]any, len(cols)+2)
			ptrs[0], ptrs[1] = &rid, &r.key
			for i := range r.vals {
				ptrs[i+2] = &r.vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlite: read changed rows of %s: %w", t.Name, err)
			}
			for i := range r.vals {
				r.vals[i] = fromSQL(r.vals[i])
			}
			out[rid] = r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlite: read changed rows of %s: %w", t.Name, err)
		}
	}
	return out, nil
}

// Capture implements db.Connector.
func (c *Conn) Capture(ctx context.Context, after uint64, maxOps int) ([]db.Batch, error) {
	// One read transaction: the change rows and the rows they name are
	// read at one instant.
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("sqlite: read changes: %w", err)
	}
	defer tx.Rollback()
	return readChanges(ctx, tx, c.currentSchema(), after, maxOps)
}

// Ack implements db.Connector.
func (c *Conn) Ack(ctx context.Context, upto uint64) error {
	if _, err := c.w.ExecContext(ctx, `DELETE FROM `+changesTable+` WHERE id <= ?`, upto); err != nil {
		return fmt.Errorf("sqlite: delete captured changes: %w", err)
	}
	c.note(func(st *db.Stats) { st.LastCapture = time.Now() })
	return nil
}

// Positions returns the change table's id counter (the last id handed out,
// deleted rows included) and the stored apply position: a database restored
// from an older backup has both behind what the node recorded.
func (c *Conn) Positions(ctx context.Context) (changeSeq, applyCursor uint64, err error) {
	err = c.r.QueryRowContext(ctx, `SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0)`, changesTable).Scan(&changeSeq)
	if err != nil {
		return 0, 0, fmt.Errorf("sqlite: read the change counter: %w", err)
	}
	applyCursor, err = c.cursor(ctx, c.r)
	return changeSeq, applyCursor, err
}

// Rebase makes a restored database's change ids continue after pos (so no
// new change gets an id the node already counts as captured) and drops the
// change rows up to pos (captured before the backup was taken).
func (c *Conn) Rebase(ctx context.Context, pos uint64) error {
	tx, err := c.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: rebase: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+changesTable+` WHERE id <= ?`, pos); err != nil {
		return fmt.Errorf("sqlite: rebase: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?`, pos, changesTable); err != nil {
		return fmt.Errorf("sqlite: rebase: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO sqlite_sequence(name, seq) SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)`, changesTable, pos, changesTable); err != nil {
		return fmt.Errorf("sqlite: rebase: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: rebase: %w", err)
	}
	return nil
}

// Snapshot implements db.Connector: one read transaction sees every synced
// table and the change table's last id at one instant; changes up to that id
// are in the snapshot, later ones come through Capture.
func (c *Conn) Snapshot(ctx context.Context, s *db.Schema, batchRows int, fn func(ops []wire.Op) error) (uint64, error) {
	return c.SnapshotFrom(ctx, s, batchRows, "", "", func(ops []wire.Op, _, _ string, _ uint64) error { return fn(ops) })
}

// SnapshotFrom is Snapshot resumed after row afterKey of table (both ""
// from the start): what an initial load interrupted by a crash reads on.
// fn is told the table and key of the last row of each batch, so the caller
// can store where to resume, and this read's position. The position it returns is the change table's
// last id at this read; a resumed load must keep the position of its first
// read (changes since are captured again, which changes nothing).
func (c *Conn) SnapshotFrom(ctx context.Context, s *db.Schema, batchRows int, table, afterKey string, fn func(ops []wire.Op, table, lastKey string, pos uint64) error) (uint64, error) {
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("sqlite: snapshot: %w", err)
	}
	defer tx.Rollback()
	var pos uint64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM `+changesTable).Scan(&pos); err != nil {
		return 0, fmt.Errorf("sqlite: snapshot: %w", err)
	}
	var ops []wire.Op
	started := table == ""
	for i := range s.Tables {
		t := &s.Tables[i]
		var after []any
		if !started {
			if t.Name != table {
				continue
			}
			started = true
			if afterKey != "" {
				if after, err = db.DecodeKey(t, afterKey); err != nil {
					return 0, err
				}
			}
		}
		err := c.scanFrom(ctx, tx, t, after, func(r db.Row) error {
			ops = append(ops, wire.Op{Kind: wire.OpPut, Table: r.Table, Key: r.Key, Fields: r.Fields})
			if len(ops) >= batchRows {
				if err := fn(ops, r.Table, r.Key, pos); err != nil {
					return err
				}
				ops = nil
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	if len(ops) > 0 {
		last := ops[len(ops)-1]
		if err := fn(ops, last.Table, last.Key, pos); err != nil {
			return 0, err
		}
	}
	return pos, nil
}

// Rows implements db.Connector.
func (c *Conn) Rows(ctx context.Context, t *db.Table, fn func(db.Row) error) error {
	return c.scan(ctx, c.r, t, fn)
}

// scan reads every row of t with each value's storage class.
func (c *Conn) scan(ctx context.Context, q rowsQuerier, t *db.Table, fn func(db.Row) error) error {
	return c.scanFrom(ctx, q, t, nil, fn)
}

// scanFrom is scan of the rows whose key comes after the key values after
// (nil: every row), in key order.
func (c *Conn) scanFrom(ctx context.Context, q rowsQuerier, t *db.Table, after []any, fn func(db.Row) error) error {
	cols := make([]string, len(t.Columns))
	for i, col := range t.Columns {
		// Unary + keeps the value and its storage class but hides the
		// declared type, so the driver never turns a DATE column's text
		// into a time.Time.
		cols[i] = "+" + quote(col.Name)
	}
	order := make([]string, len(t.PK))
	for i, k := range t.PK {
		order[i] = quote(k)
	}
	where := ""
	var args []any
	if after != nil {
		where = ` WHERE (` + strings.Join(order, ", ") + `) > (` + strings.TrimSuffix(strings.Repeat("?, ", len(order)), ", ") + `)`
		args = toSQLAll(after)
	}
	rows, err := q.QueryContext(ctx, `SELECT `+strings.Join(cols, ", ")+` FROM `+quote(t.Name)+where+` ORDER BY `+strings.Join(order, ", "), args...)
	if err != nil {
		return fmt.Errorf("sqlite: read %s: %w", t.Name, err)
	}
	defer rows.Close()
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	pkIdx := make([]int, len(t.PK))
	for i, k := range t.PK {
		for j, col := range t.Columns {
			if col.Name == k {
				pkIdx[i] = j
			}
		}
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("sqlite: read %s: %w", t.Name, err)
		}
		fields := make(map[string]any, len(cols))
		for i, col := range t.Columns {
			fields[col.Name] = fromSQL(vals[i])
		}
		kv := make([]any, len(pkIdx))
		for i, j := range pkIdx {
			kv[i] = fromSQL(vals[j])
		}
		key, err := db.EncodeKey(kv)
		if err != nil {
			return err
		}
		if err := fn(db.Row{Table: t.Name, Key: key, Fields: fields}); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: read %s: %w", t.Name, err)
	}
	return nil
}

// fromSQL turns a value the driver scanned into a field value.
func fromSQL(v any) any {
	switch x := v.(type) {
	case []byte:
		return db.Blob(x)
	case int:
		return int64(x)
	case float32:
		return float64(x)
	}
	return v
}
