package family

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// certificateDomain prefixes the signed bytes of a certificate, so that no
// other signed document of the authority can be taken for one.
const certificateDomain = "ppsync certificate v1\n"

// Certificate is a member certificate: the authority's statement that the
// node with this peer ID serves this site of the family, from this epoch on.
type Certificate struct {
	Format             int       `json:"format"`
	Type               string    `json:"type,omitempty"`
	FamilyID           string    `json:"family_id"`
	Site               string    `json:"site"`
	Role               Role      `json:"role"`
	PeerID             peer.ID   `json:"peer_id"`
	PublicKey          []byte    `json:"public_key"` // 32-byte Ed25519 key, base64 in JSON
	MachineFingerprint string    `json:"machine_fingerprint"`
	DatabaseID         string    `json:"database_id"`
	RequestedAt        time.Time `json:"requested_at"` // the join request's created_at
	Epoch              uint64    `json:"epoch"`
	IssuedAt           time.Time `json:"issued_at"`
	// Slot is the site's number in the family (1, 2, 3, ...), unique among
	// its sites and kept across moves: the practice database gives each site
	// its own range of new integer IDs by it. 0 in certificates issued before
	// slots existed.
	Slot      uint32 `json:"slot,omitempty"`
	Signature []byte `json:"signature"` // Ed25519 by the authority, base64 in JSON
}

// certificateSigned is the signed content of a certificate, in a fixed field
// order (encoding/json writes struct fields in declaration order).
type certificateSigned struct {
	Format             int    `json:"format"`
	FamilyID           string `json:"family_id"`
	Site               string `json:"site"`
	Role               string `json:"role"`
	PeerID             string `json:"peer_id"`
	PublicKey          []byte `json:"public_key"`
	MachineFingerprint string `json:"machine_fingerprint"`
	DatabaseID         string `json:"database_id"`
	RequestedAt        string `json:"requested_at"`
	Epoch              uint64 `json:"epoch"`
	IssuedAt           string `json:"issued_at"`
	Slot               uint32 `json:"slot,omitempty"` // last and omitted when 0: older certificates sign the same bytes
}

// SignedBytes returns the exact bytes the authority signs: a domain prefix
// and a deterministic encoding of every field except the signature.
func (c *Certificate) SignedBytes() []byte {
	body, err := json.Marshal(certificateSigned{
		Format:             c.Format,
		FamilyID:           c.FamilyID,
		Site:               c.Site,
		Role:               string(c.Role),
		PeerID:             c.PeerID.String(),
		PublicKey:          c.PublicKey,
		MachineFingerprint: c.MachineFingerprint,
		DatabaseID:         c.DatabaseID,
		RequestedAt:        canonicalTime(c.RequestedAt),
		Epoch:              c.Epoch,
		IssuedAt:           canonicalTime(c.IssuedAt),
		Slot:               c.Slot,
	})
	if err != nil {
		// Strings, bytes and integers always encode.
		panic("family: encoding certificate: " + err.Error())
	}
	return append([]byte(certificateDomain), body...)
}

// Validate checks every field's shape (not the signature; see Verify).
func (c *Certificate) Validate() error {
	if err := checkFormat(c.Format, "certificate"); err != nil {
		return err
	}
	if err := checkFamilyID(c.FamilyID); err != nil {
		return err
	}
	if err := checkIdentity(c.Site, c.Role, c.PeerID, c.PublicKey, c.MachineFingerprint, c.DatabaseID, c.RequestedAt, "requested_at"); err != nil {
		return err
	}
	if c.Epoch == 0 {
		return fmt.Errorf("%w: certificate epoch is 0; epochs start at 1", ErrFormat)
	}
	if err := checkTime("issued_at", c.IssuedAt); err != nil {
		return err
	}
	if len(c.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("%w: certificate signature is %d bytes, want %d", ErrFormat, len(c.Signature), ed25519.SignatureSize)
	}
	return nil
}

// Verify checks that the certificate belongs to the family described by info
// (ErrWrongFamily), that the authority signed it (ErrBadSignature), and that
// every field is well-formed (ErrFormat). It says nothing about whether a
// newer certificate or a revocation exists: see [Roster.Check].
func (c *Certificate) Verify(info *Info) error {
	return c.verify(info.FamilyID, info.AuthorityPublicKey)
}

func (c *Certificate) verify(familyID string, authority ed25519.PublicKey) error {
	if c.FamilyID != familyID {
		return fmt.Errorf("%w: the certificate of site %q is for another family (%.70s), not %s", ErrWrongFamily, c.Site, c.FamilyID, familyID)
	}
	if len(authority) != ed25519.PublicKeySize || !ed25519.Verify(authority, c.SignedBytes(), c.Signature) {
		return fmt.Errorf("%w: the certificate of site %q epoch %d was altered or not signed by this family's authority", ErrBadSignature, c.Site, c.Epoch)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("certificate of site %q epoch %d: %w", c.Site, c.Epoch, err)
	}
	return nil
}

// Key returns the member's Ed25519 public key (its libp2p identity key).
func (c *Certificate) Key() ed25519.PublicKey { return bytes.Clone(c.PublicKey) }

// Member returns the member the certificate describes.
func (c *Certificate) Member() Member {
	return Member{
		Site:               c.Site,
		Role:               c.Role,
		PeerID:             c.PeerID,
		PublicKey:          c.Key(),
		Epoch:              c.Epoch,
		MachineFingerprint: c.MachineFingerprint,
		DatabaseID:         c.DatabaseID,
	}
}

// Equal reports whether two certificates have the same signed content and signature.
func (c *Certificate) Equal(o *Certificate) bool {
	return bytes.Equal(c.SignedBytes(), o.SignedBytes()) && bytes.Equal(c.Signature, o.Signature)
}

// Clone returns a deep copy.
func (c *Certificate) Clone() *Certificate {
	d := *c
	d.PublicKey = bytes.Clone(c.PublicKey)
	d.Signature = bytes.Clone(c.Signature)
	return &d
}

// Marshal renders the certificate as a file.
func (c *Certificate) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	d := c.Clone()
	d.Type = kindCertificate
	return encodeFile(d)
}

// ParseCertificate parses a certificate from untrusted bytes and checks its
// fields. It does not check the signature: use [Certificate.Verify] or
// [Roster.Add].
func ParseCertificate(data []byte) (*Certificate, error) {
	var c Certificate
	if err := decodeFile(data, kindCertificate, "certificate", &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return &c, nil
}

// issue signs a certificate for req at epoch.
func (a *Authority) issue(req *JoinRequest, epoch uint64, slot uint32, now time.Time) (*Certificate, error) {
	c := &Certificate{
		Format:             FormatVersion,
		FamilyID:           a.familyID,
		Site:               req.Site,
		Role:               req.Role,
		PeerID:             req.PeerID,
		PublicKey:          bytes.Clone(req.PublicKey),
		MachineFingerprint: req.MachineFingerprint,
		DatabaseID:         req.DatabaseID,
		RequestedAt:        req.CreatedAt.UTC(),
		Epoch:              epoch,
		IssuedAt:           stamp(now),
		Slot:               slot,
	}
	c.Signature = a.sign(c.SignedBytes())
	if err := c.verify(a.familyID, a.PublicKey()); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	return c, nil
}

// Member is a member of the family as a certificate describes it.
type Member struct {
	Site               string
	Role               Role
	PeerID             peer.ID
	PublicKey          ed25519.PublicKey
	Epoch              uint64
	MachineFingerprint string
	DatabaseID         string
}
