package txlog

import (
	"encoding/binary"
	"fmt"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

const (
	spaceEntry      = 'l'
	spaceHead       = 'f'
	spaceHeld       = 'h'
	spaceFork       = 'k'
	spaceEvidence   = 'x'
	spaceQuarantine = 'q'
)

func spacePrefix(space byte) []byte { return []byte{store.PrefixTxlog, space} }

func siteKey(space byte, site string) []byte {
	k := make([]byte, 0, 3+len(site)+8+32)
	k = append(k, store.PrefixTxlog, space, byte(len(site)))
	return append(k, site...)
}

func seqKey(space byte, site string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(siteKey(space, site), seq)
}

func hashKey(space byte, site string, seq uint64, h wire.Hash) []byte {
	return append(seqKey(space, site, seq), h[:]...)
}

func entryKey(site string, seq uint64) []byte { return seqKey(spaceEntry, site, seq) }

// parseSiteKey splits a key made by siteKey/seqKey/hashKey into its site and
// the remaining bytes.
func parseSiteKey(k []byte) (site string, rest []byte, err error) {
	if len(k) < 3 {
		return "", nil, fmt.Errorf("txlog: short key %x", k)
	}
	n := int(k[2])
	if len(k) < 3+n {
		return "", nil, fmt.Errorf("txlog: damaged key %x", k)
	}
	return string(k[3 : 3+n]), k[3+n:], nil
}

func parseSeqKey(k []byte) (site string, seq uint64, err error) {
	site, rest, err := parseSiteKey(k)
	if err != nil {
		return "", 0, err
	}
	if len(rest) < 8 {
		return "", 0, fmt.Errorf("txlog: damaged key %x", k)
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
