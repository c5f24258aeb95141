package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ppsync/ppsync/db"
)

// RangeSize is how many new IDs each site's sequences hand out: the site
// of slot s takes its new IDs from [s·RangeSize+1, (s+1)·RangeSize).
const RangeSize = 1_000_000_000_000

// Range is the ID range of a slot: the first and the last ID its sequences
// hand out (ok is false for slot 0, or a slot whose range a bigint cannot
// hold).
func Range(slot uint32) (lo, hi int64, ok bool) {
	if slot == 0 || uint64(slot)+1 > math.MaxInt64/RangeSize {
		return 0, 0, false
	}
	return int64(slot)*RangeSize + 1, (int64(slot)+1)*RangeSize - 1, true
}

// ownedSequence is a sequence owned by a column of a synced table (serial,
// bigserial, identity).
type ownedSequence struct {
	table, column string
	name          string // schema-qualified, quoted
	increment     int64
	max           int64
	colType       string // the column's base type (int8, int4, numeric, ...)
	colTypmod     int32
}

// ownedSequences lists the sequences owned by the columns of the synced
// tables.
func (c *Conn) ownedSequences(ctx context.Context, s *db.Schema) ([]ownedSequence, error) {
	names := make([]string, 0, len(s.Tables))
	for _, t := range s.Tables {
		names = append(names, t.Name)
	}
	if len(names) == 0 {
		return nil, nil
	}
	rows, err := c.pool.Query(ctx, `
		SELECT r.relname, a.attname, quote_ident(sn.nspname) || '.' || quote_ident(sq.relname),
			q.seqincrement, q.seqmax, b.typname,
			CASE WHEN t.typtype = 'd' AND a.atttypmod < 0 THEN t.typtypmod ELSE a.atttypmod END
		FROM pg_depend d
		JOIN pg_class sq ON sq.oid = d.objid AND sq.relkind = 'S'
		JOIN pg_namespace sn ON sn.oid = sq.relnamespace
		JOIN pg_sequence q ON q.seqrelid = sq.oid
		JOIN pg_class r ON r.oid = d.refobjid
		JOIN pg_namespace rn ON rn.oid = r.relnamespace
		JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum = d.refobjsubid
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
			AND d.deptype IN ('a', 'i') AND rn.nspname = $1 AND r.relname = ANY($2)
		ORDER BY 1, 2, 3`, c.schema, names)
	if err != nil {
		return nil, c.errf("read the sequences of the synced tables", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ownedSequence, error) {
		var o ownedSequence
		err := r.Scan(&o.table, &o.column, &o.name, &o.increment, &o.max, &o.colType, &o.colTypmod)
		return o, err
	})
	if err != nil {
		return nil, c.errf("read the sequences of the synced tables", err)
	}
	return out, nil
}

// holds reports whether the column can hold every ID up to hi.
func (o ownedSequence) holds(hi int64) bool {
	switch o.colType {
	case "int8":
		return true
	case "numeric":
		if o.colTypmod < 4 {
			return true // unconstrained
		}
		precision := int(((o.colTypmod - 4) >> 16) & 0xffff)
		scale := int((((o.colTypmod - 4) & 0x7ff) ^ 1024) - 1024)
		return precision-scale >= len(fmt.Sprint(hi))
	}
	return false
}

// moveSequences gives this site's sequences their range (see "IDs" in the
// package doc): a sequence of increment 1 whose next value is below the
// range is restarted at its start; one inside the range, or above it, is
// left alone. Sequences that cannot take the range are logged, left alone
// and listed by RangeWarnings, and so are columns whose default takes IDs
// from a sequence they do not own. It is idempotent and only ever moves a
// sequence forward.
func (c *Conn) moveSequences(ctx context.Context, s *db.Schema) error {
	var warn []string
	defer func() {
		c.mu.Lock()
		c.rangeWarn = warn
		c.mu.Unlock()
	}()
	lo, hi, ok := Range(c.opts.Slot)
	seqs, err := c.ownedSequences(ctx, s)
	if err != nil {
		return err
	}
	borrowed, err := c.borrowedSequences(ctx, s)
	if err != nil {
		return err
	}
	for _, b := range borrowed {
		c.log.Warn("postgres: a column's default takes IDs from a sequence it does not own, which is left alone; its new IDs can collide with another site's",
			"table", b.table, "column", b.column, "sequence", b.name)
		warn = append(warn, fmt.Sprintf("%s.%s: its default takes new IDs from the sequence %s, which the column does not own (not serial, bigserial or identity), so ppsync gave it no range of this site's own: new rows here can get the same IDs as rows of another site (make the column bigserial or an identity column)",
			b.table, b.column, b.name))
	}
	if !ok {
		why := "this site's certificate has no slot (it was issued by an older ppsync; one from `ppsync family move` has a slot)"
		if c.opts.Slot != 0 {
			why = fmt.Sprintf("this site's slot %d is too large for an ID range in a bigint", c.opts.Slot)
			c.log.Warn("postgres: this site's slot is too large for an ID range in a bigint; sequences left alone", "slot", c.opts.Slot)
		}
		for _, sq := range seqs {
			warn = append(warn, fmt.Sprintf("%s.%s: %s, so ppsync gave its sequence %s no ID range of this site's own: new rows here can get the same IDs as rows of another site", sq.table, sq.column, why, sq.name))
		}
		return nil
	}
	rng := fmt.Sprintf("%d to %d", lo, hi)
	for _, sq := range seqs {
		where := []any{"table", sq.table, "column", sq.column, "sequence", sq.name, "slot", c.opts.Slot, "range", fmt.Sprintf("%d-%d", lo, hi)}
		col := sq.table + "." + sq.column
		collide := "new rows here can get the same IDs as rows of another site"
		switch {
		case sq.increment != 1:
			c.log.Warn("postgres: a sequence with an increment other than 1 is left alone; its new IDs can collide with another site's", append(where, "increment", sq.increment)...)
			warn = append(warn, fmt.Sprintf("%s: its sequence %s counts in steps of %d, so ppsync left it alone instead of moving it into this site's ID range (%s): %s (set INCREMENT BY 1)", col, sq.name, sq.increment, rng, collide))
			continue
		case sq.max < hi || !sq.holds(hi):
			c.log.Warn("postgres: a sequence whose column or MAXVALUE cannot hold this site's ID range is left alone (make the column bigint); its new IDs can collide with another site's",
				append(where, "type", sq.colType, "maxvalue", sq.max)...)
			what := fmt.Sprintf("the column's type (%s) cannot hold", sq.colType)
			if sq.holds(hi) {
				what = fmt.Sprintf("its sequence's MAXVALUE (%d) is below", sq.max)
			}
			warn = append(warn, fmt.Sprintf("%s: %s this site's ID range (%s), so ppsync left its sequence %s alone: %s (make the column bigint)", col, what, rng, sq.name, collide))
			continue
		}
		// Read first, without a lock: once the sequence is in its range
		// (every start after the first), nothing waits on it.
		next, err := c.seqNext(ctx, c.pool, sq.name)
		moved := false
		if err == nil && next < lo {
			err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
				// ALTER SEQUENCE takes a lock that nextval and setval wait
				// for (LOCK TABLE refuses sequences), so nothing moves the
				// sequence between the read and the restart; the increment
				// is 1 already, so this changes nothing else. The lock
				// waits for the transactions that took a value from the
				// sequence, and the practice software's inserts queue
				// behind it: a short wait, then Install fails and the node
				// tries again.
				if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `ALTER SEQUENCE `+sq.name+` INCREMENT BY 1`); err != nil {
					return err
				}
				var err error
				if next, err = c.seqNext(ctx, tx, sq.name); err != nil || next >= lo {
					return err // moved meanwhile: never moved back
				}
				if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER SEQUENCE %s RESTART WITH %d`, sq.name, lo)); err != nil {
					return err
				}
				moved = true
				return nil
			})
		}
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe) && pe.Code == "42501": // insufficient_privilege: not the owner
			c.log.Warn("postgres: ppsync's role may not alter this sequence (it must own the table); its new IDs can collide with another site's", append(where, "err", pe.Message)...)
			warn = append(warn, fmt.Sprintf("%s: ppsync's database role may not change its sequence %s (the role must own the table), so it could not move it into this site's ID range (%s): %s", col, sq.name, rng, collide))
		case err != nil:
			return c.errf("move the sequence "+sq.name+" into this site's ID range", err)
		case moved:
			c.log.Info("postgres: sequence moved into this site's ID range", append(where, "was", next, "now", lo)...)
		case next > hi:
			c.log.Warn("postgres: a sequence is beyond this site's ID range and is left alone (never moved back); its new IDs can collide with another site's", append(where, "next", next)...)
			warn = append(warn, fmt.Sprintf("%s: its sequence %s is at %d, beyond this site's ID range (%s), and ppsync never moves a sequence back: %s", col, sq.name, next, rng, collide))
		}
	}
	return nil
}

// RangeWarnings names, in plain words, each column of a synced table whose
// new IDs do not come from this site's own range (see "IDs" in the package
// doc): its sequence could not be moved into the range (increment other
// than 1, a column type or MAXVALUE too small for it, not ppsync's to alter,
// already beyond it, no slot in the certificate), or its default takes IDs
// from a sequence it does not own. `ppsync db status` shows them. As of the
// last Install.
func (c *Conn) RangeWarnings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.rangeWarn...)
}

// borrowedSequence is a column of a synced table whose default calls
// nextval on a sequence the column does not own.
type borrowedSequence struct {
	table, column, name string
}

// borrowedSequences lists the columns of the synced tables whose default
// takes values from a sequence they do not own.
func (c *Conn) borrowedSequences(ctx context.Context, s *db.Schema) ([]borrowedSequence, error) {
	names := make([]string, 0, len(s.Tables))
	for _, t := range s.Tables {
		names = append(names, t.Name)
	}
	if len(names) == 0 {
		return nil, nil
	}
	rows, err := c.pool.Query(ctx, `
		SELECT DISTINCT r.relname, a.attname, quote_ident(sn.nspname) || '.' || quote_ident(sq.relname)
		FROM pg_attrdef ad
		JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
		JOIN pg_class sq ON sq.oid = d.refobjid AND sq.relkind = 'S'
		JOIN pg_namespace sn ON sn.oid = sq.relnamespace
		JOIN pg_class r ON r.oid = ad.adrelid
		JOIN pg_namespace rn ON rn.oid = r.relnamespace
		JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum = ad.adnum
		WHERE rn.nspname = $1 AND r.relname = ANY($2)
			AND NOT EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass AND o.objid = sq.oid
				AND o.refclassid = 'pg_class'::regclass AND o.refobjid = r.oid AND o.refobjsubid = a.attnum AND o.deptype IN ('a', 'i'))
		ORDER BY 1, 2, 3`, c.schema, names)
	if err != nil {
		return nil, c.errf("read the column defaults of the synced tables", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (borrowedSequence, error) {
		var b borrowedSequence
		err := r.Scan(&b.table, &b.column, &b.name)
		return b, err
	})
	if err != nil {
		return nil, c.errf("read the column defaults of the synced tables", err)
	}
	return out, nil
}

// seqNext is the value a sequence hands out next (without taking it).
func (c *Conn) seqNext(ctx context.Context, q queryRower, name string) (int64, error) {
	var last int64
	var called bool
	if err := q.QueryRow(ctx, `SELECT last_value, is_called FROM `+name).Scan(&last, &called); err != nil {
		return 0, err
	}
	if called {
		return last + 1, nil
	}
	return last, nil
}
