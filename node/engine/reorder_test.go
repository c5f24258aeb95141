package engine

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// chainOf builds n linked entries of one site (unsigned: the buffer only
// reads their site, seq and sizes).
func chainOf(site string, n int) []*wire.Signed {
	var out []*wire.Signed
	var prev wire.Hash
	for i := 1; i <= n; i++ {
		s := &wire.Signed{Entry: wire.Entry{Site: site, Seq: uint64(i), Prev: prev}, Body: []byte("body"), Sig: make([]byte, 64)}
		s.Hash = sha256.Sum256(fmt.Appendf(nil, "%s/%d/%x", site, i, prev))
		prev = s.Hash
		out = append(out, s)
	}
	return out
}

func TestReorderHoldsAndReleasesInOrder(t *testing.T) {
	es := chainOf("clinic-a", 6)
	r := newReorder(ReorderMax, ReorderMaxBytes)
	now := time.Unix(1000, 0)
	from := "p1"
	for _, i := range []int{4, 2, 3, 5} { // seqs 5, 3, 4, 6
		if !r.hold(es[i], from, now) {
			t.Fatalf("hold seq %d refused", es[i].Seq)
		}
	}
	if !r.hold(es[2], from, now) || r.len() != 4 {
		t.Fatalf("holding seq 3 twice: %d held, want 4", r.len())
	}
	if _, ok := r.next("clinic-a", 1); ok {
		t.Fatal("next after head 1 gave an entry, but seq 2 is not held")
	}
	var got []uint64
	for head := uint64(2); ; head++ {
		h, ok := r.next("clinic-a", head)
		if !ok {
			break
		}
		got = append(got, h.e.Seq)
	}
	if want := []uint64{3, 4, 5, 6}; len(got) != len(want) || got[0] != 3 || got[3] != 6 {
		t.Fatalf("released %v, want %v", got, want)
	}
	if r.len() != 0 || r.bytes != 0 {
		t.Fatalf("after releasing all: %d held, %d bytes", r.len(), r.bytes)
	}
}

func TestReorderExpiresOpenGaps(t *testing.T) {
	es := chainOf("clinic-a", 5)
	bs := chainOf("clinic-b", 3)
	r := newReorder(ReorderMax, ReorderMaxBytes)
	wait := DefaultGapWait
	t0 := time.Unix(1000, 0)
	r.hold(es[4], "pa", t0)             // clinic-a#5: its gap stays open
	r.hold(es[2], "pa", t0)             // clinic-a#3: the log reaches it meanwhile
	r.hold(bs[2], "pb", t0.Add(wait/2)) // clinic-b#3: not waited long enough yet
	heads := map[string]uint64{"clinic-a": 3, "clinic-b": 1}
	head := func(s string) uint64 { return heads[s] }
	if got := r.expired(t0.Add(wait/2), wait, head); len(got) != 0 {
		t.Fatalf("expired before the wait: %v", got)
	}
	if r.len() != 2 {
		t.Fatalf("entries the log already holds were not dropped: %d held, want 2", r.len())
	}
	got := r.expired(t0.Add(wait), wait, head)
	if len(got) != 1 || got[0] != "pa" || r.len() != 1 {
		t.Fatalf("expired at the wait: peers %v, %d left; want [pa], 1 left", got, r.len())
	}
	if !r.oldest.Equal(t0.Add(wait / 2)) {
		t.Fatalf("oldest held %v, want %v", r.oldest, t0.Add(wait/2))
	}
	got = r.expired(t0.Add(2*wait), wait, head)
	if len(got) != 1 || got[0] != "pb" || r.len() != 0 {
		t.Fatalf("expired later: peers %v, %d left; want [pb], 0 left", got, r.len())
	}
}

func TestReorderIsBounded(t *testing.T) {
	r := newReorder(ReorderMax, ReorderMaxBytes)
	es := chainOf("clinic-a", 3)
	now := time.Unix(1000, 0)
	big := *es[1]
	big.Body = make([]byte, ReorderMaxBytes) // as if one entry filled the budget
	if r.hold(&big, "p", now) {
		t.Fatal("an entry larger than the byte budget was held")
	}
	for i := range ReorderMax {
		e := *es[1]
		e.Seq = uint64(i + 2)
		if !r.hold(&e, "p", now) {
			t.Fatalf("hold %d of %d refused", i+1, ReorderMax)
		}
	}
	extra := *es[1]
	extra.Seq = ReorderMax + 2
	if r.hold(&extra, "p", now) || r.len() != ReorderMax {
		t.Fatalf("held %d entries, the limit is %d", r.len(), ReorderMax)
	}
}
