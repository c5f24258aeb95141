// Package engine holds all of a node's sync policy as one pure state machine:
// which peer to fetch from and when, holding gossip that arrives ahead of its
// predecessor and draining it when the predecessor lands, the gap timer,
// fork checks when a member's head hash differs, spreading forks, probing
// members, and the write gate of a node that must catch up first.
//
// The engine has no goroutines, no clock, no locks and no I/O. Its one entry
// point is Step: every input (a peer came up, a heartbeat, a gossiped run, the
// outcome of an append, a timer, a finished session, Sync Now, ...) carries
// the time it happened, and Step returns every action the caller must carry
// out. Drive is the one dispatcher that carries out actions through an
// Effects implementation and feeds synchronous outcomes (an append's) back in
// as the next input; the node's driver (node/sync.go) and the deterministic
// simulation (node/sim_*_test.go) both go through it, so the simulation tests
// the shipped policy, not a copy.
//
// The engine reads the local log through Log, a small read-only interface:
// during Step only what the log keeps in memory (heads, the known forks),
// never the disk, since the driver holds its lock while Step runs. The one
// decision that needs a stored entry's hash, comparing a member's heads with
// the log, gets it in its input: NewHeartbeat reads those hashes through the
// same interface before the step, outside any lock, and the driver and the
// simulation both build heartbeats with it. Passing the log in, rather than
// copying every head into every input, keeps the inputs what actually happened
// and lets the engine look at exactly what a decision needs.
package engine
