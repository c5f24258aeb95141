package hlc

import (
	"sync"
	"testing"
	"time"
)

type fakeTime struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeTime) now() time.Time  { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeTime) set(t time.Time) { f.mu.Lock(); f.t = t; f.mu.Unlock() }

func TestMonotonicWhenWallClockStandsStillOrGoesBack(t *testing.T) {
	ft := &fakeTime{t: time.UnixMilli(1_000_000)}
	c := New(ft.now)
	a := c.Now()
	b := c.Now()
	if b <= a {
		t.Fatalf("second timestamp %d not after first %d", b, a)
	}
	ft.set(time.UnixMilli(500_000)) // clock jumps back
	d := c.Now()
	if d <= b {
		t.Fatalf("timestamp after backwards jump %d not after %d", d, b)
	}
	ft.set(time.UnixMilli(2_000_000))
	e := c.Now()
	if e.Millis() != 2_000_000 || e.Logical() != 0 {
		t.Fatalf("after wall clock moves on, got %d/%d, want 2000000/0", e.Millis(), e.Logical())
	}
}

func TestObserveMovesClockPastPeer(t *testing.T) {
	ft := &fakeTime{t: time.UnixMilli(1_000_000)}
	c := New(ft.now)
	peer := Make(1_000_000+180_000, 7) // peer is 3 minutes ahead
	skew := c.Observe(peer)
	if skew != 3*time.Minute {
		t.Fatalf("skew = %v, want 3m", skew)
	}
	if n := c.Now(); n <= peer {
		t.Fatalf("Now %d not after observed %d", n, peer)
	}
	if skew := c.Observe(Make(999_000, 0)); skew != -time.Second {
		t.Fatalf("skew of a peer behind = %v, want -1s", skew)
	}
}

func TestLogicalOverflowCarries(t *testing.T) {
	ft := &fakeTime{t: time.UnixMilli(10)}
	c := New(ft.now)
	prev := c.Now()
	for i := 0; i < 70_000; i++ {
		n := c.Now()
		if n <= prev {
			t.Fatalf("step %d: %d not after %d", i, n, prev)
		}
		prev = n
	}
}

func TestConcurrentNowIsUnique(t *testing.T) {
	c := New(time.Now)
	var mu sync.Mutex
	seen := map[Timestamp]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				ts := c.Now()
				mu.Lock()
				if seen[ts] {
					mu.Unlock()
					t.Errorf("duplicate timestamp %d", ts)
					return
				}
				seen[ts] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
