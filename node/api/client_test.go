package api_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ppsync/ppsync/node/api"
)

const clientTestKey = "test-key-123"

// clientTestDir writes runtime.json naming addr and the API key into a new
// data directory.
func clientTestDir(t *testing.T, addr string) string {
	t.Helper()
	dir := t.TempDir()
	rt, err := json.Marshal(api.Runtime{PID: 1, API: addr, PeerID: "p", Addrs: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runtime.json"), rt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "api.key"), []byte(clientTestKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// clientTestServer answers every endpoint with fixed bodies and records
// the last request.
type clientTestServer struct {
	*httptest.Server
	lastPath  string // escaped path and query
	lastBody  string
	lastCType string
}

func newClientTestServer(t *testing.T) *clientTestServer {
	s := &clientTestServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == api.HelloPath {
			nonce, _ := hex.DecodeString(r.URL.Query().Get("nonce"))
			json.NewEncoder(w).Encode(api.Hello{Proof: hex.EncodeToString(api.ServerProof(clientTestKey, nonce))})
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+clientTestKey {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"wrong API key; use the key in DATA/api.key","code":"unauthorized"}`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		s.lastPath, s.lastBody, s.lastCType = r.URL.RequestURI(), string(body), r.Header.Get("Content-Type")
		route := r.Method + " " + r.URL.Path
		switch {
		case route == "GET /v1/status":
			io.WriteString(w, `{"site":"a","role":"site","frontier":{"a":3},"forks":[],"last_sync":null,"online":true}`)
		case route == "POST /v1/transactions":
			io.WriteString(w, `{"site":"a","seq":4,"hash":"ab"}`)
		case route == "POST /v1/transactions/batch":
			io.WriteString(w, `{"transactions":2,"last_seq":6}`)
		case route == "GET /v1/records/a b/x/y":
			io.WriteString(w, `{"key":"x/y","fields":{"n":9007199254740993,"s":"Ada"}}`)
		case route == "GET /v1/records/t/missing":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"no record missing in table t","code":"not_found"}`)
		case route == "GET /v1/records/t":
			io.WriteString(w, `{"records":[{"key":"k1","fields":{}}],"next":"k1"}`)
		case route == "GET /v1/changes":
			io.WriteString(w, `{"changes":[{"cursor":7,"table":"t","key":"k","fields":{},"deleted":true}],"next":7,"cleared_at":0}`)
		case route == "GET /v1/digest":
			io.WriteString(w, `{"digest":"00ff"}`)
		case route == "GET /v1/log":
			io.WriteString(w, `{"entries":[{"site":"a","seq":1,"ops":[{"op":"delete","table":"t","key":"k"}]}]}`)
		case route == "GET /v1/conflicts":
			io.WriteString(w, `{"conflicts":[]}`)
		case route == "GET /v1/settings", route == "PUT /v1/settings":
			io.WriteString(w, `{"sync_interval":"1m0s","connectivity_check":true,"log_level":"info"}`)
		case route == "POST /v1/install":
			io.WriteString(w, `{"installed":"certificate","site":"a","epoch":2,"changed":true,"running":true}`)
		default:
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"the transaction has no operations","code":"bad_request"}`)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func TestClientCallsEveryEndpoint(t *testing.T) {
	srv := newClientTestServer(t)
	c, err := api.NewClient(clientTestDir(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil || st.Site != "a" || st.Frontier["a"] != 3 || !st.Online || st.LastSync != nil {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	tx, err := c.Transact(ctx, api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "t", Key: "k", Fields: map[string]any{"n": json.Number("12345678901234567890")}}}})
	if err != nil || tx.Seq != 4 {
		t.Fatalf("Transact = %+v, %v", tx, err)
	}
	if want := `{"ops":[{"op":"put","table":"t","key":"k","fields":{"n":12345678901234567890}}]}`; srv.lastBody != want || srv.lastCType != "application/json" {
		t.Errorf("Transact sent %s (%s), want %s", srv.lastBody, srv.lastCType, want)
	}
	b, err := c.Batch(ctx, api.BatchRequest{Transactions: []api.TxRequest{{}, {}}})
	if err != nil || b.Transactions != 2 || b.LastSeq != 6 {
		t.Fatalf("Batch = %+v, %v", b, err)
	}
	rec, err := c.Get(ctx, "a b", "x/y")
	if err != nil {
		t.Fatal(err)
	}
	if srv.lastPath != "/v1/records/a%20b/x%2Fy" {
		t.Errorf("Get asked for %s", srv.lastPath)
	}
	if n, ok := rec.Fields["n"].(json.Number); !ok || n.String() != "9007199254740993" {
		t.Errorf("Get lost integer precision: %#v", rec.Fields["n"])
	}
	l, err := c.List(ctx, "t", "k0", 5)
	if err != nil || len(l.Records) != 1 || l.Next == nil || *l.Next != "k1" {
		t.Fatalf("List = %+v, %v", l, err)
	}
	if srv.lastPath != "/v1/records/t?after=k0&limit=5" {
		t.Errorf("List asked for %s", srv.lastPath)
	}
	ch, err := c.Changes(ctx, 3, 0)
	if err != nil || len(ch.Changes) != 1 || ch.Changes[0].Cursor != 7 || !ch.Changes[0].Deleted || ch.Next != 7 {
		t.Fatalf("Changes = %+v, %v", ch, err)
	}
	if srv.lastPath != "/v1/changes?after=3" {
		t.Errorf("Changes asked for %s", srv.lastPath)
	}
	if d, err := c.Digest(ctx); err != nil || d != "00ff" {
		t.Fatalf("Digest = %q, %v", d, err)
	}
	lg, err := c.Log(ctx, "a", 10)
	if err != nil || len(lg.Entries) != 1 || lg.Entries[0].Ops[0].Op != "delete" {
		t.Fatalf("Log = %+v, %v", lg, err)
	}
	if srv.lastPath != "/v1/log?limit=10&site=a" {
		t.Errorf("Log asked for %s", srv.lastPath)
	}
	if cf, err := c.Conflicts(ctx, 0); err != nil || cf.Conflicts == nil {
		t.Fatalf("Conflicts = %+v, %v", cf, err)
	}
	if s, err := c.Settings(ctx); err != nil || s.SyncInterval != "1m0s" || s.ConnectivityCheck == nil || !*s.ConnectivityCheck {
		t.Fatalf("Settings = %+v, %v", s, err)
	}
	if _, err := c.UpdateSettings(ctx, api.Settings{SyncInterval: "1m0s"}); err != nil || srv.lastBody != `{"sync_interval":"1m0s"}` {
		t.Fatalf("UpdateSettings sent %s: %v", srv.lastBody, err)
	}
	in, err := c.Install(ctx, []byte(`{"format":1}`))
	if err != nil || !in.Changed || in.Epoch != 2 || srv.lastBody != `{"format":1}` {
		t.Fatalf("Install = %+v, %v (sent %s)", in, err, srv.lastBody)
	}
}

func TestClientErrors(t *testing.T) {
	srv := newClientTestServer(t)
	ctx := context.Background()
	c, err := api.NewClient(clientTestDir(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}

	// An absent record: ErrNotFound, with the server's message.
	_, err = c.Get(ctx, "t", "missing")
	var se *api.APIStatusError
	if !errors.Is(err, api.ErrNotFound) || !errors.As(err, &se) || se.Status != 404 || err.Error() != "no record missing in table t" {
		t.Errorf("Get of an absent record: %v", err)
	}

	// Any other error answer: the server's message and code as they are.
	other, err := api.NewClientFor(srv.URL+"/elsewhere", clientTestKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Status(ctx)
	if !errors.As(err, &se) || se.Status != 400 || se.Code != "bad_request" || err.Error() != "the transaction has no operations" || errors.Is(err, api.ErrNotFound) {
		t.Errorf("bad request: %#v", err)
	}

	// A wrong key.
	wrong, err := api.NewClientFor(srv.URL, "nope")
	if err != nil {
		t.Fatal(err)
	}
	_, err = wrong.Status(ctx)
	if !errors.As(err, &se) || se.Status != 401 || se.Code != "unauthorized" || !strings.Contains(err.Error(), "API key") {
		t.Errorf("wrong key: %v", err)
	}
}

func TestClientNonJSONError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>gateway</html>", http.StatusBadGateway)
	}))
	defer srv.Close()
	c, err := api.NewClientFor(srv.URL, clientTestKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Digest(context.Background())
	var se *api.APIStatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadGateway || err.Error() != "the node answered 502 Bad Gateway" {
		t.Errorf("got %v", err)
	}
}

func TestClientNotRunning(t *testing.T) {
	// No runtime.json.
	if _, err := api.NewClient(t.TempDir()); !errors.Is(err, api.ErrNotRunning) {
		t.Errorf("without runtime.json: %v", err)
	}
	// runtime.json naming a closed port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := api.NewClient(clientTestDir(t, "http://"+addr)); !errors.Is(err, api.ErrNotRunning) {
		t.Errorf("with a closed port: %v", err)
	}
	// A node that stops after the client was made.
	srv := newClientTestServer(t)
	c, err := api.NewClient(clientTestDir(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := c.Status(context.Background()); !errors.Is(err, api.ErrNotRunning) {
		t.Errorf("after the node stopped: %v", err)
	}
}

func TestClientBadFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "runtime.json"), []byte("{not json"), 0o644)
	if _, err := api.NewClient(dir); err == nil || errors.Is(err, api.ErrNotRunning) {
		t.Errorf("damaged runtime.json: %v", err)
	}
	dir = clientTestDir(t, "ftp://127.0.0.1:1")
	if _, err := api.NewClient(dir); err == nil || errors.Is(err, api.ErrNotRunning) {
		t.Errorf("non-http API address: %v", err)
	}
	dir = clientTestDir(t, "http://127.0.0.1:1")
	os.Remove(filepath.Join(dir, "api.key"))
	if _, err := api.NewClient(dir); err == nil || errors.Is(err, api.ErrNotRunning) {
		t.Errorf("missing api.key: %v", err)
	}
}

// keyCatcher is a program at a stale runtime.json's port: it records
// everything it receives, and answers the hello with proof of another key
// (proof) or with a 404 (no proof).
type keyCatcher struct {
	*httptest.Server
	mu       sync.Mutex
	received []string // method, URL, headers and body of every request
}

func newKeyCatcher(t *testing.T, proofKey string) *keyCatcher {
	k := &keyCatcher{}
	k.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		k.mu.Lock()
		k.received = append(k.received, fmt.Sprintf("%s %s %v %s", r.Method, r.URL, r.Header, body))
		k.mu.Unlock()
		if r.URL.Path == api.HelloPath && proofKey != "" {
			nonce, _ := hex.DecodeString(r.URL.Query().Get("nonce"))
			json.NewEncoder(w).Encode(api.Hello{Proof: hex.EncodeToString(api.ServerProof(proofKey, nonce))})
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(k.Close)
	return k
}

// TestStalePortNeverGetsTheKey: a program listening where runtime.json says
// the node was cannot prove it holds the API key, so the client refuses it
// (not running) and never sends the key.
func TestStalePortNeverGetsTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, proofKey string
		want           error
		notRunning     bool
	}{
		{"no proof", "", api.ErrNotTheNode, true},
		{"another node's proof", "the-key-of-another-node-0123456789", api.ErrWrongKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKeyCatcher(t, tc.proofKey)
			_, err := api.NewClient(clientTestDir(t, k.URL))
			if !errors.Is(err, tc.want) || errors.Is(err, api.ErrNotRunning) != tc.notRunning || !strings.Contains(err.Error(), "not sent") {
				t.Fatalf("NewClient against a stranger: %v", err)
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			if len(k.received) == 0 {
				t.Fatal("the stranger got no request: the test proves nothing")
			}
			for _, req := range k.received {
				if strings.Contains(req, clientTestKey) || strings.Contains(req, "Authorization") {
					t.Fatalf("the stranger received the key: %s", req)
				}
			}
		})
	}
}
