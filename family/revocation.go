package family

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// revocationDomain prefixes the signed bytes of a revocation.
const revocationDomain = "ppsync revocation v1\n"

// Revocation is the authority's statement that every certificate of a site
// with an epoch at or below Epoch is no longer valid.
type Revocation struct {
	Format    int       `json:"format"`
	Type      string    `json:"type,omitempty"`
	FamilyID  string    `json:"family_id"`
	Site      string    `json:"site"`
	Epoch     uint64    `json:"epoch"`
	IssuedAt  time.Time `json:"issued_at"`
	Reason    string    `json:"reason"`
	Signature []byte    `json:"signature"` // Ed25519 by the authority, base64 in JSON
}

// revocationSigned is the signed content of a revocation, in a fixed order.
type revocationSigned struct {
	Format   int    `json:"format"`
	FamilyID string `json:"family_id"`
	Site     string `json:"site"`
	Epoch    uint64 `json:"epoch"`
	IssuedAt string `json:"issued_at"`
	Reason   string `json:"reason"`
}

// SignedBytes returns the exact bytes the authority signs: a domain prefix
// and a deterministic encoding of every field except the signature.
func (r *Revocation) SignedBytes() []byte {
	body, err := json.Marshal(revocationSigned{
		Format:   r.Format,
		FamilyID: r.FamilyID,
		Site:     r.Site,
		Epoch:    r.Epoch,
		IssuedAt: canonicalTime(r.IssuedAt),
		Reason:   r.Reason,
	})
	if err != nil {
		// Strings and integers always encode.
		panic("family: encoding revocation: " + err.Error())
	}
	return append([]byte(revocationDomain), body...)
}

// Validate checks every field's shape (not the signature; see Verify).
func (r *Revocation) Validate() error {
	if err := checkFormat(r.Format, "revocation"); err != nil {
		return err
	}
	if err := checkFamilyID(r.FamilyID); err != nil {
		return err
	}
	if err := wire.ValidateSiteID(r.Site); err != nil {
		return fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if r.Epoch == 0 {
		return fmt.Errorf("%w: revocation epoch is 0; epochs start at 1", ErrFormat)
	}
	if err := checkTime("issued_at", r.IssuedAt); err != nil {
		return err
	}
	if err := checkText("reason", r.Reason, maxReasonBytes, true); err != nil {
		return err
	}
	if len(r.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("%w: revocation signature is %d bytes, want %d", ErrFormat, len(r.Signature), ed25519.SignatureSize)
	}
	return nil
}

// Verify checks that the revocation belongs to the family described by info
// (ErrWrongFamily), that the authority signed it (ErrBadSignature), and that
// every field is well-formed (ErrFormat).
func (r *Revocation) Verify(info *Info) error {
	return r.verify(info.FamilyID, info.AuthorityPublicKey)
}

func (r *Revocation) verify(familyID string, authority ed25519.PublicKey) error {
	if r.FamilyID != familyID {
		return fmt.Errorf("%w: the revocation of site %q is for another family (%.70s), not %s", ErrWrongFamily, r.Site, r.FamilyID, familyID)
	}
	if len(authority) != ed25519.PublicKeySize || !ed25519.Verify(authority, r.SignedBytes(), r.Signature) {
		return fmt.Errorf("%w: the revocation of site %q epoch %d was altered or not signed by this family's authority", ErrBadSignature, r.Site, r.Epoch)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("revocation of site %q epoch %d: %w", r.Site, r.Epoch, err)
	}
	return nil
}

// Equal reports whether two revocations have the same signed content and signature.
func (r *Revocation) Equal(o *Revocation) bool {
	return bytes.Equal(r.SignedBytes(), o.SignedBytes()) && bytes.Equal(r.Signature, o.Signature)
}

// Clone returns a deep copy.
func (r *Revocation) Clone() *Revocation {
	d := *r
	d.Signature = bytes.Clone(r.Signature)
	return &d
}

// Marshal renders the revocation as a file.
func (r *Revocation) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	d := r.Clone()
	d.Type = kindRevocation
	return encodeFile(d)
}

// ParseRevocation parses a revocation from untrusted bytes and checks its
// fields. It does not check the signature: use [Revocation.Verify] or
// [Roster.AddRevocation].
func ParseRevocation(data []byte) (*Revocation, error) {
	var r Revocation
	if err := decodeFile(data, kindRevocation, "revocation", &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("revocation: %w", err)
	}
	return &r, nil
}

// revoke signs a revocation.
func (a *Authority) revoke(site string, epoch uint64, reason string, now time.Time) (*Revocation, error) {
	r := &Revocation{
		Format:   FormatVersion,
		FamilyID: a.familyID,
		Site:     site,
		Epoch:    epoch,
		IssuedAt: stamp(now),
		Reason:   reason,
	}
	r.Signature = a.sign(r.SignedBytes())
	if err := r.verify(a.familyID, a.PublicKey()); err != nil {
		return nil, fmt.Errorf("issue revocation: %w", err)
	}
	return r, nil
}

// ParseInstallable parses a file given to `ppsync install`: a certificate or
// a revocation. Exactly one of the results is non-nil when err is nil. Any
// other kind of file gets an error that says what it is. Signatures are not
// checked here.
func ParseInstallable(data []byte) (*Certificate, *Revocation, error) {
	if len(data) > MaxFileBytes {
		return nil, nil, fmt.Errorf("%w: the file is %d bytes, the limit is %d", ErrFormat, len(data), MaxFileBytes)
	}
	var probe struct {
		Type      string          `json:"type"`
		PeerID    json.RawMessage `json:"peer_id"`
		Signature json.RawMessage `json:"signature"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, nil, fmt.Errorf("%w: the file is not a certificate or revocation: %s", ErrFormat, jsonProblem(err))
	}
	kind := probe.Type
	if kind == "" { // files without a type: tell them apart by their fields
		switch {
		case probe.PeerID != nil && probe.Signature != nil:
			kind = kindCertificate
		case probe.Signature != nil:
			kind = kindRevocation
		case probe.PeerID != nil:
			kind = kindJoinRequest
		}
	}
	switch kind {
	case kindCertificate:
		c, err := ParseCertificate(data)
		return c, nil, err
	case kindRevocation:
		r, err := ParseRevocation(data)
		return nil, r, err
	case "":
		return nil, nil, fmt.Errorf("%w: the file is neither a certificate nor a revocation", ErrFormat)
	default:
		return nil, nil, fmt.Errorf("%w: the file is %s, not a certificate or revocation", ErrFormat, describeKind(kind))
	}
}
