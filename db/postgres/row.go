package postgres

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/ppsync/ppsync/db"
)

// Row implements db.Connector: the row of t under key as the database holds
// it (ok false when it has none).
func (c *Conn) Row(ctx context.Context, t *db.Table, key string) (db.Row, bool, error) {
	sch := &db.Schema{Tables: []db.Table{*t}}
	st, ok, err := c.prepare(ctx, sch, db.Row{Table: t.Name, Key: key}) // a delete: its argument names the key, typed
	if err != nil || !ok {
		return db.Row{Table: t.Name, Key: key}, false, err
	}
	ti, err := c.info(ctx, t.Name, false)
	if err != nil || ti == nil {
		return db.Row{Table: t.Name, Key: key}, false, err
	}
	where := make([]string, len(ti.pk))
	for i, k := range ti.pk {
		where[i] = "x." + quote(k) + " = r." + quote(k)
	}
	q := c.qual(t.Name)
	var obj string
	err = c.pool.QueryRow(ctx, `SELECT row_to_json(x.*)::text FROM `+q+` x, json_populate_record(NULL::`+q+`, $1::json) r WHERE `+strings.Join(where, " AND "), st.arg).Scan(&obj)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Row{Table: t.Name, Key: key}, false, nil
	}
	if err != nil {
		return db.Row{}, false, c.errf("read "+t.Name+"/"+key, err)
	}
	r, err := c.rowOf(ctx, ti, []byte(obj))
	return r, err == nil, err
}
