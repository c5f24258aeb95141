package node

import "github.com/ppsync/ppsync/node/engine"

// How far behind is whom: the one loop over the log's heads, and the one
// lag computation every surface uses (peers' lag, the Sync Now receipt,
// status's pending, the write gate, the sync engine, the demo), which lives
// in package engine.

// frontierWithHeads returns the durable frontier and each site's head hash:
// what a heartbeat and a catch-up request carry.
func (n *Node) frontierWithHeads() (map[string]uint64, map[string][]byte) {
	hs := n.txlog.Heads()
	have := make(map[string]uint64, len(hs))
	heads := make(map[string][]byte, len(hs))
	for site, h := range hs {
		have[site] = h.Seq
		heads[site] = append([]byte(nil), h.Hash[:]...)
	}
	return have, heads
}

// missing counts the entries a frontier holds that another lacks.
func missing(have, of map[string]uint64) uint64 { return engine.Missing(have, of) }

// beyond is how many seqs a is past b (0 when it is not).
func beyond(a, b uint64) uint64 { return engine.Beyond(a, b) }

// ahead reports whether theirs holds any entry ours lacks.
func ahead(theirs, ours map[string]uint64) bool { return missing(theirs, ours) > 0 }
