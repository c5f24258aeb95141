package node

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// TestSettingsTurnBlocksNothingElse: while a change of the settings holds its
// turn (saving ppsync.toml), status and the settings answer at once; a
// second change waits for the turn (its client may give up), and changes
// one after the other leave the file and the running settings equal.
func TestSettingsTurnBlocksNothingElse(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	r.n.settingsTurn <- struct{}{} // a change in progress, stuck in its write
	done := make(chan int, 2)
	go func() { done <- r.call(t, "GET", "/v1/status", nil, &api.Status{}) }()
	go func() { done <- r.call(t, "GET", "/v1/settings", nil, &api.Settings{}) }()
	for range 2 {
		select {
		case code := <-done:
			if code != 200 {
				t.Fatalf("answered %d", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("status or settings waited for a change of the settings")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "PUT", r.base+"/v1/settings", strings.NewReader(`{"sync_interval":"2m"}`))
	req.Header.Set("Authorization", "Bearer "+r.key)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a change waiting for its turn answered %d", resp.StatusCode)
	}
	<-r.n.settingsTurn // the change in progress ends
	var s api.Settings
	if code := r.call(t, "PUT", "/v1/settings", `{"log_level":"warn"}`, &s); code != 200 || s.LogLevel != "warn" {
		t.Fatalf("change after the turn was free: %d %+v", code, s)
	}
	// Whether the abandoned change ran before or after, what is saved is
	// what runs.
	r.call(t, "GET", "/v1/settings", nil, &s)
	if c, err := LoadConfig(f.data); err != nil || c.LogLevel != "warn" || time.Duration(c.SyncInterval).String() != s.SyncInterval {
		t.Fatalf("saved %v %s, running %+v (%v)", time.Duration(c.SyncInterval), c.LogLevel, s, err)
	}
}
