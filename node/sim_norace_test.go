//go:build !race

package node

const (
	simRace  = false
	simSeeds = 500
)
