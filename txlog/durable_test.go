package txlog

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
)

// gateFS holds every sync of a WAL file while it is closed: a group can be
// committed (and seen by the state's readers) while its sync waits.
type gateFS struct {
	vfs.FS
	mu      sync.Mutex
	closed  bool
	open    chan struct{} // closed when the gate opens
	entered chan struct{} // closed when a sync first waits at the gate
	once    sync.Once
}

func newGateFS(fs vfs.FS) *gateFS {
	return &gateFS{FS: fs, open: make(chan struct{}), entered: make(chan struct{})}
}

func (g *gateFS) close() { g.mu.Lock(); g.closed = true; g.mu.Unlock() }
func (g *gateFS) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.open)
	}
}

func (g *gateFS) wait() {
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		g.once.Do(func() { close(g.entered) })
		<-g.open
	}
}

func (g *gateFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &gateFile{File: f, g: g}, nil
}

func (g *gateFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.Create(name, c)
	return g.wrap(name, f, err)
}

func (g *gateFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.ReuseForWrite(oldname, newname, c)
	return g.wrap(newname, f, err)
}

type gateFile struct {
	vfs.File
	g *gateFS
}

func (f *gateFile) Sync() error     { f.g.wait(); return f.File.Sync() }
func (f *gateFile) SyncData() error { f.g.wait(); return f.File.SyncData() }
func (f *gateFile) SyncTo(n int64) (bool, error) {
	f.g.wait()
	return f.File.SyncTo(n)
}

// TestDurableWaitsForEarlierGroups: Durable, called while a committed group
// waits for its sync, returns only once that sync is done, and then a crash
// keeps the group. A crash before it would not.
func TestDurableWaitsForEarlierGroups(t *testing.T) {
	mem := vfs.NewCrashableMem()
	gate := newGateFS(mem)
	e := &env{t: t, fs: gate, keys: newKeyring(), marks: &marks{}, clock: hlc.New(time.Now), dir: "db"}
	e.self = &Identity{Site: "a", Epoch: 1, Key: e.keys.add(t, "a", 1)}
	e.open(nil)
	t.Cleanup(e.close)
	t.Cleanup(gate.release) // first: a failed test leaves no sync waiting
	if _, err := e.log.Write(bg, put("patients", "p0", map[string]any{"n": int64(0)})); err != nil {
		t.Fatal(err)
	}

	gate.close()
	wrote := make(chan error, 1)
	go func() {
		_, err := e.log.Write(bg, put("patients", "p1", map[string]any{"n": int64(1)}))
		wrote <- err
	}()
	select {
	case <-gate.entered: // p1's group is committed; its sync waits
	case <-time.After(30 * time.Second):
		t.Fatal("the write never reached its sync")
	}
	if crashed := headAfterCrash(t, mem, e.keys); crashed != 1 {
		t.Fatalf("a crash while the sync waits keeps seq %d; want 1 (the test would not see a Durable that does not wait)", crashed)
	}
	durable := make(chan error, 1)
	go func() { durable <- e.log.Durable(bg) }()
	// Durable must not return while the sync waits. This looks for a
	// wrong answer for a while; the right one takes no time from it.
	select {
	case err := <-durable:
		t.Fatalf("Durable returned (%v) while the group before it was not synced", err)
	case <-time.After(200 * time.Millisecond):
	}
	gate.release()
	for _, ch := range []chan error{durable, wrote} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no answer after the sync")
		}
	}
	if crashed := headAfterCrash(t, mem, e.keys); crashed != 2 {
		t.Fatalf("a crash after Durable keeps seq %d; want 2", crashed)
	}
	// With nothing waiting, Durable answers at once.
	if err := e.log.Durable(bg); err != nil {
		t.Fatal(err)
	}
}

// headAfterCrash opens a crash clone of mem (only what was synced) and
// returns site a's head seq there.
func headAfterCrash(t *testing.T, mem *vfs.MemFS, keys *keyring) uint64 {
	t.Helper()
	fs := mem.CrashClone(vfs.CrashCloneCfg{})
	db, err := store.Open("db", store.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := Open(Config{DB: db, Family: testFamily, Keys: keys, Apply: &marks{}, Clock: hlc.New(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Head("a").Seq
}
