// Package txlog keeps every site's append-only, hash-chained, signed log of
// entries in the node's Pebble database, and is the only writer of entries.
//
// One committer goroutine owns all writes. Callers hand it their own
// transactions (Write, WriteMany) or entries received from peers
// (AppendRemote, AppendRun); it stamps own entries and signs the last of each
// commit group (the hash chain binds the others to it), checks every
// remote entry's place in its site's chain, applies each new entry to the
// state through the Applier in the same indexed batch, and commits that batch
// with one fsync for everything queued meanwhile (group commit). A call returns
// only after its batch is durable.
//
// Rules the log enforces:
//   - seqs of a site count from 1 without gaps; each entry names the hash of
//     the previous one; only the next seq of a site is accepted (a gap returns
//     a *GapError so the caller can fetch the missing range);
//   - an unsigned entry is stored only with the signed entry that ends its
//     group (wire.VerifyRun); a log's head is always signed;
//   - a duplicate is a no-op; a second validly signed entry for a held
//     (site, seq) with another hash is a fork: both are kept as evidence, the
//     site's log stops growing, and its later entries are quarantined (stored,
//     never applied, never deleted);
//   - entries of a newer schema than this build supports are stored and
//     forwarded but applied only once a build that supports them opens the log.
//
// Key layout under store.PrefixTxlog ('t'), itself under Config.Space (empty
// for the primary family; store.FamilySpace for any other family sharing the
// database, so each key below is then prefixed with 'F' and the family's ID):
//
//	t l <len><site> <seq:8>          -> entry envelope (wire.Signed.Marshal)
//	t f <len><site>                  -> head: seq, hash, epoch
//	t h <len><site> <seq:8>          -> held: entry stored but not yet applied (newer schema)
//	t k <len><site>                  -> fork record: first forked seq and the hashes seen
//	t x <len><site> <seq:8> <hash>   -> fork evidence: the other entry's envelope (and, when it is
//	                                    unsigned, those after it up to its group's signed end)
//	t q <len><site> <seq:8> <hash>   -> quarantined entry envelope
package txlog
