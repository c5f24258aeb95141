package node

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/web"
)

// Request limits of the API.
const (
	maxTxBody     = 1 << 20 // one transaction (an entry is at most 512 KiB)
	maxBatchBody  = 4 << 20 // one batch (see writeBodyBudget)
	maxInstallLen = 64 << 10
)

func (n *Node) handler() http.Handler {
	mux := n.apiMux()
	mux.HandleFunc("GET /v1/families", n.getFamilies)
	mux.HandleFunc("DELETE /v1/families/{id}", n.deleteFamily)
	pg := web.New(web.Options{Addr: n.ln.Addr().String(), TLS: n.tlsFP != "", DataDir: n.cfg.DataDir, Auth: apiKey{n.apiKey}, Now: n.cfg.Now, Logger: n.log})
	pg.Routes(mux) // the sync page: GET /, /assets/, POST /v1/login-token, /v1/logout
	pg.LogLink()
	return n.guard(n.routeFamily(mux), pg)
}

// apiMux is the node's API (the guard checks the key before it): at a
// relay, each family it serves answers its own.
func (n *Node) apiMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", n.getStatus)
	mux.HandleFunc("POST /v1/transactions", n.withBodyBudget(maxTxBody, n.postTransaction))
	mux.HandleFunc("POST /v1/transactions/batch", n.withBodyBudget(maxBatchBody, n.postBatch))
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
	mux.HandleFunc("GET /v1/keys", n.getKeys)
	mux.HandleFunc("POST /v1/keys/rotate", n.postRotateKey)
	mux.HandleFunc("GET /v1/alerts", n.getAlerts)
	mux.HandleFunc("POST /v1/alerts", n.postAlert)
	mux.HandleFunc("DELETE /v1/alerts/{id}", n.deleteAlert)
	mux.HandleFunc("POST /v1/alerts/{id}/pause", n.postAlertPause)
	mux.HandleFunc("POST /v1/alerts/{id}/test", n.postAlertTest)
	mux.Handle("GET /metrics", n.metricsHandler())
	return mux
}

// apiKey authorizes the requests that carry the API key.
type apiKey struct{ key string }

// Authorized reports whether r carries the API key.
func (k apiKey) Authorized(r *http.Request) bool {
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+k.key)) == 1
}

// bearerOK reports whether r carries the API key (not a page session).
func (n *Node) bearerOK(r *http.Request) bool { return apiKey{n.apiKey}.Authorized(r) }

// guard authenticates every request with the API key or, for the sync
// page's requests, a page session (see node/web) and, when the API is bound
// to loopback, refuses requests from anywhere else.
func (n *Node) guard(next http.Handler, pg *web.Page) http.Handler {
	loopbackOnly := isLoopbackHost(n.cfg.API)
	hosts := allowedHosts(n.cfg)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if loopbackOnly && !isLoopbackRemote(r.RemoteAddr) {
			n.writeErr(w, newAPIError(http.StatusForbidden, codeForbidden, nil, "this API only answers requests from this machine"))
			return
		}
		if !hostAllowed(hosts, r.Host) {
			n.writeErr(w, newAPIError(http.StatusMisdirectedRequest, codeForbidden, nil,
				"this ppsync node does not answer to the name %q (a protection against DNS rebinding); use %s, or add the name to api_hosts in %s", r.Host, n.baseURL(), ConfigFile))
			return
		}
		if r.URL.Path == api.HelloPath {
			n.hello(w, r) // needs no key: it is how a client checks this is its node before sending it
			return
		}
		if !n.bearerOK(r) && !pg.Public(r) {
			switch verdict, why := pg.Authorize(r); verdict {
			case web.SessionRefused:
				n.writeErr(w, newAPIError(http.StatusForbidden, codeForbidden, nil, "%s", why))
				return
			case web.NoSession:
				n.writeErr(w, newAPIError(http.StatusUnauthorized, codeUnauthorized, nil, "missing or wrong API key: send the key from DATA/api.key as 'Authorization: Bearer KEY'"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hello proves to a client that this node holds the API key, before the
// client sends it (GET /v1/hello?nonce=HEX).
func (n *Node) hello(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		n.writeErr(w, newAPIError(http.StatusMethodNotAllowed, codeBadRequest, nil, "use GET %s?nonce=HEX", api.HelloPath))
		return
	}
	nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
	if err != nil || len(nonce) < api.MinNonce || len(nonce) > api.MaxNonce {
		n.writeErr(w, badRequest("nonce must be %d to %d random bytes in hex", api.MinNonce, api.MaxNonce))
		return
	}
	writeJSON(w, http.StatusOK, api.Hello{Proof: hex.EncodeToString(api.ServerProof(n.apiKey, nonce))})
}

// allowedHosts are the names requests may carry in their Host header
// besides loopback addresses: localhost, the API's own address (unless it
// is every interface) and api_hosts, in lower case.
func allowedHosts(c Config) map[string]bool {
	m := map[string]bool{"localhost": true}
	if host, _, err := net.SplitHostPort(c.API); err == nil {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			m[strings.ToLower(host)] = true
		}
	}
	for _, h := range c.APIHosts {
		m[strings.ToLower(strings.Trim(h, "[]"))] = true
	}
	return m
}

// hostAllowed reports whether a request's Host header names this node: a
// loopback address or one of hosts (its port is not checked).
func hostAllowed(hosts map[string]bool, hostHeader string) bool {
	host := hostHeader
	if h, _, err := net.SplitHostPort(hostHeader); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	return host != "" && hosts[host]
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
	writeJSON(w, status, api.APIError{Error: msg, Code: code})
}

// answer writes v, or the error when err is not nil.
func (n *Node) answer(w http.ResponseWriter, v any, err error) {
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
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

func (n *Node) postTransaction(w http.ResponseWriter, r *http.Request) {
	var req api.TxRequest
	if err := decodeBody(w, r, maxTxBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	out, err := n.Write(r.Context(), []api.TxRequest{req})
	var te *TxError
	if errors.As(err, &te) {
		err = te.Err // one transaction: its error as it is
	}
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out[0])
}

func (n *Node) postBatch(w http.ResponseWriter, r *http.Request) {
	var req api.BatchRequest
	if err := decodeBody(w, r, maxBatchBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	out, err := n.Write(r.Context(), req.Transactions)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.BatchResult{Transactions: len(out), LastSeq: out[len(out)-1].Seq})
}

func (n *Node) getRecord(w http.ResponseWriter, r *http.Request) {
	rec, err := n.Get(r.Context(), r.PathValue("table"), r.PathValue("key"))
	n.answer(w, rec, err)
}

// intParam reads a positive number from the query (def when absent).
func intParam(r *http.Request, name string, def int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	i, err := strconv.Atoi(v)
	if err != nil || i < 1 {
		return 0, badRequest("%s=%q is not a positive number", name, v)
	}
	return i, nil
}

// uintParam reads a cursor or an event ID from the query (0 when absent).
func uintParam(r *http.Request, name, what string) (uint64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	u, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, badRequest("%s=%q is not %s", name, v, what)
	}
	return u, nil
}

func (n *Node) listRecords(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res, err := n.List(r.Context(), r.PathValue("table"), r.URL.Query().Get("after"), limit)
	n.answer(w, res, err)
}

func (n *Node) getChanges(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	after, err := uintParam(r, "after", `a cursor (a number from a previous answer's "next")`)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res, err := n.Changes(r.Context(), after, limit)
	n.answer(w, res, err)
}

func (n *Node) getKeys(w http.ResponseWriter, r *http.Request) {
	k, err := n.Keys(r.Context())
	n.answer(w, k, err)
}

func (n *Node) postRotateKey(w http.ResponseWriter, r *http.Request) {
	if n.ring == nil {
		n.writeErr(w, relayBlind())
		return
	}
	k, err := n.RotateKey(r.Context())
	n.answer(w, k, err)
}

func (n *Node) getDigest(w http.ResponseWriter, r *http.Request) {
	d, err := n.Digest(r.Context())
	n.answer(w, api.DigestResult{Digest: d}, err)
}

func (n *Node) getConflicts(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	res, err := n.Conflicts(r.Context(), limit)
	n.answer(w, res, err)
}

func (n *Node) getSettings(w http.ResponseWriter, r *http.Request) {
	s, err := n.Settings(r.Context())
	n.answer(w, s, err)
}

func (n *Node) putSettings(w http.ResponseWriter, r *http.Request) {
	var req api.Settings
	if err := decodeBody(w, r, maxTxBody, &req); err != nil {
		n.writeErr(w, err)
		return
	}
	s, err := n.SetSettings(r.Context(), req)
	n.answer(w, s, err)
}

func (n *Node) postInstall(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInstallLen))
	if err != nil {
		n.writeErr(w, readLimited(err))
		return
	}
	res, err := n.Install(r.Context(), data)
	n.answer(w, res, err)
}

func (n *Node) getLog(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	site := r.URL.Query().Get("site")
	if r.URL.Query().Has("from") {
		from, err := intParam(r, "from", 1)
		if err != nil || site == "" {
			n.writeErr(w, badRequest("from= pages through one site's log: give site= and a seq"))
			return
		}
		res, err := n.LogRange(r.Context(), site, uint64(from), limit)
		n.answer(w, res, err)
		return
	}
	res, err := n.Log(r.Context(), site, limit)
	n.answer(w, res, err)
}

func (n *Node) getStatus(w http.ResponseWriter, r *http.Request) {
	st, err := n.Status(r.Context())
	n.answer(w, st, err)
}

func (n *Node) getFamilies(w http.ResponseWriter, r *http.Request) {
	fs, err := n.Families(r.Context())
	n.answer(w, api.FamiliesResult{Families: fs}, err)
}

func (n *Node) deleteFamily(w http.ResponseWriter, r *http.Request) {
	res, err := n.RemoveFamily(r.Context(), r.PathValue("id"))
	n.answer(w, res, err)
}

func (n *Node) getPeers(w http.ResponseWriter, r *http.Request) {
	ps, err := n.Peers(r.Context())
	n.answer(w, api.PeersResult{Peers: ps}, err)
}

func (n *Node) postSync(w http.ResponseWriter, r *http.Request) {
	var req api.SyncRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, maxTxBody, &req); err != nil {
			n.writeErr(w, err)
			return
		}
	}
	var wait time.Duration
	if req.Wait != "" {
		d, err := time.ParseDuration(req.Wait)
		if err != nil || d < 0 || d > maxSyncWait {
			n.writeErr(w, badRequest("wait=%q is not a duration between 0 and 1h (like 30s)", req.Wait))
			return
		}
		wait = d
	}
	rc, err := n.SyncNow(r.Context(), wait)
	n.answer(w, rc, err)
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
	return n.writeOwn(ctx, txs, loads, nil, extra)
}

// writeOwn is the one own-write path: the checks, the log (with deps capped
// at seen when not nil), events. Gossip follows the log's commit groups
// (txlog.Config.Committed, see committed).
func (n *Node) writeOwn(ctx context.Context, txs [][]wire.Op, loads []uint64, seen map[string]uint64, extra func(*pebble.Batch) error) ([]*wire.Signed, error) {
	if err := n.writeBlockedFor(opsSize(txs)); err != nil {
		return nil, err
	}
	var out []*wire.Signed
	var err error
	if seen != nil {
		out, err = n.txlog.WriteSeen(ctx, txs, seen, extra)
	} else {
		out, err = n.txlog.WriteLoad(ctx, txs, loads, extra)
	}
	if err != nil {
		return nil, n.ownWriteError(err)
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
