package engine

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// fakeLog is a log of entries named by (site, seq): the true entry's hash is
// trueHash(site, seq); a forked one's is forkHash(site, seq).
type fakeLog struct {
	sites map[string][]wire.Hash
	forks []Fork
}

func trueHash(site string, seq uint64) wire.Hash {
	return sha256.Sum256(fmt.Appendf(nil, "%s#%d", site, seq))
}
func forkHash(site string, seq uint64) wire.Hash {
	return sha256.Sum256(fmt.Appendf(nil, "%s#%d!", site, seq))
}

func (l *fakeLog) Head(site string) (uint64, wire.Hash) {
	s := l.sites[site]
	if len(s) == 0 {
		return 0, wire.Hash{}
	}
	return uint64(len(s)), s[len(s)-1]
}

func (l *fakeLog) HashAt(site string, seq uint64) (wire.Hash, bool) {
	s := l.sites[site]
	if seq == 0 || seq > uint64(len(s)) {
		return wire.Hash{}, false
	}
	return s[seq-1], true
}

func (l *fakeLog) Forks() []Fork { return l.forks }

// append takes a run as txlog would: next seq only, duplicates are no-ops,
// another hash at a held seq is a fork (recorded).
func (l *fakeLog) append(run []*wire.Signed) Outcome {
	site := run[0].Site
	head, _ := l.Head(site)
	if run[0].Seq > head+1 {
		return Outcome{Kind: OutcomeGap, Site: site, Seq: head}
	}
	o := Outcome{Kind: OutcomeDuplicate}
	for _, e := range run {
		switch {
		case e.Seq <= head:
			if l.sites[site][e.Seq-1] != e.Hash {
				l.forks = append(l.forks, Fork{Site: site, Seq: e.Seq})
				return Outcome{Kind: OutcomeFork, Site: site, Seq: e.Seq, Appended: o.Appended}
			}
			o.Duplicates++
		default:
			l.sites[site] = append(l.sites[site], e.Hash)
			head++
			o.Kind = OutcomeOK
			o.Appended++
		}
	}
	return o
}

// traceFx carries out actions on the fake log and writes each down.
type traceFx struct {
	log  *fakeLog
	base time.Time
	got  []string
}

func runName(run []*wire.Signed) string {
	s := fmt.Sprintf("%s#%d", run[0].Site, run[0].Seq)
	if len(run) > 1 {
		s += fmt.Sprintf("..%d", run[len(run)-1].Seq)
	}
	if run[0].Hash == forkHash(run[0].Site, run[0].Seq) {
		s += "!"
	}
	return s
}

func (f *traceFx) Fetch(a Fetch) { f.got = append(f.got, "fetch:"+a.Peer+":"+a.Reason) }
func (f *traceFx) ForkCheck(a ForkCheck) {
	f.got = append(f.got, fmt.Sprintf("forkcheck:%s:%s#%d", a.Peer, a.Site, a.Seq))
}
func (f *traceFx) CheckDuplicate(a CheckDuplicate) {
	f.got = append(f.got, "checkdup:"+a.Peer)
}
func (f *traceFx) Append(a Append) Outcome {
	via := "catch-up"
	if a.Held {
		via = "held"
	} else if a.Gossip {
		via = "gossip"
	}
	o := f.log.append(a.Run)
	f.got = append(f.got, fmt.Sprintf("append:%s:%s:%s=%s", a.Peer, runName(a.Run), via, o.Kind))
	return o
}
func (f *traceFx) SpreadFork(a SpreadFork) {
	f.got = append(f.got, fmt.Sprintf("spread:%s#%d", a.Site, a.Seq))
}
func (f *traceFx) PushBranch(a PushBranch) {
	f.got = append(f.got, fmt.Sprintf("push:%s#%d", a.Site, a.From))
}
func (f *traceFx) Probe(a Probe)       { f.got = append(f.got, "probe:"+a.Peer) }
func (f *traceFx) SetTimer(a SetTimer) { f.got = append(f.got, "timer:"+a.At.Sub(f.base).String()) }
func (f *traceFx) WriteGate(a WriteGate) {
	switch {
	case a.Open:
		f.got = append(f.got, "gate:open")
	case a.Reason == gateMoved:
		f.got = append(f.got, "gate:moved")
	case a.Reason == gateBehind:
		f.got = append(f.got, "gate:behind")
	default:
		f.got = append(f.got, "gate:"+a.Reason)
	}
}

// parseRun reads "x#3..5" or "x#4!" (a forked entry) into entries, each
// signed; "x#4..6~" is a run whose entries are unsigned (inside a commit
// group) but the last is signed, "x#4~~" one with no signed entry.
func parseRun(t *testing.T, s string) []*wire.Signed {
	t.Helper()
	tildes := len(s) - len(strings.TrimRight(s, "~"))
	s = strings.TrimRight(s, "~")
	grouped, noEnd := tildes > 0, tildes > 1
	forked := strings.HasSuffix(s, "!")
	s = strings.TrimSuffix(s, "!")
	site, rng, _ := strings.Cut(s, "#")
	lo, hi, ok := strings.Cut(rng, "..")
	if !ok {
		hi = lo
	}
	a, err1 := strconv.ParseUint(lo, 10, 64)
	b, err2 := strconv.ParseUint(hi, 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad run %q", s)
	}
	var out []*wire.Signed
	for seq := a; seq <= b; seq++ {
		h := trueHash(site, seq)
		if forked {
			h = forkHash(site, seq)
		}
		sig := make([]byte, 64)
		if grouped && (seq < b || noEnd) {
			sig = nil
		}
		out = append(out, &wire.Signed{Entry: wire.Entry{Site: site, Seq: seq}, Hash: h, Body: []byte("b"), Sig: sig})
	}
	return out
}

// parseFrontier reads "x=5,y=3" (a "!" after a number: the head's hash is
// another than the true one).
func parseFrontier(s string) (map[string]uint64, map[string][]byte) {
	f, heads := map[string]uint64{}, map[string][]byte{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		forked := strings.HasSuffix(v, "!")
		n, _ := strconv.ParseUint(strings.TrimSuffix(v, "!"), 10, 64)
		f[k] = n
		h := trueHash(k, n)
		if forked {
			h = forkHash(k, n)
		}
		heads[k] = h[:]
	}
	return f, heads
}

// runTrace drives an engine through Drive with a trace: each line is
// "input args -> expected effects", effects in the order carried out.
//
//	cfg k=v ...         before any input: interval, probe, epoch, own, reorder (max entries)
//	log x=5,y=2         the local log holds x#1..5 and y#1..2 (true entries)
//	logfork x 3         the local log knows of a fork of x at 3
//	up a | down a | done a ok|fail | sync | dup a | write
//	at 5s               time passes to base+5s (no input)
//	tick 30s | wake 50ms  Tick / Wake at base+d
//	hb a x=5,y=3!       a heartbeat (y's head hash differs from the true one)
//	gossip a x#3..4 | catchup a x#3..4   a received run
//	proof a x 3 [old]   a fork proof (old: the log knew it already)
//	interval 10s        the interval setting changed
func runTrace(t *testing.T, steps []string) *Engine {
	t.Helper()
	base := time.Unix(1_000_000, 0)
	now := base
	log := &fakeLog{sites: map[string][]wire.Hash{}}
	cfg := Config{Log: log, OwnSite: "me", Epoch: 1, Interval: 30 * time.Second}
	var e *Engine
	fx := &traceFx{log: log, base: base}
	for i, step := range steps {
		ev, want, _ := strings.Cut(step, " -> ")
		f := strings.Fields(ev)
		arg := func(k int) string {
			if k >= len(f) {
				t.Fatalf("step %d %q: missing argument", i, ev)
			}
			return f[k]
		}
		dur := func(s string) time.Duration {
			d, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			return d
		}
		switch f[0] {
		case "cfg":
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "interval":
					cfg.Interval = dur(v)
				case "probe":
					cfg.ProbeEvery = dur(v)
				case "epoch":
					cfg.Epoch, _ = strconv.ParseUint(v, 10, 64)
				case "own":
					cfg.OwnSite = v
				case "reorder":
					cfg.ReorderMax, _ = strconv.Atoi(v)
				default:
					t.Fatalf("step %d: unknown setting %q", i, k)
				}
			}
			continue
		case "log":
			fr, _ := parseFrontier(arg(1))
			for site, n := range fr {
				for seq := uint64(len(log.sites[site]) + 1); seq <= n; seq++ {
					log.sites[site] = append(log.sites[site], trueHash(site, seq))
				}
			}
			continue
		case "logfork":
			seq, _ := strconv.ParseUint(arg(2), 10, 64)
			log.forks = append(log.forks, Fork{Site: arg(1), Seq: seq})
			continue
		case "at":
			now = base.Add(dur(arg(1)))
			continue
		}
		if e == nil {
			e = New(cfg)
		}
		var in Input
		switch f[0] {
		case "up":
			in = PeerUp{Now: now, Peer: arg(1)}
		case "down":
			in = PeerDown{Now: now, Peer: arg(1)}
		case "done":
			in = FetchDone{Now: now, Peer: arg(1), OK: arg(2) == "ok"}
		case "sync":
			in = SyncNow{Now: now}
		case "dup":
			in = DuplicateSeen{Now: now, Peer: arg(1)}
		case "write":
			in = WriteAsked{Now: now}
		case "tick":
			now = base.Add(dur(arg(1)))
			in = Tick{Now: now}
		case "wake":
			now = base.Add(dur(arg(1)))
			in = Wake{Now: now}
		case "hb":
			fr, heads := parseFrontier(arg(2))
			in = NewHeartbeat(log, now, arg(1), fr, heads)
		case "gossip", "catchup":
			in = Received{Now: now, Peer: arg(1), Run: parseRun(t, arg(2)), Gossip: f[0] == "gossip"}
		case "proof":
			seq, _ := strconv.ParseUint(arg(3), 10, 64)
			in = ForkProofReceived{Now: now, Peer: arg(1), Site: arg(2), Seq: seq, Added: len(f) < 5}
		case "interval":
			in = IntervalChanged{Now: now, Interval: dur(arg(1))}
		default:
			t.Fatalf("step %d: unknown input %q", i, f[0])
		}
		fx.got = nil
		Drive(e.Step, fx, in)
		if g := strings.Join(fx.got, " "); g != strings.TrimSpace(want) {
			t.Fatalf("step %d %q:\n got %q\nwant %q", i, ev, g, strings.TrimSpace(want))
		}
	}
	return e
}

// TestEngineTraces drives the engine through Drive with input traces and
// checks every action it takes, in order.
func TestEngineTraces(t *testing.T) {
	traces := []struct {
		name  string
		steps []string
	}{
		// Fetch scheduling.
		{"connect fetches at once", []string{
			"up a -> fetch:a:connect",
			"up b -> fetch:b:connect",
			"up c -> ", // two sessions at most
			"done a ok -> fetch:c:connect",
		}},
		{"gap while a session runs runs again after", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"catchup a x#7 -> append:a:x#7:catch-up=gap",
			"done a ok -> fetch:a:gap",
			"done a ok -> ",
		}},
		{"heartbeat ahead fetches what gossip did not bring, equal does not", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"hb a x=5 -> ",
			"hb a x=6 -> timer:500ms", // x#6 may be in flight by gossip
			"at 300ms",
			"hb a x=8 -> ",
			"wake 500ms -> fetch:a:peer-ahead",
			"done a ok -> ",
			"log x=8",
			"hb a x=9 -> timer:1s",
			"log x=9", // gossip brought it
			"wake 1s -> ",
		}},
		{"a member ahead of the own site fetches at once", []string{
			"cfg own=me",
			"log me=3,x=1",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"hb a x=2 -> timer:500ms",
			"hb a me=4,x=2 -> fetch:a:peer-ahead",
		}},
		{"interval rounds", []string{
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"tick 10s -> ",
			"tick 30s -> fetch:a:interval",
			"done a ok -> ",
			"tick 45s -> ",
			"tick 60s -> fetch:a:interval",
		}},
		{"interval change takes effect at the next tick", []string{
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"interval 5s -> ",
			"tick 4s -> ",
			"tick 5s -> fetch:a:interval",
			"done a ok -> ",
			"interval 0s -> ",
			"tick 60s -> ",
		}},
		{"failures back off, sync now overrides", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"done a fail -> ",
			"catchup a x#9 -> append:a:x#9:catch-up=gap",
			"tick 1s -> fetch:a:gap",
			"done a fail -> ",
			"tick 2s -> ",
			"sync -> fetch:a:sync-now",
		}},
		{"down peers are forgotten", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"up b -> fetch:b:connect",
			"up c -> ",
			"down c -> ",
			"done a ok -> ",
			"catchup c x#9 -> append:c:x#9:catch-up=gap",
		}},
		// The reorder buffer and the gap timer.
		{"held gossip drains when its predecessor lands", []string{
			"log x=2",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"gossip a x#4 -> append:a:x#4:gossip=gap timer:50ms",
			"gossip a x#5..6 -> append:a:x#5..6:gossip=gap",
			"gossip b x#3 -> append:b:x#3:gossip=ok append:a:x#4..6:held=ok",
			"at 1s",
			"wake 1s -> ", // nothing held: nothing to do
		}},
		{"held gossip drains only up to a signed group end", []string{
			"log x=2",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"gossip a x#4..5~ -> append:a:x#4..5:gossip=gap timer:50ms",
			"gossip a x#6..7~~ -> append:a:x#6..7:gossip=gap",
			// x#6..7 has no signed end (the rest of its group was lost): it
			// waits, and its gap is fetched.
			"gossip b x#3 -> append:b:x#3:gossip=ok append:a:x#4..5:held=ok",
			"wake 50ms -> fetch:a:gap",
		}},
		{"a gap that stays open fetches from the sender", []string{
			"log x=2",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"gossip a x#4 -> append:a:x#4:gossip=gap timer:50ms",
			"at 20ms",
			"gossip a x#6 -> append:a:x#6:gossip=gap",
			"wake 50ms -> fetch:a:gap timer:70ms", // x#6 still waits
			"done a ok -> ",
			"wake 70ms -> fetch:a:gap",
		}},
		{"a full reorder buffer fetches the gap at once", []string{
			"cfg reorder=2",
			"log x=2",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"gossip a x#4..5 -> append:a:x#4..5:gossip=gap timer:50ms",
			"gossip a x#7 -> append:a:x#7:gossip=gap fetch:a:gap",
		}},
		{"a catch-up gap fetches", []string{
			"log x=2",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"catchup a x#4..6 -> append:a:x#4..6:catch-up=gap fetch:a:gap",
		}},
		// Forks.
		{"fork check on a differing head, rate-limited", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"hb a x=5! -> forkcheck:a:x#5",
			"at 9s",
			"hb a x=5! -> ",
			"hb a x=4! -> ",
			"hb b x=3! -> forkcheck:b:x#3",
			"at 10s",
			"hb a x=5! -> forkcheck:a:x#5",
			"hb a x=6! -> timer:10.5s",
			"wake 10.5s -> fetch:a:peer-ahead", // ahead: the catch-up compares the chains
		}},
		{"a fork appended spreads", []string{
			"log x=5",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"gossip a x#3! -> append:a:x#3!:gossip=fork spread:x#3 push:x#1",
		}},
		{"a peer that connects hears of every known fork", []string{
			"log x=5,y=1500",
			"logfork x 3",
			"logfork y 1200",
			"up a -> spread:x#3 push:x#1 spread:y#1200 push:y#201 fetch:a:connect",
		}},
		{"a fork proof is passed on with the own branch when it is news", []string{
			"log x=5",
			"proof a x 3 -> spread:x#3 push:x#1",
			"proof a x 3 old -> ",
			"proof a z 3 -> spread:z#3", // no entry of z held: only the proof
		}},
		// Duplicates.
		{"a duplicate identity is compared at once, beside sessions and the cap, once per 10s", []string{
			"up a -> fetch:a:connect",
			"done a fail -> ",
			"up b -> fetch:b:connect",
			"up c -> fetch:c:connect",
			"dup a -> checkdup:a", // two sessions run and a backs off: it checks all the same
			"dup a -> ",           // reported again by the same copy's next connection
			"dup c -> checkdup:c", // a session with c runs
			"tick 11s -> ",
			"dup a -> checkdup:a",
		}},
		// The write gate.
		{"a moved node waits for a sync that finds no one ahead", []string{
			"cfg epoch=2 own=me",
			"log me=3",
			"write -> gate:moved",
			"up a -> fetch:a:connect",
			"hb a me=5 -> ", // runs after the connect session
			"done a ok -> fetch:a:peer-ahead",
			"write -> gate:moved",
			"log me=5",
			"done a ok -> ",
			"write -> gate:open",
		}},
		{"a member holding more of the own site closes the gate", []string{
			"cfg own=me",
			"log me=3",
			"write -> gate:open",
			"up a -> fetch:a:connect",
			"done a ok -> ",
			"hb a me=4 -> fetch:a:peer-ahead",
			"write -> gate:behind",
			"log me=4",
			"write -> gate:open",
		}},
		// Probes.
		{"probes every heartbeat interval for each connected member", []string{
			"cfg probe=5s",
			"up a -> fetch:a:connect timer:5s",
			"up b -> fetch:b:connect",
			"tick 1s -> ",
			"wake 5s -> probe:a probe:b timer:10s",
			"down b -> ",
			"tick 10s -> probe:a timer:15s",
			"down a -> ",
			"wake 15s -> ",
		}},
	}
	for _, tr := range traces {
		t.Run(tr.name, func(t *testing.T) { runTrace(t, tr.steps) })
	}
}

// TestEngineQueries: what the node's status reads.
func TestEngineQueries(t *testing.T) {
	e := runTrace(t, []string{
		"log x=2",
		"up a -> fetch:a:connect",
		"done a ok -> ",
		"hb a x=7,me=1 -> fetch:a:peer-ahead",
		"dup b -> checkdup:b",
		"gossip a x#5 -> append:a:x#5:gossip=gap timer:50ms",
	})
	if got := e.Held(); got != 1 {
		t.Errorf("Held() = %d, want 1", got)
	}
	if got := e.MostHeld("x"); got != 7 {
		t.Errorf("MostHeld(x) = %d, want 7", got)
	}
	if got := e.Twins(); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("Twins() = %v, want [b]", got)
	}
	if e.LastSync().IsZero() || e.CaughtUp() || !e.InFlight("a") || e.MaxInFlight() != DefaultMaxInFlight {
		t.Errorf("LastSync %v CaughtUp %v InFlight(a) %v MaxInFlight %d", e.LastSync(), e.CaughtUp(), e.InFlight("a"), e.MaxInFlight())
	}
}
