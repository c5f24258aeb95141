package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// ActivityFile keeps the activity feed (GET /v1/activity, the sync page's
// "More details") across restarts: one event per line, as JSON. When it
// reaches about 1 MiB it becomes ActivityFile+".1" (replacing the older one)
// and a new file starts, so the feed takes at most about 2 MiB of disk.
const ActivityFile = "activity.log"

const (
	activityMaxBytes   = 1 << 20     // size at which the file is rotated
	activityFlushEvery = time.Second // events are written in batches; a crash loses at most this much
	activityBufSize    = 64 << 10
	activityMaxLine    = 4 << 20 // a longer line ends loading that file (it was not written by ppsync)
)

// activityStore appends events to the activity file. Only the writer
// goroutine keepActivity starts uses it.
type activityStore struct {
	path    string
	maxSize int64
	log     *slog.Logger
	f       *os.File
	w       *bufio.Writer
	size    int64
	broken  bool // a write failed: events are kept in memory only from then on
}

// openActivityStore loads the kept events (the older file first, at most the
// newest evRingSize) and opens the activity file for appending.
func openActivityStore(path string, maxSize int64, log *slog.Logger) (*activityStore, []api.Event, error) {
	var kept []api.Event
	var last uint64
	for _, p := range []string{path + ".1", path} {
		evs, err := readActivityFile(p, last)
		if err != nil {
			return nil, nil, err
		}
		for _, ev := range evs {
			last = ev.ID
			kept = append(kept, ev)
		}
		if len(kept) > evRingSize {
			kept = append([]api.Event(nil), kept[len(kept)-evRingSize:]...)
		}
	}
	s := &activityStore{path: path, maxSize: maxSize, log: log}
	if err := s.open(); err != nil {
		return nil, nil, err
	}
	return s, kept, nil
}

// readActivityFile returns the events of one file with IDs above after, in
// order. Damaged lines (a crash in the middle of a write) are skipped.
func readActivityFile(path string, after uint64) ([]api.Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("node: activity feed: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, activityBufSize), activityMaxLine)
	var out []api.Event
	for sc.Scan() {
		var ev api.Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.ID <= after || ev.Type == "" {
			continue
		}
		after = ev.ID
		out = append(out, ev)
	}
	return out, nil // a read error leaves the events read so far: the feed is a report, not data
}

func (s *activityStore) open() error {
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("node: activity feed: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("node: activity feed: %w", err)
	}
	s.f, s.size = f, st.Size()
	s.w = bufio.NewWriterSize(f, activityBufSize)
	if s.size > 0 && !endsWithNewline(s.path, s.size) {
		s.w.WriteByte('\n') // end a line cut short by a crash
		s.size++
	}
	return nil
}

func endsWithNewline(path string, size int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return true
	}
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, size-1)
	return err == nil && b[0] == '\n'
}

// append writes one event, rotating the file when it is full.
func (s *activityStore) append(ev api.Event) {
	if s.broken {
		return
	}
	line, err := json.Marshal(ev)
	if err != nil {
		return
	}
	line = append(line, '\n')
	if _, err := s.w.Write(line); err != nil {
		s.fail(err)
		return
	}
	s.size += int64(len(line))
	if s.size >= s.maxSize {
		s.rotate()
	}
}

func (s *activityStore) rotate() {
	if err := s.w.Flush(); err != nil {
		s.fail(err)
		return
	}
	if err := s.f.Close(); err != nil {
		s.fail(err)
		return
	}
	s.f = nil
	if err := os.Rename(s.path, s.path+".1"); err != nil {
		s.fail(err)
		return
	}
	if err := s.open(); err != nil {
		s.fail(err)
	}
}

func (s *activityStore) fail(err error) {
	s.broken = true
	s.log.Warn("the activity feed is no longer written to disk (it is kept in memory until the node restarts)", "file", s.path, "err", err)
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

func (s *activityStore) flush() {
	if s.broken {
		return
	}
	if err := s.w.Flush(); err != nil {
		s.fail(err)
	}
}

func (s *activityStore) close() {
	s.flush()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.broken = true
}

// activityQueue is how many events may wait for the activity file's writer.
const activityQueue = 4096

// attach makes the hub queue its events for the activity file's writer,
// which it returns the queue of: the kept events become the ring and
// numbering goes on after them. Events emitted before (while the node was
// starting, when nobody could subscribe yet) are numbered after the kept
// ones.
func (h *eventHub) attach(kept []api.Event) chan api.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(chan api.Event, activityQueue)
	early := h.ring // numbered from 1 by this fresh hub
	h.ring = append(make([]api.Event, 0, len(kept)+len(early)), kept...)
	h.next = 1
	if len(kept) > 0 {
		h.next = kept[len(kept)-1].ID + 1
	}
	for _, ev := range early {
		ev.ID = h.next
		h.next++
		h.ring = append(h.ring, ev)
		select {
		case out <- ev:
		default:
			h.dropped++
		}
	}
	if len(h.ring) > evRingSize {
		h.ring = append([]api.Event(nil), h.ring[len(h.ring)-evRingSize:]...)
	}
	h.out = out
	return out
}

// attached reports whether the activity file's writer runs.
func (h *eventHub) attached() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out != nil
}

// detach stops queueing events for the activity file (later ones are kept
// in memory only) and returns how many the full queue could not take.
func (h *eventHub) detach() (dropped uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out = nil
	return h.dropped
}

// droppedSoFar returns how many events the full queue could not take.
func (h *eventHub) droppedSoFar() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

// keepActivity loads DATA/activity.log into the event hub and appends every
// later event to it, from a writer goroutine of its own (the hub's emitters
// never wait on the disk), until the node closes. It runs once per node,
// from Open, which holds the data directory's lock by then.
func (n *Node) keepActivity() {
	if n.events.attached() || n.ctx.Err() != nil {
		return
	}
	st, kept, err := openActivityStore(filepath.Join(n.cfg.DataDir, ActivityFile), activityMaxBytes, n.log)
	if err != nil {
		n.log.Warn("the activity feed will not be kept across restarts", "err", err)
		return
	}
	q := n.events.attach(kept)
	started := n.goTracked(func() { writeActivity(n.ctx, n.events, q, st, n.log) })
	if !started {
		n.events.detach()
		st.close()
	}
}

// writeActivity is the activity file's writer: it appends the queued events,
// flushes them every activityFlushEvery, and when ctx ends detaches the hub,
// writes what is still queued and closes the file.
func writeActivity(ctx context.Context, h *eventHub, q chan api.Event, st *activityStore, log *slog.Logger) {
	t := time.NewTicker(activityFlushEvery)
	defer t.Stop()
	var warned uint64
	for {
		select {
		case ev := <-q:
			st.append(ev)
		case <-t.C:
			st.flush()
			if d := h.droppedSoFar(); d > warned {
				log.Warn("the activity file's writer fell behind: events kept in memory only", "events", d-warned)
				warned = d
			}
		case <-ctx.Done():
			h.detach()
			for {
				select {
				case ev := <-q:
					st.append(ev)
					continue
				default:
				}
				break
			}
			st.close()
			return
		}
	}
}
