package postgres

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/ppsync/ppsync/db"
)

// kind is how a column's values are read and written.
type kind int

const (
	kText        kind = iota // any type read as its text
	kInt                     // int2, int4, int8
	kFloat4                  // real
	kFloat8                  // double precision
	kNumeric                 // numeric: exact text
	kBool                    // boolean
	kBytea                   // bytea: db.Blob
	kTimestamptz             // RFC 3339 in UTC, microseconds
	kTimestamp               // ISO, microseconds
	kDate                    // ISO
	kJSON                    // json, jsonb: their text
	kStruct                  // arrays and composites: their JSON text
)

// colInfo is what the connector knows of a column beyond db.Column.
type colInfo struct {
	name      string
	decl      string // format_type, as declared
	kind      kind
	bits      int // integer width
	precision int // numeric precision, -1 unconstrained
	scale     int // numeric scale
	frac      int // fractional second digits kept (timestamp(p)), -1 unconstrained
	generated bool
	pk        int
}

type tableInfo struct {
	name   string
	cols   []colInfo
	byName map[string]*colInfo
	pk     []string
}

func (t *tableInfo) col(name string) *colInfo { return t.byName[name] }

// fkGraph is the foreign keys among the synced schema's tables.
type fkGraph struct {
	rank       map[string]int  // parents before children
	referenced map[string]bool // tables some foreign key points at
}

// Schema implements db.Connector: every table of the configured schema with
// a primary key (partitioned tables as one, their partitions not).
func (c *Conn) Schema(ctx context.Context) (*db.Schema, error) {
	rows, err := c.pool.Query(ctx, `
		SELECT c.relname,
			EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
			EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
				WHERE d.classid = 'pg_class'::regclass AND d.refobjid = c.oid AND d.deptype IN ('a', 'i'))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
		ORDER BY c.relname`, c.schema)
	if err != nil {
		return nil, c.errf("read the tables", err)
	}
	type tinfo struct {
		name      string
		hasPK     bool
		sequences bool
	}
	var all []tinfo
	for rows.Next() {
		var t tinfo
		if err := rows.Scan(&t.name, &t.hasPK, &t.sequences); err != nil {
			rows.Close()
			return nil, c.errf("read the tables", err)
		}
		all = append(all, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, c.errf("read the tables", err)
	}
	only := map[string]bool{}
	for _, t := range c.opts.Tables {
		only[t] = true
	}
	s := &db.Schema{}
	infos := map[string]*tableInfo{}
	for _, t := range all {
		if (len(only) > 0 && !only[t.name]) || slices.Contains(c.opts.Exclude, t.name) {
			continue
		}
		if !t.hasPK {
			s.Skipped = append(s.Skipped, db.Skipped{Table: t.name, Reason: "it has no primary key"})
			continue
		}
		ti, err := c.loadTable(ctx, t.name)
		if err != nil {
			return nil, err
		}
		if ti == nil {
			continue // dropped meanwhile
		}
		tab := db.Table{Name: t.name, PK: ti.pk, Autoincrement: t.sequences}
		for _, col := range ti.cols {
			if col.generated {
				continue // computed by the database, never written
			}
			tab.Columns = append(tab.Columns, db.Column{Name: col.name, Type: col.decl, PK: col.pk})
		}
		s.Tables = append(s.Tables, tab)
		infos[t.name] = ti
	}
	for name := range only {
		if _, ok := s.Table(name); !ok && !skipped(s, name) {
			return nil, fmt.Errorf("postgres: db_tables names %q, which the schema %s of %s does not have", name, c.schema, c.where)
		}
	}
	if c.opts.VersionQuery != "" {
		var v any
		if err := c.pool.QueryRow(ctx, c.opts.VersionQuery).Scan(&v); err != nil {
			return nil, c.errf("run the schema version query", err)
		}
		n, err := strconv.ParseInt(fmt.Sprint(v), 10, 64)
		if err != nil || n < 0 || n > 1<<32-1 {
			return nil, fmt.Errorf("postgres: the schema version query returned %v, not a version number", v)
		}
		s.Version = uint32(n)
	}
	fk, err := c.loadFK(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	for k, v := range infos {
		c.tables[k] = v
	}
	c.fk = fk
	c.mu.Unlock()
	return s, nil
}

func skipped(s *db.Schema, name string) bool {
	for _, k := range s.Skipped {
		if k.Table == name {
			return true
		}
	}
	return false
}

// Sequences returns the sequences owned by each synced table's columns
// (serial and identity columns), for moving them into a site's key range.
func (c *Conn) Sequences(ctx context.Context, s *db.Schema) (map[string][]string, error) {
	out := map[string][]string{}
	for _, t := range s.Tables {
		rows, err := c.pool.Query(ctx, `
			SELECT s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
			WHERE d.classid = 'pg_class'::regclass AND d.refobjid = $1::regclass AND d.deptype IN ('a', 'i')
			ORDER BY 1`, c.qual(t.Name))
		if err != nil {
			return nil, c.errf("read the sequences of "+t.Name, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, c.errf("read the sequences of "+t.Name, err)
		}
		if len(names) > 0 {
			out[t.Name] = names
		}
	}
	return out, nil
}

// loadTable reads the columns of a table of the synced schema (nil when it
// does not exist).
func (c *Conn) loadTable(ctx context.Context, name string) (*tableInfo, error) {
	rows, err := c.pool.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
			b.typname, b.typcategory::text, b.typtype::text,
			CASE WHEN t.typtype = 'd' AND a.atttypmod < 0 THEN t.typtypmod ELSE a.atttypmod END,
			coalesce((SELECT k.ord FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(att, ord)
				WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.att = a.attnum), 0)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, c.schema, name)
	if err != nil {
		return nil, c.errf("read the columns of "+name, err)
	}
	defer rows.Close()
	ti := &tableInfo{name: name, byName: map[string]*colInfo{}}
	pk := map[int64]string{}
	for rows.Next() {
		var ci colInfo
		var base, cat, typtype string
		var typmod int32
		var pos int64
		if err := rows.Scan(&ci.name, &ci.decl, &ci.generated, &base, &cat, &typtype, &typmod, &pos); err != nil {
			return nil, c.errf("read the columns of "+name, err)
		}
		ci.kind, ci.bits = kindOf(base, cat, typtype)
		ci.precision, ci.scale, ci.frac = -1, 0, -1
		switch ci.kind {
		case kNumeric:
			if typmod >= 4 {
				ci.precision = int(((typmod - 4) >> 16) & 0xffff)
				ci.scale = int((((typmod - 4) & 0x7ff) ^ 1024) - 1024)
			}
		case kTimestamp, kTimestamptz:
			if typmod >= 0 {
				ci.frac = int(typmod)
			}
		}
		ci.pk = int(pos)
		if pos > 0 {
			pk[pos] = ci.name
		}
		ti.cols = append(ti.cols, ci)
	}
	if err := rows.Err(); err != nil {
		return nil, c.errf("read the columns of "+name, err)
	}
	if len(ti.cols) == 0 {
		return nil, nil
	}
	for i := range ti.cols {
		ti.byName[ti.cols[i].name] = &ti.cols[i]
	}
	for i := int64(1); i <= int64(len(pk)); i++ {
		ti.pk = append(ti.pk, pk[i])
	}
	return ti, nil
}

func kindOf(base, cat, typtype string) (kind, int) {
	switch base {
	case "int2":
		return kInt, 16
	case "int4":
		return kInt, 32
	case "int8":
		return kInt, 64
	case "float4":
		return kFloat4, 0
	case "float8":
		return kFloat8, 0
	case "numeric":
		return kNumeric, 0
	case "bool":
		return kBool, 0
	case "bytea":
		return kBytea, 0
	case "timestamptz":
		return kTimestamptz, 0
	case "timestamp":
		return kTimestamp, 0
	case "date":
		return kDate, 0
	case "json", "jsonb":
		return kJSON, 0
	}
	if cat == "A" || typtype == "c" {
		return kStruct, 0
	}
	return kText, 0
}

// info returns the column types of table name, read from the catalog the
// first time, or again with refresh (a column the cache lacks).
func (c *Conn) info(ctx context.Context, name string, refresh bool) (*tableInfo, error) {
	c.mu.Lock()
	ti := c.tables[name]
	c.mu.Unlock()
	if ti != nil && !refresh {
		return ti, nil
	}
	ti, err := c.loadTable(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if ti != nil {
		c.tables[name] = ti
	} else {
		delete(c.tables, name)
	}
	c.mu.Unlock()
	return ti, nil
}

// loadFK reads the foreign keys among the synced schema's tables and ranks
// the tables parents first (a cycle's tables keep their name order).
func (c *Conn) loadFK(ctx context.Context) (*fkGraph, error) {
	rows, err := c.pool.Query(ctx, `
		SELECT cl.relname, pl.relname
		FROM pg_constraint k
		JOIN pg_class cl ON cl.oid = k.conrelid
		JOIN pg_class pl ON pl.oid = k.confrelid
		JOIN pg_namespace n ON n.oid = cl.relnamespace
		WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = $1 AND pl.relnamespace = n.oid`, c.schema)
	if err != nil {
		return nil, c.errf("read the foreign keys", err)
	}
	defer rows.Close()
	g := &fkGraph{rank: map[string]int{}, referenced: map[string]bool{}}
	parents := map[string][]string{}
	nodes := map[string]bool{}
	for rows.Next() {
		var child, parent string
		if err := rows.Scan(&child, &parent); err != nil {
			return nil, c.errf("read the foreign keys", err)
		}
		g.referenced[parent] = true
		nodes[child], nodes[parent] = true, true
		if child != parent {
			parents[child] = append(parents[child], parent)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, c.errf("read the foreign keys", err)
	}
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	// Repeatedly take the tables whose parents all have a rank.
	for len(g.rank) < len(names) {
		progress := false
		for _, n := range names {
			if _, ok := g.rank[n]; ok {
				continue
			}
			ready := true
			for _, p := range parents[n] {
				if _, ok := g.rank[p]; !ok {
					ready = false
					break
				}
			}
			if ready {
				g.rank[n] = len(g.rank) + 1
				progress = true
			}
		}
		if !progress { // a cycle: the rest in name order
			for _, n := range names {
				if _, ok := g.rank[n]; !ok {
					g.rank[n] = len(g.rank) + 1
				}
			}
		}
	}
	return g, nil
}

// SetSchema gives the connector the tables it writes.
func (c *Conn) SetSchema(s *db.Schema) {
	c.mu.Lock()
	c.sch = s
	c.mu.Unlock()
}

func (c *Conn) currentSchema() *db.Schema {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sch
}

func (c *Conn) fkGraph(ctx context.Context) (*fkGraph, error) {
	c.mu.Lock()
	g := c.fk
	c.mu.Unlock()
	if g != nil {
		return g, nil
	}
	g, err := c.loadFK(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.fk = g
	c.mu.Unlock()
	return g, nil
}
