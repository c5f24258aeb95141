// Package family holds the membership side of a ppsync sync family: the
// authority key that administers it, the member certificates the authority
// signs, join requests that nodes write for it, revocations, and the Roster of
// current members that a node consults to decide whom to talk to and whose
// entries to accept.
//
// # Files
//
// Every file is JSON with a "format" field. Readers accept format 1, refuse a
// higher format with an error saying the file was written by a newer ppsync,
// and ignore fields they do not know so that later formats can add fields.
// Every parser takes untrusted bytes, limits them to MaxFileBytes and returns
// a clear error rather than panicking.
//
//   - family.json (public): family ID, name, authority public key, bootstrap
//     addresses. The family ID is the lower-case hex SHA-256 of the authority
//     public key, so a family.json cannot name a family it does not belong to.
//   - authority.key (secret, mode 0600): the authority's Ed25519 private key.
//     It is never logged or printed; an [Authority] formats as its family ID.
//   - join-request.json: written by `ppsync init` for the authority.
//   - certificates and revocations: signed by the authority over a
//     deterministic encoding of every field but the signature, behind a
//     domain-separation prefix per kind.
//
// # Epochs
//
// A site's first certificate has epoch 1; every re-issue (`ppsync family
// move`) raises it by one and supersedes the older certificates. A revocation
// with epoch N revokes every certificate of that site with epoch <= N. The
// Roster keeps superseded certificates as history because entries signed
// under an old epoch must stay verifiable ([Roster.KeyFor]); only the newest,
// unrevoked certificate of a site makes a current member ([Roster.Member]).
//
// The authority never runs inside a node: [Authority] and its registry of
// issued certificates ([Authority.Admit], [Authority.Move], [Authority.Revoke])
// are for the offline `ppsync family` commands.
package family
