package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
)

// fixture is a family with an authority and one initialised node directory.
type fixture struct {
	t       testing.TB
	authDir string
	auth    *family.Authority
	data    string
	env     map[string]string
}

func (f *fixture) getenv(k string) string { return f.env[k] }

func newFixture(t testing.TB, site, role string) *fixture {
	t.Helper()
	f := &fixture{t: t, authDir: t.TempDir(), data: filepath.Join(t.TempDir(), "data"), env: map[string]string{"PPSYNC_MACHINE_ID": "machine-one"}}
	var err error
	f.auth, _, err = family.CreateFamily(f.authDir, "Test Practice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Init(InitOptions{DataDir: f.data, FamilyFile: filepath.Join(f.authDir, family.InfoFile), Site: site, Role: role, Env: f.getenv})
	if err != nil {
		t.Fatal(err)
	}
	f.admit(res.JoinRequest, false)
	return f
}

// admit signs the join request (or a move) and installs the certificate offline.
func (f *fixture) admit(reqPath string, move bool) *family.Certificate {
	f.t.Helper()
	b, err := os.ReadFile(reqPath)
	if err != nil {
		f.t.Fatal(err)
	}
	req, err := family.ParseJoinRequest(b)
	if err != nil {
		f.t.Fatal(err)
	}
	var c *family.Certificate
	if move {
		c, err = f.auth.Move(f.authDir, req, time.Now())
	} else {
		c, err = f.auth.Admit(f.authDir, req, time.Now())
	}
	if err != nil {
		f.t.Fatal(err)
	}
	cb, _ := c.Marshal()
	if _, err := datadir.InstallOffline(f.data, cb); err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fixture) config() Config {
	f.t.Helper()
	c, err := LoadConfig(f.data)
	if err != nil {
		f.t.Fatal(err)
	}
	c.API = "127.0.0.1:0"
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.MDNS = false
	c.Env = f.getenv
	c.Version = "test"
	return c
}

// running is a node serving its API for a test.
type running struct {
	t      testing.TB // stop reports an unclean Close to it
	n      *Node
	base   string
	key    string
	cancel context.CancelFunc
	done   chan error
}

func (f *fixture) start() *running {
	f.t.Helper()
	return f.startConfig(f.config())
}

// startConfig is start with the configuration given.
func (f *fixture) startConfig(cfg Config) *running {
	f.t.Helper()
	n, err := Open(context.Background(), cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: f.t, n: n, base: "http://" + n.Addr(), cancel: cancel, done: make(chan error, 1)}
	r.key, _ = datadir.ReadAPIKey(f.data)
	go func() { r.done <- n.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(f.data, RuntimeFile)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatal("runtime.json never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	if err := r.n.Close(); err != nil && r.t != nil {
		r.t.Errorf("node %s did not close cleanly: %v", r.n.id.Site, err)
	}
	r.cancel = nil
}

func (r *running) call(t testing.TB, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, r.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

func TestNodeServesTheAPI(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()

	var tx api.TxResult
	if code := r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"patients","key":"p1","fields":{"name":"Ada","age":36}}]}`, &tx); code != 200 || tx.Seq != 1 || tx.Site != "clinic-a" {
		t.Fatalf("put: %d %+v", code, tx)
	}
	var rec api.RecordJSON
	if code := r.call(t, "GET", "/v1/records/patients/p1", nil, &rec); code != 200 || rec.Fields["name"] != "Ada" || rec.Fields["age"] != float64(36) {
		t.Fatalf("get: %d %+v", code, rec)
	}
	var batch api.BatchResult
	req := api.BatchRequest{}
	for i := 0; i < 50; i++ {
		req.Transactions = append(req.Transactions, api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "appointments", Key: fmt.Sprintf("a%03d", i), Fields: map[string]any{"slot": i}}}})
	}
	if code := r.call(t, "POST", "/v1/transactions/batch", req, &batch); code != 200 || batch.Transactions != 50 || batch.LastSeq != 51 {
		t.Fatalf("batch: %d %+v", code, batch)
	}
	var list api.ListResult
	if code := r.call(t, "GET", "/v1/records/appointments?limit=20", nil, &list); code != 200 || len(list.Records) != 20 || list.Next == nil || *list.Next != "a019" {
		t.Fatalf("list: %d %d %v", code, len(list.Records), list.Next)
	}
	r.call(t, "GET", "/v1/records/appointments?limit=20&after="+*list.Next, nil, &list)
	if list.Records[0].Key != "a020" {
		t.Fatalf("second page starts at %s", list.Records[0].Key)
	}
	var del api.TxResult
	r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"delete","table":"patients","key":"p1"}]}`, &del)
	if code := r.call(t, "GET", "/v1/records/patients/p1", nil, &api.APIError{}); code != 404 {
		t.Fatalf("deleted record: %d", code)
	}
	var ch api.ChangesResult
	r.call(t, "GET", "/v1/changes", nil, &ch)
	if len(ch.Changes) != 51 || ch.Next == 0 {
		t.Fatalf("changes: %d next %d", len(ch.Changes), ch.Next)
	}
	var dg api.DigestResult
	if r.call(t, "GET", "/v1/digest", nil, &dg); len(dg.Digest) != 64 {
		t.Fatalf("digest %q", dg.Digest)
	}
	var lg api.LogResult
	r.call(t, "GET", "/v1/log?limit=5", nil, &lg)
	if len(lg.Entries) != 5 || lg.Entries[4].Seq != 52 {
		t.Fatalf("log: %+v", lg.Entries)
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Site != "clinic-a" || st.Role != "site" || st.Frontier["clinic-a"] != 52 || st.Records != 50 || st.Version != "test" || st.Forks == nil {
		t.Fatalf("status: %+v", st)
	}
}

func TestSettingsPersist(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	var s api.Settings
	if code := r.call(t, "PUT", "/v1/settings", `{"sync_interval":"2m"}`, &s); code != 200 || s.SyncInterval != "2m0s" {
		t.Fatalf("set: %d %+v", code, s)
	}
	if code := r.call(t, "PUT", "/v1/settings", `{"sync_interval":"soon"}`, &api.APIError{}); code != 400 {
		t.Fatalf("bad interval: %d", code)
	}
	r.stop()
	c, err := LoadConfig(f.data)
	if err != nil || time.Duration(c.SyncInterval) != 2*time.Minute {
		t.Fatalf("after restart: %v %v", c.SyncInterval, err)
	}
	// The node ran with --api and --listen of its own (f.config): a
	// settings change saves what the file said, not those.
	if c.API != DefaultAPI || len(c.Listen) != 1 || c.Listen[0] != DefaultListen || !c.MDNS {
		t.Fatalf("the run's own settings leaked into %s: api %q listen %q lan_discovery %v", ConfigFile, c.API, c.Listen, c.MDNS)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	cases := []struct {
		name, path, body string
		code             int
	}{
		{"malformed JSON", "/v1/transactions", `{"ops":[`, 400},
		{"unknown field", "/v1/transactions", `{"opz":[]}`, 400},
		{"no ops", "/v1/transactions", `{"ops":[]}`, 400},
		{"bad op", "/v1/transactions", `{"ops":[{"op":"upsert","table":"t","key":"k","fields":{}}]}`, 400},
		{"empty table", "/v1/transactions", `{"ops":[{"op":"put","table":"","key":"k","fields":{"a":1}}]}`, 400},
		{"long key", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"` + strings.Repeat("k", 300) + `","fields":{"a":1}}]}`, 413},
		{"oversized", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":"` + strings.Repeat("x", 2<<20) + `"}}]}`, 413},
		{"batch with one bad", "/v1/transactions/batch", `{"transactions":[{"ops":[{"op":"put","table":"t","key":"1","fields":{"a":1}}]},{"ops":[{"op":"nope"}]}]}`, 400},
	}
	for _, c := range cases {
		var e api.APIError
		if code := r.call(t, "POST", c.path, c.body, &e); code != c.code || e.Error == "" {
			t.Errorf("%s: %d %+v, want %d with a message", c.name, code, e, c.code)
		}
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Frontier["clinic-a"] != 0 {
		t.Fatalf("bad input committed something: %v", st.Frontier)
	}
	// Wrong API key.
	req, _ := http.NewRequest("GET", r.base+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("wrong key: %d", resp.StatusCode)
	}
	// A request from another address while bound to loopback.
	w := httptest.NewRecorder()
	hr := httptest.NewRequest("GET", "/v1/status", nil)
	hr.RemoteAddr = "192.0.2.7:5555"
	hr.Header.Set("Authorization", "Bearer "+r.key)
	r.n.handler().ServeHTTP(w, hr)
	if w.Code != 403 {
		t.Fatalf("non-loopback request: %d", w.Code)
	}
}

func TestRelayRefusesWrites(t *testing.T) {
	f := newFixture(t, "relay-1", "relay")
	r := f.start()
	var e api.APIError
	if code := r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":1}}]}`, &e); code != 409 || e.Code != "read_only" {
		t.Fatalf("relay write: %d %+v", code, e)
	}
}

func TestLockAndBinding(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	if _, err := Open(context.Background(), f.config()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second node on the same directory: %v", err)
	}
	r.stop()

	// Another machine (a cloned disk): refused.
	f.env["PPSYNC_MACHINE_ID"] = "machine-two"
	if _, err := Open(context.Background(), f.config()); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "machine") {
		t.Fatalf("wrong machine: %v", err)
	}
	f.env["PPSYNC_MACHINE_ID"] = "machine-one"

	// Another database (the store replaced): refused.
	if err := os.RemoveAll(filepath.Join(f.data, DBDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), f.config()); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "database") {
		t.Fatalf("wrong database: %v", err)
	}
}

func TestSupersededAndRevoked(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	// Support moves clinic-a to a new machine: this copy is superseded.
	other := filepath.Join(t.TempDir(), "new")
	res, err := Init(InitOptions{DataDir: other, FamilyFile: filepath.Join(f.authDir, family.InfoFile), Site: "clinic-a", Env: f.getenv})
	if err != nil {
		t.Fatal(err)
	}
	moved := f.admitFile(res.JoinRequest, true)
	if _, err := datadir.InstallOffline(f.data, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), f.config()); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "moved") {
		t.Fatalf("superseded: %v", err)
	}

	g := newFixture(t, "clinic-b", "site")
	rev, err := g.auth.Revoke(g.authDir, "clinic-b", "stolen laptop", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := rev.Marshal()
	if _, err := datadir.InstallOffline(g.data, rb); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), g.config()); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked: %v", err)
	}
}

func (f *fixture) admitFile(reqPath string, move bool) []byte {
	f.t.Helper()
	b, _ := os.ReadFile(reqPath)
	req, err := family.ParseJoinRequest(b)
	if err != nil {
		f.t.Fatal(err)
	}
	var c *family.Certificate
	if move {
		c, err = f.auth.Move(f.authDir, req, time.Now())
	} else {
		c, err = f.auth.Admit(f.authDir, req, time.Now())
	}
	if err != nil {
		f.t.Fatal(err)
	}
	cb, _ := c.Marshal()
	return cb
}

func TestSetupErrors(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	// Init twice.
	if _, err := Init(InitOptions{DataDir: f.data, FamilyFile: filepath.Join(f.authDir, family.InfoFile), Site: "clinic-a"}); err == nil {
		t.Fatal("init over an existing node")
	}
	// No certificate.
	d := filepath.Join(t.TempDir(), "nocert")
	if _, err := Init(InitOptions{DataDir: d, FamilyFile: filepath.Join(f.authDir, family.InfoFile), Site: "clinic-x", Env: f.getenv}); err != nil {
		t.Fatal(err)
	}
	c, _ := LoadConfig(d)
	c.API, c.Env, c.MDNS, c.Listen = "127.0.0.1:0", f.getenv, false, []string{"/ip4/127.0.0.1/tcp/0"}
	if _, err := Open(context.Background(), c); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("no certificate: %v", err)
	}
	// A certificate of another family.
	other := newFixture(t, "clinic-a", "site")
	foreign := other.admitFileFor(t, "clinic-q")
	if _, err := datadir.InstallOffline(f.data, foreign); !errors.Is(err, family.ErrWrongFamily) {
		t.Fatalf("foreign certificate: %v", err)
	}
	// A corrupt config file.
	if err := os.WriteFile(filepath.Join(f.data, ConfigFile), []byte("api = [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(f.data); err == nil || !strings.Contains(err.Error(), ConfigFile) {
		t.Fatalf("corrupt config: %v", err)
	}
	if err := os.WriteFile(filepath.Join(f.data, ConfigFile), []byte("sync_intervall = \"1m\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(f.data); err == nil {
		t.Fatal("unknown setting accepted")
	}
}

// admitFileFor initialises a throwaway node for site in f's family and
// returns its certificate.
func (f *fixture) admitFileFor(t *testing.T, site string) []byte {
	d := filepath.Join(t.TempDir(), site)
	res, err := Init(InitOptions{DataDir: d, FamilyFile: filepath.Join(f.authDir, family.InfoFile), Site: site, Env: f.getenv})
	if err != nil {
		t.Fatal(err)
	}
	return f.admitFile(res.JoinRequest, false)
}

func TestCloseUnderWriteLoadLosesNothing(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	var mu sync.Mutex
	acked := map[uint64]bool{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var tx api.TxResult
				body := fmt.Sprintf(`{"ops":[{"op":"put","table":"t","key":"%d-%d","fields":{"v":%d}}]}`, w, i, i)
				req, _ := http.NewRequest("POST", r.base+"/v1/transactions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+r.key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return // the server is gone
				}
				if resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&tx) == nil {
					mu.Lock()
					acked[tx.Seq] = true
					mu.Unlock()
				}
				resp.Body.Close()
			}
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 300 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.stop() // clean shutdown while the writers run
	close(stop)
	wg.Wait()
	if _, err := os.Stat(filepath.Join(f.data, RuntimeFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("runtime.json left after a clean stop: %v", err)
	}
	r2 := f.start()
	var st api.Status
	r2.call(t, "GET", "/v1/status", nil, &st)
	for seq := range acked {
		if seq > st.Frontier["clinic-a"] {
			t.Fatalf("acknowledged seq %d lost (head %d)", seq, st.Frontier["clinic-a"])
		}
	}
	t.Logf("%d acknowledged writes survived a clean stop under load", len(acked))
	r2.stop()
	rep, err := Verify(context.Background(), f.data, nil)
	if err != nil || len(rep.Damage) != 0 || !rep.Rebuilt || rep.DigestBefore != rep.DigestAfter {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func TestDataDirOfAnotherFamily(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	other := newFixture(t, "clinic-a", "site")
	// Someone copied another family's family.json over this node's.
	b, err := os.ReadFile(filepath.Join(other.data, FamilyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.data, FamilyFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), f.config())
	if err == nil || !strings.Contains(err.Error(), "family") {
		t.Fatalf("a data directory of another family: %v", err)
	}
}

func TestDiskAlmostFullRefusesWrites(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	c := f.config()
	c.DiskReserve = 1 << 62 // more than any disk has: "almost full"
	n, err := Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, n: n, base: "http://" + n.Addr(), cancel: cancel, done: make(chan error, 1)}
	r.key, _ = datadir.ReadAPIKey(f.data)
	go func() { r.done <- n.Run(ctx) }()
	t.Cleanup(r.stop)
	var e api.APIError
	if code := r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":1}}]}`, &e); code != 507 || e.Code != "disk_full" || !strings.Contains(e.Error, "free some space") {
		t.Fatalf("write on a full disk: %d %+v", code, e)
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Writable || st.Frontier["clinic-a"] != 0 {
		t.Fatalf("status on a full disk: writable %v frontier %v", st.Writable, st.Frontier)
	}
	n.cfg.DiskReserve = 1 // space returned
	if code := r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"a":1}}]}`, nil); code != 200 {
		t.Fatalf("write after space returned: %d", code)
	}
}
