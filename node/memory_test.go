package node

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"96MB": 96 << 20, "96 MB": 96 << 20, "96mb": 96 << 20, "512MiB": 512 << 20, "1GB": 1 << 30,
		"1.5GB": 3 << 29, "64K": 64 << 10, "100000000": 100000000, "100000000B": 100000000,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "lots", "-5MB", "5TB", "1e9", "5 M B", "0x10MB"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
	for _, b := range []ByteSize{96 << 20, 1 << 30, 3 << 29, 1000} {
		back, err := ParseByteSize(b.String())
		if err != nil || back != b {
			t.Errorf("%d prints as %q, which parses as %d (%v)", b, b.String(), back, err)
		}
	}
}

func TestMemoryLimitSetting(t *testing.T) {
	dir := t.TempDir()
	c := DefaultConfig(dir)
	if c.Memory() != DefaultMemoryLimit {
		t.Fatalf("default memory limit %d, want %d", c.Memory(), DefaultMemoryLimit)
	}
	c.MemoryLimit = 256 << 20
	if err := SaveConfig(c); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil || !strings.Contains(string(b), `memory_limit = "256MB"`) {
		t.Fatalf("%s does not hold memory_limit = \"256MB\" (%v):\n%s", ConfigFile, err, b)
	}
	got, err := LoadConfig(dir)
	if err != nil || got.Memory() != 256<<20 {
		t.Fatalf("loaded memory limit %d (%v), want 256 MiB", got.Memory(), err)
	}
	for body, want := range map[string]string{
		`memory_limit = "lots"`: `"lots" is not a size`,
		`memory_limit = "8MB"`:  "memory_limit 8MB is below the smallest a node runs in, 48MB",
	} {
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(body+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadConfig(dir); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: LoadConfig said %v, want %q", body, err, want)
		}
	}
}

func TestGossipBudget(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := newGossipBudget(100, 10, func() time.Time { return now })
	taken := 0
	for range 50 {
		if b.take(1) {
			taken++
		}
	}
	if taken != 10 {
		t.Fatalf("a burst took %d entries, want the burst of 10", taken)
	}
	now = now.Add(50 * time.Millisecond) // 5 more at 100/s
	taken = 0
	for range 50 {
		if b.take(1) {
			taken++
		}
	}
	if taken != 5 {
		t.Fatalf("50 ms later %d entries went, want 5", taken)
	}
	now = now.Add(time.Hour) // refills to the burst, no further
	taken = 0
	for range 50 {
		if b.take(1) {
			taken++
		}
	}
	if taken != 10 {
		t.Fatalf("after a quiet hour %d entries went, want the burst of 10", taken)
	}
	now = now.Add(-time.Minute) // a clock stepping back gives nothing
	if b.take(1) {
		t.Fatal("a clock that went back refilled the budget")
	}
}

func TestBodyBudget(t *testing.T) {
	b := newBodyBudget(10)
	ctx := context.Background()
	if err := b.acquire(ctx, 6); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.acquire(ctx, 6) }() // waits: only 4 are free
	select {
	case err := <-got:
		t.Fatalf("a request past the budget went ahead at once (%v)", err)
	default:
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.acquire(short, 6); err == nil {
		t.Fatal("a request whose client went away took the budget")
	}
	b.release(6)
	if err := <-got; err != nil {
		t.Fatalf("the waiting request: %v", err)
	}
	if err := b.acquire(ctx, 4); err != nil {
		t.Fatal(err)
	}
	b.release(4)
	b.release(6)
	if b.free != 10 {
		t.Fatalf("%d bytes free after every release, want 10", b.free)
	}
}

func TestWriteBodyWeight(t *testing.T) {
	r := httptest.NewRequest("POST", "/v1/transactions/batch", strings.NewReader("{}"))
	if w := bodyWeight(r, maxBatchBody); w != 2 {
		t.Fatalf("a 2-byte body weighs %d", w)
	}
	r.ContentLength = -1 // chunked: no declared length
	if w := bodyWeight(r, maxBatchBody); w != maxBatchBody {
		t.Fatalf("a body of unknown length weighs %d, want the limit", w)
	}
}
