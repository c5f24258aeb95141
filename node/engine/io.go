package engine

import (
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// Log is the engine's read-only view of the local log.
type Log interface {
	// Head returns the highest contiguous seq held of site and its hash
	// (0 and the zero hash when none is held).
	Head(site string) (seq uint64, hash wire.Hash)
	// HashAt returns the hash of the held entry (site, seq). It may read
	// the disk: only NewHeartbeat calls it, before a step, never Step.
	HashAt(site string, seq uint64) (wire.Hash, bool)
	// Forks lists the sites known to have forked.
	Forks() []Fork
}

// Fork is a site known to have forked: Seq is held with two hashes.
type Fork struct {
	Site string
	Seq  uint64
}

// --- inputs ---------------------------------------------------------------------

// Input is one thing that happened, with the time it happened (Now).
type Input interface{ When() time.Time }

// PeerUp: a member connected.
type PeerUp struct {
	Now  time.Time
	Peer string
}

// PeerDown: a member disconnected.
type PeerDown struct {
	Now  time.Time
	Peer string
}

// Heartbeat: a member's heartbeat (gossiped or asked for by a probe): its
// frontier and the hash of its entry at each site's frontier.
type Heartbeat struct {
	Now      time.Time
	Peer     string
	Frontier map[string]uint64
	Heads    map[string][]byte
	// Ours is this node's hash at the member's head, for every site where
	// the member is not ahead: read from the log before the step (see
	// NewHeartbeat), so the engine reads nothing from disk under the
	// driver's lock.
	Ours map[string]wire.Hash
}

// NewHeartbeat builds the Heartbeat input of a member's heartbeat, reading
// this node's hashes at the member's heads from log. The driver and the
// simulation both build it here, outside any lock.
func NewHeartbeat(log Log, now time.Time, peer string, frontier map[string]uint64, heads map[string][]byte) Heartbeat {
	hb := Heartbeat{Now: now, Peer: peer, Frontier: frontier, Heads: heads}
	for site, n := range frontier {
		if n == 0 || len(heads[site]) != len(wire.Hash{}) {
			continue
		}
		mine, ours := log.Head(site)
		if n > mine {
			continue // ahead: the catch-up it triggers compares the chains
		}
		if n < mine {
			h, ok := log.HashAt(site, n)
			if !ok {
				continue
			}
			ours = h
		}
		if hb.Ours == nil {
			hb.Ours = map[string]wire.Hash{}
		}
		hb.Ours[site] = ours
	}
	return hb
}

// Received: a run of one site's entries from a member, by gossip or by a
// catch-up session (or a pushed branch).
type Received struct {
	Now    time.Time
	Peer   string
	Run    []*wire.Signed
	Gossip bool
}

// Appended: what the log did with an Append (Drive feeds it back).
type Appended struct {
	Now     time.Time
	Append  Append
	Outcome Outcome
}

// Tick: the driver's periodic tick (every second): interval rounds, and
// anything Wake does.
type Tick struct{ Now time.Time }

// Wake: the wake-up timer the engine asked for (SetTimer) fired.
type Wake struct{ Now time.Time }

// FetchDone: a catch-up session finished.
type FetchDone struct {
	Now  time.Time
	Peer string
	OK   bool
}

// SyncNow: someone pressed Sync Now.
type SyncNow struct{ Now time.Time }

// IntervalChanged: the sync interval setting changed.
type IntervalChanged struct {
	Now      time.Time
	Interval time.Duration
}

// DuplicateSeen: two processes run one member's identity.
type DuplicateSeen struct {
	Now  time.Time
	Peer string
}

// ForkProofReceived: a member sent the proof of a fork of Site at Seq; Added
// says whether the log took it as news.
type ForkProofReceived struct {
	Now   time.Time
	Peer  string
	Site  string
	Seq   uint64
	Added bool
}

// WriteAsked: an own write wants to go ahead; the engine answers WriteGate.
type WriteAsked struct{ Now time.Time }

func (i PeerUp) When() time.Time            { return i.Now }
func (i PeerDown) When() time.Time          { return i.Now }
func (i Heartbeat) When() time.Time         { return i.Now }
func (i Received) When() time.Time          { return i.Now }
func (i Appended) When() time.Time          { return i.Now }
func (i Tick) When() time.Time              { return i.Now }
func (i Wake) When() time.Time              { return i.Now }
func (i FetchDone) When() time.Time         { return i.Now }
func (i SyncNow) When() time.Time           { return i.Now }
func (i IntervalChanged) When() time.Time   { return i.Now }
func (i DuplicateSeen) When() time.Time     { return i.Now }
func (i ForkProofReceived) When() time.Time { return i.Now }
func (i WriteAsked) When() time.Time        { return i.Now }

// --- actions --------------------------------------------------------------------

// Action is one thing the engine asks its driver to do.
type Action interface{ action() }

// Reasons a catch-up session runs.
const (
	ReasonConnect  = "connect"
	ReasonGap      = "gap"
	ReasonAhead    = "peer-ahead"
	ReasonInterval = "interval"
	ReasonSyncNow  = "sync-now"
)

// Fetch: run a catch-up session with Peer (then report FetchDone).
type Fetch struct {
	Peer   string
	Reason string
}

// ForkCheck: fetch Site's entry at Seq from Peer, whose head hash there
// differs from the local one; the log records the fork if there is one.
type ForkCheck struct {
	Peer string
	Site string
	Seq  uint64
}

// CheckDuplicate: two processes run Peer's identity (a copied data
// directory): fetch everything it holds beyond this node's frontier, with
// this node's head hashes, whichever copy answers. It runs at once, beside
// any session with the peer and outside the session cap, as a fork check
// does: a fork between the two copies shows as soon as it is fetched.
type CheckDuplicate struct{ Peer string }

// Append: append a run received from Peer to the log and report the
// Outcome. Held marks a run drained from the reorder buffer.
type Append struct {
	Peer   string
	Run    []*wire.Signed
	Gossip bool
	Held   bool
}

// SpreadFork: gossip the proof of Site's fork (held with two hashes at Seq).
type SpreadFork struct {
	Site string
	Seq  uint64
}

// PushBranch: push the local entries of Site from From to its head to every
// connected member, where they are kept as evidence.
type PushBranch struct {
	Site string
	From uint64
}

// Probe: ask Peer for its heartbeat now (it comes back as a Heartbeat).
type Probe struct{ Peer string }

// SetTimer: deliver a Wake at At. The driver keeps one timer, at the
// earliest time asked for since the last Wake.
type SetTimer struct{ At time.Time }

// WriteGate: the answer to WriteAsked. Reason says why writes wait when
// Open is false.
type WriteGate struct {
	Open   bool
	Reason string
}

func (Fetch) action()          {}
func (ForkCheck) action()      {}
func (CheckDuplicate) action() {}
func (Append) action()         {}
func (SpreadFork) action()     {}
func (PushBranch) action()     {}
func (Probe) action()          {}
func (SetTimer) action()       {}
func (WriteGate) action()      {}

// --- outcomes of an append ----------------------------------------------------

// Kind is what the log did with a run.
type Kind int

const (
	OutcomeOK        Kind = iota // appended (Appended > 0)
	OutcomeDuplicate             // held already: nothing new
	OutcomeGap                   // the run starts past the log's head (Seq: the head)
	OutcomeFork                  // the run disagrees with the held chain at Seq
	OutcomeRefused               // invalid (Reason: signature, chain, other)
	OutcomeSpaceFull             // the disk is almost full: nothing appended
	OutcomeFailed                // any other error (stopping, a malformed run)
)

func (k Kind) String() string {
	return [...]string{"ok", "duplicate", "gap", "fork", "refused", "space-full", "failed"}[k]
}

// Outcome is the result of an Append.
type Outcome struct {
	Kind       Kind
	Appended   int
	Duplicates int
	Site       string
	Seq        uint64 // Gap: the log's head; Fork: the seq held with two hashes
	Reason     string // Refused: what was wrong
	Err        error  // the log's error, for the driver; the engine does not read it
}
