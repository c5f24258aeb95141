package node

import (
	"fmt"
	"sort"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/state"
)

func versionJSON(v state.Version) *api.VersionJSON {
	if v.IsZero() {
		return nil
	}
	return &api.VersionJSON{Site: v.Site, Seq: v.Seq, HLC: v.HLC, Time: hlc.Timestamp(v.HLC).Time()}
}

func recordJSON(r state.Record) api.RecordJSON {
	f := r.Fields
	if f == nil {
		f = map[string]any{}
	}
	return api.RecordJSON{Table: r.Table, Key: r.Key, Fields: f, Deleted: r.Deleted, Version: versionJSON(r.Version)}
}

func opsJSON(ops []wire.Op) []api.OpJSON {
	out := make([]api.OpJSON, len(ops))
	for i, o := range ops {
		out[i] = api.OpJSON{Op: o.Kind.String(), Table: o.Table, Key: o.Key, Fields: o.Fields}
	}
	return out
}

// entryJSON shows an entry; a sealed one with its operations when this site
// holds its key (a relay never does: it shows the header alone).
func (n *Node) entryJSON(e *wire.Signed) api.EntryJSON {
	prev := ""
	if !e.Prev.IsZero() {
		prev = e.Prev.String()
	}
	ops := e.Ops
	if e.Key != "" {
		ops = nil
		if n.opener != nil {
			ops = n.opener.Open(e)
		}
	}
	return api.EntryJSON{Site: e.Site, Seq: e.Seq, Epoch: e.Epoch, Hash: e.Hash.String(), Prev: prev, HLC: e.HLC,
		Time: hlc.Timestamp(e.HLC).Time(), Schema: e.Schema, Deps: e.Deps, Ops: opsJSON(ops),
		Key: e.Key, Sealed: e.Key != "" && ops == nil, Grants: len(e.Grants)}
}

// sortEntries orders entries oldest first by HLC, then site and seq.
func sortEntries(es []api.EntryJSON) {
	sort.Slice(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.HLC != b.HLC {
			return a.HLC < b.HLC
		}
		if a.Site != b.Site {
			return a.Site < b.Site
		}
		return a.Seq < b.Seq
	})
}

func sideJSON(s state.ConflictSide) api.ConflictSideJSON {
	return api.ConflictSideJSON{Site: s.Version.Site, Seq: s.Version.Seq, Time: hlc.Timestamp(s.Version.HLC).Time(), Deleted: s.Deleted, Value: s.Value}
}

func conflictJSON(c state.Conflict) api.ConflictJSON {
	return api.ConflictJSON{ID: c.ID, Table: c.Table, Key: c.Key, Field: c.Field, Incoming: sideJSON(c.Incoming),
		Existing: sideJSON(c.Existing), Winner: fmt.Sprintf("%s#%d", c.Winner.Site, c.Winner.Seq)}
}
