package txlog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// committer says whether a committer runs, how many were started, and the
// channel closed once the last one (with its syncer) has ended.
func (l *Log) committer() (running bool, starts int, done chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running, l.starts, l.done
}

func ended(done chan struct{}) bool {
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// The committer starts with the first request, lives on while requests come
// within IdleAfter of each other, ends (with its syncer) after IdleAfter
// without one, and the next request starts another that goes on where the
// last left off.
func TestCommitterStartsOnDemandAndStopsWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		e := newEnv(t, "a", func(c *Config) { c.IdleAfter = idle })
		if running, starts, _ := e.log.committer(); running || starts != 0 {
			t.Fatalf("an opened log runs a committer before any request (running %v, %d started)", running, starts)
		}
		write := func(i int) {
			t.Helper()
			if _, err := e.log.Write(bg, put("p", fmt.Sprint(i), map[string]any{"n": i})); err != nil {
				t.Fatal(err)
			}
		}
		write(1)
		running, starts, done := e.log.committer()
		if !running || starts != 1 || ended(done) {
			t.Fatalf("after a write: running %v, %d started", running, starts)
		}
		// A request just before the timeout keeps it.
		time.Sleep(idle - time.Second)
		write(2)
		time.Sleep(idle - time.Second)
		synctest.Wait()
		if running, starts, done := e.log.committer(); !running || starts != 1 || ended(done) {
			t.Fatalf("%s after its last request: running %v, %d started", idle-time.Second, running, starts)
		}
		// IdleAfter without one ends it.
		time.Sleep(2 * time.Second)
		synctest.Wait()
		running, _, done = e.log.committer()
		if running || !ended(done) {
			t.Fatalf("%s after its last request the committer still runs (running %v, ended %v)", idle+time.Second, running, ended(done))
		}
		// The next request starts another, which continues the chain.
		write(3)
		if running, starts, _ := e.log.committer(); !running || starts != 2 {
			t.Fatalf("after a write to an idle log: running %v, %d started", running, starts)
		}
		h := e.log.Head("a")
		head, err := e.log.Get("a", h.Seq)
		if h.Seq != 3 || err != nil || !head.IsSigned() {
			t.Fatalf("head %d (%v)", h.Seq, err)
		}
		if rep, err := e.log.Verify(bg, nil); err != nil || len(rep.Damage) != 0 {
			t.Fatalf("verify: %+v %v", rep, err)
		}
		// Close ends a running committer.
		_, _, done = e.log.committer()
		e.close()
		if !ended(done) {
			t.Fatal("Close returned before the committer ended")
		}
	})
}

// waitOrDump waits for wg, or fails with every goroutine's stack: a request
// lost between a committer's exit and the next start hangs its writer.
func waitOrDump(t *testing.T, wg *sync.WaitGroup, d time.Duration) {
	t.Helper()
	c := make(chan struct{})
	go func() { wg.Wait(); close(c) }()
	select {
	case <-c:
	case <-time.After(d):
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
		t.Fatalf("writers still waiting after %s: a request was not served", d)
	}
}

// Writers in bursts with idle gaps, against a committer that stops as soon
// as it finds no request (IdleAfter of a nanosecond): every request that
// races a committer's exit is still served, in order, durable, and the log
// verifies. Run with -race.
func TestCommitterStartStopRace(t *testing.T) {
	e := newEnv(t, "a", func(c *Config) { c.IdleAfter = time.Nanosecond })
	bKey := e.keys.add(t, "b", 1)
	const writers, rounds, burst = 8, 40, 4
	remote := chain(t, "b", 1, bKey, 0, wire.Hash{}, rounds, "race")
	seqs := make(chan uint64, 10*writers*rounds*burst)
	want := 0
	for round := range rounds {
		var wg sync.WaitGroup
		n := 1 + round%writers // from a lone writer, whose every request finds the committer idle, to many
		b := burst
		if n == 1 {
			b = 10 * burst
		}
		want += n * b
		for w := range n {
			wg.Go(func() {
				for i := range b {
					// Gaps: at random, until the committer has seen no
					// request and left (its exit may still be under way),
					// or a few microseconds, when a request often comes as
					// the committer finds itself idle.
					if n == 1 && rand.IntN(2) == 0 {
						for running, _, _ := e.log.committer(); running; running, _, _ = e.log.committer() {
							runtime.Gosched()
						}
					}
					for range rand.IntN(300) {
						runtime.Gosched()
					}
					out, err := e.log.Write(bg, put("p", fmt.Sprint(round, "-", w, "-", i), map[string]any{"n": i}))
					if err != nil {
						t.Errorf("write: %v", err)
						return
					}
					seqs <- out.Seq
				}
			})
		}
		wg.Go(func() { // a peer's entry and exclusive work race the exits too
			if _, err := e.log.AppendRemote(bg, remote[round]); err != nil {
				t.Errorf("append remote %d: %v", round+1, err)
			}
			if err := e.log.ReleaseHeld(bg); err != nil {
				t.Errorf("release held: %v", err)
			}
		})
		waitOrDump(t, &wg, 20*time.Second)
		if t.Failed() {
			t.FailNow()
		}
		if round%2 == 0 {
			// An idle gap: the committer ends before the next burst.
			deadline := time.Now().Add(10 * time.Second)
			for running, _, done := e.log.committer(); running || !ended(done); running, _, done = e.log.committer() {
				if time.Now().After(deadline) {
					t.Fatal("the committer did not stop in an idle gap")
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d given twice", s)
		}
		seen[s] = true
	}
	h := e.log.Head("a")
	head, err := e.log.Get("a", h.Seq)
	if h.Seq != uint64(want) || len(seen) != want || err != nil || !head.IsSigned() {
		t.Fatalf("head %d, %d seqs answered, want %d (%v)", h.Seq, len(seen), want, err)
	}
	if got := e.log.Head("b").Seq; got != rounds {
		t.Fatalf("b's head %d, want %d", got, rounds)
	}
	if rep, err := e.log.Verify(bg, nil); err != nil || len(rep.Damage) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	_, starts, _ := e.log.committer()
	if starts < rounds/2 {
		t.Fatalf("%d committers started over %d rounds with idle gaps", starts, rounds)
	}
	t.Logf("%d committers started for %d requests", starts, want+2*rounds)
	// Everything durable: a reopened log holds it all.
	e.reopen(nil)
	if h := e.log.Head("a"); h.Seq != uint64(want) {
		t.Fatalf("after reopening, head %d, want %d", h.Seq, want)
	}
}

// Close racing the first requests, which start the committer: each request
// is either refused (ErrClosed) or answered and durable, Close returns only
// once every committer has ended, and nothing runs after it.
func TestCloseDuringCommitterStart(t *testing.T) {
	for range 30 {
		e := newEnv(t, "a", func(c *Config) { c.IdleAfter = time.Nanosecond })
		const writers = 8
		var acked atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				for i := range 3 {
					_, err := e.log.Write(bg, put("p", fmt.Sprint(w, "-", i), nil))
					switch {
					case err == nil:
						acked.Add(1)
					case errors.Is(err, ErrClosed):
						return
					default:
						t.Errorf("write: %v", err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			<-start
			if err := e.log.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if _, _, done := e.log.committer(); !ended(done) {
				t.Error("Close returned with a committer running")
			}
		})
		close(start)
		waitOrDump(t, &wg, time.Minute)
		if t.Failed() {
			t.FailNow()
		}
		if _, err := e.log.Write(bg, put("p", "late", nil)); !errors.Is(err, ErrClosed) {
			t.Fatalf("a write after Close: %v", err)
		}
		if _, starts, done := e.log.committer(); !ended(done) {
			t.Fatalf("a committer runs after Close (%d started)", starts)
		}
		e.reopen(nil)
		if h := e.log.Head("a"); h.Seq != uint64(acked.Load()) {
			t.Fatalf("after Close, %d writes were answered and the reopened log holds %d", acked.Load(), h.Seq)
		}
		e.close()
	}
}
