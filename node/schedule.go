package node

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// scheduler runs the periodic work of every family a process serves on one
// goroutine: each family's sync engine tick and wake-ups, and its alert
// monitor. At a relay serving a thousand families that is a thousand jobs
// in a heap instead of two thousand sleeping goroutines, and a family with
// no connected member costs none. The jobs due together run one after the
// other, so a job is short: it holds no lock across I/O and waits for no
// peer (what may wait, a catch-up or an alert's delivery, runs on a
// goroutine of its own family). Due times are the machine's monotonic
// clock; a job reads its node's clock itself.
type scheduler struct {
	mu   sync.Mutex
	jobs jobHeap
	poke chan struct{} // cap 1: the earliest due time may have changed
}

func newScheduler() *scheduler { return &scheduler{poke: make(chan struct{}, 1)} }

// job is one piece of scheduled work: f runs once on the scheduler's
// goroutine when the job is due, and again only if scheduled again (reset;
// periodic work reschedules itself).
type job struct {
	s     *scheduler
	f     func()
	at    time.Time // guarded by s.mu
	index int       // in s.jobs, -1 when not scheduled; guarded by s.mu
}

// newJob makes a job that is not scheduled yet.
func (s *scheduler) newJob(f func()) *job { return &job{s: s, f: f, index: -1} }

// reset schedules j to run once after d, instead of when it was due.
func (j *job) reset(d time.Duration) {
	s := j.s
	s.mu.Lock()
	j.at = time.Now().Add(d)
	if j.index >= 0 {
		heap.Fix(&s.jobs, j.index)
	} else {
		heap.Push(&s.jobs, j)
	}
	first := s.jobs[0] == j
	s.mu.Unlock()
	if first {
		select {
		case s.poke <- struct{}{}:
		default:
		}
	}
}

// stop unschedules j. A run already under way goes on (Node.schedule waits
// for it when the node closes).
func (j *job) stop() {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if j.index >= 0 {
		heap.Remove(&s.jobs, j.index)
	}
}

// due takes the jobs due at now off the heap (appending them to out) and
// says when the next one is due (zero: none is scheduled).
func (s *scheduler) due(now time.Time, out []*job) ([]*job, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.jobs) > 0 && !s.jobs[0].at.After(now) {
		out = append(out, heap.Pop(&s.jobs).(*job))
	}
	if len(s.jobs) == 0 {
		return out, time.Time{}
	}
	return out, s.jobs[0].at
}

// run runs the jobs as they come due, until ctx ends.
func (s *scheduler) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	var batch []*job
	for ctx.Err() == nil {
		var next time.Time
		batch, next = s.due(time.Now(), batch[:0])
		for _, j := range batch {
			j.f() // without s.mu: a job reschedules itself
		}
		if len(batch) > 0 {
			clear(batch)
			continue // the jobs may be due again
		}
		if !next.IsZero() {
			t.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-s.poke:
		}
		t.Stop()
	}
}

// jobHeap orders jobs by due time (container/heap).
type jobHeap []*job

func (h jobHeap) Len() int           { return len(h) }
func (h jobHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h jobHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *jobHeap) Push(x any) {
	j := x.(*job)
	j.index = len(*h)
	*h = append(*h, j)
}
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = nil
	j.index = -1
	*h = old[:len(old)-1]
	return j
}
