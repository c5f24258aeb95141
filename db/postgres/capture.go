package postgres

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/internal/wire"
)

// captureFuncSQL is the row trigger function of every synced table.
// TG_ARGV[0] is the synced table's name (a partition's trigger fires with the
// partition's name), the rest its primary key columns. The key is recorded as
// [column, value, column, value, ...], so a change recorded before the key was
// redefined still says which columns it names. The function names no column
// of the table, so a column dropped or renamed by the practice software never
// breaks its writes; the keys of up to four columns are built with plain
// expressions (no query per row).
var captureFuncSQL = `CREATE OR REPLACE FUNCTION ` + captureFunc + `() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO, YMD'
SET "IntervalStyle" = 'postgres'
SET extra_float_digits = 3
SET bytea_output = 'hex'
AS $fn$
DECLARE
	n json;
	o json;
	kn json;
	ko json;
	vals json;
BEGIN
	IF TG_OP <> 'DELETE' THEN
		n := row_to_json(NEW);
		` + keySQL("kn", "n") + `
	END IF;
	IF TG_OP <> 'INSERT' THEN
		o := row_to_json(OLD);
		` + keySQL("ko", "o") + `
	END IF;
	IF TG_OP = 'INSERT' THEN
		INSERT INTO ppsync.changes (tbl, op, pk, vals) VALUES (TG_ARGV[0], 'p', kn, n);
	ELSIF TG_OP = 'DELETE' THEN
		INSERT INTO ppsync.changes (tbl, op, pk) VALUES (TG_ARGV[0], 'd', ko);
	ELSIF kn::text IS DISTINCT FROM ko::text THEN
		INSERT INTO ppsync.changes (tbl, op, pk) VALUES (TG_ARGV[0], 'd', ko);
		INSERT INTO ppsync.changes (tbl, op, pk, vals) VALUES (TG_ARGV[0], 'p', kn, n);
	ELSIF n::text <> o::text THEN
		SELECT json_object_agg(a.key, a.value) INTO vals
		FROM json_each(n) a JOIN json_each(o) b ON a.key = b.key
		WHERE a.value::text IS DISTINCT FROM b.value::text;
		IF vals IS NOT NULL THEN
			INSERT INTO ppsync.changes (tbl, op, pk, vals) VALUES (TG_ARGV[0], 'p', kn, vals);
		END IF;
	END IF;
	RETURN NULL;
END
$fn$`

// keySQL is the plpgsql that sets k to the key of the row r.
func keySQL(k, r string) string {
	pair := func(i int) string { return fmt.Sprintf("TG_ARGV[%d], %s -> TG_ARGV[%d]", i, r, i) }
	var b strings.Builder
	b.WriteString(k + " := CASE TG_NARGS")
	for n := 2; n <= 5; n++ {
		parts := make([]string, 0, n-1)
		for i := 1; i < n; i++ {
			parts = append(parts, pair(i))
		}
		fmt.Fprintf(&b, " WHEN %d THEN json_build_array(%s)", n, strings.Join(parts, ", "))
	}
	b.WriteString(" END;\n\t\tIF " + k + " IS NULL THEN SELECT json_agg(e.v ORDER BY a.i, e.j) INTO " + k +
		" FROM unnest(TG_ARGV[1:]) WITH ORDINALITY a(col, i), LATERAL (VALUES (1, to_json(a.col)), (2, " + r + " -> a.col)) e(j, v); END IF;")
	return b.String()
}

// keyFuncSQL and truncateFuncSQL record a TRUNCATE of a synced table as a
// delete of every row it removes (a BEFORE TRUNCATE statement trigger; row
// triggers do not fire for TRUNCATE).
const keyFuncSQL = `CREATE OR REPLACE FUNCTION ` + keyFunc + `(r json, cols text[]) RETURNS json
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT json_agg(e.v ORDER BY a.i, e.j) FROM unnest(cols) WITH ORDINALITY a(col, i),
		LATERAL (VALUES (1, to_json(a.col)), (2, r -> a.col)) e(j, v)
$fn$`

const truncateFuncSQL = `CREATE OR REPLACE FUNCTION ` + truncateFunc + `() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO, YMD'
SET "IntervalStyle" = 'postgres'
SET extra_float_digits = 3
SET bytea_output = 'hex'
AS $fn$
BEGIN
	IF current_setting('` + applyingGUC + `', true) IS DISTINCT FROM 'on' THEN
		EXECUTE format('INSERT INTO ppsync.changes (tbl, op, pk) SELECT $1, ''d'', ` + keyFunc + `(row_to_json(r.*), $2) FROM %s r', TG_RELID::regclass)
			USING TG_ARGV[0], TG_ARGV[1:];
		PERFORM pg_notify('` + notifyChan + `', '');
	END IF;
	RETURN NULL;
END
$fn$`

// wakeFuncSQL is the statement trigger function that wakes capture: NOTIFY
// is delivered at commit and folded per transaction.
const wakeFuncSQL = `CREATE OR REPLACE FUNCTION ` + wakeFunc + `() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	PERFORM pg_notify('` + notifyChan + `', '');
	RETURN NULL;
END
$fn$`

// triggerWhen is the capture triggers' WHEN clause: nothing is captured in
// an apply's transaction.
const triggerWhen = `current_setting('` + applyingGUC + `', true) IS DISTINCT FROM 'on'`

// Install implements db.Connector: the trigger of every synced table is
// created or, when its key changed, replaced, each table in its own short
// transaction (CREATE TRIGGER waits for the table's writers in flight; one
// lock at a time cannot join a lock cycle with the practice software).
// Triggers on tables no longer synced are dropped. With Options.Slot, the
// synced tables' sequences are then moved into the site's ID range (see "IDs"
// in the package doc).
func (c *Conn) Install(ctx context.Context, s *db.Schema) error {
	for _, f := range captureFuncs {
		if _, err := c.pool.Exec(ctx, f); err != nil {
			return c.errf("create the capture functions", err)
		}
	}
	type trig struct {
		args     string // the capture trigger's arguments, hex
		wake     bool
		truncate string // the truncate trigger's arguments, hex
	}
	existing := map[string]*trig{}
	rows, err := c.pool.Query(ctx, `
		SELECT c.relname, t.tgname, encode(t.tgargs, 'hex') FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND t.tgname IN ($2, $3, $4) AND NOT t.tgisinternal AND t.tgparentid = 0`, c.schema, triggerName, wakeTrigger, truncateTrigger)
	if err != nil {
		return c.errf("read the capture triggers", err)
	}
	for rows.Next() {
		var table, name, args string
		if err := rows.Scan(&table, &name, &args); err != nil {
			rows.Close()
			return c.errf("read the capture triggers", err)
		}
		if existing[table] == nil {
			existing[table] = &trig{}
		}
		switch name {
		case wakeTrigger:
			existing[table].wake = true
		case truncateTrigger:
			existing[table].truncate = args
		default:
			existing[table].args = args
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return c.errf("read the capture triggers", err)
	}
	synced := map[string]bool{}
	for _, t := range s.Tables {
		synced[t.Name] = true
		args := append([]string{t.Name}, t.PK...)
		var raw []byte
		for _, a := range args {
			raw = append(append(raw, a...), 0)
		}
		if e := existing[t.Name]; e != nil && e.wake && e.args == hex.EncodeToString(raw) && e.truncate == e.args {
			continue
		}
		lits := make([]string, len(args))
		for i, a := range args {
			lits[i] = lit(a)
		}
		err := c.inLockedTx(ctx, func(tx pgx.Tx) error {
			for _, q := range []string{
				`DROP TRIGGER IF EXISTS ` + triggerName + ` ON ` + c.qual(t.Name),
				`DROP TRIGGER IF EXISTS ` + wakeTrigger + ` ON ` + c.qual(t.Name),
				`DROP TRIGGER IF EXISTS ` + truncateTrigger + ` ON ` + c.qual(t.Name),
				`CREATE TRIGGER ` + triggerName + ` AFTER INSERT OR UPDATE OR DELETE ON ` + c.qual(t.Name) +
					` FOR EACH ROW WHEN (` + triggerWhen + `) EXECUTE FUNCTION ` + captureFunc + `(` + strings.Join(lits, ", ") + `)`,
				`CREATE TRIGGER ` + wakeTrigger + ` AFTER INSERT OR UPDATE OR DELETE ON ` + c.qual(t.Name) +
					` FOR EACH STATEMENT WHEN (` + triggerWhen + `) EXECUTE FUNCTION ` + wakeFunc + `()`,
				`CREATE TRIGGER ` + truncateTrigger + ` BEFORE TRUNCATE ON ` + c.qual(t.Name) +
					` FOR EACH STATEMENT EXECUTE FUNCTION ` + truncateFunc + `(` + strings.Join(lits, ", ") + `)`,
			} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return c.errf("create the capture triggers of "+t.Name, err)
		}
	}
	for table := range existing {
		if synced[table] {
			continue
		}
		err := c.inLockedTx(ctx, func(tx pgx.Tx) error {
			for _, name := range []string{triggerName, wakeTrigger, truncateTrigger} {
				if _, err := tx.Exec(ctx, `DROP TRIGGER IF EXISTS `+name+` ON `+c.qual(table)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return c.errf("drop the capture triggers of "+table+", which is no longer synced", err)
		}
	}
	return c.moveSequences(ctx, s) // slot 0: moves nothing, warns
}

// inLockedTx runs fn in a transaction that waits at most 10 s for a table lock.
func (c *Conn) inLockedTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '10s'`); err != nil {
			return err
		}
		return fn(tx)
	})
}

// Batch limits: a transaction larger than maxOps rows or about maxBatchBytes
// of recorded values is cut into consecutive batches (an entry has limits).
const maxBatchBytes = 256 << 10

// Capture implements db.Connector (see the package doc for the positions).
func (c *Conn) Capture(ctx context.Context, after uint64, maxOps int) ([]db.Batch, error) {
	var bs []db.Batch
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		var err error
		bs, err = c.capture(ctx, tx, after, maxOps)
		return err
	})
	if err != nil {
		if errors.Is(err, db.ErrRestored) || errors.Is(err, db.ErrValue) {
			return nil, err
		}
		return nil, c.errf("capture", err)
	}
	if n := countOps(bs); n > 0 {
		c.note(func(st *db.Stats) { st.Captured += uint64(n); st.LastCapture = time.Now() })
	}
	return bs, nil
}

func countOps(bs []db.Batch) int {
	n := 0
	for _, b := range bs {
		n += len(b.Ops)
	}
	return n
}

// capture marks and reads batches in tx (READ COMMITTED, committed by the
// caller before the batches are handed on).
func (c *Conn) capture(ctx context.Context, tx pgx.Tx, after uint64, maxOps int) ([]db.Batch, error) {
	if maxOps <= 0 {
		maxOps = 1000
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return nil, err
	}
	counter, err := c.metaUint(ctx, tx, "capture_pos")
	if err != nil {
		return nil, err
	}
	if after > counter {
		return nil, fmt.Errorf("%w: the node has captured up to position %d, but %s has handed out only %d", db.ErrRestored, after, c.where, counter)
	}
	// Marked at or below after: already in the node's log.
	if _, err := tx.Exec(ctx, `DELETE FROM `+changeTable+` WHERE pos <= $1`, int64(after)); err != nil {
		return nil, err
	}
	var marked int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+changeTable+` WHERE pos IS NOT NULL`).Scan(&marked); err != nil {
		return nil, err
	}
	if marked < maxOps {
		next, err := c.mark(ctx, tx, counter, maxOps-marked, maxOps)
		if err != nil {
			return nil, err
		}
		if next != counter {
			if err := setMeta(ctx, tx, "capture_pos", next); err != nil {
				return nil, err
			}
		}
	}
	rows, err := tx.Query(ctx, `SELECT id, pos, tbl, op, pk::text, vals::text FROM `+changeTable+` WHERE pos > $1 ORDER BY pos, id`, int64(after))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []db.Batch
	for rows.Next() {
		var r changeRow
		if err := rows.Scan(&r.id, &r.pos, &r.tbl, &r.op, &r.pk, &r.vals); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].Pos != uint64(r.pos) {
			out = append(out, db.Batch{Pos: uint64(r.pos)})
		}
		op, ok, err := c.toOp(ctx, r)
		if err != nil {
			return nil, err
		}
		if ok {
			b := &out[len(out)-1]
			b.Ops = append(b.Ops, op)
		}
	}
	return out, rows.Err()
}

// group is the unmarked rows of one transaction.
type group struct {
	xid    string
	n      int
	maxID  int64
	nbytes int64
}

// mark assigns positions after counter to whole committed transactions, in
// the order of their largest change id, until about budget rows; it returns
// the new counter.
func (c *Conn) mark(ctx context.Context, tx pgx.Tx, counter uint64, budget, maxOps int) (uint64, error) {
	rows, err := tx.Query(ctx, `
		SELECT xid::text, count(*), max(id), sum(octet_length(pk::text) + coalesce(octet_length(vals::text), 0))
		FROM `+changeTable+` WHERE pos IS NULL GROUP BY xid ORDER BY max(id)`)
	if err != nil {
		return counter, err
	}
	var groups []group
	total := 0
	for rows.Next() {
		var g group
		if err := rows.Scan(&g.xid, &g.n, &g.maxID, &g.nbytes); err != nil {
			rows.Close()
			return counter, err
		}
		if len(groups) > 0 && total+g.n > budget {
			break
		}
		groups = append(groups, g)
		total += g.n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return counter, err
	}
	if len(groups) == 0 {
		return counter, nil
	}
	var xids []string
	var los, his, poss []int64
	for _, g := range groups {
		if g.n <= maxOps && g.nbytes <= maxBatchBytes {
			counter++
			xids, los, his, poss = append(xids, g.xid), append(los, 0), append(his, g.maxID), append(poss, int64(counter))
			continue
		}
		// A large transaction: consecutive batches of its rows in id order.
		ids, err := tx.Query(ctx, `SELECT id, octet_length(pk::text) + coalesce(octet_length(vals::text), 0) FROM `+changeTable+
			` WHERE pos IS NULL AND xid = $1::xid8 ORDER BY id`, g.xid)
		if err != nil {
			return counter, err
		}
		var lo, last int64
		n, size := 0, int64(0)
		for ids.Next() {
			var id, sz int64
			if err := ids.Scan(&id, &sz); err != nil {
				ids.Close()
				return counter, err
			}
			if n > 0 && (n >= maxOps || size+sz > maxBatchBytes) {
				counter++
				xids, los, his, poss = append(xids, g.xid), append(los, lo), append(his, last), append(poss, int64(counter))
				n, size = 0, 0
			}
			if n == 0 {
				lo = id
			}
			n, size, last = n+1, size+sz, id
		}
		ids.Close()
		if err := ids.Err(); err != nil {
			return counter, err
		}
		if n > 0 {
			counter++
			xids, los, his, poss = append(xids, g.xid), append(los, lo), append(his, last), append(poss, int64(counter))
		}
	}
	_, err = tx.Exec(ctx, `UPDATE `+changeTable+` c SET pos = m.pos
		FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS m(xid, lo, hi, pos)
		WHERE c.pos IS NULL AND c.xid = m.xid::xid8 AND c.id BETWEEN m.lo AND m.hi`, xids, los, his, poss)
	return counter, err
}

type changeRow struct {
	id, pos int64
	tbl     string
	op      string
	pk      string
	vals    *string
}

// toOp decodes a change row; ok is false for a table that is no longer
// synced (or no longer exists).
func (c *Conn) toOp(ctx context.Context, r changeRow) (wire.Op, bool, error) {
	ti, err := c.info(ctx, r.tbl, false)
	if err != nil {
		return wire.Op{}, false, err
	}
	if ti == nil || !c.synced(r.tbl) {
		return wire.Op{}, false, nil
	}
	var pairs []json.RawMessage
	if err := json.Unmarshal([]byte(r.pk), &pairs); err != nil || len(pairs)%2 != 0 || len(pairs) == 0 {
		return wire.Op{}, false, fmt.Errorf("postgres: change %d of %s: damaged key %s", r.id, r.tbl, r.pk)
	}
	names := make([]string, len(pairs)/2)
	for i := range names {
		if err := json.Unmarshal(pairs[2*i], &names[i]); err != nil {
			return wire.Op{}, false, fmt.Errorf("postgres: change %d of %s: damaged key %s", r.id, r.tbl, r.pk)
		}
	}
	if !slices.Equal(names, ti.pk) { // the key was redefined: read the catalog again
		if ti, err = c.info(ctx, r.tbl, true); err != nil {
			return wire.Op{}, false, err
		}
		if ti == nil {
			return wire.Op{}, false, nil
		}
	}
	keyVals := make([]any, len(names))
	for i, name := range names {
		v, err := decodeValue(ti.col(name), pairs[2*i+1])
		if err != nil {
			v = decodeGeneric(pairs[2*i+1])
		}
		keyVals[i] = v
	}
	var fields map[string]any
	if r.op != "d" {
		if r.vals == nil {
			return wire.Op{}, false, fmt.Errorf("postgres: change %d of %s has no values", r.id, r.tbl)
		}
		if fields, err = c.decodeFields(ctx, ti, []byte(*r.vals)); err != nil {
			return wire.Op{}, false, fmt.Errorf("postgres: change %d of %s: %w", r.id, r.tbl, err)
		}
	}
	if !slices.Equal(names, ti.pk) {
		// Recorded under the key the table had before: a row whose values
		// name the current key is keyed by it; otherwise the old key stays.
		kv := make([]any, len(ti.pk))
		whole := fields != nil
		for i, k := range ti.pk {
			v, ok := fields[k]
			kv[i], whole = v, whole && ok
		}
		if whole {
			keyVals = kv
		} else {
			c.log.Warn("postgres: a change recorded before the table's primary key was redefined keeps the old key", "table", r.tbl, "key", r.pk)
		}
	}
	key, err := db.EncodeKey(keyVals)
	if err != nil {
		return wire.Op{}, false, err
	}
	if r.op == "d" {
		return wire.Op{Kind: wire.OpDelete, Table: r.tbl, Key: key}, true, nil
	}
	return wire.Op{Kind: wire.OpPut, Table: r.tbl, Key: key, Fields: fields}, true, nil
}

// synced reports whether table is one of the schema's synced tables (true
// when no schema was given yet).
func (c *Conn) synced(table string) bool {
	s := c.currentSchema()
	if s == nil {
		return true
	}
	_, ok := s.Table(table)
	return ok
}

// decodeFields decodes a row_to_json object of table ti: generated columns
// and columns that no longer exist are left out.
func (c *Conn) decodeFields(ctx context.Context, ti *tableInfo, obj []byte) (map[string]any, error) {
	var cols map[string]json.RawMessage
	if err := json.Unmarshal(obj, &cols); err != nil {
		return nil, err
	}
	refreshed := false
	fields := make(map[string]any, len(cols))
	for name, raw := range cols {
		ci := ti.col(name)
		if ci == nil && !refreshed { // a column added since the types were read
			refreshed = true
			nti, err := c.info(ctx, ti.name, true)
			if err != nil {
				return nil, err
			}
			if nti != nil {
				ti = nti
			}
			ci = ti.col(name)
		}
		if ci == nil || ci.generated {
			continue
		}
		v, err := decodeValue(ci, raw)
		if err != nil && !refreshed { // the column's type may have changed
			refreshed = true
			if nti, rerr := c.info(ctx, ti.name, true); rerr == nil && nti != nil && nti.col(name) != nil {
				ti = nti
				v, err = decodeValue(ti.col(name), raw)
			}
		}
		if err != nil {
			c.log.Warn("postgres: a captured value does not match its column's type; kept as read", "table", ti.name, "column", name, "err", err)
			v = decodeGeneric(raw)
		}
		fields[name] = v
	}
	return fields, nil
}

const (
	tsFormatZ = "2006-01-02T15:04:05.000000Z"
	tsFormat  = "2006-01-02T15:04:05.000000"
)

// decodeValue turns one value as row_to_json wrote it into a field value.
func decodeValue(ci *colInfo, raw json.RawMessage) (any, error) {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return nil, nil
	}
	k := kText
	if ci != nil {
		k = ci.kind
	}
	var s string
	isString := len(raw) > 0 && raw[0] == '"'
	if isString {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
	}
	switch k {
	case kInt:
		return strconv.ParseInt(string(raw), 10, 64)
	case kFloat4, kFloat8:
		if isString { // NaN, Infinity, -Infinity
			return s, nil
		}
		return strconv.ParseFloat(string(raw), 64)
	case kNumeric:
		if isString {
			return s, nil
		}
		return string(raw), nil
	case kBool:
		var b bool
		err := json.Unmarshal(raw, &b)
		return b, err
	case kBytea:
		if !strings.HasPrefix(s, `\x`) {
			return nil, fmt.Errorf("bytea %q is not in hex form", s)
		}
		b, err := hex.DecodeString(s[2:])
		if err != nil {
			return nil, err
		}
		return db.Blob(b), nil
	case kTimestamptz:
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t.UTC().Format(tsFormatZ), nil
		}
		return s, nil // infinity, BC, year 10000 and later: PostgreSQL's text
	case kTimestamp:
		if t, err := time.Parse("2006-01-02T15:04:05.999999999", s); err == nil {
			return t.Format(tsFormat), nil
		}
		return s, nil
	case kJSON:
		return string(raw), nil
	}
	if isString {
		return s, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	return buf.String(), nil
}

// decodeGeneric reads a value whose column type is not known: text as
// text, numbers as int64 or float64 (or their text when neither is exact),
// booleans, and anything else as its JSON text. It never fails, so capture
// never stops on a value.
func decodeGeneric(raw json.RawMessage) any {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	case 't', 'f':
		var b bool
		if json.Unmarshal(raw, &b) == nil {
			return b
		}
	case '{', '[':
	default:
		if i, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
			return i
		}
		if f, err := strconv.ParseFloat(string(raw), 64); err == nil && strconv.FormatFloat(f, 'g', -1, 64) == string(raw) {
			return f
		}
		return string(raw)
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return string(raw)
	}
	return buf.String()
}

// Ack implements db.Connector.
func (c *Conn) Ack(ctx context.Context, upto uint64) error {
	if _, err := c.pool.Exec(ctx, `DELETE FROM `+changeTable+` WHERE pos <= $1`, int64(upto)); err != nil {
		return c.errf("delete captured changes", err)
	}
	return nil
}

// Positions returns the capture counter (the last batch position handed
// out) and the stored apply position: a database restored from an older
// backup has them behind what the node recorded.
func (c *Conn) Positions(ctx context.Context) (changeSeq, applyCursor uint64, err error) {
	if changeSeq, err = c.metaUint(ctx, c.pool, "capture_pos"); err != nil {
		return 0, 0, err
	}
	applyCursor, err = c.ApplyCursor(ctx)
	return changeSeq, applyCursor, err
}

// Rebase, for a database restored from an older backup (db check --repair),
// makes the capture counter continue after pos, so no new change gets a
// position the node already counts as captured, and drops every pending
// change row: the restored ones were written before the backup and may have
// been captured long ago (capturing them again would undo newer changes of
// the family), and the repair compares the tables themselves with the merged
// state anyway.
func (c *Conn) Rebase(ctx context.Context, pos uint64) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
			return err
		}
		counter, err := c.metaUint(ctx, tx, "capture_pos")
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+changeTable); err != nil {
			return err
		}
		return setMeta(ctx, tx, "capture_pos", max(counter, pos))
	})
	if err != nil {
		return c.errf("rebase the capture position", err)
	}
	return nil
}

// Snapshot implements db.Connector: one REPEATABLE READ transaction deletes
// the change rows it sees (their effects are in the snapshot) and reads every
// synced table; the change rows it cannot see belong to transactions whose
// effects it cannot see either, and are captured later. It returns the
// capture counter, which every later batch exceeds.
func (c *Conn) Snapshot(ctx context.Context, s *db.Schema, batchRows int, fn func(ops []wire.Op) error) (uint64, error) {
	if batchRows <= 0 {
		batchRows = 1000
	}
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return 0, c.errf("snapshot", err)
	}
	defer conn.Release()
	// A session lock taken before the transaction starts, so the snapshot is
	// taken after any capture in flight committed.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
		return 0, c.errf("snapshot", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, lockKey)
	}()
	var pos uint64
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+changeTable); err != nil {
			return err
		}
		var err error
		if pos, err = c.metaUint(ctx, tx, "capture_pos"); err != nil {
			return err
		}
		var ops []wire.Op
		for i := range s.Tables {
			err := c.scan(ctx, tx, &s.Tables[i], func(r db.Row) error {
				ops = append(ops, wire.Op{Kind: wire.OpPut, Table: r.Table, Key: r.Key, Fields: r.Fields})
				if len(ops) >= batchRows {
					if err := fn(ops); err != nil {
						return err
					}
					ops = nil
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if len(ops) > 0 {
			return fn(ops)
		}
		return nil
	})
	if err != nil {
		return 0, c.errf("snapshot", err)
	}
	return pos, nil
}

// Rows implements db.Connector.
func (c *Conn) Rows(ctx context.Context, t *db.Table, fn func(db.Row) error) error {
	tx, err := c.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return c.errf("read "+t.Name, err)
	}
	defer tx.Rollback(context.Background())
	if err := c.scan(ctx, tx, t, fn); err != nil {
		return c.errf("read "+t.Name, err)
	}
	return tx.Commit(ctx)
}

// scan reads every row of t, in key order.
func (c *Conn) scan(ctx context.Context, tx pgx.Tx, t *db.Table, fn func(db.Row) error) error {
	ti, err := c.info(ctx, t.Name, false)
	if err != nil {
		return err
	}
	if ti == nil {
		return fmt.Errorf("postgres: the table %s no longer exists", t.Name)
	}
	order := make([]string, len(ti.pk))
	for i, k := range ti.pk {
		order[i] = "ppsync_r." + quote(k)
	}
	rows, err := tx.Query(ctx, `SELECT row_to_json(ppsync_r.*)::text FROM `+c.qual(t.Name)+` ppsync_r ORDER BY `+strings.Join(order, ", "))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var obj string
		if err := rows.Scan(&obj); err != nil {
			return err
		}
		row, err := c.rowOf(ctx, ti, []byte(obj))
		if err != nil {
			return err
		}
		if err := fn(row); err != nil {
			return err
		}
	}
	return rows.Err()
}

// rowOf decodes one row_to_json object of ti into a Row.
func (c *Conn) rowOf(ctx context.Context, ti *tableInfo, obj []byte) (db.Row, error) {
	fields, err := c.decodeFields(ctx, ti, obj)
	if err != nil {
		return db.Row{}, fmt.Errorf("postgres: read %s: %w", ti.name, err)
	}
	kv := make([]any, len(ti.pk))
	for i, k := range ti.pk {
		kv[i] = fields[k]
	}
	key, err := db.EncodeKey(kv)
	if err != nil {
		return db.Row{}, err
	}
	return db.Row{Table: ti.name, Key: key, Fields: fields}, nil
}

// captureFuncs are the functions the triggers call, created at Open and again
// by Install.
var captureFuncs = []string{captureFuncSQL, wakeFuncSQL, keyFuncSQL, truncateFuncSQL}
