// Package state keeps the materialized records that result from applying
// every entry of every site: table, key -> fields. It is derived data: it can
// always be rebuilt from the logs (Clear, then Apply every entry again).
//
// # Merge
//
// Each write carries a Version: (HLC, site ID, seq, operation index within the
// entry), compared in that order, a total order. Fields merge one by one,
// last writer wins: a field holds the value of its newest write. A delete is a
// record tombstone: it removes every field written before it, and a put older
// than the newest delete changes nothing visible. A put newer than the delete
// brings the record back with only the fields written after the delete. A
// record exists iff its newest put is newer than its newest delete. The
// stored record is therefore a pure function of the set of entries applied:
// any arrival order gives the same bytes. Applying an entry a second time
// (which the log never does) changes nothing: every comparison is strict, so
// a write meets itself and loses, nothing is fed, and its conflicts are
// already recorded.
//
// # Conflicts
//
// An entry E that writes field F whose current value was written by entry X
// of another site conflicts with X iff neither saw the other: E saw X iff
// E.Deps[X.site] >= X.seq, and X saw E iff X.Deps[E.site] >= E.seq. A delete
// meeting a concurrent put of the record (or a put meeting a concurrent
// delete) is a conflict on the whole record (Field ""). The merge outcome does
// not depend on conflicts; they are a report for people, recorded locally in
// arrival order and left out of the digest. To know X's deps when E arrives,
// Apply keeps each entry's deps (other sites only) in an index, written only
// for entries that won some write: an entry that won nothing is never the
// current writer of anything. A conflict is recorded once per field and pair
// of entries, so a replayed entry records nothing new.
//
// # Change feed
//
// Every Apply that changes what Get returns for a record gives that record a
// new cursor from a node-local counter that only grows (it survives restarts
// and Clear). The feed keeps one entry per record, its latest change, so its
// size is bounded by the number of records. Changes(after) returns the records
// changed after a cursor with their current content. The record itself
// carries the cursor of its feed entry (record format 0x02), so a change
// finds the entry to drop in the record it has read anyway; the cursor is
// the node's own and is left out of the digest. Records stored by earlier
// builds (format 0x01) have it in the 'l' index instead, which Apply drops
// as it writes such a record's next visible change.
//
// # Key layout
//
// Everything lives under store.PrefixState ('s'), then one sub-space byte.
// Names (table, record key, site ID) are written escaped and terminated:
// each 0x00 byte becomes 0x00 0xff and the name ends with 0x00 0x01. The
// encoding is prefix-free and sorts like the raw bytes, so a table's records
// are contiguous and sorted by key, whatever bytes the names hold.
//
//	's' 'r' name(table) name(key)  -> record (binary, canonical; see codec.go): the feed cursor of its
//	                                  latest visible change (if any), put version, delete version,
//	                                  fields sorted by name {name, version, wire.Marshal(value)}
//	's' 'l' name(table) name(key)  -> feed cursor of the record's latest change (8 bytes, big endian),
//	                                  only for records stored in format 0x01 by earlier builds
//	's' 'f' cursor (8 bytes, BE)   -> name(table) name(key)
//	's' 'c' conflict ID (8, BE)    -> msgpack conflict (wire.Marshal)
//	's' 'x' name(table) name(key) name(field) name(site) seq (8, BE) name(site) seq (8, BE)
//	                               -> conflict ID: those two entries were found in conflict there
//	's' 'd' name(site) seq (8, BE) -> deps of that entry, other sites only (sorted, uvarint-framed)
//	's' 'm' "counts"               -> live records, conflicts (2 x 8 bytes, BE)
//	's' 'm' "floor"                -> cursor, conflict ID, cursor at the last Clear (3 x 8 bytes, BE)
//
// Clear deletes the whole 's' prefix and writes "floor" again, so cursors and
// conflict IDs keep growing across a rebuild: every record the rebuild writes
// reaches a follower as a change newer than any it has seen, and
// Stats().ClearedAt tells it a rebuild happened (a record that the rebuild
// does not bring back is not fed as deleted; a follower at or below
// ClearedAt re-reads the full state to notice those).
//
// Stats().Records is kept exact by Apply through its batch, which assumes
// batches are committed one after another, as the log does.
//
// Digest hashes the 'r' sub-space only, tombstones included. A stored value that does not decode
// gives a DamagedError (errors.Is ErrDamaged) that tells the operator to run
// `ppsync verify`, never a panic.
package state
