package node

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestDemoConverges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := RunDemo(ctx, DemoOptions{Dir: t.TempDir(), NoWait: true, Out: &out, Version: "test", Records: 50}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "All four nodes hold the same data") {
		t.Fatalf("demo output:\n%s", out.String())
	}
}
