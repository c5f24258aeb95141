//go:build linux

package fault

import (
	"encoding/json"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// KnownBug is a product bug this suite found and reported, recognized by its
// violations so that a run can tell it from anything new.
type KnownBug struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
	match   func(Violation) bool
}

// KnownBugs are the product bugs this suite found that are not fixed yet. The
// scenario that shows one is skipped with "BUG: ..." while only that bug's
// violations appear, so that it stays its regression test; once fixed, the
// entry goes and the scenario must pass. An entry names the bug, says what
// breaks and why, and recognizes its violations (match).
//
// Found by this suite and since fixed in the product; their scenarios now
// pass and guard them:
//   - clock-skew: a clock set back across a restart made a site's later
//     writes lose to its own earlier ones (the HLC was not seeded from the
//     log at txlog.Open);
//   - disk-full episodes 1 and 2: a full disk crashed the node (Pebble's
//     fatal WAL error, panicking logger in internal/store); now writes are
//     refused below 64 MiB free;
//   - disk-full episode 3: that free-space check did not count the batch
//     being written, so one 46 MiB batch still ran Pebble out of space (crash
//     in rotateWAL, or a flush failing with ENOSPC and the node stuck after
//     space returned);
//   - cloned-site: a cloned site's fork showed only after about one sync
//     interval (30 s), not within 10 s, while both copies kept writing;
//   - database faults: SQLite apply wrote merged rows in batches of 5,000 and
//     a child refused by its foreign key in one batch (its parent's newest
//     change in a later one) was never written again; refused rows are now
//     kept in the database with the apply position and tried again by every
//     apply (PostgresFaults showed the same in PostgreSQL: pg-fk-refused);
//   - db-capture-rowid-reuse (DatabaseFaults, violations db-capture-rowid):
//     SQLite capture recorded inserts and updates by rowid alone, so in a
//     table whose key is not its rowid (notes, PRIMARY KEY (patient, n)) a
//     new row that took a deleted row's rowid was captured once more per
//     waiting change of the deleted one; now such changes also record the
//     row's key and are read only under it (db/sqlite readChanges);
//   - pg-apply-lost-delete (PostgresFaults, violations pg-delete-lost): an
//     apply reads the merged rows page by page while entries keep arriving,
//     so a row that changed again between two pages came twice, its older
//     version first; PostgreSQL's apply writes deletes of tables nothing
//     refers to before the upserts, so a stale put re-created a row deleted
//     meanwhile (the delete's position already passed). Now an apply keeps
//     only each row's newest version (db.Newest).
var KnownBugs = []KnownBug{}

// knownBug returns the known bug v belongs to, or nil.
func knownBug(v Violation) *KnownBug {
	for i := range KnownBugs {
		if KnownBugs[i].match(v) {
			return &KnownBugs[i]
		}
	}
	return nil
}

// SplitKnown separates violations of known bugs from the others.
func SplitKnown(vs []Violation) (known map[string][]Violation, other []Violation) {
	known = map[string][]Violation{}
	for _, v := range vs {
		if b := knownBug(v); b != nil {
			known[b.ID] = append(known[b.ID], v)
		} else {
			other = append(other, v)
		}
	}
	return known, other
}

// Report is the soak's JSON report.
type Report struct {
	Started        time.Time      `json:"started"`
	Finished       time.Time      `json:"finished"`
	Duration       string         `json:"duration"`
	MasterSeed     uint64         `json:"master_seed"`
	Isolated       bool           `json:"isolated"` // partitions possible (network namespaces)
	SchedulesRun   int            `json:"schedules_run"`
	Scenarios      map[string]int `json:"scenarios"`
	Acknowledged   int            `json:"transactions_acknowledged"`
	Unknown        int            `json:"transactions_unknown_outcome"`
	Faults         map[string]int `json:"faults_injected"`
	Converge       ConvergeStats  `json:"time_to_converge"`
	Violations     int            `json:"violations"`
	NewViolations  int            `json:"violations_not_known_bugs"`
	ByKind         map[string]int `json:"violations_by_kind"`
	KnownBugs      map[string]int `json:"known_bug_violations"`
	KnownBugNotes  []KnownBug     `json:"known_bugs"`
	Rounds         []Round        `json:"rounds"`
	Samples        []Sample       `json:"violation_samples"`
	Errors         []Sample       `json:"harness_errors"`
	convergeMillis []int64
}

// ConvergeStats summarize the time from the last heal to convergence.
type ConvergeStats struct {
	Samples int   `json:"samples"`
	P50ms   int64 `json:"p50_ms"`
	P90ms   int64 `json:"p90_ms"`
	Maxms   int64 `json:"max_ms"`
}

// Round is one scenario of the soak.
type Round struct {
	Scenario   string `json:"scenario"`
	Seed       uint64 `json:"seed"`
	Acked      int    `json:"acknowledged"`
	Faults     int    `json:"faults"`
	ConvergeMs int64  `json:"converge_ms"`
	Violations int    `json:"violations"`
	Error      bool   `json:"harness_error,omitempty"`
	// Notes are what the scenario measured besides (like how long each node
	// took to show a clone's fork).
	Notes []string `json:"notes,omitempty"`
}

// Sample is one violation (or harness error) with how to replay it.
type Sample struct {
	Scenario string `json:"scenario"`
	Seed     uint64 `json:"seed"`
	Kind     string `json:"kind"`
	Detail   string `json:"detail"`
	Replay   string `json:"replay,omitempty"`
}

// NewReport starts a report.
func NewReport(master uint64) *Report {
	return &Report{Started: time.Now().UTC(), MasterSeed: master, Isolated: CanIsolate() == nil, Scenarios: map[string]int{},
		Faults: map[string]int{}, ByKind: map[string]int{}, KnownBugs: map[string]int{}, KnownBugNotes: KnownBugs,
		Rounds: []Round{}, Samples: []Sample{}, Errors: []Sample{}}
}

// Add records one scenario's result (err is a harness failure, not a
// violation).
func (r *Report) Add(res Result, err error, replay string) {
	r.SchedulesRun++
	r.Scenarios[res.Name]++
	nf := 0
	for k, v := range res.Faults {
		if !strings.Contains(k, "/") { // "kind/detail" keys count a subset of kind
			nf += v
		}
	}
	r.Rounds = append(r.Rounds, Round{Scenario: res.Name, Seed: res.Seed, Acked: res.Acked, Faults: nf,
		ConvergeMs: res.Converge.Milliseconds(), Violations: len(res.Violations), Error: err != nil, Notes: res.Notes})
	r.Acknowledged += res.Acked
	r.Unknown += res.Unknown
	for k, v := range res.Faults {
		r.Faults[k] += v
	}
	if err != nil {
		r.Errors = append(r.Errors, Sample{Scenario: res.Name, Seed: res.Seed, Kind: "error", Detail: clip(err.Error()), Replay: replay})
	}
	if res.Converge > 0 {
		r.convergeMillis = append(r.convergeMillis, res.Converge.Milliseconds())
	}
	known, other := SplitKnown(res.Violations)
	for id, vs := range known {
		r.KnownBugs[id] += len(vs)
	}
	r.NewViolations += len(other)
	for _, v := range res.Violations {
		r.Violations++
		r.ByKind[v.Kind]++
		if len(r.Samples) < 100 {
			r.Samples = append(r.Samples, Sample{Scenario: res.Name, Seed: res.Seed, Kind: v.Kind, Detail: clip(v.Detail), Replay: replay})
		}
	}
}

// Write computes the summary figures and writes the report to path.
func (r *Report) Write(path string) error {
	r.Finished = time.Now().UTC()
	r.Duration = r.Finished.Sub(r.Started).Round(time.Second).String()
	ms := slices.Clone(r.convergeMillis)
	sort.Slice(ms, func(i, j int) bool { return ms[i] < ms[j] })
	r.Converge = ConvergeStats{Samples: len(ms)}
	if len(ms) > 0 {
		r.Converge.P50ms = ms[len(ms)/2]
		r.Converge.P90ms = ms[len(ms)*9/10]
		r.Converge.Maxms = ms[len(ms)-1]
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func clip(s string) string {
	if len(s) > 3000 {
		// Keep both ends: what went wrong is often the last log line.
		return s[:1000] + " … " + s[len(s)-2000:]
	}
	return s
}
