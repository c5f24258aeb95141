package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Event types of the activity feed and GET /v1/events.
const (
	EvCommitted = "committed"      // own transactions committed: {site, from, to}
	EvReceived  = "received"       // entries from a peer appended: {site, from, to, peer, via}
	EvCatchUp   = "catch-up"       // a catch-up session ended: {peer, reason, entries, ok}
	EvPeer      = "peer"           // a member connected or left: {peer, site, connected}
	EvFork      = "fork"           // a fork was detected: {site, seq}
	EvSettings  = "settings"       // settings changed
	EvInstalled = "installed"      // a certificate or revocation was installed
	EvRejected  = "rejected"       // entries from a peer refused: {peer, site, error}
	EvSyncNow   = "sync-now"       // Sync Now pressed
	evRingSize  = 4096             // events kept for resuming streams
	evSubBuffer = 256              // per subscriber; a slow one resumes from the ring
	evHeartbeat = 15 * time.Second // SSE comment to keep proxies from closing the stream
)

// eventHub numbers events, keeps the newest for resuming, and fans them out
// to subscribers without ever blocking the emitter: a subscriber whose buffer
// is full is dropped and reconnects with Last-Event-ID.
type eventHub struct {
	now func() time.Time

	mu   sync.Mutex
	next uint64
	ring []api.Event
	subs map[chan api.Event]struct{}
	// out is the queue of the activity file's writer (DATA/activity.log,
	// see activity.go), which keeps events across restarts; nil until the
	// node attaches it, and after it stops. dropped counts events the full
	// queue could not take (kept in memory, not on disk).
	out     chan api.Event
	dropped uint64
}

func newEventHub(now func() time.Time) *eventHub {
	return &eventHub{now: now, next: 1, subs: map[chan api.Event]struct{}{}}
}

func (h *eventHub) emit(typ string, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		raw = []byte(fmt.Sprintf("%q", err.Error()))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ev := api.Event{ID: h.next, Type: typ, Time: h.now().UTC(), Data: raw}
	h.next++
	if len(h.ring) == evRingSize {
		copy(h.ring, h.ring[1:])
		h.ring = h.ring[:evRingSize-1]
	}
	h.ring = append(h.ring, ev)
	if h.out != nil {
		select {
		case h.out <- ev:
		default:
			h.dropped++
		}
	}
	for c := range h.subs {
		select {
		case c <- ev:
		default:
			delete(h.subs, c)
			close(c)
		}
	}
}

// subscribe returns the kept events after id and a channel of new ones.
func (h *eventHub) subscribe(after uint64) ([]api.Event, chan api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var past []api.Event
	for _, ev := range h.ring {
		if ev.ID > after {
			past = append(past, ev)
		}
	}
	c := make(chan api.Event, evSubBuffer)
	h.subs[c] = struct{}{}
	return past, c
}

func (h *eventHub) unsubscribe(c chan api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[c]; ok {
		delete(h.subs, c)
		close(c)
	}
}

// recent returns up to n of the newest events, newest first, before id
// (0: the newest).
func (h *eventHub) recent(before uint64, n int) []api.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []api.Event
	for i := len(h.ring) - 1; i >= 0 && len(out) < n; i-- {
		if before == 0 || h.ring[i].ID < before {
			out = append(out, h.ring[i])
		}
	}
	return out
}

// getEvents streams events as server-sent events. A client resumes after a
// disconnect with the Last-Event-ID header (or ?after=ID).
func (n *Node) getEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		n.writeErr(w, newAPIError(http.StatusInternalServerError, codeInternal, nil, "streaming is not supported here"))
		return
	}
	var after uint64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		after, _ = strconv.ParseUint(v, 10, 64)
	} else if v := r.URL.Query().Get("after"); v != "" {
		after, _ = strconv.ParseUint(v, 10, 64)
	}
	past, next := n.Events(r.Context(), after)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	write := func(ev api.Event) bool {
		_, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, ev.Data)
		return err == nil
	}
	for _, ev := range past {
		if !write(ev) {
			return
		}
	}
	fl.Flush()
	t := time.NewTicker(evHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case ev, ok := <-next:
			if !ok {
				return // ended, or too slow: the client reconnects with Last-Event-ID
			}
			if !write(ev) {
				return
			}
			fl.Flush()
		}
	}
}

// getActivity pages the activity feed, newest first (?before=ID&limit=N).
func (n *Node) getActivity(w http.ResponseWriter, r *http.Request) {
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		n.writeErr(w, err)
		return
	}
	before, _ := strconv.ParseUint(r.URL.Query().Get("before"), 10, 64)
	evs, err := n.Activity(r.Context(), before, limit)
	n.answer(w, map[string]any{"events": evs}, err)
}
