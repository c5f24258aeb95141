//go:build linux

package fault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DiskSize is the size of the full node's tmpfs: small, but above the free
// space below which a node refuses writes (64 MiB).
const DiskSize = "256m"

// reserve is the free space below which a node refuses writes.
const reserve = 64 << 20

// aboveReserve is the free space above the reserve the third episode leaves:
// less than its one large batch needs.
const aboveReserve = 30 << 20

// almostFull is the free space the second episode leaves: under the node's
// reserve, far from zero.
const almostFull = 16 << 20

// DiskFull puts one site's data directory on a small tmpfs and fills it under
// write load, twice. Writes must then fail cleanly (an HTTP error, no crash),
// and nothing may be acknowledged that is not durable.
//
//  1. Fill the disk, write until the node refuses, free the space: the node
//     should take writes again by itself (if only a restart brings it back,
//     that is recorded as a violation and the node is restarted).
//  2. Fill it again but leave 16 MiB free (almost full), write until refused,
//     cut the node off and kill -9 it, free the space and start it: its own
//     log must hold every write it acknowledged.
//
// It needs root (mount); without it the error wraps ErrSkip.
func DiskFull(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "disk-full", Seed: seed}
	mp := filepath.Join(env.Dir, "nodes", "clinic-2")
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return res, err
	}
	if err := syscall.Mount("tmpfs", mp, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+DiskSize+",mode=0755"); err != nil {
		return res, fmt.Errorf("%w: cannot mount a %s tmpfs for the full disk here (%v); it needs root and a sandbox that allows mount", ErrSkip, DiskSize, err)
	}
	defer syscall.Unmount(mp, syscall.MNT_DETACH)
	h, load, err := start(ctx, env, seed, 3, lightLoad, nil)
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	full := h.Site("clinic-2")
	if full.Data != mp {
		return res, fmt.Errorf("fault: %s's data is in %s, not on the tmpfs %s", full.Name, full.Data, mp)
	}
	r := &faultRunner{h: h, rng: rand.New(rand.NewPCG(seed, 0xd15c)), locks: map[string]*sync.Mutex{}}
	rng := rand.New(rand.NewPCG(seed, 0xf111))
	if _, err := waitFor(ctx, 30*time.Second, 50*time.Millisecond, "writes before the disk fills", func() (bool, string) {
		return h.Ledger.MaxAcked()[full.Site] >= 20, "fewer than 20 acknowledged"
	}); err != nil {
		return res, err
	}
	filler := filepath.Join(mp, "filler")

	// Episode 1: recovery when space returns.
	h.countFault("disk-full")
	if err := fill(filler, 0); err != nil {
		return res, err
	}
	extra, refusal := pressure(ctx, h, full, rng)
	res.Notes = append(res.Notes, fmt.Sprintf("disk full: %s acknowledged %d more entries, then refused writes with: %s", full.Name, extra, refusal))
	if _, err := full.Status(ctx); err != nil {
		h.Violate("disk-full", "%s does not answer its status with a full disk: %v", full.Name, err)
	}
	if err := os.Remove(filler); err != nil {
		return res, err
	}
	if err := recovered(ctx, h, full, rng, &res); err != nil {
		return res, err
	}

	// Episode 2: kill -9 with the disk full.
	h.countFault("disk-full")
	if err := fill(filler, almostFull); err != nil {
		return res, err
	}
	extra, refusal = pressure(ctx, h, full, rng)
	res.Notes = append(res.Notes, fmt.Sprintf("disk almost full (%d MiB free): %d more acknowledged, then: %s", almostFull>>20, extra, refusal))
	undo, err := h.isolate(ctx, full)
	if err != nil {
		return res, err
	}
	h.countFault(FaultKillSite)
	if err := r.kill(full); err != nil {
		return res, err
	}
	if err := os.Remove(filler); err != nil {
		return res, err
	}
	if err := full.Start(ctx); err != nil { // the durability check runs as it becomes ready
		return res, err
	}
	if err := undo(); err != nil {
		return res, err
	}

	// Episode 3: 30 MiB above the reserve, one large batch (about 48 MiB) must
	// either be refused or be committed whole and durably; no crash.
	h.countFault("disk-full")
	if err := fill(filler, reserve+aboveReserve); err != nil {
		return res, err
	}
	big := h.NewWrites(full, 6000, rng, 0, 0)
	raw := make([]byte, 6<<10)
	size := 0
	for i := range big {
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		pad := base64.StdEncoding.EncodeToString(raw) // 8 KiB that do not compress
		big[i].V += "/" + pad
		size += len(pad)
	}
	if _, err := h.Send(ctx, full, big, 2*time.Minute); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("a %d MiB batch with %d MiB free above the reserve was refused: %v", size>>20, aboveReserve>>20, err))
	} else {
		res.Notes = append(res.Notes, fmt.Sprintf("a %d MiB batch with %d MiB free above the reserve was acknowledged", size>>20, aboveReserve>>20))
	}
	if _, err := full.Status(ctx); err != nil {
		h.Violate("disk-full", "%s does not answer after a large batch near a full disk: %v", full.Name, err)
	}
	if err := os.Remove(filler); err != nil {
		return res, err
	}
	if err := recovered(ctx, h, full, rng, &res); err != nil {
		return res, err
	}
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{})
	h.finish(&res)
	return res, ctx.Err()
}

// recovered checks that n takes writes again, by itself, once space has
// returned; if it does not, that is a violation and n is restarted so that
// the rest of the run still means something.
func recovered(ctx context.Context, h *Harness, n *Node, rng *rand.Rand, res *Result) error {
	took, err := waitFor(ctx, 20*time.Second, 250*time.Millisecond, n.Name+" writing again after space returned", func() (bool, string) {
		_, err := h.Send(ctx, n, h.NewWrites(n, 1, rng, 0, 0), 5*time.Second)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err == nil {
		res.Notes = append(res.Notes, fmt.Sprintf("%s took writes again %s after space returned, without a restart", n.Name, took.Round(time.Millisecond)))
		return nil
	}
	h.Violate("disk-full-recovery", "space returned but %s did not take writes again by itself: %v", n.Name, err)
	how := "it had exited"
	if n.Running() {
		code, serr := n.Stop()
		how = fmt.Sprintf("SIGTERM: exit %d (%v)", code, serr)
	}
	res.Notes = append(res.Notes, fmt.Sprintf("restarted %s to bring it back (%s)", n.Name, how))
	return n.Start(ctx)
}

// fill writes to path until the file system is full, then gives back leave
// bytes.
func fill(path string, leave int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 4 << 10, 512} {
		buf := make([]byte, size)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					return fmt.Errorf("fault: fill %s: %w", path, err)
				}
				break
			}
		}
	}
	if leave > 0 {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		return f.Truncate(max(0, st.Size()-leave))
	}
	return nil
}

// pressure writes batches at n until it refuses one, and returns how many
// entries were acknowledged before and the refusal.
func pressure(ctx context.Context, h *Harness, n *Node, rng *rand.Rand) (int, string) {
	acked := 0
	refusal := "none"
	_, err := waitFor(ctx, 60*time.Second, 10*time.Millisecond, n.Name+" refusing writes on a full disk", func() (bool, string) {
		ws, err := h.Send(ctx, n, h.NewWrites(n, 200, rng, 0.1, 0.05), 30*time.Second)
		if err != nil {
			refusal = err.Error()
			return true, ""
		}
		acked += len(ws)
		return false, fmt.Sprintf("%d more acknowledged", acked)
	})
	if err != nil {
		h.Violate("disk-full", "%s kept acknowledging writes on a full %s disk: %v", n.Name, DiskSize, err)
	}
	return acked, refusal
}
