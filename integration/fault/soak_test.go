//go:build linux

package fault

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSoak runs randomized fault schedules for PPSYNC_SOAK (like 30m; `make
// soak SOAK=30m`), with one of the attack and special scenarios every third
// round, and writes a JSON report to PPSYNC_SOAK_REPORT (default
// soak-report.json): schedules run, transactions acknowledged, faults by kind,
// time to converge, violations. PPSYNC_FAULT_SEED fixes the master seed.
// Skipped unless PPSYNC_SOAK is set.
func TestSoak(t *testing.T) {
	v := os.Getenv("PPSYNC_SOAK")
	if v == "" {
		t.Skip("set PPSYNC_SOAK=30m (or run `make soak SOAK=30m`) to run the soak")
	}
	total, err := time.ParseDuration(v)
	if err != nil || total <= 0 {
		t.Fatalf("PPSYNC_SOAK=%q is not a duration like 30m", v)
	}
	path := os.Getenv("PPSYNC_SOAK_REPORT")
	if path == "" {
		path = "soak-report.json"
	}
	master := rand.Uint64() % 1_000_000
	if s, ok := envSeed(t); ok {
		master = s
	}
	t.Logf("soak for %s, master seed %d (replay the sequence with PPSYNC_FAULT_SEED=%d), report %s", total, master, master, path)
	rng := rand.New(rand.NewPCG(master, 0x50a4))
	rep := NewReport(master)
	specials := []struct {
		name string
		run  func(Env, uint64) (Result, error)
		test string
		// timed, when set, runs instead of run with a fault phase drawn
		// like a schedule's length (30 to 90 s).
		timed func(Env, uint64, time.Duration) (Result, error)
	}{
		{"long-offline", func(e Env, s uint64) (Result, error) { return LongOffline(testContext(t), e, s, 50000) }, "long-offline", nil},
		{"cloned-site", func(e Env, s uint64) (Result, error) { return ClonedSite(testContext(t), e, s) }, "cloned-site", nil},
		{"foreign-family", func(e Env, s uint64) (Result, error) { return ForeignFamily(testContext(t), e, s) }, "foreign-family", nil},
		{"relay-only-path", func(e Env, s uint64) (Result, error) { return RelayOnly(testContext(t), e, s) }, "relay-only-path", nil},
		{"clock-skew", func(e Env, s uint64) (Result, error) { return ClockSkew(testContext(t), e, s) }, "clock-skew", nil},
		{"disk-full", func(e Env, s uint64) (Result, error) { return DiskFull(testContext(t), e, s) }, "disk-full", nil},
		{"online-truth", func(e Env, s uint64) (Result, error) { return OnlineTruth(testContext(t), e, s) }, "online-truth", nil},
		{"lan-discovery", func(e Env, s uint64) (Result, error) { return LANDiscovery(testContext(t), e, s) }, "lan-discovery", nil},
		{"DatabaseFaults", nil, "DatabaseFaults", func(e Env, s uint64, d time.Duration) (Result, error) {
			return DatabaseFaults(testContext(t), e, s, d)
		}},
		{"PostgresFaults", nil, "PostgresFaults", func(e Env, s uint64, d time.Duration) (Result, error) {
			return PostgresFaults(testContext(t), e, s, d)
		}},
	}
	end := time.Now().Add(total)
	for round := 0; time.Now().Before(end); round++ {
		seed := rng.Uint64() % 1_000_000_000
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("round-%03d", round))
		// No t.Cleanup per round (it would keep every round's harness until the end):
		// each scenario closes its own, and Pdeathsig ends the nodes if the test dies.
		env := Env{Bin: ppsyncBin, Dir: dir, Logf: t.Logf}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var res Result
		var replay string
		if round%3 == 2 {
			sp := specials[(round/3)%len(specials)]
			if sp.timed != nil {
				d := time.Duration(30+rng.IntN(61)) * time.Second
				replay = replayDatabase(seed, d)
				if sp.name == "PostgresFaults" {
					replay = replayPostgres(seed, d)
				}
				res, err = sp.timed(env, seed, d)
			} else {
				replay = fmt.Sprintf("PPSYNC_FAULT_SEED=%d go test ./integration/fault/ -run 'TestFaults/%s$' -v", seed, sp.test)
				res, err = sp.run(env, seed)
			}
			res.Name = sp.name
			if errors.Is(err, ErrSkip) {
				t.Logf("round %d: %s skipped: %v", round, sp.name, err)
				continue
			}
		} else {
			d := time.Duration(30+rng.IntN(61)) * time.Second
			replay = replaySchedule(seed, d)
			res, err = RunSchedule(testContext(t), env, seed, SchedulePlan(d))
		}
		res.Seed = seed
		rep.Add(res, err, replay)
		t.Logf("round %d: %s", round, res)
		for _, n := range res.Notes {
			t.Logf("round %d: %s", round, n)
		}
		if err != nil {
			t.Logf("round %d: harness error: %v (replay: %s)", round, err, replay)
		}
		for _, v := range res.Violations {
			t.Logf("round %d: violation %s (replay: %s)", round, clip(v.String()), replay)
		}
		if len(res.Violations) == 0 && err == nil {
			os.RemoveAll(dir) // keep the directories (node logs) of failing rounds only
		} else {
			t.Logf("round %d: logs kept in %s until the test ends", round, filepath.Join(dir, "logs"))
		}
		if werr := rep.Write(path); werr != nil {
			t.Fatal(werr)
		}
	}
	if err := rep.Write(path); err != nil {
		t.Fatal(err)
	}
	t.Logf("soak: %d schedules, %d transactions acknowledged, faults %v, converge p50 %dms max %dms, %d violations (%d not of known bugs: %v), harness errors %d",
		rep.SchedulesRun, rep.Acknowledged, rep.Faults, rep.Converge.P50ms, rep.Converge.Maxms, rep.Violations, rep.NewViolations, rep.KnownBugs, len(rep.Errors))
	if rep.NewViolations > 0 || len(rep.Errors) > 0 {
		var kinds []string
		for k, n := range rep.ByKind {
			kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		}
		t.Errorf("the soak found %d violations not of known bugs (%s) and %d harness errors; see %s", rep.NewViolations, strings.Join(kinds, " "), len(rep.Errors), path)
	}
}
