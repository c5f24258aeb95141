package family

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ppsync/ppsync/internal/wire"
)

// Role is what a member does in the family.
type Role string

// Roles.
const (
	RoleSite  Role = "site"  // a practice system with its own database
	RoleRelay Role = "relay" // an always-on, vendor-hosted store-and-forward node
)

// Validate checks that r is a known role.
func (r Role) Validate() error {
	switch r {
	case RoleSite, RoleRelay:
		return nil
	}
	return fmt.Errorf("%w: role %.20q is neither %q nor %q", ErrFormat, string(r), RoleSite, RoleRelay)
}

// PeerIDOf returns the libp2p peer ID of an Ed25519 public key.
func PeerIDOf(pub ed25519.PublicKey) (peer.ID, error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("%w: public key is %d bytes, want %d", ErrFormat, len(pub), ed25519.PublicKeySize)
	}
	pk, err := crypto.UnmarshalEd25519PublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: public key: %v", ErrFormat, err)
	}
	id, err := peer.IDFromPublicKey(pk)
	if err != nil {
		return "", fmt.Errorf("%w: public key: %v", ErrFormat, err)
	}
	return id, nil
}

// JoinRequest is what `ppsync init` writes for the family authority: who the
// new node is. The authority turns it into a Certificate with
// [Authority.Admit] (a new site) or [Authority.Move] (an existing site on a
// new machine or data directory).
type JoinRequest struct {
	Format             int       `json:"format"`
	Type               string    `json:"type,omitempty"`
	FamilyID           string    `json:"family_id"`
	Site               string    `json:"site"`
	Role               Role      `json:"role"`
	PeerID             peer.ID   `json:"peer_id"`
	PublicKey          []byte    `json:"public_key"` // 32-byte Ed25519 key, base64 in JSON
	MachineFingerprint string    `json:"machine_fingerprint"`
	DatabaseID         string    `json:"database_id"`
	CreatedAt          time.Time `json:"created_at"`
}

// NewJoinRequest builds and validates a join request for the node whose
// libp2p identity key is pub.
func NewJoinRequest(info *Info, site string, role Role, pub ed25519.PublicKey, machineFingerprint, databaseID string, now time.Time) (*JoinRequest, error) {
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("join request: %w", err)
	}
	id, err := PeerIDOf(pub)
	if err != nil {
		return nil, fmt.Errorf("join request: %w", err)
	}
	r := &JoinRequest{
		Format:             FormatVersion,
		FamilyID:           info.FamilyID,
		Site:               site,
		Role:               role,
		PeerID:             id,
		PublicKey:          bytes.Clone(pub),
		MachineFingerprint: machineFingerprint,
		DatabaseID:         databaseID,
		CreatedAt:          stamp(now),
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Validate checks every field; the peer ID must be the one of the public key.
func (r *JoinRequest) Validate() error {
	if err := checkFormat(r.Format, "join request"); err != nil {
		return err
	}
	if err := checkFamilyID(r.FamilyID); err != nil {
		return err
	}
	return checkIdentity(r.Site, r.Role, r.PeerID, r.PublicKey, r.MachineFingerprint, r.DatabaseID, r.CreatedAt, "created_at")
}

// checkIdentity validates the fields a join request and a certificate share.
func checkIdentity(site string, role Role, id peer.ID, pub []byte, fingerprint, databaseID string, at time.Time, atName string) error {
	if err := wire.ValidateSiteID(site); err != nil {
		return fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := role.Validate(); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("%w: peer ID is missing", ErrFormat)
	}
	want, err := PeerIDOf(pub)
	if err != nil {
		return err
	}
	if id != want {
		return fmt.Errorf("%w: peer ID %s is not the ID of the public key (%s)", ErrFormat, id, want)
	}
	if err := checkText("machine_fingerprint", fingerprint, maxIDBytes, false); err != nil {
		return err
	}
	if err := checkText("database_id", databaseID, maxIDBytes, false); err != nil {
		return err
	}
	return checkTime(atName, at)
}

// Key returns the node's Ed25519 public key.
func (r *JoinRequest) Key() ed25519.PublicKey { return bytes.Clone(r.PublicKey) }

// Marshal renders the request as a join-request.json file.
func (r *JoinRequest) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	c := *r
	c.Type = kindJoinRequest
	return encodeFile(&c)
}

// ParseJoinRequest parses and validates a join request from untrusted bytes.
func ParseJoinRequest(data []byte) (*JoinRequest, error) {
	var r JoinRequest
	if err := decodeFile(data, kindJoinRequest, "join request", &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("join request: %w", err)
	}
	return &r, nil
}
