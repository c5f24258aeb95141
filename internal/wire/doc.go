// Package wire defines ppsync's entry type, its operations and field values, and
// their one canonical msgpack encoding.
//
// An entry is one transaction of one site. Its body (every field but the
// signature) is encoded canonically: the same entry always encodes to the same
// bytes. The entry hash is SHA-256 of those body bytes, and the signature is an
// Ed25519 signature by the site's node key over the hash. Only the last entry of
// a commit group is signed; the others carry an empty signature and are
// authenticated through the hash chain by the signed entry after them
// (VerifyRun). Entries travel and are stored as an envelope holding the body
// bytes and the signature, so a receiver hashes exactly the bytes the writer
// signed and never re-encodes them.
//
// Every decoder here takes untrusted bytes: it enforces the limits below before
// allocating, returns an error for anything malformed, and never panics.
package wire
