//go:build race

package node

// The race detector slows the simulation several times: fewer seeds.
const (
	simRace  = true
	simSeeds = 200
)
