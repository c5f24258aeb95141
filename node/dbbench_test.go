package node

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Benchmarks of a node with a SQLite practice database (`make bench`).

// peakRSS returns the process's peak resident set size (Linux VmHWM), or 0.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// resetPeakRSS starts a new peak RSS measurement (Linux: clear_refs 5
// resets VmHWM to the current RSS); elsewhere it does nothing.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// heapPeak tracks the highest Go heap seen by sample: all objects (live or
// not yet swept), and the live heap as the last GC marked it.
type heapPeak struct {
	s          []metrics.Sample
	peak, live uint64
}

func (h *heapPeak) sample() {
	if h.s == nil {
		h.s = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	}
	metrics.Read(h.s)
	if h.s[0].Value.Kind() == metrics.KindUint64 {
		h.peak = max(h.peak, h.s[0].Value.Uint64())
	}
	if h.s[1].Value.Kind() == metrics.KindUint64 {
		h.live = max(h.live, h.s[1].Value.Uint64())
	}
}

// cpuProfile writes a CPU profile to file until the returned function runs.
func cpuProfile(b *testing.B, file string) func() {
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// BenchmarkDBInitialLoad: a practice database of PPSYNC_BENCH_ROWS rows
// (default 1,000,000) published by a node's first run, beside reading the
// same rows with a plain SELECT in the same run; the peak RSS of the whole
// test process (the node runs in it) before and after.
func BenchmarkDBInitialLoad(b *testing.B) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_BENCH_ROWS")); err == nil && v > 0 {
		total = v
	}
	for b.Loop() {
		path := filepath.Join(b.TempDir(), "practice.db")
		d, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
		if err != nil {
			b.Fatal(err)
		}
		sqlExec(b, d, `CREATE TABLE patients (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, dob TEXT, phone TEXT, balance REAL, notes TEXT)`)
		tx, _ := d.Begin()
		st, _ := tx.Prepare(`INSERT INTO patients(name, dob, phone, balance, notes) VALUES (?, ?, ?, ?, ?)`)
		for i := range total {
			if _, err := st.Exec(fmt.Sprintf("Patient %d", i), "1984-03-12", "+41 31 555 01 23", float64(i)/7, "allergic to penicillin"); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		rows, err := d.Query(`SELECT id, name, dob, phone, balance, notes FROM patients`)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var id int64
			var name, dob, phone, notes string
			var bal float64
			if err := rows.Scan(&id, &name, &dob, &phone, &bal, &notes); err != nil {
				b.Fatal(err)
			}
			n++
		}
		rows.Close()
		read := time.Since(start)
		d.Close()
		runtime.GC()
		before := peakRSS()
		resetPeakRSS()
		var heap heapPeak
		heap.sample()
		stopProfile := func() {}
		if f := os.Getenv("PPSYNC_BENCH_CPUPROFILE"); f != "" { // the load alone
			stopProfile = cpuProfile(b, f)
		}

		tf := newTestFamily(b)
		tf.addDB("clinic-a", "sqlite:"+path)
		start = time.Now()
		r := tf.start("clinic-a")
		deadline := time.Now().Add(30 * time.Minute)
		for {
			st := r.n.DBStatus()
			if st.Problem != "" {
				b.Fatalf("initial load: %s", st.Problem)
			}
			if len(st.Tables) > 0 && !st.Loading && loadedFlag(r.n) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("the initial load did not finish")
			}
			heap.sample()
			time.Sleep(20 * time.Millisecond)
		}
		load := time.Since(start)
		stopProfile()
		heap.sample()
		recs, _ := r.n.state.Stats()
		if recs.Records != uint64(total) {
			b.Fatalf("the state holds %d records after the load, want %d", recs.Records, total)
		}
		after := peakRSS()
		if os.Getenv("PPSYNC_BENCH_PEBBLE") != "" {
			fmt.Println(r.n.db.Metrics())
			it, _ := r.n.db.NewIter(nil)
			sizes := map[string][2]int{}
			for it.First(); it.Valid(); it.Next() {
				k := it.Key()
				p := string(k[:min(2, len(k))])
				v := sizes[p]
				v[0]++
				v[1] += len(k) + len(it.Value())
				sizes[p] = v
			}
			it.Close()
			fmt.Println(sizes)
		}
		rate := func(d time.Duration) float64 { return float64(total) / d.Seconds() }
		b.ReportMetric(rate(load), "load-rows/s")
		b.ReportMetric(rate(read), "select-rows/s")
		b.ReportMetric(float64(after>>20), "peak-RSS-MiB")
		fmt.Printf("initial load of %d rows: %.0f rows/s (a plain SELECT of the same rows: %.0f rows/s); RSS of the process %d MiB before the node started, peak %d MiB during the load; Go heap peak %d MiB, live after a GC at most %d MiB\n",
			total, rate(load), rate(read), before>>20, after>>20, heap.peak>>20, heap.live>>20)
	}
}

// loadedFlag reports whether the initial load's end was stored.
func loadedFlag(n *Node) bool {
	if n.dbs == nil {
		return false
	}
	v, err := n.dbs.getKey(keyLoaded)
	return err == nil && v == 1
}

// BenchmarkDBLive: rows committed one per transaction at 200 tx/s with
// plain SQL at one site, measured until each is in the other site's
// database (polled every 2 ms): p50, p99, max.
func BenchmarkDBLive(b *testing.B) {
	for b.Loop() {
		pathA, dA := practiceFile(b)
		pathB, dB := practiceFile(b)
		tf := newTestFamily(b)
		tf.add("relay", "relay")
		tf.addDB("clinic-a", "sqlite:"+pathA)
		tf.addDB("clinic-b", "sqlite:"+pathB)
		tf.start("relay")
		a := tf.start("clinic-a")
		bb := tf.start("clinic-b")
		waitDB(b, a, "clinic-a ready", dbReady)
		waitDB(b, bb, "clinic-b ready", dbReady)
		sqlExec(b, dA, `INSERT INTO patients(id, name) VALUES (0, 'warm-up')`)
		waitUntil(b, "warm-up row", 30*time.Second, func() (bool, string) {
			var n int
			_ = dB.QueryRow(`SELECT count(*) FROM patients WHERE id = 0`).Scan(&n)
			return n == 1, fmt.Sprint(n)
		})
		const rate, secs = 200, 10
		committed := make([]time.Time, rate*secs+1)
		arrived := make([]time.Time, rate*secs+1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			for i := 1; i <= rate*secs; i++ {
				<-tick.C
				if _, err := dA.Exec(`INSERT INTO patients(id, name) VALUES (?, 'live')`, i); err != nil {
					b.Error(err)
					return
				}
				committed[i] = time.Now()
			}
		}()
		seen := 0
		deadline := time.Now().Add(time.Duration(secs)*time.Second + time.Minute)
		for seen < rate*secs && time.Now().Before(deadline) {
			var top int
			_ = dB.QueryRow(`SELECT coalesce(max(id), 0) FROM patients`).Scan(&top)
			now := time.Now()
			for i := seen + 1; i <= top && i <= rate*secs; i++ {
				arrived[i] = now
			}
			seen = max(seen, min(top, rate*secs))
			time.Sleep(2 * time.Millisecond)
		}
		<-done
		var lat []time.Duration
		for i := 1; i <= rate*secs; i++ {
			if !arrived[i].IsZero() && !committed[i].IsZero() {
				lat = append(lat, max(arrived[i].Sub(committed[i]), 0))
			}
		}
		if len(lat) < rate*secs {
			b.Fatalf("only %d of %d rows arrived", len(lat), rate*secs)
		}
		slices.Sort(lat)
		p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
		b.ReportMetric(float64(p(0.5).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-ms")
		fmt.Printf("live, %d tx/s for %d s, database to database: p50 %s, p99 %s, max %s\n", rate, secs,
			p(0.5).Round(time.Millisecond), p(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	}
}
