package state

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// benchEntry returns the i-th benchmark entry: one put of about 200 bytes of
// fields into record i of one of a few tables, written by one of three sites.
func benchEntry(i int) *wire.Signed {
	site := [...]string{"clinic-a", "clinic-b", "hosted"}[i%3]
	fields := map[string]any{
		"name":    fmt.Sprintf("Patient number %08d", i),
		"born":    "1984-03-17",
		"phone":   "+44 20 7946 0958",
		"email":   fmt.Sprintf("patient%08d@example.org", i),
		"notes":   "Prefers morning appointments; allergic to penicillin.",
		"visits":  int64(i % 40),
		"balance": float64(i%1000) / 4,
	}
	seq := uint64(i/3 + 1)
	return ent(site, seq, uint64(1_700_000_000_000<<16)+uint64(i), map[string]uint64{"clinic-a": seq, "clinic-b": seq, "hosted": seq},
		put([...]string{"patients", "appointments", "invoices"}[i/3%3], fmt.Sprintf("%010d", i), fields))
}

// applyRange applies entries [from, to) in batches of batchSize without sync.
func applyRange(b testing.TB, s *State, db *pebble.DB, from, to, batchSize int) {
	for i := from; i < to; {
		batch := db.NewIndexedBatch()
		for n := 0; n < batchSize && i < to; n, i = n+1, i+1 {
			if err := s.Apply(batch, benchEntry(i)); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		if err := batch.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApply(b *testing.B) {
	s, db := openMem(b)
	const batchSize = 1000
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		applyRange(b, s, db, n, n+batchSize, batchSize)
		n += batchSize
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "entries/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/entry")
}

// heapPeak samples the heap in use until stopped and returns the peak in MB.
func heapPeak() (stop func() float64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	sample := func() {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		if m.HeapInuse > peak.Load() {
			peak.Store(m.HeapInuse)
		}
	}
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	})
	return func() float64 {
		close(done)
		wg.Wait()
		sample()
		return float64(peak.Load()) / (1 << 20)
	}
}

// open1M opens a state on a real temporary directory holding one million
// records. It is for the 1M benchmarks, which run only under -bench.
func open1M(b *testing.B) (*State, *pebble.DB) {
	b.Helper()
	if testing.Short() {
		b.Skip("builds a million records; skipped with -short")
	}
	db, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	s, err := Open(db, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	applyRange(b, s, db, 0, million, 1000)
	if err := db.Flush(); err != nil {
		b.Fatal(err)
	}
	return s, db
}

const million = 1_000_000

func BenchmarkDigest1M(b *testing.B) {
	s, _ := open1M(b)
	runtime.GC()
	stop := heapPeak()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Digest(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(stop(), "MB-peak")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/op")
}

// BenchmarkRebuild1M clears a state of one million records and applies the
// million entries again in batches of 1000, as `ppsync verify` does.
func BenchmarkRebuild1M(b *testing.B) {
	s, db := open1M(b)
	want, err := s.Digest()
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	stop := heapPeak()
	b.ResetTimer()
	for b.Loop() {
		if err := s.Clear(context.Background()); err != nil {
			b.Fatal(err)
		}
		applyRange(b, s, db, 0, million, 1000)
	}
	b.StopTimer()
	b.ReportMetric(stop(), "MB-peak")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/op")
	if got, err := s.Digest(); err != nil || got != want {
		b.Fatalf("digest after rebuild %v (%v), want %v", got, err, want)
	}
}

// BenchmarkApplyAllCatchUp applies 200,000 single-put entries as a catch-up
// does: ApplyAll of runs of 1,000 in one indexed batch each, new records in
// key order, into a store on disk.
func BenchmarkApplyAllCatchUp(b *testing.B) {
	const total, run = 200_000, 1000
	for b.Loop() {
		b.StopTimer()
		db, err := store.Open(b.TempDir(), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		s, err := Open(db, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		es := make([]*wire.Signed, 0, run)
		b.StartTimer()
		for i := 0; i < total; i += run {
			es = es[:0]
			for j := i; j < i+run; j++ {
				es = append(es, ent("clinic-a", uint64(j+1), uint64(1_700_000_000_000<<16)+uint64(j), nil,
					put("patients", fmt.Sprintf("p%08d", j), map[string]any{"name": fmt.Sprintf("Patient %08d", j), "dob": "1970-01-01", "phone": "555-0000000", "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"})))
			}
			batch := db.NewIndexedBatch()
			if err := s.ApplyAll(batch, es); err != nil {
				b.Fatal(err)
			}
			if err := batch.Commit(pebble.NoSync); err != nil {
				b.Fatal(err)
			}
			batch.Close()
		}
		b.StopTimer()
		db.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total*b.N), "ns/entry")
}
