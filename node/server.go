package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
)

// Request limits of the API.
const (
	maxTxBody     = 1 << 20  // one transaction (an entry is at most 512 KiB)
	maxBatchBody  = 64 << 20 // one batch
	maxBatchTxs   = 10000
	maxListLimit  = 10000
	defaultListN  = 1000
	defaultLogN   = 100
	maxInstallLen = 64 << 10
)

func (n *Node) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", n.getStatus)
	mux.HandleFunc("POST /v1/transactions", n.postTransaction)
	mux.HandleFunc("POST /v1/transactions/batch", n.postBatch)
	mux.HandleFunc("GET /v1/records/{table}/{key}", n.getRecord)
	mux.HandleFunc("GET /v1/records/{table}", n.listRecords)
	mux.HandleFunc("GET /v1/changes", n.getChanges)
	mux.HandleFunc("GET /v1/digest", n.getDigest)
	mux.HandleFunc("GET /v1/log", n.getLog)
	mux.HandleFunc("GET /v1/conflicts", n.getConflicts)
	mux.HandleFunc("GET /v1/settings", n.getSettings)
	mux.HandleFunc("PUT /v1/settings", n.putSettings)
	mux.HandleFunc("POST /v1/install", n.postInstall)
	mux.HandleFunc("GET /v1/peers", n.getPeers)
	mux.HandleFunc("POST /v1/sync", n.postSync)
	mux.HandleFunc("GET /v1/events", n.getEvents)
	mux.HandleFunc("GET /v1/activity", n.getActivity)
	mux.HandleFunc("GET /v1/db", n.getDB)
	mux.HandleFunc("POST /v1/db/check", n.postDBCheck)
	mux.HandleFunc("GET /v1/alerts", n.getAlerts)
	mux.HandleFunc("POST /v1/alerts", n.postAlert)
	mux.HandleFunc("DELETE /v1/alerts/{id}", n.deleteAlert)
	mux.HandleFunc("POST /v1/alerts/{id}/pause", n.postAlertPause)
	mux.HandleFunc("POST /v1/alerts/{id}/test", n.postAlertTest)
	mux.Handle("GET /metrics", n.metricsHandler())
	pg := n.newPage()
	n.page = pg
	pg.routes(mux) // the sync page: GET /, /assets/, POST /v1/login-token, /v1/logout
	pg.logLink()
	return n.guard(mux, pg)
}

// guard authenticates every request with the API key or, for the sync
// page's requests, a page session (see page.go) and, when the API is bound
// to loopback, refuses requests from anywhere else.
func (n *Node) guard(next http.Handler, pg *page) http.Handler {
	loopbackOnly := isLoopbackHost(n.cfg.API)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if loopbackOnly && !isLoopbackRemote(r.RemoteAddr) {
			n.writeErr(w, newAPIError(http.StatusForbidden, codeForbidden, nil, "this API only answers requests from this machine"))
			return
		}
		if !n.bearerOK(r) && !pg.public(r) {
			switch verdict, why := pg.authorize(r); verdict {
			case sessionRefused:
				n.writeErr(w, newAPIError(http.StatusForbidden, codeForbidden, nil, "%s", why))
				return
			case noSession:
				n.writeErr(w, newAPIError(http.StatusUnauthorized, codeUnauthorized, nil, "missing or wrong API key: send the key from DATA/api.key as 'Authorization: Bearer KEY'"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func isLoopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, APIError{Error: msg, Code: code})
}

// writeErr answers an error: an apiError (anywhere in the chain) with its
// status and code and the error's whole message, as it is; anything else is
// an internal error, logged.
func (n *Node) writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae.status, ae.code, err.Error())
		return
	}
	n.log.Error("API request failed", "err", err)
	writeError(w, http.StatusInternalServerError, codeInternal, err.Error())
}

// readLimited turns a body over its limit into the API's answer.
func readLimited(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return tooLarge("the request is larger than %d bytes", mbe.Limit)
	}
	return err
}

// decodeBody reads a JSON body of at most limit bytes into v, keeping numbers
// exact and refusing unknown fields.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return readLimited(err)
		}
		return badRequest("the request body is not valid JSON: %v", err)
	}
	if dec.More() {
		return badRequest("the request body holds more than one JSON value")
	}
	return nil
}

// ownOps checks one transaction of the API: its operations by the one check
// every write goes through (wire.CheckOps, the messages `ppsync import` gives
// too), then against DATA/schema.json when there is one.
func (n *Node) ownOps(tx TxRequest) ([]wire.Op, error) {
	in := make([]wire.OpInput, len(tx.Ops))
	for i, o := range tx.Ops {
		in[i] = wire.OpInput{Op: o.Op, Table: o.Table, Key: o.Key, Fields: o.Fields}
	}
	ops, err := wire.CheckOps(in)
	if err != nil {
		return nil, invalidOps(err)
	}
	if err := n.schema.check(ops); err != nil {
		return nil, err
	}
	return ops, nil
}

func (n *Node) postTransaction(w http.ResponseWriter, r *http.Request) {
	var req TxRequest
	if err := decodeBody(w, r, maxTxBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	ops, err := n.ownOps(req)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	out, err := n.writeBatch(r.Context(), [][]wire.Op{ops})
	if err != nil {
		n.writeErr(w, err)
		return
	}
	s := out[0]
	writeJSON(w, http.StatusOK, TxResult{Site: s.Site, Seq: s.Seq, Hash: s.Hash.String()})
}

func (n *Node) postBatch(w http.ResponseWriter, r *http.Request) {
	var req BatchRequest
	if err := decodeBody(w, r, maxBatchBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	if len(req.Transactions) == 0 {
		n.writeErr(w, badRequest("the batch holds no transactions"))
		return
	}
	if len(req.Transactions) > maxBatchTxs {
		n.writeErr(w, tooLarge("the batch holds %d transactions, the limit is %d", len(req.Transactions), maxBatchTxs))
		return
	}
	txs := make([][]wire.Op, len(req.Transactions))
	for i, t := range req.Transactions {
		ops, err := n.ownOps(t)
		if err != nil {
			n.writeErr(w, fmt.Errorf("transaction %d: %w", i+1, err))
			return
		}
		txs[i] = ops
	}
	out, err := n.writeBatch(r.Context(), txs)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, BatchResult{Transactions: len(out), LastSeq: out[len(out)-1].Seq})
}

func (n *Node) getRecord(w http.ResponseWriter, r *http.Request) {
	table, key := r.PathValue("table"), r.PathValue("key")
	rec, ok, err := n.state.Get(table, key)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	if !ok {
		n.writeErr(w, newAPIError(http.StatusNotFound, codeNotFound, nil, "no record %q in table %q", key, table))
		return
	}
	writeJSON(w, http.StatusOK, recordJSON(rec))
}

func intParam(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	i, err := strconv.Atoi(v)
	if err != nil || i < 1 {
		return 0, badRequest("%s=%q is not a positive number", name, v)
	}
	return min(i, max), nil
}

func (n *Node) listRecords(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", defaultListN, maxListLimit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	recs, err := n.state.List(r.PathValue("table"), r.URL.Query().Get("after"), limit+1)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res := ListResult{Records: make([]RecordJSON, 0, len(recs))}
	if len(recs) > limit {
		recs = recs[:limit]
		next := recs[limit-1].Key
		res.Next = &next
	}
	for _, rec := range recs {
		j := recordJSON(rec)
		j.Table, j.Version = "", nil
		res.Records = append(res.Records, j)
	}
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) getChanges(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", defaultListN, maxListLimit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	var after uint64
	if v := r.URL.Query().Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			n.writeErr(w, badRequest("after=%q is not a cursor (a number from a previous answer's \"next\")", v))
			return
		}
	}
	chs, next, err := n.state.Changes(after, limit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	st, err := n.state.Stats()
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res := ChangesResult{Changes: make([]ChangeJSON, 0, len(chs)), Next: next, Cleared: st.ClearedAt}
	for _, c := range chs {
		res.Changes = append(res.Changes, ChangeJSON{Cursor: c.Cursor, RecordJSON: recordJSON(c.Record)})
	}
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) getDigest(w http.ResponseWriter, r *http.Request) {
	d, err := n.state.Digest()
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, DigestResult{Digest: d.String()})
}

func (n *Node) getConflicts(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", defaultListN, maxListLimit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	cs, err := n.state.Conflicts(limit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res := ConflictsResult{Conflicts: n.refusedConflicts(r.Context(), limit)}
	for _, c := range cs {
		res.Conflicts = append(res.Conflicts, conflictJSON(c))
	}
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) getSettings(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, n.currentSettings())
}

func (n *Node) currentSettings() Settings {
	n.mu.Lock()
	defer n.mu.Unlock()
	cc := n.settings.ConnectivityCheck
	return Settings{SyncInterval: time.Duration(n.settings.SyncInterval).String(), ConnectivityCheck: &cc, LogLevel: n.settings.LogLevel}
}

func (n *Node) putSettings(w http.ResponseWriter, r *http.Request) {
	var req Settings
	if err := decodeBody(w, r, maxTxBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	select { // one change at a time, saved before it takes effect
	case n.settingsTurn <- struct{}{}:
	case <-r.Context().Done():
		n.writeErr(w, r.Context().Err())
		return
	}
	next, err := n.changeSettings(req)
	<-n.settingsTurn
	if err != nil {
		n.writeErr(w, err)
		return
	}
	// The sync loop reads the interval from the settings: events that
	// overtake each other still leave it at the last one saved.
	n.sync.post(r.Context(), syncEvent{kind: "interval"})
	n.events.emit(EvSettings, n.currentSettings())
	n.log.Info("settings changed", "sync_interval", time.Duration(next.SyncInterval).String(), "connectivity_check", next.ConnectivityCheck, "log_level", next.LogLevel)
	writeJSON(w, http.StatusOK, n.currentSettings())
}

// changeSettings applies a change of the settings, saved to ppsync.toml
// first; the caller holds the settings' turn.
func (n *Node) changeSettings(req Settings) (Config, error) {
	next := n.currentConfig()
	if req.SyncInterval != "" {
		if err := next.SyncInterval.UnmarshalText([]byte(req.SyncInterval)); err != nil {
			return next, badRequest("sync_interval: %v", err)
		}
	}
	if req.ConnectivityCheck != nil {
		next.ConnectivityCheck = *req.ConnectivityCheck
	}
	if req.LogLevel != "" {
		next.LogLevel = req.LogLevel
	}
	if err := next.Validate(); err != nil {
		return next, err // a bad setting: 400
	}
	if err := SaveConfig(next); err != nil { // outside n.mu: status and the page go on meanwhile
		return next, err
	}
	n.mu.Lock()
	n.settings = next
	n.mu.Unlock()
	if n.cfg.Level != nil {
		var l slog.Level
		if l.UnmarshalText([]byte(next.LogLevel)) == nil {
			n.cfg.Level.Set(l)
		}
	}
	return next, nil
}

func (n *Node) postInstall(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInstallLen))
	if err != nil {
		n.writeErr(w, readLimited(err))
		return
	}
	res, err := installFile(n.cfg.DataDir, n.roster, bytes.TrimSpace(data))
	if err != nil {
		n.writeErr(w, installError(err))
		return
	}
	res.Running = true
	if res.Changed {
		// Spread it: peers hear of it now, and peers it ends are cut off.
		n.goTracked(n.mesh.DocumentsUpdated)
	}
	n.events.emit(EvInstalled, res)
	n.log.Info("installed", "kind", res.Installed, "site", res.Site, "epoch", res.Epoch, "changed", res.Changed)
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) getLog(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", defaultLogN, maxListLimit)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	sites := []string{}
	if s := r.URL.Query().Get("site"); s != "" {
		sites = append(sites, s)
	} else {
		for s := range n.txlog.Heads() {
			sites = append(sites, s)
		}
	}
	var all []EntryJSON
	for _, s := range sites {
		h := n.txlog.Head(s)
		from := uint64(1)
		if h.Seq > uint64(limit) {
			from = h.Seq - uint64(limit) + 1
		}
		es, err := n.txlog.Range(s, from, limit)
		if err != nil {
			n.writeErr(w, err)
			return
		}
		for _, e := range es {
			all = append(all, entryJSON(e))
		}
	}
	sortEntries(all)
	if len(all) > limit {
		all = all[len(all)-limit:]
	}
	if all == nil {
		all = []EntryJSON{}
	}
	writeJSON(w, http.StatusOK, LogResult{Entries: all})
}

func (n *Node) getStatus(w http.ResponseWriter, r *http.Request) {
	st, err := n.Status()
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// Status reports the node's state (GET /v1/status, `ppsync status`).
func (n *Node) Status() (Status, error) { return n.statusOf(n.sync.peers()) }

// statusOf builds the status from an already computed list of peers (the
// metrics collector needs both and computes the peers once).
func (n *Node) statusOf(peers []PeerJSON) (Status, error) {
	s := Status{
		Site: n.id.Site, Role: string(n.id.Role), PeerID: n.id.PeerID, Version: n.cfg.Version,
		FamilyID: n.id.FamilyID, FamilyName: n.roster.Info().Name, Epoch: n.cert.Epoch,
		Frontier: n.txlog.Frontier(), Forks: []ForkJSON{}, StartedAt: n.start.UTC(),
		DataDir: n.cfg.DataDir, API: "http://" + n.ln.Addr().String(), Warnings: []string{},
	}
	cfg := n.currentConfig()
	if n.id.Role == family.RoleSite { // own entries no other member is known to hold
		s.Pending = beyond(n.txlog.Head(n.id.Site).Seq, n.sync.mostHeld(n.id.Site))
	}
	versions := map[string][]string{}
	for _, p := range peers {
		if p.Connected {
			s.Peers++
		}
		if p.Version != "" && p.Version != n.cfg.Version {
			versions[p.Version] = append(versions[p.Version], p.Site)
		}
		if p.ClockSkew != "" {
			s.Warnings = append(s.Warnings, fmt.Sprintf("the clock of %s differs from this machine's by %s: check both machines' time settings", p.Site, p.ClockSkew))
		}
	}
	if len(versions) > 0 {
		s.VersionMismatch = true
		msg := fmt.Sprintf("systems are on different versions: this node runs %s", n.cfg.Version)
		for v, sites := range versions {
			msg += fmt.Sprintf("; %s run%s %s", strings.Join(sites, ", "), map[bool]string{true: "s", false: ""}[len(sites) == 1], v)
		}
		s.Warnings = append(s.Warnings, msg)
	}
	s.Bootstrap = n.bootstrapStatus()
	switch {
	case s.Peers > 0:
		s.Online = true
	case !cfg.ConnectivityCheck:
		s.Online, s.OfflineReason = true, "connectivity check is off: no family member is connected right now"
	default:
		s.OfflineReason = offlineReason(n.cfg.Now(), n.id.Role == family.RoleRelay, n.mesh.Peers(), s.Bootstrap)
	}
	if last := n.sync.lastSyncTime(); !last.IsZero() {
		t := last.UTC()
		s.LastSync = &t
	}
	s.SyncInterval = n.currentSettings().SyncInterval
	for _, f := range n.txlog.Forks() {
		s.Forks = append(s.Forks, ForkJSON{Site: f.Site, Seq: f.Seq, Held: f.Held.String(), Offered: f.Offered.String()})
	}
	for _, d := range n.sync.duplicates() {
		s.Warnings = append(s.Warnings, fmt.Sprintf("two copies of site %s are running at once (a copied data directory or a cloned machine): they split the practice's data; stop one and ask support", d))
	}
	for _, f := range s.Forks {
		s.Warnings = append(s.Warnings, fmt.Sprintf("fork: site %s wrote two different entries at seq %d (two copies of one site are writing); its later entries are quarantined until support resolves it", f.Site, f.Seq))
	}
	if n.id.Role == family.RoleSite {
		s.Writable = true
		if err := n.writeBlocked(); err != nil {
			s.Writable, s.WriteBlocked = false, err.Error()
		}
	} else {
		s.WriteBlocked = "relay: writes no transactions of its own"
	}
	st, err := n.state.Stats()
	if err != nil {
		return s, err
	}
	s.Records, s.Conflicts = st.Records, st.Conflicts
	if s.Held, err = n.txlog.Held(); err != nil {
		return s, err
	}
	if s.Held > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d entries wait to be applied: they were written by a newer ppsync or a newer version of the practice software (schema version above this site's %d); they are applied once this site is upgraded, nothing is lost", s.Held, n.appVersion()))
	}
	return s, nil
}

func (n *Node) getPeers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"peers": n.sync.peers()})
}

// SyncRequest is the body of POST /v1/sync.
type SyncRequest struct {
	Wait string `json:"wait,omitempty"` // e.g. "30s": wait for every member to catch up
}

func (n *Node) postSync(w http.ResponseWriter, r *http.Request) {
	var req SyncRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, maxTxBody, &req); err != nil {
			n.writeErr(w, err)
			return
		}
	}
	var wait time.Duration
	if req.Wait != "" {
		d, err := time.ParseDuration(req.Wait)
		if err != nil || d < 0 || d > time.Hour {
			n.writeErr(w, badRequest("wait=%q is not a duration between 0 and 1h (like 30s)", req.Wait))
			return
		}
		wait = d
	}
	n.events.emit(EvSyncNow, map[string]any{"wait": wait.String()})
	writeJSON(w, http.StatusOK, n.sync.syncNow(r.Context(), wait))
}

// writeBatch commits own transactions (one entry each, all or none), then
// queues them for gossip and reports them to the activity feed.
func (n *Node) writeBatch(ctx context.Context, txs [][]wire.Op) ([]*wire.Signed, error) {
	return n.writeBatchWith(ctx, txs, nil)
}

// writeBatchWith is writeBatch with extra writes in the same durable batch
// (the practice database's capture position).
func (n *Node) writeBatchWith(ctx context.Context, txs [][]wire.Op, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	return n.writeLoad(ctx, txs, nil, extra)
}

// writeLoad is writeBatchWith for the transactions of an initial load
// (loads[i] from state.NewLoad, or 0: see txlog.WriteLoad). The entries of a
// load (loads not nil) are not gossiped: peers fetch them by catch-up, in
// compressed batches, once a heartbeat shows this site's log ahead; queued
// for gossip, thousands of large entries would wait in memory.
func (n *Node) writeLoad(ctx context.Context, txs [][]wire.Op, loads []uint64, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	if err := n.writeBlocked(); err != nil {
		return nil, err
	}
	if n.id.Role == family.RoleSite {
		if err := n.checkSpaceFor(opsSize(txs)); err != nil {
			return nil, err
		}
	}
	out, err := n.txlog.WriteLoad(ctx, txs, loads, extra)
	if err != nil {
		return nil, n.ownWriteError(err)
	}
	if loads == nil {
		n.sync.published(out)
	}
	if n.dbs != nil {
		n.dbs.poke() // an API write reaches the practice database too
	}
	n.counters.committed.Add(uint64(len(out)))
	n.events.emit(EvCommitted, map[string]any{"site": out[0].Site, "from": out[0].Seq, "to": out[len(out)-1].Seq})
	return out, nil
}

// opsSize estimates the encoded size of transactions from their names and
// values, cheaply, for the free-space check.
func opsSize(txs [][]wire.Op) uint64 {
	var n uint64
	for _, ops := range txs {
		for i := range ops {
			n += opSize(&ops[i])
		}
	}
	return n
}

// opSize estimates the encoded size of one operation.
func opSize(op *wire.Op) uint64 {
	n := uint64(64 + len(op.Table) + len(op.Key))
	for k, v := range op.Fields {
		n += uint64(len(k)) + valueSize(v)
	}
	return n
}

func valueSize(v any) uint64 {
	switch x := v.(type) {
	case string:
		return uint64(len(x)) + 5
	case []any:
		var n uint64 = 5
		for _, e := range x {
			n += valueSize(e)
		}
		return n
	case map[string]any:
		var n uint64 = 5
		for k, e := range x {
			n += uint64(len(k)) + valueSize(e)
		}
		return n
	}
	return 9
}
