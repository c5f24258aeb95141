package mesh

import (
	"io"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
)

// A tap receives a copy of every byte this node sends and receives on the
// mesh as the application sees it, after transport decryption: the data of
// every stream of the family both ways (hello, catch-up, gossip's own
// streams with their subscriptions and control messages) and the gossip
// messages delivered. It is an audit aid (PPSYNC_MESH_TAP): it
// shows what a member, such as the vendor's relay, is actually given.
type tap struct {
	mu sync.Mutex
	w  io.Writer
}

func (t *tap) write(b []byte) {
	if t == nil || len(b) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, _ = t.w.Write(b) // an audit copy: a failed write loses the copy, never the sync
}

type tappedStream struct {
	network.Stream
	t *tap
}

func (s *tappedStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	s.t.write(p[:n])
	return n, err
}

func (s *tappedStream) Write(p []byte) (int, error) {
	s.t.write(p)
	return s.Stream.Write(p)
}

// tapped wraps a stream so that the tap sees its bytes (as it is without one).
func (m *Mesh) tapped(s network.Stream) network.Stream {
	if m.tap == nil || s == nil {
		return s
	}
	return &tappedStream{Stream: s, t: m.tap}
}
