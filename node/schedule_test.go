package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The scheduler runs each job once when due, in due order, on its one
// goroutine: a reset moves a job earlier or later, a stopped job does not
// run, a job that reschedules itself is periodic, and run ends with its
// context.
func TestSchedulerRunsJobsWhenDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScheduler()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { s.run(ctx); close(done) }()
		start := time.Now()
		var mu sync.Mutex
		var ran []string
		named := func(name string) *job {
			return s.newJob(func() {
				mu.Lock()
				defer mu.Unlock()
				ran = append(ran, fmt.Sprintf("%s@%s", name, time.Since(start)))
			})
		}
		named("a").reset(3 * time.Second)
		named("b").reset(time.Second)
		c := named("c")
		c.reset(2 * time.Second)
		c.stop()
		e := named("earlier")
		e.reset(5 * time.Second)
		e.reset(500 * time.Millisecond)
		l := named("later")
		l.reset(time.Second)
		l.reset(4 * time.Second)
		var p *job
		runs := 0
		p = s.newJob(func() {
			runs++
			if runs < 3 {
				p.reset(2 * time.Second)
			}
		})
		p.reset(2 * time.Second)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		mu.Lock()
		got := slices.Clone(ran)
		mu.Unlock()
		want := []string{"earlier@500ms", "b@1s", "a@3s", "later@4s"}
		if !slices.Equal(got, want) || runs != 3 {
			t.Fatalf("ran %v and the periodic job %d times; want %v and 3", got, runs, want)
		}
		// A job scheduled while the scheduler sleeps runs on time.
		named("new").reset(time.Second)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		mu.Lock()
		last := ran[len(ran)-1]
		mu.Unlock()
		if last != "new@11s" {
			t.Fatalf("last run %s, want new@11s", last)
		}
		cancel()
		<-done
	})
}
