package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// fakeNode is an in-memory stand-in for a running node's API, enough to
// drive the data and inspection commands end to end.
type fakeNode struct {
	*httptest.Server
	dir string

	mu       sync.Mutex
	seq      uint64
	records  map[string]map[string]map[string]any // table -> key -> fields
	batches  int
	settings api.Settings
	install  []byte
}

const fakeKey = "fake-api-key"

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	f := &fakeNode{dir: t.TempDir(), records: map[string]map[string]map[string]any{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	rt, _ := json.Marshal(api.Runtime{PID: os.Getpid(), API: f.URL, Addrs: []string{}})
	if err := os.WriteFile(filepath.Join(f.dir, "runtime.json"), rt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "api.key"), []byte(fakeKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.APIError{Error: msg, Code: code})
}

func (f *fakeNode) apply(tx api.TxRequest) error {
	if len(tx.Ops) == 0 {
		return fmt.Errorf("a transaction needs at least one operation")
	}
	for _, op := range tx.Ops {
		if op.Table == "refused" {
			return fmt.Errorf("table name %q is reserved", op.Table)
		}
	}
	f.seq++
	for _, op := range tx.Ops {
		t := f.records[op.Table]
		if t == nil {
			t = map[string]map[string]any{}
			f.records[op.Table] = t
		}
		if op.Op == "delete" {
			delete(t, op.Key)
			continue
		}
		if t[op.Key] == nil {
			t[op.Key] = map[string]any{}
		}
		for k, v := range op.Fields {
			t[op.Key][k] = v
		}
	}
	return nil
}

// answerHello answers GET /v1/hello as a node holding key does, and reports
// whether the request was one.
func answerHello(w http.ResponseWriter, r *http.Request, key string) bool {
	if r.URL.Path != api.HelloPath {
		return false
	}
	nonce, _ := hex.DecodeString(r.URL.Query().Get("nonce"))
	json.NewEncoder(w).Encode(api.Hello{Proof: hex.EncodeToString(api.ServerProof(key, nonce))})
	return true
}

func (f *fakeNode) serve(w http.ResponseWriter, r *http.Request) {
	if answerHello(w, r, fakeKey) {
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+fakeKey {
		fail(w, 401, "unauthorized", "wrong API key")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	enc := json.NewEncoder(w)
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	switch {
	case r.Method == "GET" && r.URL.Path == "/v1/status":
		last := time.Now().Add(-90 * time.Second)
		enc.Encode(api.Status{Site: "clinic-a", Role: "site", PeerID: "12D3KooW", Version: "1.2.3", FamilyName: "Smile",
			FamilyID: strings.Repeat("ab", 32), Online: true, Frontier: map[string]uint64{"clinic-a": f.seq, "clinic-b": 7},
			Peers: 2, Forks: []api.ForkJSON{{Site: "clinic-b", Seq: 5, Held: "aaaaaaaaaa", Offered: "bbbbbbbbbb"}},
			LastSync: &last, Records: 3, Writable: true, SyncInterval: "30s"})
	case r.Method == "POST" && r.URL.Path == "/v1/transactions":
		var tx api.TxRequest
		if err := dec.Decode(&tx); err != nil {
			fail(w, 400, "bad_request", err.Error())
			return
		}
		if err := f.apply(tx); err != nil {
			fail(w, 400, "bad_request", err.Error())
			return
		}
		enc.Encode(api.TxResult{Site: "clinic-a", Seq: f.seq, Hash: "00"})
	case r.Method == "POST" && r.URL.Path == "/v1/transactions/batch":
		var b api.BatchRequest
		if err := dec.Decode(&b); err != nil {
			fail(w, 400, "bad_request", "the batch is not valid JSON: "+err.Error())
			return
		}
		if len(b.Transactions) > 10000 {
			fail(w, 413, "too_large", "too many transactions")
			return
		}
		for _, tx := range b.Transactions {
			if len(tx.Ops) > 0 && tx.Ops[0].Table == "refused-all" {
				fail(w, 400, "bad_request", "the whole batch is refused")
				return
			}
		}
		saved := f.seq
		for i, tx := range b.Transactions {
			if err := f.apply(tx); err != nil {
				f.seq = saved // all or none (the records are not rolled back: enough for these tests)
				fail(w, 400, "bad_request", fmt.Sprintf("transaction %d: %v", i+1, err))
				return
			}
		}
		f.batches++
		enc.Encode(api.BatchResult{Transactions: len(b.Transactions), LastSeq: f.seq})
	case r.Method == "GET" && len(parts) == 3 && parts[0] == "records":
		fields, ok := f.records[parts[1]][parts[2]]
		if !ok {
			fail(w, 404, "not_found", "no such record")
			return
		}
		enc.Encode(api.RecordJSON{Table: parts[1], Key: parts[2], Fields: fields})
	case r.Method == "GET" && len(parts) == 2 && parts[0] == "records":
		var keys []string
		after := r.URL.Query().Get("after")
		for k := range f.records[parts[1]] {
			if k > after {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		res := api.ListResult{Records: []api.RecordJSON{}}
		const page = 2 // small pages, so the command must follow "next"
		for i, k := range keys {
			if i == page {
				next := keys[i-1]
				res.Next = &next
				break
			}
			res.Records = append(res.Records, api.RecordJSON{Key: k, Fields: f.records[parts[1]][k]})
		}
		enc.Encode(res)
	case r.Method == "GET" && r.URL.Path == "/v1/digest":
		enc.Encode(api.DigestResult{Digest: "d1g357"})
	case r.Method == "GET" && r.URL.Path == "/v1/log":
		at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
		enc.Encode(api.LogResult{Entries: []api.EntryJSON{{Site: "clinic-a", Seq: 1, Hash: "0123456789abcdef", Time: at,
			Ops: []api.OpJSON{{Op: "put", Table: "patients", Key: "p1", Fields: map[string]any{"name": "Ada", "dob": "1815"}}, {Op: "delete", Table: "patients", Key: "p2"}}}}})
	case r.Method == "GET" && r.URL.Path == "/v1/conflicts":
		at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
		enc.Encode(api.ConflictsResult{Conflicts: []api.ConflictJSON{{ID: 1, Table: "patients", Key: "p1", Field: "phone",
			Incoming: api.ConflictSideJSON{Site: "clinic-b", Seq: 4, Time: at, Value: "555-1234"},
			Existing: api.ConflictSideJSON{Site: "clinic-a", Seq: 9, Time: at, Value: "555-9999"}, Winner: "clinic-b#4"}}})
	case r.Method == "PUT" && r.URL.Path == "/v1/settings":
		var s api.Settings
		dec.Decode(&s)
		if s.SyncInterval != "" {
			f.settings.SyncInterval = s.SyncInterval
		}
		if s.ConnectivityCheck != nil {
			f.settings.ConnectivityCheck = s.ConnectivityCheck
		}
		enc.Encode(f.settings)
	case r.Method == "POST" && r.URL.Path == "/v1/install":
		f.install, _ = io.ReadAll(r.Body)
		enc.Encode(api.InstallResult{Installed: "certificate", Site: "clinic-a", Epoch: 2, Changed: true, Running: true})
	default:
		fail(w, 404, "not_found", "no such endpoint")
	}
}

func TestDataCommands(t *testing.T) {
	f := newFakeNode(t)
	r := ppsync(t, "", nil, "put", "--data", f.dir, "patients", "p1", `{"name":"Ada <3","n":12345678901234567890}`)
	r.want(t, exitOK)
	if r.stdout != `{"site":"clinic-a","seq":1}`+"\n" {
		t.Errorf("put printed %q", r.stdout)
	}
	ppsync(t, "", nil, "put", "--data", f.dir, "patients", "p2", `{"name":"Bo"}`).want(t, exitOK)
	ppsync(t, "", nil, "put", "--data", f.dir, "patients", "p3", `{}`).want(t, exitOK)
	r = ppsync(t, "", nil, "delete", "--data", f.dir, "patients", "p3")
	r.want(t, exitOK)
	if r.stdout != `{"site":"clinic-a","seq":4}`+"\n" {
		t.Errorf("delete printed %q", r.stdout)
	}

	r = ppsync(t, "", nil, "get", "--data", f.dir, "patients", "p1")
	r.want(t, exitOK)
	if r.stdout != `{"n":12345678901234567890,"name":"Ada <3"}`+"\n" {
		t.Errorf("get printed %q", r.stdout)
	}
	ppsync(t, "", nil, "get", "--data", f.dir, "patients", "p3").want(t, exitError, "no record p3 in table patients")

	ppsync(t, "", nil, "put", "--data", f.dir, "patients", "p0", `{"x":true}`).want(t, exitOK)
	r = ppsync(t, "", nil, "list", "--data", f.dir, "patients")
	r.want(t, exitOK)
	want := `{"key":"p0","fields":{"x":true}}
{"key":"p1","fields":{"n":12345678901234567890,"name":"Ada <3"}}
{"key":"p2","fields":{"name":"Bo"}}
`
	if r.stdout != want {
		t.Errorf("list printed\n%s\nwant\n%s", r.stdout, want)
	}
	r = ppsync(t, "", nil, "list", "--data", f.dir, "empty")
	r.want(t, exitOK)
	if r.stdout != "" {
		t.Errorf("list of an empty table printed %q", r.stdout)
	}

	r = ppsync(t, "", nil, "digest", "--data", f.dir)
	r.want(t, exitOK)
	if r.stdout != "d1g357\n" {
		t.Errorf("digest printed %q", r.stdout)
	}

	// The node refusing a transaction: its message, exit 1.
	ppsync(t, "", nil, "put", "--data", f.dir, "refused", "k", `{}`).want(t, exitError, `table name "refused" is reserved`)
}

func TestInspectCommands(t *testing.T) {
	f := newFakeNode(t)
	r := ppsync(t, "", nil, "status", "--data", f.dir, "--json")
	r.want(t, exitOK)
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Site != "clinic-a" || st.Frontier["clinic-b"] != 7 {
		t.Errorf("status --json: %q (%v)", r.stdout, err)
	}
	for _, k := range []string{`"site"`, `"role"`, `"peer_id"`, `"version"`, `"online"`, `"frontier"`, `"peers"`, `"pending"`, `"version_mismatch"`, `"forks"`, `"last_sync"`} {
		if !strings.Contains(r.stdout, k) {
			t.Errorf("status --json lacks %s", k)
		}
	}
	r = ppsync(t, "", nil, "status", "--data", f.dir)
	r.want(t, exitOK)
	for _, s := range []string{"!! fork: site clinic-b wrote two different entries at seq 5", "Site           clinic-a", "Family         Smile (abababab)", "Online         yes", "Peers          2 connected", "Last sync", "ago)", "clinic-b  seq 7", "Forks          1"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("status lacks %q:\n%s", s, r.stdout)
		}
	}

	r = ppsync(t, "", nil, "log", "--data", f.dir)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "clinic-a#1  01234567  put patients/p1 {dob,name}; delete patients/p2") {
		t.Errorf("log printed %q", r.stdout)
	}
	r = ppsync(t, "", nil, "log", "--data", f.dir, "--json", "--site", "clinic-a")
	r.want(t, exitOK)
	var e api.EntryJSON
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil || e.Seq != 1 || len(e.Ops) != 2 {
		t.Errorf("log --json: %q (%v)", r.stdout, err)
	}

	r = ppsync(t, "", nil, "conflicts", "--data", f.dir)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "patients/p1.phone") || !strings.Contains(r.stdout, `clinic-b#4 "555-1234"`) || !strings.Contains(r.stdout, "WINNER") {
		t.Errorf("conflicts printed\n%s", r.stdout)
	}
	r = ppsync(t, "", nil, "conflicts", "--data", f.dir, "--json")
	r.want(t, exitOK)
	var cf api.ConflictJSON
	if err := json.Unmarshal([]byte(r.stdout), &cf); err != nil || cf.Winner != "clinic-b#4" {
		t.Errorf("conflicts --json: %q (%v)", r.stdout, err)
	}

	r = ppsync(t, "", nil, "set", "--data", f.dir, "sync-interval", "90s")
	r.want(t, exitOK)
	if r.stdout != "sync-interval = 1m30s (saved to ppsync.toml)\n" {
		t.Errorf("set printed %q", r.stdout)
	}
	r = ppsync(t, "", nil, "set", "--data", f.dir, "connectivity-check", "off", "--json")
	r.want(t, exitOK)
	if r.stdout != `{"sync_interval":"1m30s","connectivity_check":false}`+"\n" {
		t.Errorf("set --json printed %q", r.stdout)
	}

	cert := filepath.Join(t.TempDir(), "c.cert")
	os.WriteFile(cert, []byte(`{"format":1}`), 0o644)
	r = ppsync(t, "", nil, "install", "--data", f.dir, cert)
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, `Installed the certificate of site "clinic-a" (epoch 2) into the running node`) || string(f.install) != `{"format":1}` {
		t.Errorf("install printed %q, sent %q", r.stdout, f.install)
	}

	// The node stops: the next command says it is not running.
	f.Close()
	ppsync(t, "", nil, "status", "--data", f.dir).want(t, exitNotRunning, "ppsync is not running on")
}
