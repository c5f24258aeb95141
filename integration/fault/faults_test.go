//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fixedSeeds are the schedules every run replays. When a random seed finds a
// bug, add it here so that it stays a regression test.
var fixedSeeds = []uint64{1, 2}

// shortPlan is the length of the schedules of `go test`; the soak's are
// longer. PPSYNC_FAULT_DURATION replays a soak schedule.
const shortPlan = 15 * time.Second

// replaySchedule is the command that replays one schedule.
func replaySchedule(seed uint64, d time.Duration) string {
	return fmt.Sprintf("PPSYNC_FAULT_SEED=%d PPSYNC_FAULT_DURATION=%s go test ./integration/fault/ -run 'TestFaults/schedule' -v", seed, d)
}

// replayDatabase is the command that replays the DatabaseFaults scenario
// with faults for d.
func replayDatabase(seed uint64, d time.Duration) string {
	return fmt.Sprintf("PPSYNC_FAULT_SEED=%d PPSYNC_FAULT_DURATION=%s go test ./integration/fault/ -run 'TestFaults/DatabaseFaults$' -v", seed, d)
}

// replayPostgres is the command that replays the PostgresFaults scenario
// with faults for d.
func replayPostgres(seed uint64, d time.Duration) string {
	return fmt.Sprintf("PPSYNC_FAULT_SEED=%d PPSYNC_FAULT_DURATION=%s go test ./integration/fault/ -run 'TestFaults/PostgresFaults$' -v", seed, d)
}

// scenario is one subtest of TestFaults.
type scenario struct {
	name   string
	seed   uint64
	replay string
	run    func(ctx context.Context, env Env, seed uint64) (Result, error)
}

// TestFaults runs the fault suite against real ppsync processes:
//
//   - schedule-seed=N: randomized schedules (kill -9 of sites and the relay
//     during writes and during catch-up, partitions, one-way partitions, the
//     relay as the only path, stalls, SIGSTOP, long offline stretches) for the
//     fixed seeds plus one random seed, or only PPSYNC_FAULT_SEED;
//   - long-offline, relay-only-path, clock-skew, disk-full, foreign-family,
//     cloned-site, online-truth, lan-discovery, alerts, canary, rotation,
//     TwoRelays, DatabaseFaults, PostgresFaults: one scenario each (seed
//     PPSYNC_FAULT_SEED or a fixed one).
//
// After each: every acknowledged transaction at every node with its content,
// none applied twice, equal digests, `ppsync verify` clean on every node.
// The scenarios run concurrently (PPSYNC_FAULT_PARALLEL, default 3: each
// family is a few mostly idle processes).
func TestFaults(t *testing.T) {
	d := shortPlan
	if v := os.Getenv("PPSYNC_FAULT_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("PPSYNC_FAULT_DURATION=%q: %v", v, err)
		}
	}
	seeds := append([]uint64(nil), fixedSeeds...)
	env, fixed := envSeed(t)
	if fixed {
		seeds = []uint64{env}
	} else if !testing.Short() {
		seeds = append(seeds, rand.Uint64()%1_000_000)
	}
	if err := CanIsolate(); err != nil {
		t.Logf("no network namespaces (%v): partitions are left out and their scenarios skipped", err)
	}
	var list []scenario
	for _, seed := range seeds {
		list = append(list, scenario{name: fmt.Sprintf("schedule-seed=%d", seed), seed: seed, replay: replaySchedule(seed, d),
			run: func(ctx context.Context, e Env, s uint64) (Result, error) {
				return RunSchedule(ctx, e, s, SchedulePlan(d))
			}})
	}
	special := func(name string, def uint64, run func(context.Context, Env, uint64) (Result, error)) {
		seed := def
		if fixed {
			seed = env
		}
		list = append(list, scenario{name: name, seed: seed, run: run,
			replay: fmt.Sprintf("PPSYNC_FAULT_SEED=%d go test ./integration/fault/ -run 'TestFaults/%s$' -v", seed, name)})
	}
	special("long-offline", 11, func(ctx context.Context, e Env, s uint64) (Result, error) { return LongOffline(ctx, e, s, 20000) })
	special("relay-only-path", 16, RelayOnly)
	special("clock-skew", 14, ClockSkew)
	special("disk-full", 15, DiskFull)
	special("foreign-family", 12, ForeignFamily)
	special("cloned-site", 13, ClonedSite)
	special("online-truth", 17, OnlineTruth)
	special("lan-discovery", 18, LANDiscovery)
	special("alerts", 21, Alerts)
	special("canary", 22, Canary)
	special("rotation", 23, Rotation)
	special("TwoRelays", 24, TwoRelays)
	// Its faults go on for the schedules' length (PPSYNC_FAULT_DURATION
	// replays a soak round), at least one round of them.
	special("DatabaseFaults", 19, func(ctx context.Context, e Env, s uint64) (Result, error) { return DatabaseFaults(ctx, e, s, d) })
	list[len(list)-1].replay = replayDatabase(list[len(list)-1].seed, d)
	special("PostgresFaults", 20, func(ctx context.Context, e Env, s uint64) (Result, error) { return PostgresFaults(ctx, e, s, d) })
	list[len(list)-1].replay = replayPostgres(list[len(list)-1].seed, d)

	par := 3
	if v := os.Getenv("PPSYNC_FAULT_PARALLEL"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			par = n
		}
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, sc := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t.Run(sc.name, func(t *testing.T) {
				res, err := sc.run(testContext(t), testEnv(t), sc.seed)
				if errors.Is(err, ErrSkip) {
					t.Skip(err)
				}
				if err != nil {
					t.Fatalf("%s seed %d: %v (replay: %s)", sc.name, sc.seed, err, sc.replay)
				}
				report(t, res, sc.replay)
			})
		}()
	}
	wg.Wait()
}
