package node

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// readEvents reads SSE events from the stream until n "id:" lines were seen.
func readEvents(t *testing.T, r *running, lastID string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", r.base+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+r.key)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	var ids []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && len(ids) < n {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestEventsResumeAfterDisconnect(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	for i := 0; i < 3; i++ {
		r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"v":1}}]}`, nil)
	}
	first := readEvents(t, r, "", 3)
	if strings.Join(first, ",") != "1,2,3" {
		t.Fatalf("events %v", first)
	}
	// Disconnected; more happens; resume after the last one seen.
	for i := 0; i < 2; i++ {
		r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"k","fields":{"v":2}}]}`, nil)
	}
	rest := readEvents(t, r, "3", 2)
	if strings.Join(rest, ",") != "4,5" {
		t.Fatalf("resumed events %v", rest)
	}
	var act map[string][]api.Event
	r.call(t, "GET", "/v1/activity?limit=2", nil, &act)
	// 6: the first write made the site's data key first (an event of its own).
	if len(act["events"]) != 2 || act["events"][0].ID != 6 || act["events"][0].Type != EvCommitted {
		t.Fatalf("activity %+v", act)
	}
}

// An open event stream (a sync page left open) ends when the node closes:
// Close does not wait for the API's shutdown timeout and reports nothing.
func TestCloseWithOpenEventStream(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	req, _ := http.NewRequest("GET", r.base+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r.cancel()
	<-r.done
	r.cancel = nil
	if err := r.n.Close(); err != nil {
		t.Fatalf("Close with an open event stream: %v", err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Logf("the stream ended with %v", err)
	}
}

// `ppsync set log-level` changes the running logger's level, not only the
// file.
func TestSetLogLevelChangesRunningLogger(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	cfg := f.config()
	cfg.Level = new(slog.LevelVar)
	var logged syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: cfg.Level}))
	r := f.startConfig(cfg)
	n := r.n
	if n.log.Enabled(context.Background(), slog.LevelDebug) {
		t.Fatal("debug enabled at level info")
	}
	c, err := api.NewClient(f.data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateSettings(context.Background(), api.Settings{LogLevel: "debug"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Level.Level() != slog.LevelDebug || !n.log.Enabled(context.Background(), slog.LevelDebug) {
		t.Fatalf("level after set log-level debug: %v", cfg.Level.Level())
	}
}
