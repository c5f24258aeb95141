package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

func TestActivityKeptAcrossRestarts(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	r := f.start()
	for i := 0; i < 3; i++ {
		r.call(t, "POST", "/v1/transactions", fmt.Sprintf(`{"ops":[{"op":"put","table":"t","key":"k%d","fields":{}}]}`, i), nil)
	}
	r.call(t, "PUT", "/v1/settings", `{"sync_interval":"3m"}`, nil)
	var before map[string][]api.Event
	r.call(t, "GET", "/v1/activity", nil, &before)
	if len(before["events"]) < 4 {
		t.Fatalf("activity before restart: %+v", before)
	}
	r.stop()

	r = f.start()
	r.call(t, "POST", "/v1/transactions", `{"ops":[{"op":"put","table":"t","key":"after","fields":{}}]}`, nil)
	var after map[string][]api.Event
	r.call(t, "GET", "/v1/activity", nil, &after)
	evs := after["events"]
	if len(evs) != len(before["events"])+1 {
		t.Fatalf("after restart %d events, want %d", len(evs), len(before["events"])+1)
	}
	if evs[0].Type != EvCommitted || evs[0].ID != before["events"][0].ID+1 {
		t.Fatalf("numbering does not go on after a restart: newest %+v, before %d", evs[0], before["events"][0].ID)
	}
	for i, ev := range evs[1:] {
		if want := before["events"][i]; ev.ID != want.ID || ev.Type != want.Type || string(ev.Data) != string(want.Data) || !ev.Time.Equal(want.Time) {
			t.Fatalf("event %d after restart %+v, want %+v", i, ev, want)
		}
	}
	// A stream resumes across the restart with the same IDs.
	ids := readEvents(t, r, fmt.Sprint(before["events"][0].ID), 1)
	if len(ids) != 1 || ids[0] != fmt.Sprint(evs[0].ID) {
		t.Fatalf("resumed stream %v", ids)
	}
}

func TestActivityFileSizeCapped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ActivityFile)
	const maxSize = 4 << 10
	log := slog.New(slog.DiscardHandler)
	st, kept, err := openActivityStore(path, maxSize, log)
	if err != nil || len(kept) != 0 {
		t.Fatalf("new store: %v %d", err, len(kept))
	}
	h := newEventHub(time.Now)
	stop := startActivityWriter(h, kept, st)
	const n = 1000 // about 25 times maxSize
	for i := 0; i < n; i++ {
		h.emit(EvCommitted, map[string]any{"site": "clinic-a", "from": i, "to": i})
	}
	stop()
	files, _ := filepath.Glob(path + "*")
	if len(files) != 2 {
		t.Fatalf("files %v, want the current and one older", files)
	}
	for _, fn := range files {
		fi, err := os.Stat(fn)
		if err != nil || fi.Size() > maxSize+200 {
			t.Fatalf("%s: %v, size %d over the cap %d", fn, err, fi.Size(), maxSize)
		}
	}

	// Reopened: the newest events are back, in order, and numbering goes on.
	st, kept, err = openActivityStore(path, maxSize, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) < 20 || kept[len(kept)-1].ID != n {
		t.Fatalf("kept %d events, last %+v", len(kept), kept[len(kept)-1])
	}
	for i := 1; i < len(kept); i++ {
		if kept[i].ID != kept[i-1].ID+1 {
			t.Fatalf("kept events out of order at %d: %d after %d", i, kept[i].ID, kept[i-1].ID)
		}
	}
	h = newEventHub(time.Now)
	h.emit(EvPeer, map[string]any{"site": "relay", "connected": true}) // before attaching, while the node starts
	stop = startActivityWriter(h, kept, st)
	h.emit(EvSyncNow, map[string]any{"wait": "0s"})
	got := h.recent(0, 3)
	if got[0].ID != n+2 || got[0].Type != EvSyncNow || got[1].ID != n+1 || got[1].Type != EvPeer || got[2].ID != n {
		t.Fatalf("after reopening: %+v", got)
	}
	stop()
}

func TestActivityFileSurvivesDamage(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ActivityFile)
	good := `{"id":7,"type":"committed","time":"2026-01-02T03:04:05Z","data":{"site":"a","from":1,"to":1}}` + "\n"
	// A crash cut the last line short; a stray line is not JSON.
	if err := os.WriteFile(path, []byte("not json\n"+good+`{"id":8,"type":"comm`), 0o600); err != nil {
		t.Fatal(err)
	}
	st, kept, err := openActivityStore(path, activityMaxBytes, slog.New(slog.DiscardHandler))
	if err != nil || len(kept) != 1 || kept[0].ID != 7 {
		t.Fatalf("kept %+v (%v)", kept, err)
	}
	h := newEventHub(time.Now)
	stop := startActivityWriter(h, kept, st)
	h.emit(EvSyncNow, map[string]any{"wait": "0s"})
	stop()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, `{"id":8,"type":"sync-now"`) {
		t.Fatalf("the new event was not written on a line of its own: %q", b)
	}
}

// startActivityWriter attaches st to h as a node does and returns a stop
// that ends the writer and waits until it closed the file.
func startActivityWriter(h *eventHub, kept []api.Event, st *activityStore) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	q := h.attach(kept)
	done := make(chan struct{})
	go func() {
		writeActivity(ctx, h, q, st, slog.New(slog.DiscardHandler))
		close(done)
	}()
	return func() {
		cancel()
		<-done
	}
}
