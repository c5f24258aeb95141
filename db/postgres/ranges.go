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
// left alone. Sequences that cannot take the range are logged and left
// alone. It is idempotent and only ever moves a sequence forward.
func (c *Conn) moveSequences(ctx context.Context, s *db.Schema) error {
	lo, hi, ok := Range(c.opts.Slot)
	if !ok {
		if c.opts.Slot != 0 {
			c.log.Warn("postgres: this site's slot is too large for an ID range in a bigint; sequences left alone", "slot", c.opts.Slot)
		}
		return nil
	}
	seqs, err := c.ownedSequences(ctx, s)
	if err != nil {
		return err
	}
	for _, sq := range seqs {
		where := []any{"table", sq.table, "column", sq.column, "sequence", sq.name, "slot", c.opts.Slot, "range", fmt.Sprintf("%d-%d", lo, hi)}
		switch {
		case sq.increment != 1:
			c.log.Warn("postgres: a sequence with an increment other than 1 is left alone; its new IDs can collide with another site's", append(where, "increment", sq.increment)...)
			continue
		case sq.max < hi || !sq.holds(hi):
			c.log.Warn("postgres: a sequence whose column or MAXVALUE cannot hold this site's ID range is left alone (make the column bigint); its new IDs can collide with another site's",
				append(where, "type", sq.colType, "maxvalue", sq.max)...)
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
		case err != nil:
			return c.errf("move the sequence "+sq.name+" into this site's ID range", err)
		case moved:
			c.log.Info("postgres: sequence moved into this site's ID range", append(where, "was", next, "now", lo)...)
		case next > hi:
			c.log.Warn("postgres: a sequence is beyond this site's ID range and is left alone (never moved back); its new IDs can collide with another site's", append(where, "next", next)...)
		}
	}
	return nil
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
