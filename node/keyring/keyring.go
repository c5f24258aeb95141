// Package keyring keeps a site's family data keys and everything it knows of
// who holds which key, and opens sealed entries as the log applies them.
//
// Keys travel in the logs themselves: a grant entry carries data keys, each
// wrapped to one site's node key (see package seal), signed by the giver. The
// Opener (the log's applier at a site) reads every grant as it is applied:
// one addressed to this site is unwrapped and the key kept; every grant is
// remembered as "that site has that key", so that the sites give each key to
// exactly those that lack it. Because the keys are in the logs, a site rebuilt
// from its peers with its node key gets its keys back.
//
// Key layout under store.PrefixKeys ('k'):
//
//	'k' 's' keyID               -> a key this site holds: epoch (8, BE), secret (32), excl (msgpack)
//	'k' 'g' keyID 0x00 site@ep  -> that certificate has been given the key (by any site)
//	'k' 'x' keyID               -> excl of a key this site does not hold yet (msgpack)
package keyring

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/seal"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

const (
	spaceKey   = 's'
	spaceGiven = 'g'
	spaceExcl  = 'x'
)

// Cert names one certificate of a site: site@epoch.
func Cert(site string, epoch uint64) string { return site + "@" + strconv.FormatUint(epoch, 10) }

// Ring is a site's data keys. Safe for concurrent use.
type Ring struct {
	family string
	db     *pebble.DB

	mu      sync.Mutex
	keys    map[string]seal.Key        // keys held, by ID
	given   map[string]map[string]bool // key ID -> certificates given it (by anyone)
	excl    map[string]map[string]bool // key ID -> certificates never to be given it
	epoch   map[string]uint64          // key ID -> key epoch (held or not)
	offered map[string]time.Time       // key ID 0 cert -> when a grant was written here (not applied yet)
	lacking map[string]time.Time       // key ID 0 cert -> when this site first saw that cert lack the key
	wanted  map[string]bool            // keys entries here are sealed with, not held
	news    chan struct{}              // a key arrived or a grant was seen
	log     *slog.Logger
}

// Open loads the ring of a family from db.
func Open(db *pebble.DB, family string, log *slog.Logger) (*Ring, error) {
	r := &Ring{family: family, db: db, keys: map[string]seal.Key{}, given: map[string]map[string]bool{},
		excl: map[string]map[string]bool{}, epoch: map[string]uint64{}, news: make(chan struct{}, 1), log: log,
		offered: map[string]time.Time{}, lacking: map[string]time.Time{}, wanted: map[string]bool{}}
	p := []byte{store.PrefixKeys}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: store.PrefixEnd(p)})
	if err != nil {
		return nil, fmt.Errorf("keyring: load: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) < 3 {
			continue
		}
		rest := string(k[2:])
		switch k[1] {
		case spaceKey:
			if len(v) < 40 {
				return nil, fmt.Errorf("keyring: a stored key is damaged (%d bytes)", len(v))
			}
			key, err := seal.KeyFrom(binary.BigEndian.Uint64(v[:8]), v[8:40])
			if err != nil {
				return nil, fmt.Errorf("keyring: %w", err)
			}
			r.keys[key.ID] = key
			r.epoch[key.ID] = key.Epoch
			var ex []string
			if len(v) > 40 {
				if err := wire.Unmarshal(v[40:], &ex); err != nil {
					return nil, fmt.Errorf("keyring: a stored key's exclusions are damaged: %w", err)
				}
			}
			r.addExcl(key.ID, ex)
		case spaceGiven:
			id, cert, ok := bytes.Cut([]byte(rest), []byte{0})
			if ok {
				r.markGiven(string(id), string(cert))
			}
		case spaceExcl:
			var ex []string
			if err := wire.Unmarshal(v, &ex); err == nil {
				r.addExcl(rest, ex)
			}
		}
	}
	return r, it.Error()
}

func (r *Ring) markGiven(id, cert string) {
	if r.given[id] == nil {
		r.given[id] = map[string]bool{}
	}
	r.given[id][cert] = true
}

func (r *Ring) addExcl(id string, ex []string) {
	if len(ex) == 0 {
		return
	}
	if r.excl[id] == nil {
		r.excl[id] = map[string]bool{}
	}
	for _, c := range ex {
		r.excl[id][c] = true
	}
}

// News is signalled (without blocking) when a key arrived or a grant was
// seen: held entries may be ready, and sites may lack a key.
func (r *Ring) News() <-chan struct{} { return r.news }

func (r *Ring) notify() {
	select {
	case r.news <- struct{}{}:
	default:
	}
}

// Has reports whether the key is held.
func (r *Ring) Has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.keys[id]
	return ok
}

// Count returns how many keys are held. Keys are never dropped: a count
// that did not change means no key arrived.
func (r *Ring) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.keys)
}

// Key returns a held key.
func (r *Ring) Key(id string) (seal.Key, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.keys[id]
	return k, ok
}

// Ready is the log's Ready hook: an entry can be applied when it is in
// clear, already opened, or sealed with a key held; one sealed with another
// key waits, and the key is asked for (Wanted).
func (r *Ring) Ready(s *wire.Signed) bool {
	if s.Key == "" || s.Opened != nil || r.Has(s.Key) {
		return true
	}
	r.Want(s.Key)
	return false
}

// Want notes that an entry here is sealed with a key not held.
func (r *Ring) Want(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.keys[id]; !ok {
		r.wanted[id] = true
	}
}

// Wanted lists the keys this site waits for: named by entries it holds, or
// seen given to other sites, and not held (at most 16).
func (r *Ring) Wanted() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id := range r.wanted {
		if _, ok := r.keys[id]; ok {
			delete(r.wanted, id)
			continue
		}
		out = append(out, id)
	}
	for id := range r.epoch {
		if _, ok := r.keys[id]; !ok && !r.wanted[id] {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out[:min(len(out), 16)]
}

// Holders lists the certificates known to hold a key.
func (r *Ring) Holders(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedSet(r.given[id])
}

// Current returns the key own entries are sealed with: the newest epoch's,
// and of several keys of one epoch (made at the same moment by two sites)
// the one with the smallest ID, so that every site soon seals with the same.
func (r *Ring) Current() (seal.Key, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best seal.Key
	found := false
	for _, k := range r.keys {
		if !found || k.Epoch > best.Epoch || (k.Epoch == best.Epoch && k.ID < best.ID) {
			best, found = k, true
		}
	}
	return best, found
}

// Excl returns the certificates that must never receive the key.
func (r *Ring) Excl(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedSet(r.excl[id])
}

// sortedSet returns a set's members in order (never nil).
func sortedSet(m map[string]bool) []string {
	return append([]string{}, slices.Sorted(maps.Keys(m))...)
}

// Info is one key as status shows it.
type Info struct {
	ID      string `json:"id"`
	Epoch   uint64 `json:"epoch"`
	Held    bool   `json:"held"`
	Given   int    `json:"given_to"` // certificates that have it
	Sealing bool   `json:"sealing,omitempty"`
}

// Keys lists the keys known here (held or seen granted), newest first.
func (r *Ring) Keys() []Info {
	cur, _ := r.Current()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Info
	for id, ep := range r.epoch {
		_, h := r.keys[id]
		out = append(out, Info{ID: id, Epoch: ep, Held: h, Given: len(r.given[id]), Sealing: id == cur.ID})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Epoch != out[j].Epoch {
			return out[i].Epoch > out[j].Epoch
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Recipient is a site that should hold the family's keys: its current
// certificate and node key.
type Recipient struct {
	Site   string
	Epoch  uint64
	Public []byte // Ed25519 public key of that certificate
}

// offerTTL is how long a grant written here counts as given before it is
// seen applied (a write that failed is offered again after it).
const offerTTL = 30 * time.Second

// Need is a key a recipient lacks.
type Need struct {
	Key   string
	To    Recipient
	Since time.Time // when this site first saw it lacking
}

// Needed returns, for each key held, the recipients that lack it (not given
// it by anyone, not excluded from it, not offered here lately), in key order.
func (r *Ring) Needed(to []Recipient, now time.Time) []Need {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.keys))
	for id := range r.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []Need
	for _, id := range ids {
		for _, rc := range to {
			c := Cert(rc.Site, rc.Epoch)
			k := id + "\x00" + c
			if r.given[id][c] || r.excl[id][c] || now.Sub(r.offered[k]) < offerTTL {
				delete(r.lacking, k)
				continue
			}
			since, ok := r.lacking[k]
			if !ok {
				since = now
				r.lacking[k] = now
			}
			out = append(out, Need{Key: id, To: rc, Since: since})
		}
	}
	return out
}

// Offer wraps the needed keys to their recipients and marks them offered.
func (r *Ring) Offer(needs []Need, now time.Time) ([]wire.Grant, error) {
	var out []wire.Grant
	for _, nd := range needs {
		gs, err := r.Grant(nd.Key, []Recipient{nd.To})
		if err != nil {
			return nil, err
		}
		out = append(out, gs...)
	}
	r.mu.Lock()
	for _, nd := range needs {
		r.offered[nd.Key+"\x00"+Cert(nd.To.Site, nd.To.Epoch)] = now
	}
	r.mu.Unlock()
	return out, nil
}

// Covers reports whether the current key excludes every one of certs: no
// rotation is needed for them.
func (r *Ring) Covers(certs []string) bool {
	cur, ok := r.Current()
	if !ok {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range certs {
		if !r.excl[cur.ID][c] {
			return false
		}
	}
	return true
}

// Add keeps a key made here (with the certificates it must never reach).
func (r *Ring) Add(k seal.Key, excl []string) error {
	b := r.db.NewBatch()
	defer b.Close()
	if err := r.store(b, k, excl); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("keyring: store a new key: %w", err)
	}
	r.remember(k, excl)
	return nil
}

func (r *Ring) store(b *pebble.Batch, k seal.Key, excl []string) error {
	v := make([]byte, 40, 64)
	binary.BigEndian.PutUint64(v[:8], k.Epoch)
	copy(v[8:], k.Secret[:])
	if len(excl) > 0 {
		ex, err := wire.Marshal(slices.Sorted(slices.Values(excl)))
		if err != nil {
			return err
		}
		v = append(v, ex...)
	}
	return b.Set(key(spaceKey, k.ID), v, nil)
}

func (r *Ring) remember(k seal.Key, excl []string) {
	r.mu.Lock()
	r.keys[k.ID] = k
	r.epoch[k.ID] = k.Epoch
	r.addExcl(k.ID, excl)
	r.mu.Unlock()
	r.notify()
}

func key(space byte, parts ...string) []byte {
	k := []byte{store.PrefixKeys, space}
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

// GrantAD is what a wrapped key is bound to: the family, the key, its epoch
// and the receiving certificate.
func GrantAD(family string, g *wire.Grant) []byte {
	return []byte("ppsync grant\x00" + family + "\x00" + g.Key + "\x00" + strconv.FormatUint(g.KeyEpoch, 10) + "\x00" + Cert(g.To, g.ToEpoch))
}

// Grant wraps a held key to each recipient.
func (r *Ring) Grant(id string, to []Recipient) ([]wire.Grant, error) {
	k, ok := r.Key(id)
	if !ok {
		return nil, fmt.Errorf("keyring: key %s is not held here", id)
	}
	excl := r.Excl(id)
	out := make([]wire.Grant, 0, len(to))
	for _, rc := range to {
		g := wire.Grant{Key: k.ID, KeyEpoch: k.Epoch, To: rc.Site, ToEpoch: rc.Epoch, Excl: excl}
		w, err := seal.Wrap(k, rc.Public, GrantAD(r.family, &g))
		if err != nil {
			return nil, fmt.Errorf("keyring: give key %s to %s: %w", id, Cert(rc.Site, rc.Epoch), err)
		}
		g.Eph, g.Box = w.Ephemeral, w.Box
		out = append(out, g)
	}
	return out, nil
}
