package family

import "errors"

// Sentinel errors. Every error this package returns that falls in one of
// these classes wraps the sentinel (test with errors.Is) and adds which file,
// site or epoch it concerns and, where there is one, what to do about it.
var (
	// ErrWrongFamily: a certificate, revocation or join request belongs to
	// another family than the one it was checked against.
	ErrWrongFamily = errors.New("family: wrong family")
	// ErrBadSignature: the authority's signature does not verify; the file was
	// altered or not signed by this family's authority.
	ErrBadSignature = errors.New("family: bad authority signature")
	// ErrSuperseded: a newer certificate epoch of the same site is known.
	ErrSuperseded = errors.New("family: superseded")
	// ErrRevoked: the site is revoked at that certificate's epoch.
	ErrRevoked = errors.New("family: revoked")
	// ErrSiteExists: the family already has that site ID.
	ErrSiteExists = errors.New("family: site already exists")
	// ErrUnknownSite: no certificate of that site (or of that epoch) is known.
	ErrUnknownSite = errors.New("family: unknown site")
	// ErrConflict: two different signed documents claim the same place (the
	// same site and epoch), or a request contradicts what was issued.
	ErrConflict = errors.New("family: conflict")
	// ErrFormat: malformed, oversized, the wrong kind of file, or written in a
	// newer format than this ppsync understands.
	ErrFormat = errors.New("family: bad format")
)
