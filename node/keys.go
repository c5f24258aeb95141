package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/internal/seal"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/keyring"
)

// End-to-end encryption at a site: the family's data keys (keyring), sealing
// own entries, opening others' as they are applied, and the key loop that
// makes, gives and rotates keys. A relay has none of it: it stores and
// forwards sealed entries it cannot open, and keeps no state.

// ErrRelayBlind answers every request for records at a relay.
var ErrRelayBlind = errors.New("a relay holds no readable data: the family's entries are end-to-end encrypted and only its sites hold the keys; ask a site")

// EvKey: a data key was made here or keys were given: {what, key, epoch, grants}.
const EvKey = "data-key"

// keyEvery is how often the key loop looks for sites that lack a key and
// for revocations that call for a new key epoch, besides when a key or a
// grant arrives.
const keyEvery = 5 * time.Second

// openKeys sets up the keyring of a site (nil for a relay).
func (n *Node) openKeys() error {
	if n.cert.Role != family.RoleSite {
		return nil
	}
	r, err := keyring.Open(n.db, n.id.FamilyID, n.log)
	if err != nil {
		return err
	}
	n.ring = r
	n.keyPoke = make(chan struct{}, 1)
	n.opener = &keyring.Opener{Ring: r, Self: keyring.Self{Site: n.cert.Site, Epoch: n.cert.Epoch, Key: n.key}, State: n.state}
	return nil
}

// sealEntry is the log's Seal hook: own entries are sealed with the current
// key; a site that holds none makes one. The keys other sites lack ride
// along in the entry as grants (a new key reaches every site with the entry
// that first uses it).
func (n *Node) sealEntry(e *wire.Entry) error {
	k, ok := n.ring.Current()
	var err error
	switch {
	case !ok:
		k, err = n.makeKey(1)
	case !n.ring.Covers(n.revokedCerts()):
		// A site was revoked since this key was made: this entry is the
		// first of a new key epoch (its grants ride along below).
		k, err = n.makeKey(k.Epoch + 1)
	}
	if err != nil {
		return err
	}
	now := n.cfg.Now()
	needs := n.ring.Needed(n.keyRecipients(), now)
	if len(needs) > wire.MaxGrants {
		needs = needs[:wire.MaxGrants]
	}
	if len(needs) > 0 {
		grants, err := n.ring.Offer(needs, now)
		if err != nil {
			n.log.Warn("data keys not given with this entry (the key loop tries again)", "err", err)
		} else {
			e.Grants = grants
		}
	}
	return keyring.SealOps(k, e)
}

// makeKey makes a new data key of an epoch, excluding every revoked
// certificate, and wakes the key loop to give it to the sites.
func (n *Node) makeKey(epoch uint64) (seal.Key, error) {
	k := seal.NewKey(epoch)
	if err := n.ring.Add(k, n.revokedCerts()); err != nil {
		return seal.Key{}, err
	}
	n.log.Info("made a family data key", "key", k.ID, "epoch", epoch)
	n.events.emit(EvKey, map[string]any{"key": k.ID, "epoch": epoch, "what": "made"})
	return k, nil
}

// keyView is what the keys need of the roster, read once per change of
// membership rather than for every entry sealed.
type keyView struct {
	revoked []string            // revoked certificates (site@epoch)
	to      []keyring.Recipient // the sites that should hold the family's keys
}

// keys returns the roster's view for the keys, as of the last change of
// membership.
func (n *Node) keys() *keyView {
	if v := n.keyRoster.Load(); v != nil {
		return v
	}
	return n.refreshKeyView()
}

// revokedCerts lists the certificates the roster revoked.
func (n *Node) revokedCerts() []string { return n.keys().revoked }

// keyRecipients lists every current site certificate (a relay is never
// given a key).
func (n *Node) keyRecipients() []keyring.Recipient { return n.keys().to }

// membershipChanged runs when the roster changed: a revocation starts a new
// key epoch before the next own entry is sealed, and the key loop looks at
// once.
func (n *Node) membershipChanged() {
	if n.ring == nil {
		return
	}
	n.refreshKeyView()
	select {
	case n.keyPoke <- struct{}{}:
	default:
	}
}

func (n *Node) refreshKeyView() *keyView {
	v := &keyView{}
	for _, rev := range n.roster.Revocations() {
		for ep := uint64(1); ep <= rev.Epoch && ep <= 64; ep++ {
			v.revoked = append(v.revoked, keyring.Cert(rev.Site, ep))
		}
	}
	sort.Strings(v.revoked)
	for _, m := range n.roster.Members() {
		if m.Role == family.RoleSite && n.roster.StateOf(m.Site, m.Epoch) == family.StateCurrent {
			v.to = append(v.to, keyring.Recipient{Site: m.Site, Epoch: m.Epoch, Public: m.PublicKey})
		}
	}
	n.keyRoster.Store(v)
	return v
}

// runKeys is the key loop of a site.
func (n *Node) runKeys(ctx context.Context) {
	t := time.NewTicker(keyEvery)
	defer t.Stop()
	released := -1 // keys held when the held entries were last released
	for {
		if err := n.keyStep(ctx, &released); err != nil && ctx.Err() == nil {
			n.log.Warn("data keys: will try again", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.keyPoke:
		case <-n.ring.News():
		}
	}
}

// keyStep applies what new keys make ready, starts a new key epoch after a
// revocation, and gives the keys held to the sites that lack them. released
// is how many keys this site held when it last released its held entries:
// with no key arrived since, none waiting for one can be ready, and reading
// every held entry again (a site that joined after a long backlog holds all
// of it until its key's grant, which comes last) would stall the log, which
// releases them exclusively.
func (n *Node) keyStep(ctx context.Context, released *int) error {
	if keys := n.ring.Count(); keys != *released {
		held, err := n.txlog.Held()
		if err != nil {
			return err
		}
		if held > 0 {
			if err := n.txlog.ReleaseHeld(ctx); err != nil {
				return fmt.Errorf("apply entries whose key arrived: %w", err)
			}
		}
		*released = keys
	}
	if cur, ok := n.ring.Current(); ok && !n.ring.Covers(n.revokedCerts()) {
		if n.writeBlocked() != nil {
			return nil // a node that may not write (revoked, moved, catching up) makes no key
		}
		// A site was revoked after the current key was made: entries
		// written from now on use a key it never receives.
		if _, err := n.makeKey(cur.Epoch + 1); err != nil {
			return err
		}
		n.log.Info("started a new key epoch after a revocation", "epoch", cur.Epoch+1)
		return n.giveKeys(ctx, true)
	}
	return n.giveKeys(ctx, false)
}

// grantDelay spreads the grant entries of a key's holders for a site that
// asks for it: the holder first by site ID writes at once, the next after
// grantDelay, and so on, each only if the site still lacks it.
const grantDelay = 3 * time.Second

// giveKeys writes grant entries for the sites that ask for a key held here
// (in their heartbeat: entries sealed with it wait there) or, with now, for
// every site that lacks one (a new key epoch). Sites that do not ask get
// keys with this site's next own entry.
func (n *Node) giveKeys(ctx context.Context, now bool) error {
	t := n.cfg.Now()
	want := map[string]map[string]bool{} // site -> keys it asks for
	heard := map[string]bool{n.cert.Site: true}
	for _, pi := range n.mesh.Peers() {
		if pi.Connected || pi.Heartbeat != nil {
			heard[pi.Member.Site] = true
		}
		if hb := pi.Heartbeat; hb != nil && len(hb.Want) > 0 && pi.Member.Epoch == n.epochOf(pi.Member.Site) {
			want[pi.Member.Site] = map[string]bool{}
			for _, id := range hb.Want {
				want[pi.Member.Site][id] = true
			}
		}
	}
	var due []keyring.Need
	for _, nd := range n.ring.Needed(n.keyRecipients(), t) {
		if now || (want[nd.To.Site][nd.Key] && t.Sub(nd.Since) >= grantDelay*time.Duration(n.holderRank(nd.Key, heard))) {
			due = append(due, nd)
		}
	}
	if len(due) == 0 || n.writeBlocked() != nil {
		return nil // nothing to give, or a node that may not write (revoked, moved, catching up)
	}
	for len(due) > 0 {
		k := min(len(due), wire.MaxGrants)
		grants, err := n.ring.Offer(due[:k], t)
		if err != nil {
			return err
		}
		if _, err := n.txlog.WriteGrants(ctx, grants); err != nil {
			return fmt.Errorf("give data keys: %w", err)
		}
		n.events.emit(EvKey, map[string]any{"what": "given", "grants": k})
		due = due[k:]
	}
	return nil
}

// epochOf is the epoch of a site's current certificate (0: none).
func (n *Node) epochOf(site string) uint64 {
	if m, ok := n.roster.Site(site); ok {
		return m.Epoch
	}
	return 0
}

// holderRank is this site's place, by site ID, among the current holders of
// a key that are heard from.
func (n *Node) holderRank(id string, heard map[string]bool) int {
	rank := 0
	for _, c := range n.ring.Holders(id) {
		site, ep, _ := strings.Cut(c, "@")
		if site < n.cert.Site && heard[site] && ep == strconv.FormatUint(n.epochOf(site), 10) {
			rank++
		}
	}
	return rank
}

// RotateKey starts a new key epoch now (`ppsync family rotate-key`): entries
// written from now on are sealed with a new key, given to the current sites.
func (n *Node) RotateKey(ctx context.Context) (api.KeysJSON, error) {
	if n.ring == nil {
		return api.KeysJSON{}, ErrRelayBlind
	}
	if err := n.writeBlocked(); err != nil {
		return api.KeysJSON{}, err
	}
	epoch := uint64(1)
	if cur, ok := n.ring.Current(); ok {
		epoch = cur.Epoch + 1
	}
	if _, err := n.makeKey(epoch); err != nil {
		return api.KeysJSON{}, err
	}
	if err := n.giveKeys(ctx, true); err != nil {
		return api.KeysJSON{}, err
	}
	return n.Keys(ctx)
}

// Keys lists the family's data keys as this site knows them.
func (n *Node) Keys(context.Context) (api.KeysJSON, error) {
	if n.ring == nil {
		return api.KeysJSON{Blind: true}, nil
	}
	out := api.KeysJSON{}
	for _, k := range n.ring.Keys() {
		out.Keys = append(out.Keys, api.KeyJSON{ID: k.ID, Epoch: k.Epoch, Held: k.Held, GivenTo: k.Given, Sealing: k.Sealing})
	}
	return out, nil
}

// encryptionStatus says how this node stands with the family's keys.
func (n *Node) encryptionStatus() *api.EncryptionJSON {
	if n.ring == nil {
		return &api.EncryptionJSON{State: "blind", Detail: "a relay: stores and forwards sealed entries, holds no data key"}
	}
	e := &api.EncryptionJSON{}
	waiting := 0
	for _, k := range n.ring.Keys() {
		e.Keys++
		if k.Sealing {
			e.Key, e.Epoch = k.ID, k.Epoch
		}
		if !k.Held {
			waiting++
		}
	}
	switch {
	case waiting > 0:
		e.State = "waiting"
		e.Detail = "waiting for the family's data key: entries sealed with it are held until a site gives it to this one"
	case e.Key == "":
		e.State, e.Detail = "no-key", "no data key yet: the first write or the key loop makes one"
	default:
		e.State, e.Detail = "sealing", fmt.Sprintf("entries are sealed with key %.8s… (epoch %d)", e.Key, e.Epoch)
	}
	return e
}

// noState is a relay's applier: it keeps no state.
type noState struct{}

func (noState) ApplyAll(*pebble.Batch, []*wire.Signed) error { return nil }

// forgetRelayState erases the records a relay of an older version applied:
// a relay keeps no readable state (the entries it stores stay as they are).
func (n *Node) forgetRelayState(ctx context.Context) error {
	st, err := n.state.Stats()
	if err != nil || st.Records == 0 {
		return err
	}
	if err := n.state.Clear(ctx); err != nil {
		return fmt.Errorf("node: erase the relay's old records: %w", err)
	}
	n.log.Info("a relay keeps no readable data: erased the records an older version of the relay had applied")
	return nil
}
