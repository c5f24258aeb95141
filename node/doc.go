// Package node is ppsync's composition root: it owns a node's data directory,
// opens the database, the transaction log and the state, enforces the machine
// lock and database binding, and serves the local HTTP API that the CLI and the
// practice software use. Every goroutine it starts is owned by a Node and
// stopped by Close.
package node
