package mesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"

	"github.com/ppsync/ppsync/internal/wire"
)

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// A server sends S2 frames to an asker that reads them and zstd frames to
// one that does not say so (an older node); either way the asker gets the
// same entries, and a reader reads both kinds whatever it asked for.
func TestCatchupFramesFollowTheAskersCodec(t *testing.T) {
	ia, ib := newIdentity(t, "a"), newIdentity(t, "b")
	logA := newLog()
	chain := signChain(t, testFamily, ia, 1, wire.Hash{}, 2500)
	logA.add(chain...)
	_, b := servingPair(t, ia, ib, logA)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		codec  string
		prefix []byte
	}{{codecZstd, zstdMagic}, {codecS2, []byte{s2Marker}}} {
		req, err := wire.Marshal(&catchupRequest{Family: testFamily, Codec: tc.codec})
		if err != nil {
			t.Fatal(err)
		}
		s, err := b.m.host.NewStream(ctx, ia.id, catchupProto)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		if err := writeFrame(s, req); err != nil {
			t.Fatal(err)
		}
		_ = s.CloseWrite()
		r := bufio.NewReader(s)
		var got []*wire.Signed
		for {
			frame, err := readFrame(r, maxFrame)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("codec %q: %v", tc.codec, err)
			}
			if !bytes.HasPrefix(frame, tc.prefix) {
				t.Fatalf("codec %q: a frame starts % x, want % x", tc.codec, frame[:min(4, len(frame))], tc.prefix)
			}
			_, run, err := b.m.decodeBatch(frame, "catchup")
			if err != nil {
				t.Fatalf("codec %q: %v", tc.codec, err)
			}
			got = append(got, run...)
		}
		s.Close()
		if len(got) != len(chain) {
			t.Fatalf("codec %q: %d entries, want %d", tc.codec, len(got), len(chain))
		}
		for i := range got {
			if got[i].Hash != chain[i].Hash {
				t.Fatalf("codec %q: entry %d is %s, want %s", tc.codec, i+1, got[i].Hash.Short(), chain[i].Hash.Short())
			}
		}
	}
}

// A frame that would decode to more than a batch may is refused before it
// is decoded, in either codec; a frame of neither codec is refused.
func TestFramesOverTheLimitAreRefused(t *testing.T) {
	c, err := newCodecs()
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("entry "), maxBatchDecoded/6+1)
	for _, codec := range []string{codecZstd, codecS2} {
		frame := c.compress(codec, big, nil)
		if len(frame) > maxFrame {
			t.Fatalf("codec %q: the test frame is %d bytes, over maxFrame", codec, len(frame))
		}
		if out, err := c.decompress(frame); err == nil {
			t.Errorf("codec %q: a frame of %d bytes decoded (%d bytes)", codec, len(big), len(out))
		}
		small := c.compress(codec, big[:1000], nil)
		if out, err := c.decompress(small); err != nil || !bytes.Equal(out, big[:1000]) {
			t.Errorf("codec %q: a small frame: %v", codec, err)
		}
	}
	// An S2 frame that claims a huge length but holds nothing.
	liar := binary.AppendUvarint([]byte{s2Marker}, 1<<40)
	if _, err := c.decompress(liar); err == nil {
		t.Error("an S2 frame claiming 1 TiB decoded")
	}
	for _, junk := range [][]byte{{s2Marker}, []byte("plain bytes"), append([]byte{s2Marker}, s2.Encode(nil, []byte("x"))[:1]...)} {
		if _, err := c.decompress(junk); err == nil {
			t.Errorf("junk % x decoded", junk)
		}
	}
}

// Whatever a peer sends as a frame, decompressing it neither panics nor
// returns more than a batch may hold.
func FuzzDecompressFrame(f *testing.F) {
	c, err := newCodecs()
	if err != nil {
		f.Fatal(err)
	}
	for _, codec := range []string{codecZstd, codecS2} {
		f.Add(c.compress(codec, []byte("a batch of entries, a batch of entries"), nil))
	}
	f.Add(binary.AppendUvarint([]byte{s2Marker}, maxBatchDecoded+1))
	f.Fuzz(func(t *testing.T, frame []byte) {
		out, err := c.decompress(frame)
		if err == nil && len(out) > maxBatchDecoded {
			t.Fatalf("a frame of %d bytes decoded to %d", len(frame), len(out))
		}
	})
}
