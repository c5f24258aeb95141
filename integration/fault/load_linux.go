//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// Tables the load writes.
const (
	// TableFT gets one new record per transaction: its key is unique, so each
	// entry of a site is exactly one record, and the records of a site must be
	// exactly its seqs 1..frontier.
	TableFT = "ft"
	// TableOwn holds records that only their own site overwrites, again and
	// again: the newest write (highest seq) must win.
	TableOwn = "own"
	// TableHot holds records every site writes (concurrent writes: conflicts).
	TableHot = "hot"
)

// Write is one transaction the harness sent, with what it wrote.
type Write struct {
	Site string    `json:"site"`
	By   string    `json:"by"`             // the node that was asked (a clone's name for a cloned site)
	Seq  uint64    `json:"seq,omitempty"`  // 0 while unknown
	Hash string    `json:"hash,omitempty"` // single transactions only
	FT   string    `json:"ft"`             // key of its TableFT record {"v": V}
	V    string    `json:"v"`
	Own  string    `json:"own,omitempty"` // key of a TableOwn record it set to {"v": V}
	Hot  string    `json:"hot,omitempty"` // key of a TableHot record it set to {"x": V}
	At   time.Time `json:"-"`             // when it was acknowledged
}

func (w Write) tx() api.TxRequest {
	ops := []api.OpJSON{{Op: "put", Table: TableFT, Key: w.FT, Fields: map[string]any{"v": w.V}}}
	if w.Own != "" {
		ops = append(ops, api.OpJSON{Op: "put", Table: TableOwn, Key: w.Own, Fields: map[string]any{"v": w.V}})
	}
	if w.Hot != "" {
		ops = append(ops, api.OpJSON{Op: "put", Table: TableHot, Key: w.Hot, Fields: map[string]any{"x": w.V}})
	}
	return api.TxRequest{Ops: ops}
}

// Ledger records every write: acknowledged (with its seq), refused (certainly
// not committed: the node answered 4xx, or nothing listened) and unknown
// (the outcome is ambiguous: a timeout, a reset, a 5xx).
type Ledger struct {
	mu      sync.Mutex
	acked   []Write
	unknown []Write
	refused map[string]int // by reason
	next    atomic.Uint64
}

func newLedger() *Ledger { return &Ledger{refused: map[string]int{}} }

func (l *Ledger) key(site string) string {
	return site + "." + strconv.FormatUint(l.next.Add(1), 10)
}

func (l *Ledger) ack(ws ...Write) {
	l.mu.Lock()
	l.acked = append(l.acked, ws...)
	l.mu.Unlock()
}

func (l *Ledger) fail(err error, ws ...Write) {
	reason, certain := classify(err)
	l.mu.Lock()
	if certain {
		l.refused[reason] += len(ws)
	} else {
		l.unknown = append(l.unknown, ws...)
	}
	l.mu.Unlock()
}

// Acked returns every acknowledged write.
func (l *Ledger) Acked() []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Write(nil), l.acked...)
}

// Unknown returns the writes whose outcome is unknown.
func (l *Ledger) Unknown() []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Write(nil), l.unknown...)
}

// Refused returns the certainly refused writes by reason.
func (l *Ledger) Refused() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.refused))
	for k, v := range l.refused {
		out[k] = v
	}
	return out
}

// MaxAcked returns the highest acknowledged seq of each site.
func (l *Ledger) MaxAcked() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]uint64{}
	for _, w := range l.acked {
		out[w.Site] = max(out[w.Site], w.Seq)
	}
	return out
}

// classify says why a write failed and whether it certainly did not commit:
// a 4xx answer (the node refused it before committing) or a connection that
// was refused (the request never arrived).
func classify(err error) (reason string, certain bool) {
	var se *api.APIStatusError
	if errors.As(err, &se) {
		code := se.Code
		if code == "" {
			code = strconv.Itoa(se.Status)
		}
		// 4xx: refused before anything was committed; so is 507 disk_full
		// (the node checks the free space first). Other 5xx are ambiguous.
		return code, (se.Status >= 400 && se.Status < 500) || se.Code == "disk_full"
	}
	if errors.Is(err, api.ErrNotRunning) {
		return "not_running", true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout", false
	}
	return "transport", false
}

// Send commits writes at n, one transaction each (a batch when more than
// one), and records the outcome in the ledger. It returns the acknowledged
// writes with their seqs.
func (h *Harness) Send(ctx context.Context, n *Node, ws []Write, timeout time.Duration) ([]Write, error) {
	c := n.Client()
	if c == nil {
		err := fmt.Errorf("%w: %s is down", api.ErrNotRunning, n.Name)
		h.Ledger.fail(err, ws...)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(ws) == 1 {
		r, err := c.Transact(ctx, ws[0].tx())
		if err != nil {
			h.Ledger.fail(err, ws...)
			return nil, err
		}
		if r.Site != n.Site {
			h.Violate("ack", "%s acknowledged a write as site %q", n.Name, r.Site)
		}
		ws[0].Seq, ws[0].Hash, ws[0].At = r.Seq, r.Hash, time.Now()
		h.Ledger.ack(ws[0])
		return ws, nil
	}
	req := api.BatchRequest{Transactions: make([]api.TxRequest, len(ws))}
	for i, w := range ws {
		req.Transactions[i] = w.tx()
	}
	r, err := c.Batch(ctx, req)
	if err != nil {
		h.Ledger.fail(err, ws...)
		return nil, err
	}
	if r.Transactions != len(ws) || r.LastSeq < uint64(len(ws)) {
		h.Violate("ack", "%s answered a batch of %d with %+v", n.Name, len(ws), r)
		return nil, fmt.Errorf("fault: bad batch answer %+v", r)
	}
	first, now := r.LastSeq-uint64(len(ws))+1, time.Now()
	for i := range ws {
		ws[i].Seq, ws[i].At = first+uint64(i), now
	}
	h.Ledger.ack(ws...)
	return ws, nil
}

// NewWrites returns k writes for site n with fresh unique keys; own and hot
// keys are drawn from rng (ownP and hotP are the chances of each).
func (h *Harness) NewWrites(n *Node, k int, rng *rand.Rand, ownP, hotP float64) []Write {
	ws := make([]Write, k)
	for i := range ws {
		key := h.Ledger.key(n.Name)
		w := Write{Site: n.Site, By: n.Name, FT: key, V: key + "/" + strconv.FormatUint(rng.Uint64()%1e9, 36)}
		if rng.Float64() < ownP {
			w.Own = n.Name + ".o" + strconv.Itoa(rng.IntN(8))
		}
		if rng.Float64() < hotP {
			w.Hot = "h" + strconv.Itoa(rng.IntN(16))
		}
		ws[i] = w
	}
	return ws
}

// LoadOptions shape the background write load.
type LoadOptions struct {
	Rate       float64 // transactions started per second per site (singles; default 20)
	BatchP     float64 // chance that a tick sends a batch instead (default 0.1)
	BatchMax   int     // largest batch (default 200)
	OwnP, HotP float64 // chances of an own overwrite / a hot write per transaction
}

// Load writes at every site in the background until Stop.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sent   atomic.Uint64
}

// StartLoad starts one writer per site.
func (h *Harness) StartLoad(ctx context.Context, sites []*Node, o LoadOptions) *Load {
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.BatchMax <= 0 {
		o.BatchMax = 200
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{cancel: cancel}
	for i, n := range sites {
		rng := rand.New(rand.NewPCG(h.seed, uint64(i)+1000*uint64(len(sites))))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			h.writeLoop(ctx, n, rng, o, &l.sent)
		}()
	}
	return l
}

func (h *Harness) writeLoop(ctx context.Context, n *Node, rng *rand.Rand, o LoadOptions, sent *atomic.Uint64) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if n.Client() == nil || n.Frozen() {
			continue // nothing to talk to; a frozen node would only pile up timeouts
		}
		k, timeout := 1, 8*time.Second
		if rng.Float64() < o.BatchP {
			k, timeout = 2+rng.IntN(o.BatchMax-1), 60*time.Second
		}
		ws := h.NewWrites(n, k, rng, o.OwnP, o.HotP)
		// The load's own context is not the request's: Stop lets requests in
		// flight finish so that their outcome is known.
		_, _ = h.Send(context.WithoutCancel(ctx), n, ws, timeout)
		sent.Add(uint64(k))
	}
}

// Stop ends the load and waits for the requests in flight.
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Sent returns how many transactions the load sent.
func (l *Load) Sent() uint64 { return l.sent.Load() }

// Bulk writes total transactions at n in batches of size, as fast as the node
// takes them, and returns how many were acknowledged.
func (h *Harness) Bulk(ctx context.Context, n *Node, total, size int, rng *rand.Rand) (int, error) {
	done := 0
	for done < total && ctx.Err() == nil {
		k := min(size, total-done)
		ws := h.NewWrites(n, k, rng, 0.02, 0.01)
		acked, err := h.Send(ctx, n, ws, 2*time.Minute)
		if err != nil {
			return done, err
		}
		done += len(acked)
	}
	return done, ctx.Err()
}
