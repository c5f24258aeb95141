// Package lock keeps a ppsync node to one process, one machine and one
// database.
//
// # One process per data directory
//
// [Acquire] takes an operating-system file lock on DATA/ppsync.lock (flock on
// Unix, LockFileEx on Windows) and writes the holder's PID and start time into
// the file. A second process that tries gets a [*HeldError] naming the holder
// and how to stop it (errors.Is(err, [ErrHeld]); the command line exits 5).
// The operating system drops the lock when the holding process ends, however
// it ends (kill -9, a crash, a power cut), so a leftover ppsync.lock never
// blocks a restart; the file itself is never deleted, because deleting a lock
// file races with a process that has just opened it. [Holder] asks who holds
// the lock without keeping it.
//
// # One machine
//
// [Fingerprint] identifies the machine a node was set up on: a SHA-256 over
// the operating system's machine ID, the host name, the OS user name and the
// family ID. The machine ID is /etc/machine-id (or /var/lib/dbus/machine-id)
// on Linux, the MachineGuid registry value on Windows and the
// IOPlatformUUID on macOS. The environment variable PPSYNC_MACHINE_ID, when
// set, replaces it: it is meant for containers, which often have no machine
// ID or share their image's, and for test machines cloned from one image,
// which share one. Give each such machine its own stable value (a UUID) and
// keep it across restarts.
//
// Renaming the computer, or running the node as another OS user (for example
// as a service account rather than the user who ran `ppsync init`), changes
// the fingerprint.
//
// # One database
//
// [CreateDatabaseID] stores a random database ID in the node's Pebble store
// at init, under the store's metadata prefix; [DatabaseID] reads it back.
// The member certificate records both the fingerprint and the database ID,
// and [CheckBinding] compares them with what this node finds at start. A
// mismatch is refused ([ErrWrongMachine], [ErrWrongDatabase], both wrapping
// [ErrRefused]; the command line exits 4): two running copies of one site
// would sign different entries with the same sequence numbers and split the
// practice's data. Support re-issues the certificate with `ppsync family
// move` when a site really moves.
package lock
