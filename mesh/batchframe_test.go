package mesh

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/internal/wire"
)

// TestBatchFrameDecodes: a frame built by hand decodes with the codec into
// the batch it was built from, for short and long sites and envelopes of
// every length class, and trim keeps the entries up to the last signed one.
func TestBatchFrameDecodes(t *testing.T) {
	for _, site := range []string{"a", "clinic-a", strings.Repeat("s", 40)} {
		var f batchFrame
		f.start(site, 7)
		envs := [][]byte{bytes.Repeat([]byte{1}, 3), bytes.Repeat([]byte{2}, 300), bytes.Repeat([]byte{3}, 70_000), {4}}
		signed := []bool{false, true, true, false}
		for i, env := range envs {
			f.add(env, signed[i])
		}
		var b catchupBatch
		if err := wire.Unmarshal(f.finish(), &b); err != nil {
			t.Fatal(err)
		}
		if b.Site != site || b.First != 7 || len(b.Entries) != len(envs) {
			t.Fatalf("decoded site %q, first %d, %d entries", b.Site, b.First, len(b.Entries))
		}
		for i := range envs {
			if !bytes.Equal(b.Entries[i], envs[i]) {
				t.Fatalf("entry %d differs", i)
			}
		}
		f.trim()
		b = catchupBatch{}
		if err := wire.Unmarshal(f.finish(), &b); err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) != 3 || !bytes.Equal(b.Entries[2], envs[2]) {
			t.Fatalf("after trim: %d entries", len(b.Entries))
		}
		f.start(site, 10)
		b = catchupBatch{}
		if err := wire.Unmarshal(f.finish(), &b); err != nil || b.First != 10 || len(b.Entries) != 0 {
			t.Fatalf("an empty frame: first %d, %d entries, %v", b.First, len(b.Entries), err)
		}
	}
}
