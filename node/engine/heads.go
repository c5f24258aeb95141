package engine

// Missing counts the entries a frontier holds that another lacks: for every
// site of have, how far it is past of. It is the one lag computation every
// surface uses (peers' lag, the Sync Now receipt, status, the write gate and
// this engine).
func Missing(have, of map[string]uint64) uint64 {
	var n uint64
	for site, seq := range have {
		n += Beyond(seq, of[site])
	}
	return n
}

// Beyond is how many seqs a is past b (0 when it is not).
func Beyond(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}
