package mesh

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ppsync/ppsync/internal/wire"
)

const (
	catchupProto      protocol.ID = "/ppsync/catchup/1"
	batchEntries                  = 1000
	batchBytes                    = 1 << 20
	maxFrame                      = 8 << 20  // compressed frame
	maxBatchDecoded               = 16 << 20 // decompressed frame
	catchupIdle                   = 30 * time.Second
	maxCatchupRequest             = 1 << 20
)

// catchupRequest asks a peer for every entry after Have, per site.
type catchupRequest struct {
	Family string            `codec:"fa"`
	Have   map[string]uint64 `codec:"hv"` // site -> highest contiguous seq the asker holds
	Heads  map[string][]byte `codec:"hd"` // site -> hash of the asker's entry at Have[site]
	Sites  []string          `codec:"si"` // only these sites (empty: all)
	// Codec says which frames the asker reads besides zstd: codecS2, or
	// codecZstd (an older node, which does not send it; a server that does
	// not know it sends zstd, which every reader reads).
	Codec string `codec:"cd,omitempty"`
}

// DivergeWindow is how far back a server resends when the asker's head hash
// differs from its own entry at that seq (two copies of a site wrote the same
// seqs): the asker finds the first differing entry and records the fork. A
// node that pushes its branch of a fork starts as far back.
const DivergeWindow = 1000

// catchupBatch is one compressed frame of a response: a contiguous run that
// ends at a signed entry (the end of a commit group), so the receiver checks
// its chain and one signature.
type catchupBatch struct {
	Site    string   `codec:"si"`
	First   uint64   `codec:"fi"`
	Entries [][]byte `codec:"en"`
	// Proof and ProofB, in the frames after the entries, hold the two runs
	// of envelopes that prove a fork (each from an entry at the fork to its
	// commit group's signed end): every session spreads the forks the
	// server knows, so a fork reaches even a node that no gossip reaches (a
	// cloned copy that shares its twin's peer ID).
	Proof  [][]byte `codec:"pf,omitempty"`
	ProofB [][]byte `codec:"pb,omitempty"`
	// Refused, in the only frame of a response, says why the server did not
	// serve the session (too many at once, too often).
	Refused string `codec:"rf,omitempty"`
}

// FetchStats says what a catch-up session brought.
type FetchStats struct {
	Entries  int // entries received
	Appended int // of those, new here
	Bytes    int // compressed bytes received
	Frames   int // frames (the server's batches) received
}

type codecs struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// Frame codecs. A catch-up frame is compressed with zstd unless the asker
// says it reads S2 (catchupRequest.Codec): the frames are mostly sealed
// entries, which do not compress, and S2 finds the repeats that do (family,
// key and site names, field names) at about a quarter of zstd's fastest
// level's CPU, for about 5 % more bytes (docs/performance.md, "S2 for
// catch-up frames"). An S2 frame starts with s2Marker, a byte no zstd frame
// starts with, so a reader tells the two apart whatever it asked for.
const (
	codecZstd = ""
	codecS2   = "s2"
	s2Marker  = 0x00
)

func newCodecs() (*codecs, error) {
	// Fastest: a batch of entries compresses well even so, and the server's
	// CPU is what catch-up runs short of.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("mesh: zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(maxBatchDecoded), zstd.WithDecoderMaxWindow(maxBatchDecoded))
	if err != nil {
		return nil, fmt.Errorf("mesh: zstd decoder: %w", err)
	}
	return &codecs{enc: enc, dec: dec}, nil
}

// compress appends raw compressed with codec (codecZstd or codecS2) to
// dst[:0] and returns it.
func (c *codecs) compress(codec string, raw, dst []byte) []byte {
	if codec != codecS2 {
		return c.enc.EncodeAll(raw, dst[:0])
	}
	need := 1 + s2.MaxEncodedLen(len(raw))
	if cap(dst) < need {
		dst = make([]byte, 0, need)
	}
	dst = append(dst[:0], s2Marker)
	return append(dst, s2.Encode(dst[1:cap(dst)], raw)...)
}

// decompress returns a frame's bytes, of either codec, refusing one that
// would decode to more than maxBatchDecoded bytes.
func (c *codecs) decompress(frame []byte) ([]byte, error) {
	if len(frame) == 0 || frame[0] != s2Marker {
		return c.dec.DecodeAll(frame, nil)
	}
	n, err := s2.DecodedLen(frame[1:])
	if err != nil {
		return nil, err
	}
	if n > maxBatchDecoded {
		return nil, fmt.Errorf("an S2 frame decodes to %d bytes, more than %d", n, maxBatchDecoded)
	}
	return s2.Decode(nil, frame[1:])
}

// handleCatchup serves a member every entry it lacks, site by site, in
// compressed batches read straight from the log.
func (m *Mesh) handleCatchup(s network.Stream) {
	p := s.Conn().RemotePeer()
	if _, ok := m.admit(s, "catchup"); !ok {
		return
	}
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(catchupIdle))
	b, err := readFrame(bufio.NewReader(s), maxCatchupRequest)
	if err != nil {
		m.count("catchup_bad_request")
		s.Reset()
		return
	}
	var req catchupRequest
	if err := wire.Unmarshal(b, &req); err != nil || req.Family != m.cfg.Family.ID() {
		m.count("catchup_bad_request")
		s.Reset()
		return
	}
	if why := m.startServing(p); why != "" {
		m.log.Debug("refused a catch-up session", "peer", p, "why", why)
		if err := m.refuseCatchup(s, why); err != nil {
			s.Reset()
		}
		return
	}
	defer m.stopServing(p)
	if err := m.serveCatchup(s, req); err != nil {
		m.log.Debug("catch-up serving stopped", "peer", p, "err", err)
		s.Reset()
	}
}

// refuseCatchup answers a catch-up request with why it is not served.
func (m *Mesh) refuseCatchup(s network.Stream, why string) error {
	raw, err := wire.Marshal(&catchupBatch{Refused: why})
	if err != nil {
		return err
	}
	_ = s.SetWriteDeadline(time.Now().Add(catchupIdle))
	return writeFrame(s, m.codecs.compress(codecZstd, raw, nil))
}

// requestedSites returns the sites a request asks for that this node holds,
// each once, sorted: all of them when it names none.
func requestedSites(req catchupRequest, front map[string]uint64) []string {
	var sites []string
	if len(req.Sites) == 0 {
		for site := range front {
			sites = append(sites, site)
		}
	} else {
		seen := make(map[string]bool, len(front))
		for _, site := range req.Sites {
			if _, held := front[site]; held && !seen[site] {
				seen[site] = true
				sites = append(sites, site)
			}
		}
	}
	sort.Strings(sites)
	return sites
}

func (m *Mesh) serveCatchup(s network.Stream, req catchupRequest) error {
	front := m.cfg.Log.Frontier()
	sites := requestedSites(req, front)
	w := bufio.NewWriterSize(s, 64<<10)
	for _, site := range sites {
		head, from := front[site], req.Have[site]+1
		if have := req.Have[site]; have > 0 && have <= head && len(req.Heads[site]) == len(wire.Hash{}) && m.hashAt(site, have) != wire.Hash(req.Heads[site]) {
			from = 1
			if have > DivergeWindow {
				from = have - DivergeWindow + 1
			}
		}
		if head < from {
			continue
		}
		if err := m.writeRange(w, s, req.Codec, site, from, head); err != nil {
			return err
		}
	}
	for _, pr := range m.cfg.Log.ForkProofs() {
		raw, err := wire.Marshal(&catchupBatch{Proof: pr[0], ProofB: pr[1]})
		if err != nil {
			return err
		}
		if err := writeFrame(w, m.codecs.compress(req.Codec, raw, nil)); err != nil {
			return err
		}
	}
	return w.Flush()
}

// Fetch runs one catch-up session with p: it sends this node's frontier and
// hands every run received to the Handler, batch by batch, so an interrupted
// session keeps what it committed and the next one resumes from there.
func (m *Mesh) Fetch(ctx context.Context, p peer.ID, have map[string]uint64, heads map[string][]byte, sites []string) (FetchStats, error) {
	var st FetchStats
	s, err := m.openStream(ctx, p, catchupProto, "catch-up")
	if err != nil {
		return st, fmt.Errorf("mesh: open catch-up stream: %w", err)
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	req, err := wire.Marshal(&catchupRequest{Family: m.cfg.Family.ID(), Have: have, Heads: heads, Sites: sites, Codec: codecS2})
	if err != nil {
		return st, err
	}
	if err := writeFrame(s, req); err != nil {
		return st, fmt.Errorf("mesh: send catch-up request: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		return st, fmt.Errorf("mesh: send catch-up request: %w", err)
	}
	// Two stages: a reader goroutine receives and decodes the next batches
	// while the handler commits the current one (at most fetchAhead decoded
	// ahead). The handler takes every batch decoded meanwhile that continues
	// the run it is about to hand over (up to fetchRunEntries entries), so
	// one commit and one disk sync take all that arrived while the last one
	// was being stored.
	batches := make(chan decoded, fetchAhead)
	rctx, stopReader := context.WithCancel(ctx)
	readerDone := make(chan struct{})
	defer func() {
		stopReader()
		s.Reset() // unblocks the reader if it waits on the stream
		<-readerDone
	}()
	go func() {
		defer close(readerDone)
		defer close(batches)
		r := bufio.NewReaderSize(s, 64<<10)
		for {
			_ = s.SetReadDeadline(time.Now().Add(catchupIdle))
			frame, err := readFrame(r, maxFrame)
			// Only io.EOF itself ends the session well: the server closed the
			// stream after its last frame. Not errors.Is: when the peer closes
			// the connection, yamux resets the stream with an error that wraps
			// io.EOF, and that session was cut short.
			if err == io.EOF {
				return
			}
			var d decoded
			if err != nil {
				d.err = err
			} else {
				d.bytes = len(frame)
				d.b, d.run, d.err = m.decodeBatch(frame, "catchup")
				if d.err == nil && m.cfg.Prepare != nil {
					m.cfg.Prepare(d.run) // while the handler commits the batch before
				}
			}
			select {
			case batches <- d:
			case <-rctx.Done():
				return
			}
			if d.err != nil {
				return
			}
		}
	}()
	skip := map[string]bool{} // sites whose runs the handler refused this session
	var next *decoded         // taken from batches but not joined to the run before
	for {
		var d decoded
		if next != nil {
			d, next = *next, nil
		} else {
			var ok bool
			if d, ok = <-batches; !ok {
				break
			}
		}
		if d.err != nil {
			return st, fmt.Errorf("mesh: catch-up from %s: %w", p, d.err)
		}
		st.Bytes += d.bytes
		st.Frames++
		if d.joinable() {
			next = d.join(batches, &st)
		}
		b, run := d.b, d.run
		if b.Refused != "" {
			return st, fmt.Errorf("mesh: %s refused the catch-up session: %s", p, b.Refused)
		}
		if len(b.Proof) > 0 {
			pa, errA := m.decodeProofRun(b.Proof)
			pb, errB := m.decodeProofRun(b.ProofB)
			if errA == nil && errB == nil && len(pb) > 0 {
				m.cfg.Handler.ForkProof(p, pa, pb)
			}
			continue
		}
		if skip[b.Site] || len(run) == 0 {
			continue
		}
		st.Entries += len(run)
		n, err := m.cfg.Handler.Entries(ctx, p, run, false)
		st.Appended += n
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			m.log.Debug("catch-up run not taken", "site", b.Site, "from", b.First, "err", err)
			skip[b.Site] = true
		}
	}
	return st, ctx.Err()
}

const (
	// fetchAhead is how many decoded batches a session's reader keeps ready
	// (each about batchEntries entries or batchBytes bytes).
	fetchAhead = 4
	// fetchRunEntries caps a run joined from several batches.
	fetchRunEntries = 4 * batchEntries
)

// decoded is one frame of a catch-up response, decoded by the reader.
type decoded struct {
	b     catchupBatch
	run   []*wire.Signed
	bytes int // compressed
	err   error
}

// joinable reports whether d is a run of entries that later batches may
// extend.
func (d *decoded) joinable() bool {
	return d.err == nil && d.b.Refused == "" && len(d.b.Proof) == 0 && len(d.run) > 0
}

// join appends to d's run the batches already decoded in ready that
// continue it (the same site, the next seqs), up to fetchRunEntries
// entries, counting them and their compressed sizes in st. It never waits.
// It returns the first batch it took but could not join, or nil.
func (d *decoded) join(ready <-chan decoded, st *FetchStats) *decoded {
	for len(d.run) < fetchRunEntries {
		var e decoded
		select {
		case x, ok := <-ready:
			if !ok {
				return nil
			}
			e = x
		default:
			return nil
		}
		last := d.run[len(d.run)-1]
		if !e.joinable() || e.b.Site != d.b.Site || e.run[0].Seq != last.Seq+1 || len(d.run)+len(e.run) > fetchRunEntries {
			return &e
		}
		st.Bytes += e.bytes
		st.Frames++
		d.run = append(d.run, e.run...)
	}
	return nil
}

const pushProto protocol.ID = "/ppsync/push/1"

// PushRange sends a range of one site's entries, read from the log, to every
// connected member over this node's own streams. After a fork it carries this
// node's branch to the others, who keep it as evidence: no acknowledged entry
// of either branch exists in only one place.
func (m *Mesh) PushRange(site string, from, to uint64) {
	for _, p := range m.connectedMembers() {
		m.goTracked(func() {
			if err := m.pushTo(p, site, from, to); err != nil {
				m.log.Debug("push failed", "peer", p, "site", site, "err", err)
			}
		})
	}
}

func (m *Mesh) pushTo(p peer.ID, site string, from, to uint64) error {
	ctx, cancel := context.WithTimeout(m.ctx, time.Minute)
	defer cancel()
	s, err := m.openStream(ctx, p, pushProto, "push")
	if err != nil {
		return err
	}
	defer s.Close()
	w := bufio.NewWriterSize(s, 64<<10)
	// zstd: the member pushed to may be an older node.
	if err := m.writeRange(w, s, codecZstd, site, from, to); err != nil {
		return err
	}
	return w.Flush()
}

// handlePush takes entries a member pushes (its branch of a fork) and hands
// them to the Handler like a catch-up run.
func (m *Mesh) handlePush(s network.Stream) {
	p := s.Conn().RemotePeer()
	if _, ok := m.admit(s, "push"); !ok {
		return
	}
	defer s.Close()
	r := bufio.NewReaderSize(s, 64<<10)
	for {
		_ = s.SetReadDeadline(time.Now().Add(catchupIdle))
		frame, err := readFrame(r, maxFrame)
		if err != nil {
			return
		}
		b, run, err := m.decodeBatch(frame, "push")
		if err != nil || len(run) == 0 {
			s.Reset()
			return
		}
		if _, err := m.cfg.Handler.Entries(m.ctx, p, run, false); err != nil {
			m.log.Debug("pushed run not appended", "site", b.Site, "err", err)
		}
	}
}

// hashAt returns the hash of this node's entry (site, seq), or the zero hash.
func (m *Mesh) hashAt(site string, seq uint64) wire.Hash {
	var h wire.Hash
	_ = m.cfg.Log.RawRange(site, seq, seq, func(_ uint64, env []byte) (bool, error) {
		if e, err := wire.DecodeEnvelope(env); err == nil {
			h = e.Hash
		}
		return true, nil
	})
	return h
}

// writeRange writes site's entries from..to as compressed batches of about
// batchEntries entries or batchBytes bytes, each ending at a signed entry (a
// commit group's end, at most wire.MaxGroupEntries entries and
// wire.MaxGroupBytes further): the receiver refuses a batch whose last
// entry is unsigned. Unsigned entries after the last signed one up to to
// are not sent (a log's head is always signed, so that happens only for a
// range that ends inside a group).
func (m *Mesh) writeRange(w *bufio.Writer, s network.Stream, codec, site string, from, to uint64) error {
	var f batchFrame
	f.start(site, from)
	var comp []byte
	flush := func() error {
		if f.n == 0 {
			return nil
		}
		_ = s.SetWriteDeadline(time.Now().Add(catchupIdle))
		comp = m.codecs.compress(codec, f.finish(), comp)
		if err := writeFrame(w, comp); err != nil {
			return err
		}
		f.start(site, f.first+uint64(f.n))
		return nil
	}
	err := m.cfg.Log.RawRange(site, from, to, func(_ uint64, env []byte) (bool, error) {
		signed := endsGroup(env)
		f.add(env, signed)
		if f.n < batchEntries && f.size < batchBytes {
			return false, nil
		}
		if !signed {
			return false, nil // the batch goes on to its group's end
		}
		return false, flush()
	})
	if err != nil {
		return err
	}
	// The rest, if it ends at a signed entry; else the part up to the last
	// signed one.
	f.trim()
	return flush()
}

// batchFrame builds the msgpack encoding of a catchupBatch of entries (as
// wire.Marshal would decode it: a map of "si", "fi" and "en") while a range
// is read, without copying each envelope first.
type batchFrame struct {
	buf   []byte
	first uint64
	n     int // entries added
	size  int // their bytes
	count int // offset of the entries' array length
	// the frame up to the last signed entry added: its length in buf and
	// its entries
	signedLen, signedN int
}

func (f *batchFrame) start(site string, first uint64) {
	f.buf = append(f.buf[:0], 0x83, 0xa2, 's', 'i')
	f.buf = wire.AppendStr(f.buf, site)
	f.buf = append(f.buf, 0xa2, 'f', 'i', 0xcf)
	f.buf = binary.BigEndian.AppendUint64(f.buf, first)
	f.buf = append(f.buf, 0xa2, 'e', 'n', 0xdd)
	f.count = len(f.buf)
	f.buf = append(f.buf, 0, 0, 0, 0) // the array's length, set by finish
	f.first, f.n, f.size, f.signedLen, f.signedN = first, 0, 0, len(f.buf), 0
}

// add appends one stored envelope; signed says whether it may end a batch.
func (f *batchFrame) add(env []byte, signed bool) {
	f.buf = wire.AppendBin(f.buf, env)
	f.n++
	f.size += len(env)
	if signed {
		f.signedLen, f.signedN = len(f.buf), f.n
	}
}

// trim drops the entries after the last signed one.
func (f *batchFrame) trim() { f.buf, f.n = f.buf[:f.signedLen], f.signedN }

// finish sets the array's length and returns the frame's bytes, valid
// until the next start.
func (f *batchFrame) finish() []byte {
	binary.BigEndian.PutUint32(f.buf[f.count:], uint32(f.n))
	return f.buf
}

// endsGroup reports whether a stored envelope may end a batch: it is signed,
// or it cannot be read (then it is sent as it is, and the receiver refuses
// the batch: a damaged log is not served as if it were whole).
func endsGroup(env []byte) bool {
	signed, err := wire.EnvelopeSigned(env)
	return signed || err != nil
}

// decodeBatch decompresses and decodes one frame, and checks that every
// entry is what the batch says (site, seq, family). Rejections are counted
// under kind ("catchup", "push").
func (m *Mesh) decodeBatch(frame []byte, kind string) (catchupBatch, []*wire.Signed, error) {
	var b catchupBatch
	raw, err := m.codecs.decompress(frame)
	if err != nil {
		m.count(kind + "_bad_frame")
		return b, nil, fmt.Errorf("bad frame: %w", err)
	}
	if err := wire.Unmarshal(raw, &b); err != nil {
		m.count(kind + "_bad_frame")
		return b, nil, err
	}
	run := make([]*wire.Signed, 0, len(b.Entries))
	for i, env := range b.Entries {
		e, err := wire.DecodeEnvelope(env)
		if err != nil || e.Site != b.Site || e.Seq != b.First+uint64(i) || e.Family != m.cfg.Family.ID() {
			m.count(kind + "_bad_entry")
			return b, nil, fmt.Errorf("entry %d of a batch of %s is not what it claims", i, b.Site)
		}
		run = append(run, e)
	}
	return b, run, nil
}
