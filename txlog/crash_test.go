package txlog

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

const (
	crashEnv = "PPSYNC_TXLOG_CRASH_DIR"
	// crashIngestEnv, if set to n, has the child kill itself right after
	// its n-th ingestion, before the group's batch is committed.
	crashIngestEnv = "PPSYNC_TXLOG_CRASH_AT_INGEST"
)

// openDisk opens a log for site "a" on a real directory, with a key kept in
// that directory so a child and its parent share it.
func openDisk(t testing.TB, dir string) (*Log, func()) {
	t.Helper()
	seedPath := filepath.Join(dir, "seed")
	seed, err := os.ReadFile(seedPath)
	if os.IsNotExist(err) {
		seed = make([]byte, ed25519.SeedSize)
		for i := range seed {
			seed[i] = byte(rand.IntN(256))
		}
		err = os.WriteFile(seedPath, seed, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.NewKeyFromSeed(seed)
	keys := newKeyring()
	keys.keys["a"] = map[uint64]ed25519.PrivateKey{1: key}
	keys.keys["b"] = map[uint64]ed25519.PrivateKey{1: peerKey(seed)}
	db, err := store.Open(filepath.Join(dir, "db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	in, err := store.NewIngester(db, filepath.Join(dir, "ingest"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(Config{DB: db, Ingest: in, Family: testFamily, Self: &Identity{Site: "a", Epoch: 1, Key: key},
		Keys: keys, Apply: &marks{}, Clock: hlc.New(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	return l, func() { l.Close(); db.Close() }
}

// peerKey is the key of site "b", whose runs the crash child receives.
func peerKey(seed []byte) ed25519.PrivateKey {
	s := bytes.Clone(seed)
	s[0]++
	return ed25519.NewKeyFromSeed(s)
}

// TestCrashChild is the child side of TestCrashKill: it appends as fast as it
// can from several writers and prints each acknowledged seq. It does nothing
// unless started by TestCrashKill.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("child process of TestCrashKill")
	}
	l, _ := openDisk(t, dir)
	if n, _ := strconv.Atoi(os.Getenv(crashIngestEnv)); n > 0 {
		var ingests atomic.Int64
		l.afterIngest = func() { // dies where entries are stored above the head
			if ingests.Add(1) == int64(n) {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for i := 0; ; i++ {
				var s []byte
				var err error
				switch {
				case w == 0: // runs of site b stored as tables (a catch-up), one after the other
					h := l.Head("b")
					run := chain(t, "b", 1, l.cfg.Keys.(*keyring).keys["b"][1], h.Seq, h.Hash, ingestMin, fmt.Sprint(i))
					_, err = l.AppendRun(bg, run)
					s = fmt.Appendf(nil, "b %d\n", h.Seq+ingestMin)
				case i%5 == 0: // a batch now and then
					ss, e := l.WriteMany(bg, [][]wire.Op{put("t", fmt.Sprint(w), map[string]any{"i": i}), put("u", fmt.Sprint(i), map[string]any{"w": w})})
					err = e
					if e == nil {
						s = []byte(fmt.Sprintf("ack %d\nack %d\n", ss[0].Seq, ss[1].Seq))
					}
				default:
					ss, e := l.Write(bg, put("t", fmt.Sprint(w), map[string]any{"i": i}))
					err = e
					if e == nil {
						s = []byte(fmt.Sprintf("ack %d\n", ss.Seq))
					}
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "write:", err)
					os.Exit(1)
				}
				mu.Lock()
				out.Write(s)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrashKill kills a writing child process with SIGKILL at random points,
// many times over the same store, and checks after each kill that every
// acknowledged seq is present, the chain verifies, and every logged entry was
// applied in the same batch (and nothing else was). In every other round the
// child dies right after storing a group's entries as a table, before the
// batch that moves its head: those entries must not count.
func TestCrashKill(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		t.Skip("in child")
	}
	rounds := 5
	if testing.Short() {
		rounds = 3
	}
	if v, _ := strconv.Atoi(os.Getenv("PPSYNC_CRASH_ROUNDS")); v > 0 {
		rounds = v
	}
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d, %d rounds", seed, rounds)
	total := 0
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		// Every other round the child dies on its own right after an
		// ingestion, before the group's batch is committed.
		atIngest := round%2 == 1
		if atIngest {
			cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", crashIngestEnv, 1+rng.IntN(3)))
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 50 + rng.IntN(1500) // acknowledgements
		if atIngest {
			killAfter = 200_000 // the child kills itself long before
		}
		acked := map[uint64]bool{}
		var ackedB uint64 // the highest seq of b acknowledged
		note := func(line string) {
			if seq, err := strconv.ParseUint(strings.TrimPrefix(line, "ack "), 10, 64); err == nil {
				acked[seq] = true
			} else if seq, err := strconv.ParseUint(strings.TrimPrefix(line, "b "), 10, 64); err == nil {
				ackedB = max(ackedB, seq)
			}
		}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			note(sc.Text())
			if len(acked) >= killAfter {
				break
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() { // acknowledgements printed before the kill landed count too
			note(sc.Text())
		}
		werr := cmd.Wait()
		if atIngest {
			if len(acked) >= killAfter {
				t.Fatalf("round %d: the child wrote %d entries and never died after an ingestion", round, len(acked))
			}
			var ee *exec.ExitError
			if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("round %d: the child was to die after an ingestion, but: %v: %s", round, werr, stderr.String())
			}
		} else if len(acked) < killAfter {
			t.Fatalf("round %d: child stopped after %d acknowledgements: %s", round, len(acked), stderr.String())
		}
		total += len(acked)

		l, closeLog := openDisk(t, dir)
		head := l.Head("a")
		for seq := range acked {
			if seq > head.Seq {
				t.Fatalf("round %d: acknowledged seq %d lost (head %d)", round, seq, head.Seq)
			}
		}
		headB := l.Head("b")
		if headB.Seq < ackedB {
			t.Fatalf("round %d: b's run up to %d was acknowledged, b's head is %d", round, ackedB, headB.Seq)
		}
		rep, err := l.Verify(bg, nil)
		if err != nil || len(rep.Damage) > 0 {
			t.Fatalf("round %d: verify: %v %v", round, rep.Damage, err)
		}
		// Applied exactly the logged entries: up to each head, and nothing
		// above it (for b, nothing of what an ingestion stored there).
		for _, c := range []struct {
			site  string
			head  uint64
			above uint64
		}{{"a", head.Seq, 5}, {"b", headB.Seq, ingestMin}} {
			for seq := uint64(1); seq <= c.head+c.above; seq++ {
				_, closer, err := l.db.Get(markKey(idOf(c.site, seq)))
				present := err == nil
				if present {
					closer.Close()
				}
				if present != (seq <= c.head) {
					t.Fatalf("round %d: entry %s#%d applied=%v but its site's head is %d", round, c.site, seq, present, c.head)
				}
			}
		}
		closeLog()
	}
	t.Logf("%d kills, %d acknowledged writes, none lost", rounds, total)
}

func idOf(site string, seq uint64) wire.ID { return wire.ID{Site: site, Seq: seq} }
