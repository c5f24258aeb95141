package txlog

import (
	"encoding/binary"
	"fmt"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// Kinds of record under the log's prefix.
const (
	kindEntry      = 'l'
	kindHead       = 'f'
	kindHeld       = 'h'
	kindFork       = 'k'
	kindEvidence   = 'x'
	kindQuarantine = 'q'
)

// keys builds and parses the log's keys under one family's store.Space:
// Space + 't' + kind + the rest. With the empty Space they are the keys of
// a database serving one family.
type keys struct {
	space []byte // the family's Space; empty for the primary family
}

func newKeys(space store.Space) keys {
	return keys{space: append([]byte(nil), space...)}
}

// prefix returns the start of every key of one kind.
func (k keys) prefix(kind byte) []byte {
	b := make([]byte, 0, len(k.space)+2)
	b = append(b, k.space...)
	return append(b, store.PrefixTxlog, kind)
}

func (k keys) site(kind byte, site string) []byte {
	b := make([]byte, 0, len(k.space)+3+len(site)+8+32)
	b = append(b, k.space...)
	b = append(b, store.PrefixTxlog, kind, byte(len(site)))
	return append(b, site...)
}

func (k keys) seq(kind byte, site string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(k.site(kind, site), seq)
}

func (k keys) hash(kind byte, site string, seq uint64, h wire.Hash) []byte {
	return append(k.seq(kind, site, seq), h[:]...)
}

func (k keys) entry(site string, seq uint64) []byte { return k.seq(kindEntry, site, seq) }

// parseSite splits a key made by site/seq/hash into its site and the
// remaining bytes.
func (k keys) parseSite(key []byte) (site string, rest []byte, err error) {
	n := len(k.space)
	if len(key) < n+3 || string(key[:n]) != string(k.space) {
		return "", nil, fmt.Errorf("txlog: short or foreign key %x", key)
	}
	l := int(key[n+2])
	if len(key) < n+3+l {
		return "", nil, fmt.Errorf("txlog: damaged key %x", key)
	}
	return string(key[n+3 : n+3+l]), key[n+3+l:], nil
}

func (k keys) parseSeq(key []byte) (site string, seq uint64, err error) {
	site, rest, err := k.parseSite(key)
	if err != nil {
		return "", 0, err
	}
	if len(rest) < 8 {
		return "", 0, fmt.Errorf("txlog: damaged key %x", key)
	}
	return site, binary.BigEndian.Uint64(rest[:8]), nil
}

// Head is the end of a site's contiguous log as held here.
type Head struct {
	Seq   uint64    // highest contiguous seq held (0: none)
	Hash  wire.Hash // hash of that entry
	Epoch uint64    // epoch of that entry
}

func (h Head) marshal() []byte {
	b := make([]byte, 0, 8+32+8)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = append(b, h.Hash[:]...)
	return binary.BigEndian.AppendUint64(b, h.Epoch)
}

func unmarshalHead(b []byte) (Head, error) {
	var h Head
	if len(b) != 48 {
		return h, fmt.Errorf("txlog: damaged head record (%d bytes, want 48)", len(b))
	}
	h.Seq = binary.BigEndian.Uint64(b)
	copy(h.Hash[:], b[8:40])
	h.Epoch = binary.BigEndian.Uint64(b[40:])
	return h, nil
}
