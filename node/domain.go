package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/txlog"
)

// The domain API: the only way into a running node. The HTTP handlers
// (server.go), the metrics collector (metrics.go) and the sync page reach the
// node through these methods and nothing else. Each takes a context and
// returns typed results; an error that the API answers in a particular way is
// an *apiError (errors.go) somewhere in its chain, carrying its status and
// code, and matches the package's sentinels (ErrCatchingUp, ErrDiskFull,
// ErrRefused, ...) with errors.Is.

// Limits of the domain API.
const (
	maxBatchTxs  = 10000 // transactions in one Write
	maxListLimit = 10000 // records, changes, entries or conflicts in one answer
	defaultListN = 1000
	defaultLogN  = 100
	maxSyncWait  = time.Hour
)

// TxError is the error of one transaction of a Write: Index is its place
// (from 0) in the transactions written. Nothing of the Write was committed.
type TxError struct {
	Index int
	Err   error
}

func (e *TxError) Error() string { return fmt.Sprintf("transaction %d: %v", e.Index+1, e.Err) }
func (e *TxError) Unwrap() error { return e.Err }

// Write commits own transactions, one log entry each, all or none: the one
// write path of the API (a single transaction is a Write of one). Each
// transaction's operations are checked (wire.CheckOps, then DATA/schema.json
// when there is one); a refused one gives a *TxError. The write is then
// refused as a whole while writes are blocked (a relay, a superseded or
// revoked certificate, catching up, a fork) or when the disk would keep less
// than the reserve once the write's estimated size is on it. The committed
// entries are gossiped, reach the practice database and the activity feed.
// It returns one result per transaction, in order.
func (n *Node) Write(ctx context.Context, txs []api.TxRequest) ([]api.TxResult, error) {
	if len(txs) == 0 {
		return nil, badRequest("the batch holds no transactions")
	}
	if len(txs) > maxBatchTxs {
		return nil, tooLarge("the batch holds %d transactions, the limit is %d", len(txs), maxBatchTxs)
	}
	ops := make([][]wire.Op, len(txs))
	for i, t := range txs {
		o, err := n.ownOps(t)
		if err != nil {
			return nil, &TxError{Index: i, Err: err}
		}
		ops[i] = o
	}
	out, err := n.writeBatch(ctx, ops)
	if err != nil {
		return nil, err
	}
	res := make([]api.TxResult, len(out))
	for i, s := range out {
		res[i] = api.TxResult{Site: s.Site, Seq: s.Seq, Hash: s.Hash.String()}
	}
	return res, nil
}

// ownOps checks one transaction of the API: its operations by the one check
// every write goes through (wire.CheckOps, the messages `ppsync import` gives
// too), then against DATA/schema.json when there is one.
func (n *Node) ownOps(tx api.TxRequest) ([]wire.Op, error) {
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

// Get returns the live record table/key of the merged state; an absent or
// deleted record is a not_found error.
func (n *Node) Get(ctx context.Context, table, key string) (api.RecordJSON, error) {
	if err := ctx.Err(); err != nil {
		return api.RecordJSON{}, err
	}
	if n.ring == nil {
		return api.RecordJSON{}, relayBlind()
	}
	rec, ok, err := n.state.Get(table, key)
	if err != nil {
		return api.RecordJSON{}, fmt.Errorf("node: get %s/%s: %w", table, key, err)
	}
	if !ok {
		return api.RecordJSON{}, notFound("no record %q in table %q", key, table)
	}
	return recordJSON(rec), nil
}

// listLimit gives a limit of the domain API its default (limit <= 0) and its
// ceiling.
func listLimit(limit, def, ceiling int) int {
	if limit <= 0 {
		return def
	}
	return min(limit, ceiling)
}

// List returns up to limit (<= 0: 1000; at most 10000) live records of table
// with keys after after, in key order, without their table and version. Next
// is set when more follow.
func (n *Node) List(ctx context.Context, table, after string, limit int) (api.ListResult, error) {
	if err := ctx.Err(); err != nil {
		return api.ListResult{}, err
	}
	if n.ring == nil {
		return api.ListResult{}, relayBlind()
	}
	limit = listLimit(limit, defaultListN, maxListLimit)
	recs, err := n.state.List(table, after, limit+1)
	if err != nil {
		return api.ListResult{}, fmt.Errorf("node: list %s: %w", table, err)
	}
	res := api.ListResult{Records: make([]api.RecordJSON, 0, len(recs))}
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
	return res, nil
}

// Changes returns up to limit (<= 0: 1000; at most 10000) changes of the
// merged state after the cursor after, the cursor to follow on from, and the
// cursor of the last rebuild of the state.
func (n *Node) Changes(ctx context.Context, after uint64, limit int) (api.ChangesResult, error) {
	if err := ctx.Err(); err != nil {
		return api.ChangesResult{}, err
	}
	if n.ring == nil {
		return api.ChangesResult{}, relayBlind()
	}
	chs, next, err := n.state.Changes(after, listLimit(limit, defaultListN, maxListLimit))
	if err != nil {
		return api.ChangesResult{}, fmt.Errorf("node: changes: %w", err)
	}
	st, err := n.state.Stats()
	if err != nil {
		return api.ChangesResult{}, fmt.Errorf("node: changes: %w", err)
	}
	res := api.ChangesResult{Changes: make([]api.ChangeJSON, 0, len(chs)), Next: next, Cleared: st.ClearedAt}
	for _, c := range chs {
		res.Changes = append(res.Changes, api.ChangeJSON{Cursor: c.Cursor, RecordJSON: recordJSON(c.Record)})
	}
	return res, nil
}

// Digest returns the hex digest of the whole merged state: two nodes that
// hold the same entries have the same digest.
func (n *Node) Digest(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if n.ring == nil {
		return "", relayBlind()
	}
	d, err := n.state.Digest()
	if err != nil {
		return "", fmt.Errorf("node: digest: %w", err)
	}
	return d.String(), nil
}

// Conflicts returns up to limit (<= 0: 1000; at most 10000) rows the
// practice database refused (oldest first, each with the family's merged row
// and the database's own), then up to limit recorded concurrent writes,
// newest first.
func (n *Node) Conflicts(ctx context.Context, limit int) (api.ConflictsResult, error) {
	if n.ring == nil {
		return api.ConflictsResult{}, relayBlind()
	}
	limit = listLimit(limit, defaultListN, maxListLimit)
	cs, err := n.state.Conflicts(limit)
	if err != nil {
		return api.ConflictsResult{}, fmt.Errorf("node: conflicts: %w", err)
	}
	res := api.ConflictsResult{Conflicts: n.refusedConflicts(ctx, limit)}
	for _, c := range cs {
		res.Conflicts = append(res.Conflicts, conflictJSON(c))
	}
	return res, nil
}

// LogRange returns up to limit (<= 0: 100; at most 10000) entries of site
// from seq from on, oldest first: paging through a whole log.
func (n *Node) LogRange(ctx context.Context, site string, from uint64, limit int) (api.LogResult, error) {
	if err := ctx.Err(); err != nil {
		return api.LogResult{}, err
	}
	limit = listLimit(limit, defaultLogN, maxListLimit)
	es, err := n.txlog.Range(site, max(from, 1), limit)
	if err != nil {
		return api.LogResult{}, fmt.Errorf("node: log of %s: %w", site, err)
	}
	out := api.LogResult{Entries: make([]api.EntryJSON, 0, len(es))}
	for _, e := range es {
		out.Entries = append(out.Entries, n.entryJSON(e))
	}
	return out, nil
}

// Log returns the newest limit (<= 0: 100; at most 10000) log entries of
// site, or of every site when site is "", oldest first.
func (n *Node) Log(ctx context.Context, site string, limit int) (api.LogResult, error) {
	limit = listLimit(limit, defaultLogN, maxListLimit)
	sites := []string{}
	if site != "" {
		sites = append(sites, site)
	} else {
		for s := range n.txlog.Heads() {
			sites = append(sites, s)
		}
	}
	all := []api.EntryJSON{}
	for _, s := range sites {
		if err := ctx.Err(); err != nil {
			return api.LogResult{}, err
		}
		h := n.txlog.Head(s)
		from := uint64(1)
		if h.Seq > uint64(limit) {
			from = h.Seq - uint64(limit) + 1
		}
		es, err := n.txlog.Range(s, from, limit)
		if err != nil {
			return api.LogResult{}, fmt.Errorf("node: log of %s: %w", s, err)
		}
		for _, e := range es {
			all = append(all, n.entryJSON(e))
		}
	}
	sortEntries(all)
	if len(all) > limit {
		all = all[len(all)-limit:]
	}
	return api.LogResult{Entries: all}, nil
}

// Status reports the node's state: who it is, its frontier and peers, whether
// it is online and may write (and why not), and the warnings to show
// prominently.
func (n *Node) Status(ctx context.Context) (api.Status, error) {
	if err := ctx.Err(); err != nil {
		return api.Status{}, err
	}
	return n.statusOf(n.sync.peers())
}

// Peers lists every other family member as this node sees it, by site.
func (n *Node) Peers(ctx context.Context) ([]api.PeerJSON, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return n.sync.peers(), nil
}

// SyncNow starts a sync round now and, with wait > 0 (at most an hour),
// waits until every member holds everything this node holds, the time runs
// out or ctx ends; the receipt says, per member, caught up or why not.
func (n *Node) SyncNow(ctx context.Context, wait time.Duration) (api.Receipt, error) {
	if wait < 0 || wait > maxSyncWait {
		return api.Receipt{}, badRequest("wait=%q is not a duration between 0 and 1h (like 30s)", wait.String())
	}
	n.events.emit(EvSyncNow, map[string]any{"wait": wait.String()})
	return n.sync.syncNow(ctx, wait), nil
}

// Settings returns the node's changeable settings, as they are now.
func (n *Node) Settings(ctx context.Context) (api.Settings, error) {
	if err := ctx.Err(); err != nil {
		return api.Settings{}, err
	}
	return n.currentSettings(), nil
}

func (n *Node) currentSettings() api.Settings {
	n.mu.Lock()
	defer n.mu.Unlock()
	cc := n.settings.ConnectivityCheck
	return api.Settings{SyncInterval: time.Duration(n.settings.SyncInterval).String(), ConnectivityCheck: &cc, LogLevel: n.settings.LogLevel}
}

// SetSettings changes the settings given (empty fields are kept): they are
// checked, saved to ppsync.toml, then take effect; it returns them all. One
// change runs at a time; a change waiting for its turn gives up when ctx
// ends. A bad setting is a bad_request error.
func (n *Node) SetSettings(ctx context.Context, req api.Settings) (api.Settings, error) {
	select { // one change at a time, saved before it takes effect
	case n.settingsTurn <- struct{}{}:
	case <-ctx.Done():
		return api.Settings{}, ctx.Err()
	}
	next, err := n.changeSettings(req)
	<-n.settingsTurn
	if err != nil {
		return api.Settings{}, err
	}
	// The sync loop reads the interval from the settings: events that
	// overtake each other still leave it at the last one saved.
	n.sync.post(ctx, syncEvent{kind: "interval"})
	n.events.emit(EvSettings, n.currentSettings())
	n.log.Info("settings changed", "sync_interval", time.Duration(next.SyncInterval).String(), "connectivity_check", next.ConnectivityCheck, "log_level", next.LogLevel)
	return n.currentSettings(), nil
}

// changeSettings applies a change of the settings, saved to ppsync.toml
// first; the caller holds the settings' turn.
func (n *Node) changeSettings(req api.Settings) (Config, error) {
	next := n.currentConfig()
	if err := applySettings(&next, req); err != nil {
		return next, err // a bad setting: 400
	}
	// The file gets what it already said plus this change: settings given
	// for this run only (flags like --api) stay out of it.
	saved, err := LoadConfig(n.cfg.DataDir)
	if err != nil {
		return next, fmt.Errorf("node: the settings were not changed, as %s cannot be read: %w", ConfigFile, err)
	}
	if err := applySettings(&saved, req); err != nil {
		return next, err
	}
	if err := SaveConfig(saved); err != nil { // outside n.mu: status and the page go on meanwhile
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

// applySettings changes c as req asks (empty fields are kept) and checks
// the result.
func applySettings(c *Config, req api.Settings) error {
	if req.SyncInterval != "" {
		if err := c.SyncInterval.UnmarshalText([]byte(req.SyncInterval)); err != nil {
			return badRequest("sync_interval: %v", err)
		}
	}
	if req.ConnectivityCheck != nil {
		c.ConnectivityCheck = *req.ConnectivityCheck
	}
	if req.LogLevel != "" {
		c.LogLevel = req.LogLevel
	}
	return c.Validate()
}

// Install installs a certificate or revocation file (its bytes) into the
// running node: stored in DATA/certs first, then acted on, and spread to the
// peers. A file the roster refuses is a bad_request error.
func (n *Node) Install(ctx context.Context, data []byte) (api.InstallResult, error) {
	if err := ctx.Err(); err != nil {
		return api.InstallResult{}, err
	}
	if n.fams != nil { // a relay: a certificate of a further family goes to it
		if fid, err := FamilyOfDocument(data); err == nil && fid != n.id.FamilyID {
			return n.installFurther(ctx, fid, data)
		}
	}
	res, err := datadir.InstallFile(n.cfg.DataDir, n.roster, bytes.TrimSpace(data))
	if err != nil {
		return api.InstallResult{}, installError(err)
	}
	res.Running = true
	if res.Changed {
		// Spread it: peers hear of it now, and peers it ends are cut off.
		n.goTracked(n.mesh.DocumentsUpdated)
	}
	n.events.emit(EvInstalled, res)
	n.log.Info("installed", "kind", res.Installed, "site", res.Site, "epoch", res.Epoch, "changed", res.Changed)
	return res, nil
}

// Events subscribes to the node's events: it returns the kept events after
// the ID after (oldest first) and a channel of the later ones. The channel is
// closed when ctx ends, when the node closes, and when the subscriber falls
// behind (it then subscribes again after the last ID it got).
func (n *Node) Events(ctx context.Context, after uint64) ([]api.Event, <-chan api.Event) {
	past, c := n.events.subscribe(after)
	if !n.goTracked(func() {
		select {
		case <-ctx.Done():
		case <-n.ctx.Done():
		}
		n.events.unsubscribe(c)
	}) {
		n.events.unsubscribe(c) // the node is closing
	}
	return past, c
}

// Activity pages the activity feed (DATA/activity.log): up to limit (<= 0:
// 50; at most 1000) events before the ID before (0: the newest), newest
// first.
func (n *Node) Activity(ctx context.Context, before uint64, limit int) ([]api.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	evs := n.events.recent(before, listLimit(limit, 50, 1000))
	if evs == nil {
		evs = []api.Event{}
	}
	return evs, nil
}

// DBStatus reports the practice database's sync: what is captured, applied,
// waiting and refused, per table. On a node without one, Problem says so.
func (n *Node) DBStatus(ctx context.Context) (api.DBStatus, error) {
	if err := ctx.Err(); err != nil {
		return api.DBStatus{}, err
	}
	return n.dbStatus(true), nil
}

// Metrics is what the metrics collector exports, taken at one time.
type Metrics struct {
	Time     time.Time // when it was taken (the node's clock)
	Counters Counters
	// Rejections counts connections, streams, gossip messages and entries
	// refused, by reason.
	Rejections map[string]uint64
	Peers      []api.PeerJSON
	Status     api.Status
	DB         *api.DBStatus // nil on a node without a practice database; no per-table pending counts
	Alerts     AlertStats
	Disk       txlog.SyncStats // the log's syncs to disk since the node started
}

// Counters are the node's monotonically increasing figures since it started.
type Counters struct {
	Committed, ReceivedGossip, ReceivedCatchUp uint64 // entries, by origin
	CatchupBytes                               uint64 // compressed catch-up bytes received
	CatchupOK, CatchupFailed                   uint64 // catch-up sessions, by result
	PublishDropped                             uint64 // own entries not gossiped (over budget or queue full)
}

// Metrics takes the figures GET /metrics exports. Counters, rejections and
// the practice database's figures are filled in even when the status cannot
// be read (the error says why).
func (n *Node) Metrics(ctx context.Context) (Metrics, error) {
	k := &n.counters
	m := Metrics{Time: n.cfg.Now(), Counters: Counters{
		Committed: k.committed.Load(), ReceivedGossip: k.receivedGossip.Load(), ReceivedCatchUp: k.receivedCatchUp.Load(),
		CatchupBytes: k.catchupBytes.Load(), CatchupOK: k.catchupOK.Load(), CatchupFailed: k.catchupFailed.Load(),
		PublishDropped: k.publishDropped.Load(),
	}, Rejections: map[string]uint64{}}
	for reason, v := range n.mesh.Rejections() {
		m.Rejections[reason] = v
	}
	m.Rejections["entry-signature"] = k.rejectedSignature.Load()
	m.Rejections["entry-chain"] = k.rejectedChain.Load()
	m.Rejections["entry-refused"] = k.rejectedOther.Load()
	if n.dbs != nil {
		d := n.dbStatus(false)
		m.DB = &d
	}
	m.Alerts = n.AlertStats()
	if n.txlog != nil {
		m.Disk = n.txlog.SyncStats()
	}
	if err := ctx.Err(); err != nil {
		return m, err
	}
	peers := n.sync.peers()
	m.Peers = peers
	st, err := n.statusOf(peers)
	if err != nil {
		return m, fmt.Errorf("node: metrics: %w", err)
	}
	m.Status = st
	return m, nil
}
