//go:build linux

package integration

// Cold catch-up between two real `ppsync run` processes, beside PouchDB 9's
// local replication of the same documents, measured in the same run.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkCatchUpVsPouchDB: site A, set up as the README says, imports
// 1,000,000 ~200-byte lines with `ppsync import` (not timed) and stops.
// Each iteration starts A again and a new, empty site B with A as its
// bootstrap address, and times from B's launch until B holds and applied
// every entry (entries/s), reading both processes' RSS meanwhile. In the
// same run a Node.js script (testdata/pouchdb_replicate.js) installs
// pouchdb-node@9 with npm into a temporary directory, fills a local LevelDB
// database with the same 1,000,000 ~200-byte documents (bulkDocs, not timed)
// and times PouchDB.replicate to an empty one; the benchmark prints both
// rates and their ratio. Without node or npm, or if npm fails, the PouchDB
// part is skipped with a message and ppsync's figures are still reported.
// Targets: at least 100,000 entries/s and at least 18× PouchDB's docs/s.
//
// PPSYNC_CATCHUP_N sets the number of entries (default 1,000,000).
// PPSYNC_CATCHUP_POUCHDB=0 skips the PouchDB part (while iterating).
// PPSYNC_CATCHUP_JOINED_AFTER=1 also measures a site set up after the
// import: it holds the backlog until its data key's grant, which A writes
// after it, and then applies it.
// PPSYNC_CATCHUP_PROFILE=DIR writes CPU profiles of the serving (A) and the
// receiving (B) process of each catch-up to DIR (PPSYNC_CPU_PROFILE).
// PPSYNC_BENCH_BASELINE_BIN names another ppsync binary (a build of an
// earlier commit, without cgo) whose catch-up is measured in the same iterations, from
// the same site A, interleaved, for before/after ratios.
func BenchmarkCatchUpVsPouchDB(b *testing.B) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_CATCHUP_N")); err == nil && v > 0 {
		total = v
	}
	base := baselineBin(b)
	profDir := os.Getenv("PPSYNC_CATCHUP_PROFILE")
	dir := b.TempDir()
	file := filepath.Join(dir, "import.jsonl")
	writeImportFile(b, file, 0, total)

	sup := newSupport(b, dir, "CatchUp")
	dataA, _ := sup.join(b, "clinic-a", sup.familyFile())
	a := startNode(b, dataA)
	addrA := a.loopbackAddr()
	// The sites that catch up, one per measurement, each run once beside A
	// before the import (as BenchmarkMemory1M's B): each then holds A's
	// certificate and A has given it the family's data key, so the backlog
	// applies as it arrives. (A site that joins after the import holds the
	// backlog until the key's grant, which comes after it in A's log.)
	var pool []string
	for i := range catchUpSites * (1 + min(len(base), 1)) {
		site := fmt.Sprintf("clinic-b%d", i+1)
		data, _ := sup.join(b, site, sup.familyFile())
		p := startNode(b, data, "--bootstrap", addrA)
		waitStatus(b, data, syncTimeout, site+" connected to clinic-a", func(st status) bool { return st.Peers != nil && *st.Peers >= 1 })
		p.stopClean()
		pool = append(pool, data)
	}
	start := time.Now()
	r := ppsyncEnv(b, env(e2eMachine), 30*time.Minute, "", "import", "--data", dataA, file).want(b, exitOK)
	var res batchAnswer
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Transactions != total {
		b.Fatalf("import printed %q (%v)", r.stdout, err)
	}
	b.Logf("site A imported %d lines in %.1f s (not timed)", total, time.Since(start).Seconds())
	// Every site that caught up must hold this digest. It is taken here, by
	// the build that imported: a baseline build (an earlier one) may not
	// read A's state as this build stored it (docs/operations.md, "Going
	// back to an earlier build"), but it serves A's log all the same.
	digestA := strings.TrimSpace(ppsync(b, "digest", "--data", dataA).want(b, exitOK).stdout)
	a.stopClean()

	next := func() string {
		if len(pool) == 0 {
			b.Fatalf("more than %d iterations: use -benchtime 1x to %dx", catchUpSites, catchUpSites)
		}
		d := pool[0]
		pool = pool[1:]
		return d
	}
	var runs, baseRuns []catchUpRun
	for b.Loop() {
		if base != "" {
			baseRuns = append(baseRuns, catchUpOnce(b, base, dataA, digestA, next(), total, profDir, "base"))
		}
		runs = append(runs, catchUpOnce(b, ppsyncBin, dataA, digestA, next(), total, profDir, "new"))
	}
	now := reportCatchUp(b, "", runs)
	if base != "" {
		was := reportCatchUp(b, "base-", baseRuns)
		b.ReportMetric(now.rate/was.rate, "catch-up/base")
		b.ReportMetric(now.cpu/was.cpu, "catch-up_cpu/base")
	}
	if os.Getenv("PPSYNC_CATCHUP_JOINED_AFTER") == "1" {
		// A site set up only now: its data key's grant comes after the
		// backlog, which it holds until then and applies afterwards.
		joined := func(bin, tag string) catchUpRun {
			site := fmt.Sprintf("clinic-n-%s", tag)
			data, _ := sup.join(b, site, sup.familyFile())
			return catchUpOnce(b, bin, dataA, digestA, data, total, profDir, tag)
		}
		var was catchUpRun
		if base != "" {
			was = joined(base, "base")
		}
		j := joined(ppsyncBin, "new")
		b.ReportMetric(j.rate, "joined-after_entries/s")
		b.ReportMetric(max(j.peakB, j.hwmB), "joined-after_b:hwm_MiB")
		if base != "" {
			b.ReportMetric(was.rate, "base-joined-after_entries/s")
			b.ReportMetric(j.rate/was.rate, "joined-after/base")
		}
	}

	if os.Getenv("PPSYNC_CATCHUP_POUCHDB") == "0" {
		b.Log("PouchDB baseline skipped (PPSYNC_CATCHUP_POUCHDB=0)")
	} else if pouch, err := pouchReplicate(b, total); err != nil {
		b.Logf("PouchDB baseline skipped: %v", err)
	} else {
		b.Logf("PouchDB %s: replicate %d docs in %.1f s: %.0f docs/s (filling the source took %.1f s, not timed)",
			pouch.Version, pouch.Docs, pouch.Seconds, pouch.DocsPerS, pouch.LoadSeconds)
		b.ReportMetric(pouch.DocsPerS, "pouchdb-docs/s")
		b.ReportMetric(now.rate/pouch.DocsPerS, "ppsync/pouchdb")
		b.Logf("ppsync catch-up %.0f entries/s = %.1f× PouchDB's %.0f docs/s (targets: 100,000 entries/s, 18×)",
			now.rate, now.rate/pouch.DocsPerS, pouch.DocsPerS)
	}
	b.ReportMetric(0, "ns/op")
}

// catchUpRun is what one catch-up measured.
type catchUpRun struct {
	rate       float64 // entries/s, from B's launch until it applied them all
	cpu        float64 // ms of CPU per 1,000 entries, A and B together
	peakA      float64 // MiB, during the catch-up
	peakB      float64
	hwmA, hwmB float64 // MiB, the kernel's lifetime peaks
}

// reportCatchUp reports the mean rate and CPU and the highest peaks of rs.
func reportCatchUp(b *testing.B, prefix string, rs []catchUpRun) catchUpRun {
	var m catchUpRun
	for _, r := range rs {
		m.rate += r.rate / float64(len(rs))
		m.cpu += r.cpu / float64(len(rs))
		m.peakA, m.peakB = max(m.peakA, r.peakA), max(m.peakB, r.peakB)
		m.hwmA, m.hwmB = max(m.hwmA, r.hwmA), max(m.hwmB, r.hwmB)
	}
	b.ReportMetric(m.rate, prefix+"catch-up_entries/s")
	b.ReportMetric(m.cpu, prefix+"catch-up_cpu_ms/1k")
	b.ReportMetric(m.peakA, prefix+"a:serve_MiB")
	b.ReportMetric(m.peakB, prefix+"b:receive_MiB")
	b.ReportMetric(m.hwmA, prefix+"a:hwm_MiB")
	b.ReportMetric(m.hwmB, prefix+"b:hwm_MiB")
	return m
}

// catchUpSites is how many measurements one run can make per binary.
const catchUpSites = 3

// catchUpOnce starts site A (holding the backlog) with bin, then site B
// (dataB, empty) with A as its bootstrap address, waits until B holds and
// applied every entry, and checks that B's digest is A's (digestA).
func catchUpOnce(b *testing.B, bin string, dataA, digestA, dataB string, total int, profDir, tag string) catchUpRun {
	b.Helper()
	defer swapBinary(bin)()
	site := filepath.Base(dataB)
	envA, envB := env(e2eMachine), env(e2eMachine)
	if profDir != "" {
		envA = append(envA, "PPSYNC_CPU_PROFILE="+filepath.Join(profDir, site+"-"+tag+"-serve.pprof"))
		envB = append(envB, "PPSYNC_CPU_PROFILE="+filepath.Join(profDir, site+"-"+tag+"-receive.pprof"))
	}
	a := launchEnv(b, dataA, envA)
	a.waitReady(readyTimeout, 5*time.Millisecond)
	memA := sampleRSS(a.cmd.Process.Pid, "serve")

	start := time.Now()
	bp := launchEnv(b, dataB, envB, "--bootstrap", a.loopbackAddr())
	memB := sampleRSS(bp.cmd.Process.Pid, "receive")
	bp.waitReady(readyTimeout, 5*time.Millisecond)
	waitStatus(b, dataB, 30*time.Minute, site+" caught up and applied", func(st status) bool {
		return st.Frontier["clinic-a"] >= uint64(total) && st.Held == 0
	})
	secs := time.Since(start).Seconds()
	memA.setPhase("idle")
	memB.setPhase("idle")
	_, peaksA, hwmA := memA.finish(b)
	_, peaksB, hwmB := memB.finish(b)
	run := catchUpRun{
		rate:  float64(total) / secs,
		cpu:   float64((memA.cpuOf("serve") + memB.cpuOf("receive")).Milliseconds()) / float64(total) * 1000,
		peakA: mib(peaksA["serve"]), peakB: mib(peaksB["receive"]),
		hwmA: mib(hwmA), hwmB: mib(hwmB),
	}
	if db := strings.TrimSpace(ppsync(b, "digest", "--data", dataB).want(b, exitOK).stdout); db != digestA {
		b.Fatalf("after the catch-up clinic-a's digest is %s, %s's %s", digestA, site, db)
	}
	b.Logf("%s (%s): catch-up of %d entries in %.2f s: %.0f entries/s, %.1f ms CPU per 1,000 (A+B); peak RSS MiB: A %.0f (hwm %.0f), B %.0f (hwm %.0f)",
		filepath.Base(bin), tag, total, secs, run.rate, run.cpu, run.peakA, run.hwmA, run.peakB, run.hwmB)
	bp.stopClean()
	a.stopClean()
	return run
}

// pouchResult is what testdata/pouchdb_replicate.js prints.
type pouchResult struct {
	Docs        int     `json:"docs"`
	Seconds     float64 `json:"seconds"`
	DocsPerS    float64 `json:"docs_per_s"`
	LoadSeconds float64 `json:"load_seconds"`
	Version     string  `json:"version"`
}

// pouchReplicate installs pouchdb-node@9 into a temporary directory and runs
// testdata/pouchdb_replicate.js with n documents. An error says why the
// baseline could not be measured.
func pouchReplicate(b *testing.B, n int) (pouchResult, error) {
	b.Helper()
	var res pouchResult
	node, err := exec.LookPath("node")
	if err != nil {
		return res, fmt.Errorf("no node on PATH: %w", err)
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return res, fmt.Errorf("no npm on PATH: %w", err)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "pouchdb_replicate.js"))
	if err != nil {
		return res, err
	}
	dir := b.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", dir, "pouchdb-node@9")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		return res, fmt.Errorf("npm install pouchdb-node@9: %v: %s", err, clip(string(out)))
	}
	dbs := filepath.Join(dir, "dbs")
	if err := os.Mkdir(dbs, 0o755); err != nil {
		return res, err
	}
	ctx, cancel = context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, node, script, strconv.Itoa(n), dbs)
	run.Dir = dir
	run.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"))
	var stdout, stderr bytes.Buffer
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil {
		return res, fmt.Errorf("node %s: %v: %s", filepath.Base(script), err, clip(stderr.String()))
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil {
		return res, fmt.Errorf("node %s printed %q: %w", filepath.Base(script), stdout.String(), err)
	}
	if res.Docs != n || res.DocsPerS <= 0 {
		return res, errors.New("the PouchDB script replicated " + strconv.Itoa(res.Docs) + " documents")
	}
	return res, nil
}
