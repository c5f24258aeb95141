package node

import (
	"context"
	"net/http"
	"sync"
)

// writeBodyBudget is how many bytes of write requests (POST /v1/transactions
// and /v1/transactions/batch) the node decodes and commits at once. A write
// holds several times its JSON while it runs (the decoded values, the sealed
// and signed entries, the database batch with the log, the records and the
// change feed): about nine times for a batch of many fields. Requests past
// the budget wait for the ones before them, so their sum stays bounded
// however many clients write at once.
const writeBodyBudget = maxBatchBody

// bodyBudget is a weighted semaphore of request bytes.
type bodyBudget struct {
	mu   sync.Mutex // guards the fields below
	free int64
	wake chan struct{} // closed and replaced whenever bytes are given back
}

func newBodyBudget(size int64) *bodyBudget {
	return &bodyBudget{free: size, wake: make(chan struct{})}
}

// acquire waits until n bytes are free (or ctx ends) and takes them; the
// caller calls release(n) when the request is done.
func (b *bodyBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.free >= n {
			b.free -= n
			b.mu.Unlock()
			return nil
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *bodyBudget) release(n int64) {
	b.mu.Lock()
	b.free += n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// bodyWeight is what a request body counts against the budget: its
// declared length, or the endpoint's limit when it declares none.
func bodyWeight(r *http.Request, limit int64) int64 {
	if r.ContentLength > 0 && r.ContentLength < limit {
		return r.ContentLength
	}
	return limit
}

// withBodyBudget runs a write handler once its body fits the budget.
func (n *Node) withBodyBudget(limit int64, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		wt := bodyWeight(r, limit)
		if err := n.bodies.acquire(r.Context(), wt); err != nil {
			return // the client went away while it waited
		}
		defer n.bodies.release(wt)
		h(w, r)
	}
}
