//go:build linux

package fault

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ppsyncBin is the binary TestMain built (without -race, so nodes run fast).
var ppsyncBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ppsync-fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fault:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if ppsyncBin, err = BuildBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// testEnv returns the environment of one scenario: a fresh directory (kept,
// and named in the log, when PPSYNC_FAULT_KEEP is set) and t.Logf.
func testEnv(t *testing.T) Env {
	t.Helper()
	dir := t.TempDir()
	if os.Getenv("PPSYNC_FAULT_KEEP") != "" {
		d, err := os.MkdirTemp("", "ppsync-fault-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
		t.Logf("keeping the scenario's directory: %s", dir)
	}
	return Env{Bin: ppsyncBin, Dir: dir, Logf: t.Logf, Cleanup: t.Cleanup}
}

// testContext ends a little before the test's deadline, so that cleanup
// (killing every node) still runs.
func testContext(t *testing.T) context.Context {
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		t.Cleanup(cancel)
	}
	return ctx
}

// envSeed returns PPSYNC_FAULT_SEED when set.
func envSeed(t *testing.T) (uint64, bool) {
	v := os.Getenv("PPSYNC_FAULT_SEED")
	if v == "" {
		return 0, false
	}
	s, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("PPSYNC_FAULT_SEED=%q is not a number", v)
	}
	return s, true
}

// report fails t with every violation of r, naming how to replay it. When
// every violation belongs to a known product bug (KnownBugs), the test is
// skipped with "BUG: ..." instead: the bug is reported, not fixed here, and
// the scenario stays as its regression test.
func report(t *testing.T, r Result, replay string) {
	t.Helper()
	t.Logf("%s", r)
	for _, n := range r.Notes {
		t.Logf("note: %s", n)
	}
	known, other := SplitKnown(r.Violations)
	for _, v := range other {
		t.Errorf("%s", v)
	}
	if len(r.Violations) > 0 && replay != "" {
		t.Logf("replay: %s", replay)
	}
	if len(other) > 0 || len(known) == 0 {
		return
	}
	var msg []string
	for _, b := range KnownBugs {
		if vs := known[b.ID]; len(vs) > 0 {
			first, _, _ := strings.Cut(vs[0].String(), "\n")
			msg = append(msg, fmt.Sprintf("BUG %s (%d violations, first: %s): %s", b.ID, len(vs), first, b.Summary))
		}
	}
	t.Skip(strings.Join(msg, "\n"))
}
