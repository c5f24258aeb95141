//go:build linux

package fault

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Fault kinds of the DatabaseFaults scenario (besides FaultKillRelay and
// FaultIsolate).
const (
	FaultDBKillCapture = "db-kill-9-during-capture" // kill -9 a site while its writer is busy and it captures
	FaultDBKillApply   = "db-kill-9-during-apply"   // kill -9 a site while it writes another site's burst into its database
	FaultDBStopped     = "db-written-while-stopped" // stop a site cleanly, keep its writer going, start it again
)

// Sizes of the DatabaseFaults scenario.
const (
	dbSites       = 3
	dbWriteEvery  = 40 * time.Millisecond // each site's practice software: a transaction of 1 to 5 changes every 40 ms
	dbPreexisting = 10                    // transactions in each database before its node first runs (the initial load)
	dbFaultWrites = 12                    // transactions each writer commits while a fault lasts
	// The burst that a site's writer commits while its node is killed
	// during capture: transactions of patients with an appointment each.
	dbCaptureBurstTx, dbCaptureBurstPairs = 20, 40
	// The burst of another site that a site is killed while writing into
	// its database: more rows than one apply transaction takes (5,000).
	dbApplyBurstTx, dbApplyBurstPairs = 40, 70
)

// DatabaseFaults runs a relay and three sites, each site bound to its own
// SQLite practice database (`ppsync init --db sqlite:PATH`, in the
// scenario's directory) holding a small practice schema: patients (integer
// key, values of every storage class), appointments (a foreign key to
// patients) and notes (a composite key). A writer per site — the practice
// software — commits plain SQL transactions of several rows against its own
// file from the test process: inserts with ids of the site's own range
// (site i: i*1,000,000+n), updates of its rows, deletes (a patient with its
// appointments and notes), and records every transaction whose commit
// succeeded in its ledger.
//
// While the writers write, for at least d (at least one round), each round
// of faults in an order drawn from the seed:
//   - a site killed with kill -9 during capture: its writer commits a burst
//     and the kill comes as soon as the site's log grows, then the writer
//     goes on while the node is down;
//   - a site killed with kill -9 while it applies a burst of another site:
//     the site is cut off (stopped without namespaces) while the other site
//     writes a burst of 5,600 rows, then healed and killed once it holds
//     every entry of the burst, has merged rows waiting and the database's
//     write lock is taken (or its database holds part of the burst);
//   - the relay killed with kill -9;
//   - a partition: one site cut off from every other node;
//   - a site stopped cleanly while its database changes, then started.
//
// After the heal and quiescence: every database holds exactly the same rows
// (dumps ordered by primary key, values with their storage class), which are
// exactly what the ledgers say (every committed transaction of every site,
// each row with its last committed values, deleted rows absent, nothing
// else); `ppsync db check` exits 0 at every site and `db status` names no
// refused row; each site's own log holds no row of another site and each
// row change at most once per committed change (an inserted-only row: one
// put); the nodes converge and `ppsync verify` passes. A product bug it
// found is a KnownBug: rows refused for a foreign key across apply batches
// (db-fk-refused); another, notes captured twice through a reused rowid
// (db-capture-rowid), is fixed and guarded here.
func DatabaseFaults(ctx context.Context, env Env, seed uint64, d time.Duration) (res Result, err error) {
	res = Result{Name: "DatabaseFaults", Seed: seed}
	rng := rand.New(rand.NewPCG(seed, 0xdbfa))
	dir := filepath.Join(env.Dir, "practice")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	paths := map[string]string{}
	for i := 1; i <= dbSites; i++ {
		name := fmt.Sprintf("clinic-%d", i)
		paths[name] = filepath.Join(dir, name+".db")
		if err := createPracticeDB(ctx, paths[name]); err != nil {
			return res, err
		}
	}
	opts := env.options(seed, dbSites)
	opts.SiteDB = func(name string) string { return "sqlite:" + paths[name] }
	h, err := New(ctx, opts)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	var ws []*dbWriter
	defer func() {
		for _, w := range ws {
			w.close()
		}
	}()
	for i, s := range h.Sites {
		w, err := newDBWriter(h, s, i+1, paths[s.Name], seed)
		if err != nil {
			return res, err
		}
		ws = append(ws, w)
		// Rows the database holds before its node first runs: the
		// initial load publishes them.
		for range dbPreexisting {
			w.tx(3)
		}
	}
	if err := h.StartAll(ctx); err != nil {
		return res, err
	}
	// The writers start once the initial loads are done: a row changed
	// while the load reads is published by both, by design ("rows changed
	// since are sent again"), which the log check would count twice.
	if _, err := waitFor(ctx, 60*time.Second, 20*time.Millisecond, "the initial loads", func() (bool, string) {
		for _, s := range h.Sites {
			c := s.Client()
			if c == nil {
				return false, s.Name + " is not running"
			}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := c.DBStatus(sctx)
			cancel()
			if err != nil {
				return false, s.Name + ": " + err.Error()
			}
			if st.Loading || st.LoadedRows == 0 {
				return false, fmt.Sprintf("%s: loading %v, %d rows published", s.Name, st.Loading, st.LoadedRows)
			}
		}
		return true, ""
	}); err != nil {
		h.Violate("db-liveness", "%v", err)
	}
	for _, w := range ws {
		w.start(ctx, dbWriteEvery)
	}
	r := &dbRun{h: h, ws: ws, rng: rng, res: &res}
	if took, err := r.waitSyncing(ctx); err != nil {
		h.Violate("db-liveness", "%v", err)
	} else {
		res.Notes = append(res.Notes, fmt.Sprintf("every database held rows of every other site %s after the nodes started (initial load of %d transactions per site included)", took.Round(time.Millisecond), dbPreexisting))
	}
	faults := []func(context.Context) error{r.killCapture, r.killApply, r.killRelay, r.partition, r.stopped}
	start := time.Now()
	var roundTook time.Duration
	for round := 0; round == 0 || time.Since(start)+roundTook <= d; round++ {
		t0 := time.Now()
		for _, i := range rng.Perm(len(faults)) {
			if err := faults[i](ctx); err != nil {
				return res, err
			}
		}
		roundTook = time.Since(t0)
		h.Logf("DatabaseFaults: round %d of faults took %s", round+1, roundTook.Round(time.Millisecond))
	}
	for _, w := range ws {
		w.stop()
	}
	r.settle(ctx)
	h.finish(&res)
	for _, w := range ws {
		res.Acked += len(w.ledger) // committed database transactions
	}
	return res, ctx.Err()
}

// dbRun is one run of the DatabaseFaults scenario.
type dbRun struct {
	h   *Harness
	ws  []*dbWriter
	rng *rand.Rand
	res *Result
	mu  sync.Mutex
}

func (r *dbRun) note(format string, a ...any) {
	r.mu.Lock()
	r.res.Notes = append(r.res.Notes, fmt.Sprintf(format, a...))
	r.mu.Unlock()
}

func (r *dbRun) pick() *dbWriter { return r.ws[r.rng.IntN(len(r.ws))] }

// waitSyncing waits until every database holds rows of every other site.
func (r *dbRun) waitSyncing(ctx context.Context) (time.Duration, error) {
	return waitFor(ctx, 60*time.Second, 100*time.Millisecond, "every database holding rows of every other site", func() (bool, string) {
		for _, w := range r.ws {
			for _, o := range r.ws {
				n, err := rowsOf(ctx, w.rd, o.idx)
				if err != nil {
					return false, err.Error()
				}
				if n == 0 {
					return false, fmt.Sprintf("%s's database holds no patient of %s", w.site.Name, o.site.Name)
				}
			}
		}
		return true, ""
	})
}

// kill ends n with kill -9. For a site, its next start must find its own log
// at least as long as its status showed just before the kill: an entry
// captured from the database (and maybe sent on) is never lost.
func (r *dbRun) kill(ctx context.Context, n *Node) error {
	var before uint64
	known := false
	if n.Role == "site" {
		if st, err := n.Status(ctx); err == nil {
			before, known = st.Frontier[n.Site], true
		}
	}
	if err := n.Kill(); err != nil {
		return err
	}
	if known {
		n.mu.Lock()
		n.onReady = func(n *Node) {
			st, err := n.Status(context.Background())
			if err == nil && st.Frontier[n.Site] < before {
				r.h.Violate("durability", "%s restarted after kill -9 with its own log at %d, but it showed %d before the kill", n.Name, st.Frontier[n.Site], before)
			}
		}
		n.mu.Unlock()
	}
	return nil
}

// ownHead returns a site's own log head from its status.
func ownHead(ctx context.Context, n *Node) (uint64, error) {
	st, err := n.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Frontier[n.Site], nil
}

// killCapture: the site's writer commits a burst; as soon as the site's log
// grows (capture under way) the node is killed with kill -9. The writer goes
// on while it is down; then it starts again.
func (r *dbRun) killCapture(ctx context.Context) error {
	w := r.pick()
	n := w.site
	r.h.countFault(FaultDBKillCapture)
	head0, err := ownHead(ctx, n)
	if err != nil {
		return err
	}
	burstDone := make(chan struct{})
	var rows int
	go func() {
		defer close(burstDone)
		first, last, _ := w.burst(dbCaptureBurstTx, dbCaptureBurstPairs)
		if first > 0 {
			rows = int(last-first+1) * 2
		}
	}()
	_, _ = waitFor(ctx, 10*time.Second, 2*time.Millisecond, n.Name+" capturing its writer's burst", func() (bool, string) {
		h, err := ownHead(ctx, n)
		return err == nil && h > head0, "its log did not grow"
	})
	busy := true
	select {
	case <-burstDone:
		busy = false
	default:
	}
	if busy {
		r.h.countFault(FaultDBKillCapture + "/writer-busy")
	}
	if err := r.kill(ctx, n); err != nil {
		return err
	}
	<-burstDone
	from := w.committed()
	if err := w.waitCommits(ctx, from, dbFaultWrites, "while its node is down after kill -9"); err != nil {
		r.h.Violate("db-writer", "%v", err)
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	r.note("%s killed with kill -9 as soon as it began capturing a burst of %d rows (writer still committing the burst: %v); %d more transactions committed while it was down", n.Name, rows, busy, w.committed()-from)
	return nil
}

// killApply: a site is cut off (stopped, without namespaces) while another
// site's writer commits a burst; once that site has captured it, the first
// is healed and killed with kill -9 while it writes the burst into its
// database: as soon as its database holds part of the burst (the burst
// spans more than one apply transaction), or it has merged rows waiting to
// be written while the database's write lock is taken.
func (r *dbRun) killApply(ctx context.Context) error {
	h := r.h
	target := r.pick()
	src := r.pick()
	for src == target {
		src = r.pick()
	}
	n := target.site
	h.countFault(FaultDBKillApply)
	cut := h.Net.Isolated()
	others := slices.DeleteFunc(h.Nodes(), func(o *Node) bool { return o == n })
	if cut {
		for _, o := range others {
			if err := h.Net.Cut(n.Name, o.Name); err != nil {
				return err
			}
		}
	} else if code, err := n.Stop(); err != nil {
		return err
	} else if code != 0 {
		h.Violate("stop", "%s exited %d after SIGTERM, want 0:\n%s", n.Name, code, n.LogTail(15))
	}
	tb := time.Now()
	first, last, _ := src.burst(dbApplyBurstTx, dbApplyBurstPairs)
	if first == 0 {
		return fmt.Errorf("fault: %s's writer committed none of its burst", src.site.Name)
	}
	total := int(last - first + 1)
	wrote := time.Since(tb)
	// The burst is in src's log once its database has nothing left to capture.
	if _, err := waitFor(ctx, 60*time.Second, 20*time.Millisecond, src.site.Name+" capturing its burst", func() (bool, string) {
		c := src.site.Client()
		if c == nil {
			return false, "not running"
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := c.DBStatus(sctx)
		if err != nil {
			return false, err.Error()
		}
		return st.PendingCapture == 0, fmt.Sprintf("%d changes waiting", st.PendingCapture)
	}); err != nil {
		h.Violate("db-liveness", "%v", err)
	}
	srcHead, err := ownHead(ctx, src.site)
	if err != nil {
		return err
	}
	if before, err := countRange(ctx, target.rd, first, last); err != nil {
		return err
	} else if before > 0 {
		h.Violate("partition", "%s, cut off, already holds %d of %s's burst in its database", n.Name, before, src.site.Name)
	}
	lock, err := newLockProbe(target.path)
	if err != nil {
		return err
	}
	defer lock.close()
	if cut {
		for _, o := range others {
			h.Net.Mend(n.Name, o.Name)
		}
	} else if err := n.Start(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	how := ""
	if _, err := waitFor(ctx, 60*time.Second, 2*time.Millisecond, n.Name+" writing "+src.site.Name+"'s burst into its database", func() (bool, string) {
		k, err := countRange(ctx, target.rd, first, last)
		switch {
		case err != nil:
			return false, err.Error()
		case k > 0 && k < total:
			how = fmt.Sprintf("its database held %d of the burst's %d patients", k, total)
			return true, ""
		case k == total:
			how = "too late: its database held the whole burst"
			return true, ""
		}
		c := n.Client()
		if c == nil {
			return false, "not running"
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if st, err := c.Status(sctx); err != nil || st.Frontier[src.site.Site] < srcHead {
			return false, "the burst's entries have not all arrived"
		}
		st, err := c.DBStatus(sctx)
		if err != nil || st.PendingApply == 0 {
			return false, "nothing waiting to be applied"
		}
		if lock.held() {
			how = fmt.Sprintf("every entry of the burst received, %d merged changes waiting to be written and the database's write lock taken", st.PendingApply)
			return true, ""
		}
		return false, fmt.Sprintf("%d merged changes waiting, the write lock free", st.PendingApply)
	}); err != nil {
		h.Violate("db-liveness", "%v", err)
	}
	after := time.Since(t0)
	if err := r.kill(ctx, n); err != nil {
		return err
	}
	held, err := countRange(ctx, target.rd, first, last)
	if err != nil {
		return err
	}
	switch {
	case held == 0:
		h.countFault(FaultDBKillApply + "/none-applied")
	case held < total:
		h.countFault(FaultDBKillApply + "/part-applied")
	default:
		h.countFault(FaultDBKillApply + "/all-applied")
	}
	from := target.committed()
	if err := target.waitCommits(ctx, from, dbFaultWrites/2, "while its node is down after kill -9"); err != nil {
		h.Violate("db-writer", "%v", err)
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	r.note("%s's writer committed a burst of %d patients with an appointment each in %s while %s was cut off; %s was killed with kill -9 %s after the heal (%s), its database holding %d of them after the kill",
		src.site.Name, total, wrote.Round(time.Millisecond), n.Name, n.Name, after.Round(time.Millisecond), how, held)
	return nil
}

// lockProbe tells whether another connection holds a database's write lock:
// BEGIN IMMEDIATE without a busy timeout fails at once while one does.
type lockProbe struct{ d *sql.DB }

func newLockProbe(path string) (*lockProbe, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(0)")
	q.Set("_txlock", "immediate")
	d, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	d.SetMaxOpenConns(1)
	return &lockProbe{d: d}, nil
}

func (l *lockProbe) held() bool {
	tx, err := l.d.Begin()
	if err != nil {
		return strings.Contains(err.Error(), "locked") || strings.Contains(err.Error(), "BUSY")
	}
	_ = tx.Rollback()
	return false
}

func (l *lockProbe) close() { l.d.Close() }

// killRelay: the relay killed with kill -9 while every writer goes on.
func (r *dbRun) killRelay(ctx context.Context) error {
	r.h.countFault(FaultKillRelay)
	if err := r.kill(ctx, r.h.Relay); err != nil {
		return err
	}
	r.waitAll(ctx, "while the relay is down")
	return r.h.Relay.Start(ctx)
}

// waitAll waits until every writer has committed dbFaultWrites more
// transactions.
func (r *dbRun) waitAll(ctx context.Context, what string) {
	from := make([]int64, len(r.ws))
	for i, w := range r.ws {
		from[i] = w.committed()
	}
	for i, w := range r.ws {
		if err := w.waitCommits(ctx, from[i], dbFaultWrites, what); err != nil {
			r.h.Violate("db-writer", "%v", err)
		}
	}
}

// partition: one site cut off from every other node (without namespaces,
// the others are stopped) while every writer goes on.
func (r *dbRun) partition(ctx context.Context) error {
	w := r.pick()
	r.h.countFault(FaultIsolate)
	undo, err := r.h.isolate(ctx, w.site)
	if err != nil {
		return err
	}
	r.waitAll(ctx, "while "+w.site.Name+" is cut off")
	return undo()
}

// stopped: a site stopped cleanly while its practice software keeps
// changing the database (inserts, updates, deletes); then started again,
// it must capture all of it.
func (r *dbRun) stopped(ctx context.Context) error {
	w := r.pick()
	n := w.site
	r.h.countFault(FaultDBStopped)
	code, err := n.Stop()
	if err != nil {
		return err
	}
	if code != 0 {
		r.h.Violate("stop", "%s exited %d after SIGTERM, want 0:\n%s", n.Name, code, n.LogTail(15))
	}
	from := w.committed()
	if err := w.waitCommits(ctx, from, 2*dbFaultWrites, "while its node is stopped"); err != nil {
		r.h.Violate("db-writer", "%v", err)
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	r.note("%s stopped cleanly while its writer committed %d transactions, then started", n.Name, w.committed()-from)
	return nil
}

// settle heals everything, waits for the nodes and the databases to
// converge, and checks the databases, the sites' logs, `db check`, `db
// status` and `ppsync verify`.
func (r *dbRun) settle(ctx context.Context) {
	h := r.h
	if err := h.HealAll(ctx); err != nil {
		h.Violate("heal", "%v", err)
	}
	t0 := time.Now()
	took, _, err := h.Converge(ctx, h.Nodes(), ConvergeTimeout, CheckOptions{})
	if err != nil {
		h.Violate("liveness", "%v", err)
	}
	want := expected(r.ws)
	stuck := false
	dbTook, werr := r.waitDatabases(ctx, want, &stuck)
	// Every change is captured and applied now: the nodes' state is final.
	_, digest, err := h.Converge(ctx, h.Nodes(), ConvergeTimeout, CheckOptions{})
	if err != nil {
		h.Violate("liveness", "after the databases settled: %v", err)
		digest = ""
	}
	r.res.Converge = time.Since(t0)
	fk := r.fkRefused(ctx, want)
	unexplained, missing := r.checkDumps(ctx, want, fk)
	switch {
	case stuck && unexplained > 0:
		h.Violate("db-liveness", "the databases stopped changing %s after the heal (every site with nothing waiting to capture or apply for %s) without holding exactly the committed rows", dbTook.Round(time.Millisecond), dbStuckAfter)
	case !stuck && werr != nil:
		h.Violate("db-liveness", "%v", werr)
	}
	live, dead, puts, upd, dels, txs := 0, 0, 0, 0, 0, 0
	for _, row := range want {
		if row.Vals != nil {
			live++
		} else {
			dead++
		}
		puts += row.Inserts
		upd += row.Updates
		dels += row.Deletes
	}
	var per []string
	for _, w := range r.ws {
		w.mu.Lock()
		txs += len(w.ledger)
		per = append(per, fmt.Sprintf("%s %d transactions (%d row changes, %d failed)", w.site.Name, len(w.ledger), w.changes, w.failed))
		if w.failed > 0 {
			h.Violate("db-writer", "%s's writer: %d transactions failed (not in the ledger): %s", w.site.Name, w.failed, strings.Join(w.failures, "; "))
		}
		w.mu.Unlock()
	}
	r.note("the writers committed %d transactions (%s): %d inserts, %d updates, %d deletes; %d rows live, %d deleted", txs, strings.Join(per, ", "), puts, upd, dels, live, dead)
	dbState := "every database held exactly the committed rows"
	if stuck {
		dbState = "the databases stopped changing (not all holding the committed rows)"
	}
	r.note("after the heal the nodes converged in %s, %s after %s, the nodes' final state after %s", took.Round(time.Millisecond), dbState, dbTook.Round(time.Millisecond), r.res.Converge.Round(time.Millisecond))
	for _, w := range r.ws {
		r.checkNode(ctx, w, fk[w.site.Name], missing[w.site.Name])
		r.checkLog(ctx, w, want)
	}
	reps := h.StopAndVerify(ctx, h.Nodes(), digest)
	h.Logf("verify: every node re-checked its logs (%d entries at the relay)", reps[RelayName].Entries)
}

// dbDiff is one difference between a database and the ledgers.
type dbDiff struct{ kind, key, detail string }

// dbStuckAfter: once every site has nothing waiting and no database
// changed for this long, the databases are as the nodes leave them.
const dbStuckAfter = 5 * time.Second

// waitDatabases waits until every database holds exactly the rows the
// ledgers expect, or (stuck) until none changed for dbStuckAfter while every
// site had nothing waiting to capture or apply.
func (r *dbRun) waitDatabases(ctx context.Context, want map[string]*dbRow, stuck *bool) (time.Duration, error) {
	var last string
	var since time.Time
	return waitFor(ctx, ConvergeTimeout, 250*time.Millisecond, "every practice database holding exactly the committed rows", func() (bool, string) {
		var sig, why []string
		for _, w := range r.ws {
			d, err := dumpDB(ctx, w.rd)
			if err != nil {
				return false, w.site.Name + ": " + err.Error()
			}
			diffs := diffRows(want, d, 1)
			if len(diffs) > 0 {
				why = append(why, w.site.Name+": "+diffs[0].detail)
			}
			sig = append(sig, fmt.Sprint(len(d.order), diffs))
		}
		if len(why) == 0 {
			return true, ""
		}
		idle := true
		for _, w := range r.ws {
			c := w.site.Client()
			if c == nil {
				idle = false
				break
			}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := c.DBStatus(sctx)
			cancel()
			if err != nil || st.PendingCapture > 0 || st.PendingApply > 0 {
				idle = false
			}
		}
		if s := strings.Join(sig, "; "); !idle || s != last {
			last, since = s, time.Now()
		} else if time.Since(since) >= dbStuckAfter {
			*stuck = true
			return true, ""
		}
		return false, strings.Join(why, "; ")
	})
}

// diffRows compares a database's dump with the rows the ledgers expect and
// returns up to max differences (none when equal): db-phantom (a row no
// committed transaction left there), db-content (other values), db-lost (a
// committed row missing).
func diffRows(want map[string]*dbRow, d dbDump, max int) []dbDiff {
	var out []dbDiff
	var k string
	add := func(kind, format string, a ...any) bool {
		out = append(out, dbDiff{kind, k, fmt.Sprintf(format, a...)})
		return len(out) >= max
	}
	for _, k = range d.order {
		row := want[k]
		switch {
		case row == nil:
			if add("db-phantom", "row %s, which no committed transaction wrote: %s", k, d.rows[k]) {
				return out
			}
		case row.Vals == nil:
			if add("db-phantom", "row %s, deleted by a committed transaction, is there: %s", k, d.rows[k]) {
				return out
			}
		case renderRow(row.Vals) != d.rows[k]:
			if add("db-content", "row %s holds %s; its last committed values are %s", k, d.rows[k], renderRow(row.Vals)) {
				return out
			}
		}
	}
	var keys []string
	for k, row := range want {
		if _, ok := d.rows[k]; !ok && row.Vals != nil {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k = range keys {
		if add("db-lost", "row %s is missing; its last committed values are %s", k, renderRow(want[k].Vals)) {
			return out
		}
	}
	return out
}

// refusedRE matches the line a node logs for each merged row its database
// refused (every start's, unlike `db status`, which forgets them when the
// node restarts).
var refusedRE = regexp.MustCompile(`msg="practice database refused a merged row" table=(\S+) key=("(?:[^"\\]|\\.)*"|\S+) why="((?:[^"\\]|\\.)*)"`)

// fkRefused returns, per site, the committed rows its database refused for
// a foreign key when they were applied, from `db status` and from the
// node's log: "table/key" -> why. Each such row was committed at its own
// site with its patient there (foreign keys are on in every database), so
// the merged state held both.
func (r *dbRun) fkRefused(ctx context.Context, want map[string]*dbRow) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, w := range r.ws {
		found := map[string]string{} // table/key -> reason
		if c := w.site.Client(); c != nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			st, err := c.DBStatus(sctx)
			cancel()
			if err == nil {
				for _, rf := range st.Refused {
					found[rf.Table+"/"+rf.Key] = rf.Reason
				}
			}
		}
		if b, err := os.ReadFile(w.site.logPath); err == nil {
			for _, m := range refusedRE.FindAllStringSubmatch(string(b), -1) {
				key := m[2]
				if uq, err := strconv.Unquote(key); err == nil {
					key = uq
				}
				found[m[1]+"/"+key] = m[3]
			}
		}
		for k, why := range found {
			row := want[k]
			if row == nil || row.Table != tAppointments || !strings.Contains(why, "FOREIGN KEY") {
				continue
			}
			if out[w.site.Name] == nil {
				out[w.site.Name] = map[string]string{}
			}
			parent := "its patient"
			if row.Vals != nil {
				parent = fmt.Sprintf("its patient %s/%v", tPatients.name, row.Vals[1])
			}
			out[w.site.Name][k] = fmt.Sprintf("committed by its site with %s there, refused here: %s", parent, why)
		}
	}
	return out
}

// checkDumps reads every database once more: each must equal the ledgers'
// rows (and so all must be the same). A committed row missing because its
// site's database refused it for a foreign key while its parent is a
// committed row is reported as db-fk-refused. It returns how many
// differences that does not explain.
func (r *dbRun) checkDumps(ctx context.Context, want map[string]*dbRow, fk map[string]map[string]string) (unexplained int, missing map[string]map[string]bool) {
	h := r.h
	missing = map[string]map[string]bool{}
	differ := false
	var ref *dbDump
	var refName string
	for _, w := range r.ws {
		d, err := dumpDB(ctx, w.rd)
		if err != nil {
			h.Violate("db-check", "%s: read the database: %v", w.site.Name, err)
			unexplained++
			continue
		}
		var refused []string
		shown := 0
		for _, df := range diffRows(want, d, 1<<30) {
			if why, ok := fk[w.site.Name][df.key]; ok && df.kind == "db-lost" {
				refused = append(refused, df.key+": "+why)
				if missing[w.site.Name] == nil {
					missing[w.site.Name] = map[string]bool{}
				}
				missing[w.site.Name][df.key] = true
				continue
			}
			unexplained++
			if shown++; shown <= 6 {
				h.Violate(df.kind, "%s's database: %s", w.site.Name, df.detail)
			}
		}
		if shown > 6 {
			h.Violate("db-lost", "%s's database: %d more differences not shown", w.site.Name, shown-6)
		}
		if len(refused) > 0 {
			h.Violate("db-fk-refused", "%s's database lacks %d committed rows that it refused for a foreign key when they were applied (their patients are there now); they stay missing (db check: missing), e.g. %s",
				w.site.Name, len(refused), strings.Join(refused[:min(3, len(refused))], "; "))
		}
		differ = differ || shown > 0 || len(refused) > 0
		if ref == nil {
			ref, refName = &d, w.site.Name
			continue
		}
		// A database that differs from the ledgers is reported above; all
		// equal to them must also be equal to each other.
		if !differ && (!slices.Equal(ref.order, d.order) || !mapsEqual(ref.rows, d.rows)) {
			h.Violate("db-diverged", "%s's database (%d rows) differs from %s's (%d rows): %s", w.site.Name, len(d.order), refName, len(ref.order), firstDiff(*ref, d))
		}
	}
	return unexplained, missing
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func firstDiff(a, b dbDump) string {
	for _, k := range a.order {
		if b.rows[k] != a.rows[k] {
			return fmt.Sprintf("row %s: %q vs %q", k, a.rows[k], b.rows[k])
		}
	}
	for _, k := range b.order {
		if _, ok := a.rows[k]; !ok {
			return fmt.Sprintf("row %s only in the second: %q", k, b.rows[k])
		}
	}
	return "same rows in another order"
}

// checkNode runs `ppsync db check --json` at the site — it must exit 0
// (rows explained by db-fk-refused apart) and name no conflict (the sites
// never write the same row) — and reads `db status`: no problem, nothing
// waiting, no refused row (those of the foreign key bug are db-fk-refused).
func (r *dbRun) checkNode(ctx context.Context, w *dbWriter, fk map[string]string, missing map[string]bool) {
	h, n := r.h, w.site
	out, errOut, code, err := n.CLI(ctx, "db", "check", "--data", n.Data, "--json")
	var res api.DBCheckResult
	switch {
	case err != nil:
		h.Violate("db-check", "%s: `ppsync db check`: %v", n.Name, err)
	case json.Unmarshal([]byte(out), &res) != nil:
		h.Violate("db-check", "%s: `ppsync db check --json` exited %d and printed %q: %s", n.Name, code, clip(out), strings.TrimSpace(errOut))
	case code != 0:
		var other []string
		for _, d := range res.Differences {
			if _, ok := fk[d.Table+"/"+d.Key]; ok && d.Kind == "missing" {
				continue
			}
			b, _ := json.Marshal(d)
			other = append(other, string(b))
		}
		if len(other) > 0 || !res.Complete || res.Problem != "" {
			h.Violate("db-check", "%s: `ppsync db check` exited %d: %d rows differ (%d of them refused for a foreign key, see db-fk-refused), complete %v, problem %q: %s",
				n.Name, code, len(res.Differences), len(res.Differences)-len(other), res.Complete, res.Problem, clip(strings.Join(other, " ")))
		}
	}
	if len(res.Conflicts) > 0 {
		b, _ := json.Marshal(res.Conflicts)
		h.Violate("db-conflict", "%s: `ppsync db check` names %d rows two sites wrote at once, but every site writes only its own rows: %s", n.Name, len(res.Conflicts), clip(string(b)))
	}
	c := n.Client()
	if c == nil {
		h.Violate("db-check", "%s is not running at the check", n.Name)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.DBStatus(sctx)
	if err != nil {
		h.Violate("db-check", "%s: db status: %v", n.Name, err)
		return
	}
	var refused, healed []string
	for _, rf := range st.Refused {
		if _, ok := fk[rf.Table+"/"+rf.Key]; !ok {
			b, _ := json.Marshal(rf)
			refused = append(refused, string(b))
		}
	}
	for k, why := range fk {
		if !missing[k] {
			healed = append(healed, k+": "+why)
		}
	}
	sort.Strings(healed)
	if len(healed) > 0 {
		h.Violate("db-fk-refused", "%s: %d committed rows were refused for a foreign key when they were applied; later changes (the row written again, or deleted with its patient) left them right in the database, e.g. %s",
			n.Name, len(healed), strings.Join(healed[:min(3, len(healed))], "; "))
	}
	if st.Problem != "" || len(refused) > 0 || st.PendingCapture > 0 || st.PendingApply > 0 {
		h.Violate("db-status", "%s: after quiescence `db status` shows problem %q, %d changes waiting to be captured, %d to be applied, refused rows: %s",
			n.Name, st.Problem, st.PendingCapture, st.PendingApply, clip(strings.Join(refused, " ")))
	}
}

// checkLog reads the site's own log (`ppsync log --site SITE --json --limit
// 10000`, in its namespace): no row of another site in it (an applied row
// captured back), no row no committed transaction wrote, each row's puts at
// most its committed inserts and updates and its deletes at most its
// committed deletes; an inserted-only row exactly one put (a capture
// replayed after a kill would put it twice).
func (r *dbRun) checkLog(ctx context.Context, w *dbWriter, want map[string]*dbRow) {
	h, n := r.h, w.site
	out, errOut, code, err := n.CLI(ctx, "log", "--data", n.Data, "--site", n.Site, "--json", "--limit", "10000")
	if err != nil || code != 0 {
		h.Violate("db-log", "%s: `ppsync log` exited %d: %v %s", n.Name, code, err, strings.TrimSpace(errOut))
		return
	}
	puts, dels := map[string]int{}, map[string]int{}
	entries, firstSeq := 0, uint64(0)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e api.EntryJSON
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			h.Violate("db-log", "%s: `ppsync log --json` printed %q: %v", n.Name, clip(line), err)
			return
		}
		entries++
		if firstSeq == 0 || e.Seq < firstSeq {
			firstSeq = e.Seq
		}
		for _, op := range e.Ops {
			k := op.Table + "/" + op.Key
			if op.Op == "delete" {
				dels[k]++
			} else {
				puts[k]++
			}
		}
	}
	complete := firstSeq <= 1
	const maxReports = 5
	reported := map[string]int{}
	violate := func(kind, format string, a ...any) {
		reported[kind]++
		if reported[kind] <= maxReports {
			h.Violate(kind, n.Name+"'s log: "+format, a...)
		}
	}
	keys := map[string]bool{}
	for k := range puts {
		keys[k] = true
	}
	for k := range dels {
		keys[k] = true
	}
	onlyInserted, once := 0, 0
	for k := range keys {
		table, key, _ := strings.Cut(k, "/")
		t := dbTableNamed(table)
		row := want[k]
		switch {
		case t == nil:
			violate("db-capture", "an operation on %s, which is no practice table", k)
		case !w.owns(t, key):
			violate("db-echo", "row %s of another site's range was captured as %s's own change (%d puts, %d deletes): a row written back was captured again", k, n.Site, puts[k], dels[k])
		case row == nil:
			violate("db-capture", "row %s is in the log (%d puts, %d deletes) but no committed transaction wrote it", k, puts[k], dels[k])
		case puts[k] > row.Inserts+row.Updates && row.PrevAtRowid != "":
			violate("db-capture-rowid", "row %s has %d puts for %d committed inserts and updates; its rowid %d had been %s's (deleted since; %d puts, %d deletes of it in the log), whose recorded change (by rowid) was read as this row's",
				k, puts[k], row.Inserts+row.Updates, row.Rowid, row.PrevAtRowid, puts[row.PrevAtRowid], dels[row.PrevAtRowid])
		case puts[k] > row.Inserts+row.Updates:
			violate("db-capture-twice", "row %s has %d puts for %d committed inserts and updates: a change captured more than once", k, puts[k], row.Inserts+row.Updates)
		case dels[k] > row.LoggedDeletes:
			violate("db-capture-twice", "row %s has %d deletes for %d deletes committed while capture ran", k, dels[k], row.LoggedDeletes)
		}
	}
	for k, row := range want {
		table, key, _ := strings.Cut(k, "/")
		if !w.owns(dbTableNamed(table), key) {
			continue
		}
		if row.Inserts == 1 && row.Updates == 0 && row.Deletes == 0 {
			onlyInserted++
			switch {
			case puts[k] == 1 && dels[k] == 0:
				once++
			case puts[k] == 0 && complete:
				violate("db-capture-once", "inserted-only row %s is not in the log, want exactly 1 put", k)
			}
			// More than one put, or a delete: reported above.
		}
		if complete && dels[k] != row.LoggedDeletes {
			violate("db-capture-once", "row %s, deleted by %d transactions committed while capture ran, has %d deletes in the log", k, row.LoggedDeletes, dels[k])
		}
	}
	for kind, c := range reported {
		if c > maxReports {
			h.Violate(kind, "%s's log: %d more %s violations not shown", n.Name, c-maxReports, kind)
		}
	}
	r.note("%s's log: %d entries (complete: %v); %d of its %d inserted-only rows captured exactly once", n.Name, entries, complete, once, onlyInserted)
}
