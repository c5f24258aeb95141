package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/db"
	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/state"
)

const dbCheckListLimit = 1000

// dbStatus is DBStatus; without perTable it leaves out the per-table count
// of merged changes waiting to be written (a read of up to dbPendingScan
// changes), which /metrics does not show.
func (n *Node) dbStatus(perTable bool) api.DBStatus {
	st := api.DBStatus{Tables: []string{}, PerTable: []api.DBTableStatus{}, Skipped: []string{}, Refused: []api.DBRowConflict{}, Warnings: []string{}}
	if n.dbs == nil {
		st.Problem = "this node syncs no practice database (set one up with `ppsync init --db`)"
		return st
	}
	d := n.dbs
	st.Driver, st.Database = d.c.Driver(), n.id.DBDetail
	cs := d.c.Stats()
	st.PendingCapture = cs.PendingCapture
	if !cs.LastCapture.IsZero() {
		t := cs.LastCapture.UTC()
		st.LastCapture = &t
	}
	if !cs.LastApply.IsZero() {
		t := cs.LastApply.UTC()
		st.LastApply = &t
	}
	var pendingApply map[string]uint64
	if ss, err := n.state.Stats(); err == nil {
		if cur, err := d.c.ApplyCursor(n.ctx); err == nil {
			cur = max(cur, d.echoFloor()) // changes up to it are the database's own
			if ss.Cursor > cur {
				st.PendingApply = ss.Cursor - cur
				if perTable {
					pendingApply = d.pendingByTable(cur)
				}
			}
		}
	}
	d.statusInto(&st, cs, pendingApply)
	return st
}

// statusInto fills in what the owner goroutine keeps of the database's
// sync: counters, schema, warnings, refused rows.
func (d *dbsync) statusInto(st *api.DBStatus, cs db.Stats, pendingApply map[string]uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st.Captured, st.Applied, st.Loading, st.LoadedRows, st.Problem = d.captured, d.applied, d.loading, d.loadRows, d.lastErr
	if d.schema != nil {
		st.SchemaVersion = d.schema.Version
		for _, t := range d.schema.Tables {
			st.Tables = append(st.Tables, t.Name)
			ts := api.DBTableStatus{Table: t.Name, Captured: d.perCaptured[t.Name], Applied: d.perApplied[t.Name],
				PendingCapture: cs.PendingByTable[t.Name], PendingApply: pendingApply[t.Name]}
			if at, ok := d.lastCaptured[t.Name]; ok {
				at = at.UTC()
				ts.LastCapture = &at
			}
			if at, ok := d.lastApplied[t.Name]; ok {
				at = at.UTC()
				ts.LastApply = &at
			}
			for _, k := range d.refused {
				if k.Table == t.Name {
					ts.Refused++
				}
			}
			if ts.Refused > 0 {
				ts.Problem = fmt.Sprintf("the database refused %d merged rows (ppsync conflicts shows them with both versions); each is tried again after every change", ts.Refused)
			}
			st.PerTable = append(st.PerTable, ts)
		}
		for _, k := range d.schema.Skipped {
			st.Skipped = append(st.Skipped, k.Table+": "+k.Reason)
		}
		for _, t := range d.schema.Tables {
			if c, _ := t.Column(t.PK[0]); len(t.PK) == 1 && db.IntegerType(c.Type) && d.c.Driver() == "sqlite" {
				st.Warnings = append(st.Warnings, t.Name+": SQLite gives a new row the highest ID + 1 (with or without AUTOINCREMENT), so two sites inserting at the same time can create the same ID; ppsync records it as a conflict (ppsync conflicts) and keeps the newer row")
			}
		}
		// PostgreSQL: the columns whose sequences got no range of this
		// site's own (db/postgres RangeWarnings).
		if rw, ok := d.c.(interface{ RangeWarnings() []string }); ok {
			st.Warnings = append(st.Warnings, rw.RangeWarnings()...)
		}
	}
	for _, c := range d.refused {
		st.Refused = append(st.Refused, api.DBRowConflict{Table: c.Table, Key: c.Key, Reason: c.Reason, Merged: c.Fields})
	}
}

// DBCheck compares every synced table's rows with the merged state; with
// repair it makes the database match through the apply path (rows the family
// never saw are captured as this site's, not deleted).
func (n *Node) DBCheck(ctx context.Context, repair bool) (api.DBCheckResult, error) {
	start := n.cfg.Now()
	res := api.DBCheckResult{Differences: []api.DBRowDiff{}, Tables: []string{}, Complete: true, Time: start.UTC()}
	if n.dbs == nil {
		return res, badRequest("this node syncs no practice database")
	}
	d := n.dbs
	sch := d.currentSchema()
	if sch == nil {
		return res, fmt.Errorf("node: the practice database is not ready yet: %s", d.problem())
	}
	var fix []db.Row
	var newOps []wire.Op
	for i := range sch.Tables {
		t := &sch.Tables[i]
		res.Tables = append(res.Tables, t.Name)
		inDB := map[string]map[string]any{}
		if err := d.c.Rows(ctx, t, func(r db.Row) error {
			inDB[r.Key] = r.Fields
			return nil
		}); err != nil {
			return res, err
		}
		note := func(df api.DBRowDiff) {
			if len(res.Differences) < dbCheckListLimit {
				res.Differences = append(res.Differences, df)
			} else {
				res.Complete = false
			}
		}
		after := ""
		seen := map[string]bool{}
		for {
			recs, err := n.state.List(t.Name, after, 1000)
			if err != nil {
				return res, err
			}
			for _, rec := range recs {
				seen[rec.Key] = true
				res.Checked++
				have, ok := inDB[rec.Key]
				if !ok {
					note(api.DBRowDiff{Table: t.Name, Key: rec.Key, Kind: "missing", Merged: rec.Fields})
					fix = append(fix, db.Row{Table: t.Name, Key: rec.Key, Fields: rec.Fields})
					continue
				}
				if cols := differing(t, have, rec.Fields); len(cols) > 0 {
					note(api.DBRowDiff{Table: t.Name, Key: rec.Key, Kind: "different", Columns: cols, Database: have, Merged: rec.Fields})
					fix = append(fix, db.Row{Table: t.Name, Key: rec.Key, Fields: rec.Fields})
				}
			}
			if len(recs) < 1000 {
				break
			}
			after = recs[len(recs)-1].Key
		}
		keys := make([]string, 0)
		for k := range inDB {
			if !seen[k] {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			res.Checked++
			_, deleted, err := n.state.Tombstone(t.Name, k)
			if err != nil {
				return res, err
			}
			if deleted {
				note(api.DBRowDiff{Table: t.Name, Key: k, Kind: "extra", Database: inDB[k]})
				fix = append(fix, db.Row{Table: t.Name, Key: k})
				continue
			}
			note(api.DBRowDiff{Table: t.Name, Key: k, Kind: "new", Database: inDB[k]})
			newOps = append(newOps, wire.Op{Kind: wire.OpPut, Table: t.Name, Key: k, Fields: inDB[k]})
		}
	}
	res.Conflicts = []api.DBConflict{}
	if cs, err := n.state.Conflicts(dbCheckListLimit); err == nil {
		for _, c := range cs {
			if _, ok := sch.Table(c.Table); !ok {
				continue
			}
			res.Conflicts = append(res.Conflicts, api.DBConflict{Table: c.Table, Key: c.Key, Column: c.Field,
				Sites: []string{c.Existing.Version.Site, c.Incoming.Version.Site}, Values: []any{c.Existing.Value, c.Incoming.Value}, Winner: c.Winner.Site})
		}
	}
	if repair {
		if d.isRestored() {
			if rb, ok := d.c.(rebaser); ok {
				if err := rb.Rebase(ctx, d.CapturePos()); err != nil {
					return res, err
				}
			}
		}
		if len(fix) > 0 {
			if err := d.c.Write(ctx, fix); err != nil {
				return res, err
			}
			res.Repaired += len(fix)
		}
		for len(newOps) > 0 && n.id.Role == "site" {
			k := min(len(newOps), dbMaxOps)
			if _, err := n.writeBatch(ctx, [][]wire.Op{newOps[:k]}); err != nil {
				return res, err
			}
			res.Repaired += k
			newOps = newOps[k:]
		}
		d.repaired()
	}
	res.Elapsed = n.cfg.Now().Sub(start).Round(time.Millisecond).String()
	return res, nil
}

// differing lists the columns whose merged value the database does not hold.
// Fields the table lacks (a newer practice software elsewhere) are not
// compared; a column the family never set may hold anything.
func differing(t *db.Table, have, merged map[string]any) []string {
	var out []string
	for name, mv := range merged {
		if _, ok := t.Column(name); !ok {
			continue
		}
		if !sameValue(have[name], mv) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func sameValue(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	switch x := b.(type) {
	case bool: // stored as 1/0
		i, ok := a.(int64)
		return ok && (i == 1) == x && (i == 0 || i == 1)
	case []any, map[string]any: // stored as JSON text
		s, ok := a.(string)
		if !ok {
			return false
		}
		var v any
		if json.Unmarshal([]byte(s), &v) != nil {
			return false
		}
		bn, _ := json.Marshal(x)
		var w any
		_ = json.Unmarshal(bn, &w)
		return reflect.DeepEqual(v, w)
	}
	return false
}

func (d *dbsync) problem() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastErr
}

// repaired asks for an apply that tries the refused rows again (a repair
// wrote what it could).
func (d *dbsync) repaired() {
	d.mu.Lock()
	restored := d.restored
	d.restored, d.retry = false, true
	d.mu.Unlock()
	if restored {
		// Write every merged row again from the start: the database's stored
		// position belongs to the backup.
		if err := d.c.SetApplyCursor(d.n.ctx, 0); err != nil {
			d.setErr(err)
		}
		_ = d.n.db.Set(keyApplied, u64(0), pebble.Sync)
	}
	d.poke()
}

func (n *Node) getDB(w http.ResponseWriter, r *http.Request) {
	st, err := n.DBStatus(r.Context())
	if err != nil {
		n.writeErr(w, err)
		return
	}
	if !n.bearerOK(r) { // the sync page: no row contents, only where and why
		for i := range st.Refused {
			st.Refused[i].Merged = nil
		}
	}
	writeJSON(w, http.StatusOK, st)
}

func (n *Node) postDBCheck(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Repair bool `json:"repair"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			n.writeErr(w, badRequest("%v", err))
			return
		}
	}
	res, err := n.DBCheck(r.Context(), req.Repair)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	if !n.bearerOK(r) { // the sync page: no row contents, only where and what differs
		for i := range res.Differences {
			res.Differences[i].Database, res.Differences[i].Merged = nil, nil
		}
		for i := range res.Conflicts {
			res.Conflicts[i].Values = nil
		}
	}
	writeJSON(w, http.StatusOK, res)
}

// refusedConflicts returns up to limit rows the practice database refused,
// each with both sides: the family's merged row and the database's own.
func (n *Node) refusedConflicts(ctx context.Context, limit int) []api.ConflictJSON {
	out := []api.ConflictJSON{}
	if n.dbs == nil {
		return out
	}
	d := n.dbs
	refused, sch := d.refusedRows(), d.currentSchema()
	for _, k := range refused {
		if len(out) == limit {
			break
		}
		cf := api.ConflictJSON{Table: k.Table, Key: k.Key, Refused: k.Reason}
		rec, ok, err := n.state.Get(k.Table, k.Key)
		switch {
		case err != nil:
			cf.Incoming.Value = "(unreadable: " + err.Error() + ")"
		case ok:
			cf.Incoming = api.ConflictSideJSON{Site: rec.Version.Site, Seq: rec.Version.Seq, Time: hlc.Timestamp(rec.Version.HLC).Time(), Value: rec.Fields}
		default:
			cf.Incoming.Deleted = true
		}
		cf.Existing.Site = "database"
		cf.Existing.Deleted = true
		if sch != nil {
			if t, ok := sch.Table(k.Table); ok {
				if row, ok, err := d.c.Row(ctx, t, k.Key); err == nil && ok {
					cf.Existing.Deleted, cf.Existing.Value = false, row.Fields
				}
			}
		}
		out = append(out, cf)
	}
	return out
}

// dbPendingScan is how many waiting changes db status counts per table.
const dbPendingScan = 10000

// pendingByTable counts, per table, the merged changes after cursor that
// are to be written into the database (the database's own left out), among
// the first dbPendingScan.
func (d *dbsync) pendingByTable(cursor uint64) map[string]uint64 {
	out := map[string]uint64{}
	_, _ = d.toWrite(cursor, dbPendingScan, func(c state.Change) bool { // a read error leaves the counts so far
		out[c.Table]++
		return true
	})
	return out
}

// echoFloor returns the state cursor up to which every change is the
// database's own.
func (d *dbsync) echoFloor() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.echoCursor
}

// currentSchema returns the synced tables (nil before they were read).
func (d *dbsync) currentSchema() *db.Schema {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.schema
}

// isRestored reports whether the database is behind the node.
func (d *dbsync) isRestored() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restored
}

// refusedRows returns a copy of the rows the database refused.
func (d *dbsync) refusedRows() []db.RowConflict {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.refused)
}
