package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/ppsync/ppsync/db"
)

// Row implements db.Connector: the row of t under key as the database holds
// it (ok false when it has none).
func (c *Conn) Row(ctx context.Context, t *db.Table, key string) (db.Row, bool, error) {
	kv, err := db.DecodeKey(t, key)
	if err != nil {
		return db.Row{}, false, err
	}
	cols := make([]string, len(t.Columns))
	ptrs := make([]any, len(t.Columns))
	vals := make([]any, len(t.Columns))
	for i, col := range t.Columns {
		cols[i] = "+" + quote(col.Name) // the storage class, not the declared type (see scanFrom)
		ptrs[i] = &vals[i]
	}
	where := make([]string, len(t.PK))
	for i, k := range t.PK {
		where[i] = quote(k) + " = ?"
	}
	err = c.r.QueryRowContext(ctx, `SELECT `+strings.Join(cols, ", ")+` FROM `+quote(t.Name)+` WHERE `+strings.Join(where, " AND "), toSQLAll(kv)...).Scan(ptrs...)
	if errors.Is(err, sql.ErrNoRows) {
		return db.Row{Table: t.Name, Key: key}, false, nil
	}
	if err != nil {
		return db.Row{}, false, fmt.Errorf("sqlite: read %s/%s: %w", t.Name, key, err)
	}
	fields := make(map[string]any, len(cols))
	for i, col := range t.Columns {
		fields[col.Name] = fromSQL(vals[i])
	}
	return db.Row{Table: t.Name, Key: key, Fields: fields}, true, nil
}
