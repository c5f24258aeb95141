package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/txlog"
)

// TestWriteErrAnswersTheDecidedError: the API answers an error with the
// status and code decided where it arose and its whole message, as it is;
// an error nobody decided is internal, its message unstripped.
func TestWriteErrAnswersTheDecidedError(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler), cert: &family.Certificate{Epoch: 1}, id: datadir.Identity{Site: "clinic-a"}}
	_, opsErr := wire.CheckOps([]wire.OpInput{{Op: "put", Table: "t", Key: strings.Repeat("k", 300)}})
	cases := []struct {
		name   string
		err    error
		status int
		code   string
		msg    string
		is     []error
	}{
		{"operations, in a batch", fmt.Errorf("transaction 2: %w", invalidOps(opsErr)), 413, "too_large",
			`transaction 2: operation 1: "key" is 300 bytes, the limit is 256`, []error{wire.ErrTooLarge}},
		{"catching up", catchingUp("a member holds newer entries"), 409, "catching_up",
			"catching up: a member holds newer entries", []error{ErrCatchingUp}},
		{"refused", refused("clinic-a", fmt.Errorf("%w: site %q", family.ErrRevoked, "clinic-a")), 409, "refused",
			`site "clinic-a" has been revoked from the family, so this node may not run. Ask support if this is a mistake.`, []error{ErrRefused, family.ErrRevoked}},
		{"relay", n.ownWriteError(txlog.ErrReadOnly), 409, "read_only",
			"this node is a relay: it stores and forwards the family's logs but writes no transactions of its own", []error{txlog.ErrReadOnly}},
		{"forked at commit", n.ownWriteError(fmt.Errorf("%w: another copy", txlog.ErrForked)), 409, "forked",
			`another copy of this site ("clinic-a") has written entries this node did not; writes are stopped until support resolves the fork`, []error{txlog.ErrForked}},
		{"stopping", n.ownWriteError(fmt.Errorf("txlog: commit: %w", txlog.ErrClosed)), 503, "stopping",
			"the node is stopping; try again once it runs", []error{txlog.ErrClosed}},
		{"entry too large at commit", n.ownWriteError(fmt.Errorf("transaction 3: %w", opsErr)), 413, "too_large",
			`transaction 3: operation 1: "key" is 300 bytes, the limit is 256`, []error{wire.ErrTooLarge}},
		{"certificate of another family", installError(fmt.Errorf("%w: this certificate is for family 1234", family.ErrWrongFamily)), 400, "bad_request",
			"family: wrong family: this certificate is for family 1234", []error{family.ErrWrongFamily}},
		{"a bad setting", (&Config{DataDir: "d", API: "127.0.0.1:1", SyncInterval: 0, LogLevel: "info"}).Validate(), 400, "bad_request",
			"sync_interval 0s is out of range (1s to 24h)", nil},
		{"body over its limit", readLimited(&http.MaxBytesError{Limit: 1 << 20}), 413, "too_large",
			"the request is larger than 1048576 bytes", nil},
		{"untyped", fmt.Errorf("node: read the thing: %w", errors.New("state: damaged")), 500, "internal",
			"node: read the thing: state: damaged", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			n.writeErr(w, c.err)
			var got api.APIError
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if w.Code != c.status || got.Code != c.code || got.Error != c.msg {
				t.Errorf("answered %d %s %q, want %d %s %q", w.Code, got.Code, got.Error, c.status, c.code, c.msg)
			}
			for _, target := range c.is {
				if !errors.Is(c.err, target) {
					t.Errorf("%v is not %v", c.err, target)
				}
			}
		})
	}
}

// TestDeepErrorReachesTheAPI: an entry the log finds over the limit when it
// encodes it (deep in txlog and wire) is answered 413 with wire's own words,
// and within a batch names its transaction for `ppsync import`.
func TestDeepErrorReachesTheAPI(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	big := `{"ops":[{"op":"put","table":"t","key":"k","fields":{"blob":"` + strings.Repeat("x", 600<<10) + `"}}]}`
	var e api.APIError
	if code := r.call(t, "POST", "/v1/transactions", big, &e); code != 413 || e.Code != "too_large" ||
		!strings.HasPrefix(e.Error, "entry clinic-a#1 encodes to ") || !strings.HasSuffix(e.Error, "bytes, the limit is 524288") {
		t.Errorf("one transaction: %d %+v", code, e)
	}
	e = api.APIError{}
	if code := r.call(t, "POST", "/v1/transactions/batch", `{"transactions":[{"ops":[{"op":"delete","table":"t","key":"k"}]},`+big+`]}`, &e); code != 413 || e.Code != "too_large" ||
		!strings.HasPrefix(e.Error, "transaction 2: entry clinic-a#2 encodes to ") {
		t.Errorf("batch: %d %+v", code, e)
	}
	var st api.Status
	r.call(t, "GET", "/v1/status", nil, &st)
	if st.Frontier["clinic-a"] != 0 {
		t.Fatalf("refused writes committed something: %v", st.Frontier)
	}
}
