package txlog

import (
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// loadMarks is marks that also takes the load IDs of ApplyLoad.
type loadMarks struct {
	marks
	mu    sync.Mutex
	loads map[wire.ID]uint64
}

func (m *loadMarks) ApplyLoad(b *pebble.Batch, es []*wire.Signed, loads []uint64) error {
	m.mu.Lock()
	for i, e := range es {
		m.loads[e.ID()] = loads[i]
	}
	m.mu.Unlock()
	return m.ApplyAll(b, es)
}

// TestWriteLoadHandsLoadIDsToTheApplier: the load ID of each transaction
// written with WriteLoad reaches a LoadApplier beside its entry, 0 for the
// others of the group (plain writes, remote runs), and the entries are
// written as WriteManyWith writes them.
func TestWriteLoadHandsLoadIDsToTheApplier(t *testing.T) {
	lm := &loadMarks{loads: map[wire.ID]uint64{}}
	e := newEnv(t, "a", func(c *Config) { c.Apply = lm })
	out, err := e.log.WriteLoad(bg, [][]wire.Op{put("p", "1", nil), put("p", "2", nil), put("p", "3", nil)}, []uint64{7, 0, 7}, func(b *pebble.Batch) error {
		return b.Set([]byte("dprogress"), []byte("3"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || out[0].Seq != 1 || out[2].Seq != 3 {
		t.Fatalf("entries %v", out)
	}
	if _, err := e.log.Write(bg, put("p", "4", nil)); err != nil {
		t.Fatal(err)
	}
	want := map[uint64]uint64{1: 7, 2: 0, 3: 7}
	for seq, load := range want {
		if got, ok := lm.loads[wire.ID{Site: "a", Seq: seq}]; !ok || got != load {
			t.Errorf("entry %d: load %d (%v), want %d", seq, got, ok, load)
		}
	}
	if _, ok := lm.loads[wire.ID{Site: "a", Seq: 4}]; ok {
		t.Error("a plain write went through ApplyLoad")
	}
	for seq := uint64(1); seq <= 4; seq++ {
		if !e.applied(wire.ID{Site: "a", Seq: seq}) {
			t.Errorf("entry %d not applied", seq)
		}
	}
	if v, c, err := e.db.Get([]byte("dprogress")); err != nil || string(v) != "3" {
		t.Fatalf("the extra write: %q, %v", v, err)
	} else {
		c.Close()
	}
	if _, err := e.log.WriteLoad(bg, [][]wire.Op{put("p", "5", nil)}, []uint64{1, 2}, nil); err == nil {
		t.Fatal("load IDs that do not match the transactions were taken")
	}
}
