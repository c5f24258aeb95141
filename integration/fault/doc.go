// Package fault is ppsync's fault suite against real processes: it builds the
// ppsync binary, sets up a family (a relay and 3 to 5 sites) through the
// command line exactly as the README's "Setting up a real family" does — the
// relay first, then `ppsync family bootstrap --add` with the relay's address,
// then the sites, whose `init` copies family.json with that address; every
// node installs its own certificate and no other, and learns the family in
// the hello exchange — runs every node as its own `ppsync run` process on
// 127.0.0.1 (no --bootstrap flag, but for the foreign-family attack's
// intruder, which is given our addresses that way), drives write load
// at every site through the local API, and records every acknowledged
// transaction. Then it breaks things on a schedule drawn from a printed seed —
// kill -9 (during writes and during catch-up), partitions and one-way
// partitions, the relay as the only path, a site offline while the others
// write tens of thousands of entries, clock skew and clock jumps, SIGSTOP,
// a full disk — and attacks the family (a node of another family, a cloned
// data directory). Afterwards it heals everything, waits for convergence and
// checks the invariants of DESIGN.md: every acknowledged transaction is at
// every node with its content, none is applied twice, all state digests are
// equal, and `ppsync verify` passes on every node.
//
// # Network isolation
//
// A fault-injecting TCP proxy stands between every pair of nodes. A proxy alone
// cannot partition libp2p nodes that share one network stack: members learn
// each other's real listen addresses (identify, the hello exchange's address
// lists) and would dial around it. So, where the process may (root, Linux),
// each node runs in its own network namespace, whose only interface is its own
// loopback 127.0.0.1: nothing leaves the machine and no node can reach another
// node's socket directly. In every other node's namespace the harness listens
// on 127.0.0.1 at the SAME port number as the node's real listen port and
// forwards to the node (the relay's address in family.json's bootstrap,
// 127.0.0.1 at its port, is therefore its proxy's everywhere but in its own
// namespace). So every address a node advertises is valid everywhere, and
// every byte between two nodes crosses the harness's proxy. A blocked flow
// stalls: the bytes from one node to the other are held, like a link that
// drops every packet, and so is the end of a stream (a FIN or reset crosses
// once the flow is open again); new connections between the two are refused
// while either direction is blocked (TCP needs both). A one-way partition
// therefore stalls one direction of the connections that exist; a cut blocks
// both and resets them; a stall (Net.Stall, the schedules' "stall" and the
// online-truth scenario) blocks both without any reset and holds new
// connections unanswered instead of refusing them, as when a cable is
// pulled. Direct site-to-site paths and the relay's circuits are both
// under the harness's control: cutting every site-to-site link leaves the
// relay as the only path, and the relay-only-path scenario checks that no
// direct path survives. The test process reaches each node's API through a
// forwarder in its own namespace; CLI commands that talk to a running node
// (`ppsync peers`) are started inside the node's namespace.
//
// Without the privilege to create namespaces (or with PPSYNC_FAULT_SHARED
// set), every node shares the test's loopback, the schedules leave the
// partition faults out and the relay-only-path, online-truth and
// lan-discovery scenarios are skipped with the reason; kill, freeze, clock,
// disk and attack faults still run.
//
// # Online status and the LAN
//
// online-truth stalls one site of a relay and two sites from every member
// and polls GET /v1/status every 250 ms: the site must say `online: false`
// with an `offline_reason` and `peers: 0` within 15 s, and `online: true`
// within 5 s of the heal; the other site, with `connectivity_check = false`,
// is stalled the same way and must never say `online: false`. The measured
// times are the scenario's notes.
//
// lan-discovery puts two sites (own certificates only, the relay in
// family.json never reachable, `lan_discovery = true`, listening on 0.0.0.0)
// in two namespaces of their own joined by a veth pair (10.231.0.1/24 and
// 10.231.0.2/24; no other interface, so no traffic can leave them), made with
// iproute2's `ip`: they must find each other by mDNS, prove their membership
// in the hello exchange and sync. Without `ip` it is skipped with the reason.
//
// # The practice database
//
// DatabaseFaults binds each of three sites to its own SQLite practice database
// (`ppsync init --db sqlite:PATH`, WithDB/Options.SiteDB), files in the
// scenario's directory that every process reaches (the namespaces isolate the
// network only). A writer per site, in the test process, plays the practice
// software: plain SQL transactions through database/sql and modernc.org/sqlite
// (patients with an integer key and values of every storage class,
// appointments with a foreign key to them, notes with a composite key; inserts
// in the site's own id range, updates, deletes), and keeps a ledger of every
// transaction whose commit succeeded. Meanwhile a site is killed with kill -9
// while it captures a burst of its writer, another while it writes a burst of
// another site into its database, the relay is killed, a site is cut off, and
// a site is stopped while its database keeps changing: one round of these in
// TestFaults, rounds for 30 to 90 s in the soak (replayed with
// PPSYNC_FAULT_DURATION). Afterwards every database must hold exactly the rows
// of the ledgers (dumps ordered by key, values with their storage class),
// `ppsync db check` must exit 0 and `db status` name no refused row at every
// site, each site's own log must hold each row change at most once per
// committed change and no row of another site, and `ppsync verify` must pass.
//
// PostgresFaults does the same with PostgreSQL: one real server (Debian's
// postgresql binaries, run by the scenario as the postgres user in a
// directory of its own) holds a database per site, and listens on a unix
// socket only, in a directory every namespace reaches (`ppsync init --db
// postgres://clinic@/clinic_1?host=SOCKETDIR`). A writer per site commits
// plain SQL transactions through pgx (IDs from bigserial sequences that
// ppsync moved into the site's range, values of many types, foreign keys, a
// composite key), reads each row it wrote back in the same transaction, and
// keeps every committed transaction in its ledger; when the server is gone
// it tries again until a transaction commits, and a commit whose answer was
// lost enters the ledger only if the mark it wrote into the harness's own
// table (outside the synced schema) is there once the server is back (not
// its transaction ID: one handed out just before a crash and never logged
// is handed out again after it, so pg_xact_status can answer for another
// transaction). The
// faults: the server stopped with pg_ctl stop -m fast and with -m immediate
// (crash recovery at the next start) and started again while every node
// runs and every writer writes — every site's `db status` must name the
// outage plainly while it lasts and, with no node restarted, clear it and
// capture again once the server is back — a site killed with kill -9 while
// it captures a burst and while its apply holds its tables' lock, and a site
// stopped while its database changes. Afterwards every database must hold
// exactly the ledgers' rows (row text compared), `ppsync db check` exit 0,
// `db status` name no problem, nothing waiting, no refused row and only the
// expected warning (a serial column too small for the ID ranges), and each
// site's log hold each committed change at most once (an inserted-only row
// exactly once) and no other site's row.
//
// # Running
//
// `go test ./integration/fault/` (part of `make check`) runs TestFaults: the
// schedules of fixedSeeds plus one random seed (printed), and one each of the
// long-offline, relay-only-path, clock-skew, disk-full, foreign-family,
// cloned-site, online-truth, lan-discovery, DatabaseFaults and PostgresFaults
// scenarios (PostgresFaults skipped where PostgreSQL is not installed), a few
// at a time. Each failure prints the command that replays it:
// PPSYNC_FAULT_SEED=N (with PPSYNC_FAULT_DURATION for a soak schedule) and
// -run 'TestFaults/NAME'. A scenario whose only violations are those of a
// known product bug (KnownBugs) is skipped with "BUG: ...", so it stays as
// that bug's regression test.
// PPSYNC_FAULT_KEEP keeps a scenario's directory (node logs),
// PPSYNC_FAULT_DEBUG runs the nodes at debug level.
//
// `make soak SOAK=30m` (PPSYNC_SOAK=30m) runs TestSoak: randomized schedules
// of 30 to 90 s, with an attack or special scenario every third round, for that
// long, and writes a JSON report to PPSYNC_SOAK_REPORT (default
// soak-report.json): schedules run, transactions acknowledged, faults injected
// by kind, time to converge (p50, p90, max), violations (by kind, known bugs
// apart) with replay commands.
package fault
