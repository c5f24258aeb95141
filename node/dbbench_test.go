package node

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
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

// sample reads the heap and reports whether the live heap reached a new peak.
func (h *heapPeak) sample() bool {
	if h.s == nil {
		h.s = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	}
	metrics.Read(h.s)
	if h.s[0].Value.Kind() == metrics.KindUint64 {
		h.peak = max(h.peak, h.s[0].Value.Uint64())
	}
	if h.s[1].Value.Kind() == metrics.KindUint64 && h.s[1].Value.Uint64() > h.live {
		h.live = h.s[1].Value.Uint64()
		return true
	}
	return false
}

// writeHeapProfile writes the heap profile (as of the last GC) to file.
func writeHeapProfile(b *testing.B, file string) {
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
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

// cpuTime returns the CPU time (user and system) the process has used so far
// (Linux /proc/self/stat), or 0.
func cpuTime() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // after the command name
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // clock ticks (USER_HZ = 100)
}

// BenchmarkDBInitialLoad: a practice database of PPSYNC_BENCH_ROWS rows
// (default 1,000,000) published by a node's first run, beside two
// baselines in the same run: a plain SELECT of the rows, and raw Pebble
// storing them (see rawLoad). Reported: rows/s of each, the load's rate as
// a ratio of the raw one, the CPU time the process spent per 1,000 rows of
// the load, and the peak RSS of the process and of its Go heap during the
// load (the node runs in the process). PPSYNC_BENCH_CPUPROFILE=FILE writes
// a CPU profile of the load alone.
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
		debug.FreeOSMemory()
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
		cpu := cpuTime()
		start = time.Now()
		r := tf.start("clinic-a")
		deadline := time.Now().Add(30 * time.Minute)
		for {
			st, _ := r.n.DBStatus(context.Background())
			if st.Problem != "" {
				b.Fatalf("initial load: %s", st.Problem)
			}
			if len(st.Tables) > 0 && !st.Loading && loadedFlag(r.n) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("the initial load did not finish")
			}
			if heap.sample() && os.Getenv("PPSYNC_BENCH_MEMPROFILE") != "" {
				writeHeapProfile(b, os.Getenv("PPSYNC_BENCH_MEMPROFILE"))
			}
			time.Sleep(20 * time.Millisecond)
		}
		load := time.Since(start)
		cpu = cpuTime() - cpu
		stopProfile()
		heap.sample()
		recs, _ := r.n.state.Stats()
		if recs.Records != uint64(total) {
			b.Fatalf("the state holds %d records after the load, want %d", recs.Records, total)
		}
		after := peakRSS()
		tf.stop("clinic-a")
		raw := rawLoad(b, path, filepath.Join(b.TempDir(), "raw"))
		rate := func(d time.Duration) float64 { return float64(total) / d.Seconds() }
		b.ReportMetric(rate(load), "load-rows/s")
		b.ReportMetric(rate(raw), "raw-rows/s")
		b.ReportMetric(rate(load)/rate(raw), "ratio")
		b.ReportMetric(rate(read), "select-rows/s")
		b.ReportMetric(float64(after>>20), "peak-RSS-MiB")
		b.ReportMetric(float64(heap.peak>>20), "peak-heap-MiB")
		fmt.Printf("initial load of %d rows: %.0f rows/s, %.0f ms of CPU per 1,000 rows; raw Pebble storing the same rows: %.0f rows/s (ratio %.2f); a plain SELECT: %.0f rows/s\n",
			total, rate(load), float64(cpu.Milliseconds())*1000/float64(total), rate(raw), rate(load)/rate(raw), rate(read))
		fmt.Printf("  RSS of the process %d MiB before the node started, peak %d MiB during the load; Go heap peak %d MiB (live after a GC at most %d MiB)\n",
			before>>20, after>>20, heap.peak>>20, heap.live>>20)
	}
}

// rawLoad is the baseline of the initial load: the same rows read with a
// plain SELECT, and stored in raw Pebble (the node's store options) as the
// bare minimum of the node's work: each row's fields encoded (wire.Marshal)
// under its own key (the record) and each 1,000 rows' ops as one value (the
// log entry), committed in synced batches of 3,000 rows. No signatures,
// hashes, versions, change feed or conflict checks.
func rawLoad(b *testing.B, practice, dir string) time.Duration {
	d, err := sql.Open("sqlite", "file:"+practice+"?_pragma=busy_timeout(10000)")
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	pdb, err := store.Open(dir, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer pdb.Close()
	start := time.Now()
	rows, err := d.Query(`SELECT id, name, dob, phone, balance, notes FROM patients ORDER BY id`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	batch := pdb.NewBatch()
	var ops []wire.Op
	n := 0
	for rows.Next() {
		var id int64
		var name, dob, phone, notes string
		var bal float64
		if err := rows.Scan(&id, &name, &dob, &phone, &bal, &notes); err != nil {
			b.Fatal(err)
		}
		op := wire.Op{Kind: wire.OpPut, Table: "patients", Key: strconv.FormatInt(id, 10),
			Fields: map[string]any{"id": id, "name": name, "dob": dob, "phone": phone, "balance": bal, "notes": notes}}
		v, err := wire.Marshal(op.Fields)
		if err != nil {
			b.Fatal(err)
		}
		_ = batch.Set([]byte("r/patients/"+op.Key), v, nil)
		ops = append(ops, op)
		n++
		if len(ops) == 1000 {
			v, err := wire.Marshal(ops)
			if err != nil {
				b.Fatal(err)
			}
			_ = batch.Set(fmt.Appendf(nil, "l/%012d", n), v, nil)
			ops = ops[:0]
		}
		if n%3000 == 0 {
			if err := batch.Commit(pebble.Sync); err != nil {
				b.Fatal(err)
			}
			batch.Close()
			batch = pdb.NewBatch()
		}
	}
	if len(ops) > 0 {
		v, _ := wire.Marshal(ops)
		_ = batch.Set(fmt.Appendf(nil, "l/%012d", n), v, nil)
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		b.Fatal(err)
	}
	batch.Close()
	return time.Since(start)
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
