//go:build race

package state

// raceEnabled scales down the heaviest property test: the race detector
// makes pebble about ten times slower.
const raceEnabled = true
