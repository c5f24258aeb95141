//go:build linux

package integration

// The memory of real `ppsync run` processes, read from the operating system
// (/proc/PID/status) the way a user's task manager shows it.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// procMem is one reading of /proc/PID/status: resident set now and its peak
// (VmHWM, the kernel's high-water mark), in bytes.
type procMem struct{ rss, hwm uint64 }

func readProcMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var m procMem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return procMem{}, fmt.Errorf("/proc/%d/status: %s: %v", pid, sc.Text(), err)
		}
		if k == "VmRSS" {
			m.rss = kb << 10
		} else {
			m.hwm = kb << 10
		}
	}
	return m, sc.Err()
}

// procCPU is the CPU time process pid has used (user and system), from
// /proc/PID/stat, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat is not as expected: %q", pid, b)
	}
	var ticks uint64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// rssSampler reads the RSS of one process every few milliseconds and keeps
// the highest reading of each phase the benchmark names.
type rssSampler struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	phase  string
	peaks  map[string]uint64
	cpu    map[string]time.Duration // CPU time used in each phase
	mark   time.Duration            // CPU time at the start of the phase
	last   procMem
	order  []string
	failed error
}

const rssEvery = 20 * time.Millisecond

func sampleRSS(pid int, phase string) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{}), peaks: map[string]uint64{}, cpu: map[string]time.Duration{}}
	s.setPhase(phase)
	go s.loop()
	return s
}

func (s *rssSampler) loop() {
	defer close(s.done)
	t := time.NewTicker(rssEvery)
	defer t.Stop()
	for {
		s.read()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *rssSampler) read() {
	m, err := readProcMem(s.pid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.failed == nil {
			s.failed = err
		}
		return
	}
	s.last = m
	if m.rss > s.peaks[s.phase] {
		s.peaks[s.phase] = m.rss
	}
}

// setPhase starts a phase: later readings count towards it.
func (s *rssSampler) setPhase(p string) {
	s.read() // the end of the phase before
	s.mu.Lock()
	s.account()
	s.phase = p
	if !slices.Contains(s.order, p) {
		s.order = append(s.order, p)
	}
	s.mu.Unlock()
	s.read()
}

// account adds the CPU time since the last mark to the current phase.
func (s *rssSampler) account() {
	c, err := procCPU(s.pid)
	if err != nil {
		if s.failed == nil {
			s.failed = err
		}
		return
	}
	if s.phase != "" {
		s.cpu[s.phase] += c - s.mark
	}
	s.mark = c
}

// cpuOf is the CPU time used so far in phase p (ended phases only).
func (s *rssSampler) cpuOf(p string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cpu[p]
}

// finish stops sampling (the process must still run) and returns the peak
// of each phase, in the order they began, and the kernel's lifetime peak.
func (s *rssSampler) finish(tb testing.TB) ([]string, map[string]uint64, uint64) {
	tb.Helper()
	s.read()
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	s.account()
	if s.failed != nil {
		tb.Fatalf("reading the memory of process %d: %v", s.pid, s.failed)
	}
	return s.order, s.peaks, s.last.hwm
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// memoryRun is what one run of the memory benchmark measured.
type memoryRun struct {
	importRate, catchUpRate float64
	// CPU time of both processes per 1,000 entries, in ms: less swayed than
	// the rates by other work on the machine.
	importCPU, catchUpCPU float64
	peaks                 map[string]float64 // "a:import", "b:receive", ... in MiB
	hwmA, hwmB            float64
}

// BenchmarkMemory1M: two real `ppsync run` processes set up as the README
// says. Site A starts empty and imports 1,000,000 ~200-byte lines with
// `ppsync import`, then idles; site B, offline meanwhile, then starts and
// catches up the backlog from A; then A is started again and imports 10,000
// more lines (its first own writes after a start read every record it holds
// into the state's presence filter). Both processes' RSS is read from
// /proc/PID/status throughout; the benchmark prints the peak of each phase
// and the kernel's lifetime peak (VmHWM) of each process, the import rate
// and the catch-up rate, and the CPU time both nodes used per 1,000 entries.
// The target is under 150 MiB at every point.
//
// PPSYNC_BENCH_ENTRIES shortens the run. PPSYNC_BENCH_BASELINE_BIN names
// another ppsync binary (a build of an earlier commit, without cgo as `make
// build` builds it) to run the same steps with, interleaved in the same run,
// for before/after ratios.
func BenchmarkMemory1M(b *testing.B) { benchMemory(b, false) }

// BenchmarkMemoryLive1M is BenchmarkMemory1M with site B running and
// connected while A imports: B receives the entries as they are written
// (gossip, and catch-up for what gossip leaves), phase "live". Its catch-up
// rate is the whole replication's: 1,000,000 entries over the time from the
// import's start until B holds and applied them all; its CPU time is A's
// serving and B's.
func BenchmarkMemoryLive1M(b *testing.B) { benchMemory(b, true) }

func benchMemory(b *testing.B, live bool) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_BENCH_ENTRIES")); err == nil && v > 0 {
		total = v
	}
	base := baselineBin(b)
	file := filepath.Join(b.TempDir(), "import.jsonl")
	writeImportFile(b, file, 0, total)
	more := filepath.Join(b.TempDir(), "more.jsonl") // written after a restart
	writeImportFile(b, more, total, 10_000)
	var runs, baseRuns []memoryRun
	for b.Loop() {
		if base != "" {
			baseRuns = append(baseRuns, memoryRun1M(b, base, file, more, total, live))
		}
		runs = append(runs, memoryRun1M(b, ppsyncBin, file, more, total, live))
	}
	report := func(prefix string, rs []memoryRun) memoryRun {
		var m memoryRun
		m.peaks = map[string]float64{}
		for _, r := range rs {
			m.importRate += r.importRate / float64(len(rs))
			m.catchUpRate += r.catchUpRate / float64(len(rs))
			m.importCPU += r.importCPU / float64(len(rs))
			m.catchUpCPU += r.catchUpCPU / float64(len(rs))
			m.hwmA = max(m.hwmA, r.hwmA)
			m.hwmB = max(m.hwmB, r.hwmB)
			for k, v := range r.peaks {
				m.peaks[k] = max(m.peaks[k], v)
			}
		}
		for k, v := range m.peaks {
			b.ReportMetric(v, prefix+k+"_MiB")
		}
		b.ReportMetric(m.hwmA, prefix+"a:hwm_MiB")
		b.ReportMetric(m.hwmB, prefix+"b:hwm_MiB")
		b.ReportMetric(m.importRate, prefix+"import_tx/s")
		b.ReportMetric(m.catchUpRate, prefix+"catch-up_entries/s")
		b.ReportMetric(m.importCPU, prefix+"import_cpu_ms/1k")
		b.ReportMetric(m.catchUpCPU, prefix+"catch-up_cpu_ms/1k")
		return m
	}
	now := report("", runs)
	if base != "" {
		was := report("base-", baseRuns)
		b.ReportMetric(now.importRate/was.importRate, "import/base")
		b.ReportMetric(now.catchUpRate/was.catchUpRate, "catch-up/base")
		b.ReportMetric(now.importCPU/was.importCPU, "import_cpu/base")
		b.ReportMetric(now.catchUpCPU/was.catchUpCPU, "catch-up_cpu/base")
	}
	b.ReportMetric(0, "ns/op")
}

// writeImportFile writes n single-op ~200-byte import lines to path.
func writeImportFile(tb testing.TB, path string, after, n int) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		w.WriteString(benchLine("patients", after+i+1))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// memoryRun1M runs the phases once with the binary bin; with live, B runs
// during the import.
func memoryRun1M(b *testing.B, bin, file, more string, total int, live bool) memoryRun {
	b.Helper()
	defer swapBinary(bin)()
	dir := b.TempDir()
	sup := newSupport(b, dir, "Memory")
	dataA, _ := sup.join(b, "clinic-a", sup.familyFile())
	dataB, _ := sup.join(b, "clinic-b", sup.familyFile())

	// Both run once, so that each holds the other's certificate (the hello
	// exchange): B then stays off while A takes the import, unless live.
	a := startNode(b, dataA)
	addrA := a.loopbackAddr()
	bp := startNode(b, dataB, "--bootstrap", addrA)
	waitStatus(b, dataB, syncTimeout, "clinic-b connected to clinic-a", func(st status) bool { return st.Peers != nil && *st.Peers >= 1 })
	var memB *rssSampler
	if live {
		memB = sampleRSS(bp.cmd.Process.Pid, "live")
	} else {
		bp.stopClean()
	}

	memA := sampleRSS(a.cmd.Process.Pid, "empty")
	time.Sleep(2 * time.Second) // a window of samples of the empty node, not a wait for anything

	memA.setPhase("import")
	start := time.Now()
	r := ppsyncEnv(b, env(e2eMachine), 30*time.Minute, "", "import", "--data", dataA, file).want(b, exitOK)
	importSecs := time.Since(start).Seconds()
	var res batchAnswer
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Transactions != total {
		b.Fatalf("import printed %q (%v)", r.stdout, err)
	}

	// Live, B already receives: the rest of what it lacks follows at once,
	// and the rate is the whole replication's, from the import's start.
	// Otherwise A idles, then serves B's catch-up from its start.
	if !live {
		memA.setPhase("idle")
		time.Sleep(10 * time.Second) // a window of samples of the idle node
		start = time.Now()
	}
	memA.setPhase("serve")
	if live {
		memB.setPhase("receive")
	} else {
		bp = startNode(b, dataB, "--bootstrap", addrA)
		memB = sampleRSS(bp.cmd.Process.Pid, "receive")
	}
	waitStatus(b, dataB, 30*time.Minute, "clinic-b caught up and applied", func(st status) bool {
		return st.Frontier["clinic-a"] >= uint64(total) && st.Held == 0
	})
	catchUpSecs := time.Since(start).Seconds()

	memA.setPhase("idle-after")
	memB.setPhase("idle")
	time.Sleep(10 * time.Second) // a window of samples of both idle nodes

	if da, db := strings.TrimSpace(ppsync(b, "digest", "--data", dataA).want(b, exitOK).stdout),
		strings.TrimSpace(ppsync(b, "digest", "--data", dataB).want(b, exitOK).stdout); da != db {
		b.Fatalf("after the catch-up clinic-a's digest is %s, clinic-b's %s", da, db)
	}
	m := memoryRun{importRate: float64(total) / importSecs, catchUpRate: float64(total) / catchUpSecs, peaks: map[string]float64{},
		importCPU:  float64(memA.cpuOf("import").Milliseconds()) / float64(total) * 1000,
		catchUpCPU: float64((memA.cpuOf("serve") + memB.cpuOf("live") + memB.cpuOf("receive")).Milliseconds()) / float64(total) * 1000}
	var line bytes.Buffer
	fmt.Fprintf(&line, "%s: import %.0f tx/s (%.0f ms CPU per 1,000), catch-up %.0f entries/s (%.0f ms CPU per 1,000 at both ends); peak RSS MiB:",
		filepath.Base(bin), m.importRate, m.importCPU, m.catchUpRate, m.catchUpCPU)
	sampled := func(name string, smp *rssSampler, hwmOf *float64) {
		order, peaks, hwm := smp.finish(b)
		for _, p := range order {
			m.peaks[name+":"+p] = mib(peaks[p])
			fmt.Fprintf(&line, " %s:%s %.0f", name, p, mib(peaks[p]))
		}
		*hwmOf = max(*hwmOf, mib(hwm))
		fmt.Fprintf(&line, " %s:hwm %.0f", name, mib(hwm))
	}
	sampled("a", memA, &m.hwmA)
	sampled("b", memB, &m.hwmB)
	bp.stopClean()

	// A started again and writing: its first own writes after a start
	// build the state's presence filter from a scan of every record it
	// holds. More lines, new records, as a clinic goes on after a restart.
	a.stopClean()
	a = startNode(b, dataA)
	memA = sampleRSS(a.cmd.Process.Pid, "restarted")
	time.Sleep(2 * time.Second) // a window of samples of the restarted node
	memA.setPhase("writes-after-restart")
	r = ppsyncEnv(b, env(e2eMachine), 30*time.Minute, "", "import", "--data", dataA, more).want(b, exitOK)
	memA.setPhase("idle-after-writes")
	time.Sleep(5 * time.Second) // a window of samples of the idle node
	sampled("a", memA, &m.hwmA)
	b.Log(line.String())
	a.stopClean()
	return m
}

// baselineBin returns PPSYNC_BENCH_BASELINE_BIN, or "" when unset, after
// checking that it was built as `make build` builds ppsync, without cgo: a
// cgo build keeps Pebble's caches outside the Go heap, where the memory limit
// does not see them, and the same code then peaks 25-55 MiB higher, so its
// figures would not compare.
func baselineBin(tb testing.TB) string {
	tb.Helper()
	bin := os.Getenv("PPSYNC_BENCH_BASELINE_BIN")
	if bin == "" {
		return ""
	}
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		tb.Fatalf("PPSYNC_BENCH_BASELINE_BIN=%s: not a Go binary this go can read (%v): %s", bin, err, bytes.TrimSpace(out))
	}
	if !bytes.Contains(out, []byte("CGO_ENABLED=0")) {
		tb.Fatalf("PPSYNC_BENCH_BASELINE_BIN=%s was built with cgo; build it as `make build` does (CGO_ENABLED=0 go build ./cmd/ppsync), or its memory will not compare", bin)
	}
	return bin
}

// swapBinary makes the helpers run bin until the returned function is called.
func swapBinary(bin string) func() {
	was := ppsyncBin
	ppsyncBin = bin
	return func() { ppsyncBin = was }
}
