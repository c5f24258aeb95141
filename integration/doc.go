// Package integration holds tests and benchmarks that drive ppsync through its
// public surface and across packages: the data core (txlog with the real
// state) here, and later multi-node and multi-process tests.
package integration
