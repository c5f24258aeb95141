package txlog

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

const testFamily = "fam0123456789"

// keyring is a KeyResolver over fixed keys.
type keyring struct {
	mu   sync.Mutex
	keys map[string]map[uint64]ed25519.PrivateKey
}

func newKeyring() *keyring { return &keyring{keys: map[string]map[uint64]ed25519.PrivateKey{}} }

func (k *keyring) add(t testing.TB, site string, epoch uint64) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys[site] == nil {
		k.keys[site] = map[uint64]ed25519.PrivateKey{}
	}
	k.keys[site][epoch] = priv
	return priv
}

func (k *keyring) SiteKey(site string, epoch uint64) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	priv, ok := k.keys[site][epoch]
	if !ok {
		return nil, fmt.Errorf("no certificate for site %q epoch %d", site, epoch)
	}
	return priv.Public().(ed25519.PublicKey), nil
}

// marks is an Applier that records each applied entry under the state prefix,
// in the log's batch, so tests can check that apply and append are atomic.
type marks struct {
	space store.Space // the family's space: marks go under it like its state
	mu    sync.Mutex
	calls int
}

func markKey(id wire.ID) []byte {
	return append([]byte{store.PrefixState, 'm'}, fmt.Sprintf("%s/%020d", id.Site, id.Seq)...)
}

func (m *marks) ApplyAll(b *pebble.Batch, es []*wire.Signed) error {
	m.mu.Lock()
	m.calls += len(es)
	m.mu.Unlock()
	for _, e := range es {
		k := append(append([]byte(nil), m.space...), markKey(e.ID())...)
		if _, c, err := b.Get(k); err == nil {
			c.Close()
			return fmt.Errorf("entry %s applied twice", e.ID())
		}
		if err := b.Set(k, e.Hash[:], nil); err != nil {
			return err
		}
	}
	return nil
}

func (m *marks) count() int { m.mu.Lock(); defer m.mu.Unlock(); return m.calls }

type env struct {
	t     testing.TB
	dir   string
	fs    vfs.FS
	db    *pebble.DB
	log   *Log
	keys  *keyring
	marks *marks
	self  *Identity
	clock *hlc.Clock
}

// newEnv opens a log for site "a" (or a relay when site is "") on an in-memory
// filesystem unless dir is given.
func newEnv(t testing.TB, site string, mod func(*Config)) *env {
	t.Helper()
	e := &env{t: t, fs: vfs.NewMem(), keys: newKeyring(), marks: &marks{}, clock: hlc.New(time.Now), dir: "db"}
	if site != "" {
		e.self = &Identity{Site: site, Epoch: 1, Key: e.keys.add(t, site, 1)}
	}
	e.open(mod)
	t.Cleanup(e.close)
	return e
}

func (e *env) open(mod func(*Config)) {
	e.t.Helper()
	db, err := store.Open(e.dir, store.Options{FS: e.fs})
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := Config{DB: db, Family: testFamily, Self: e.self, Keys: e.keys, Apply: e.marks, Clock: e.clock}
	if mod != nil {
		mod(&cfg)
	}
	l, err := Open(cfg)
	if err != nil {
		db.Close()
		e.t.Fatal(err)
	}
	e.db, e.log = db, l
}

func (e *env) close() {
	if e.log != nil {
		e.log.Close()
		e.db.Close()
		e.log, e.db = nil, nil
	}
}

func (e *env) reopen(mod func(*Config)) {
	e.close()
	e.open(mod)
}

func (e *env) applied(id wire.ID) bool {
	_, c, err := e.db.Get(markKey(id))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func put(table, key string, fields map[string]any) []wire.Op {
	return []wire.Op{{Kind: wire.OpPut, Table: table, Key: key, Fields: fields}}
}

// chain signs n entries of site with key, continuing after prev (seq prevSeq).
func chain(t testing.TB, site string, epoch uint64, key ed25519.PrivateKey, prevSeq uint64, prev wire.Hash, n int, salt string) []*wire.Signed {
	t.Helper()
	return chainOf(t, testFamily, site, epoch, key, prevSeq, prev, n, salt)
}

// chainOf is chain for the entries of another family.
func chainOf(t testing.TB, family, site string, epoch uint64, key ed25519.PrivateKey, prevSeq uint64, prev wire.Hash, n int, salt string) []*wire.Signed {
	t.Helper()
	out := make([]*wire.Signed, 0, n)
	for i := 0; i < n; i++ {
		seq := prevSeq + uint64(i) + 1
		e := &wire.Entry{
			Family: family, Site: site, Epoch: epoch, Seq: seq, Prev: prev,
			HLC: uint64(hlc.Make(time.Now().UnixMilli(), uint16(seq))), Schema: wire.SchemaVersion,
			Ops: put("patients", fmt.Sprintf("%s-%d", site, seq), map[string]any{"n": int64(seq), "salt": salt}),
		}
		s, err := wire.Sign(e, key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
		prev = s.Hash
	}
	return out
}

var bg = context.Background()
