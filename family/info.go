package family

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// InfoFile is the name of the public family file inside an authority directory.
const InfoFile = "family.json"

// Info is the public description of a family (family.json). Nodes hold a copy
// to know the authority key that signs certificates and where to find the
// family (bootstrap addresses, typically the relay).
type Info struct {
	Format             int       `json:"format"`
	Type               string    `json:"type,omitempty"`
	FamilyID           string    `json:"family_id"`
	Name               string    `json:"name"`
	AuthorityPublicKey []byte    `json:"authority_public_key"` // 32-byte Ed25519 key, base64 in JSON
	Bootstrap          []string  `json:"bootstrap"`            // multiaddrs ending in /p2p/PEER_ID
	CreatedAt          time.Time `json:"created_at"`
}

// FamilyIDOf returns the family ID of an authority public key: the lower-case
// hex SHA-256 of its 32 bytes.
func FamilyIDOf(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// AuthorityKey returns the authority's public key.
func (in *Info) AuthorityKey() ed25519.PublicKey {
	return ed25519.PublicKey(bytes.Clone(in.AuthorityPublicKey))
}

// Validate checks every field, and that the family ID is the hash of the
// authority key.
func (in *Info) Validate() error {
	if in == nil {
		return fmt.Errorf("%w: no family info", ErrFormat)
	}
	if err := checkFormat(in.Format, "family info"); err != nil {
		return err
	}
	if len(in.AuthorityPublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: authority public key is %d bytes, want %d", ErrFormat, len(in.AuthorityPublicKey), ed25519.PublicKeySize)
	}
	if err := checkFamilyID(in.FamilyID); err != nil {
		return err
	}
	if want := FamilyIDOf(in.AuthorityPublicKey); in.FamilyID != want {
		return fmt.Errorf("%w: family ID %s does not match the authority key (which gives %s); the family file was altered", ErrFormat, in.FamilyID, want)
	}
	if err := checkText("family name", in.Name, maxNameBytes, false); err != nil {
		return err
	}
	if len(in.Bootstrap) > maxBootstrapAddrs {
		return fmt.Errorf("%w: %d bootstrap addresses, the limit is %d", ErrFormat, len(in.Bootstrap), maxBootstrapAddrs)
	}
	for _, a := range in.Bootstrap {
		if _, err := canonicalBootstrap(a); err != nil {
			return err
		}
	}
	return checkTime("created_at", in.CreatedAt)
}

// checkFamilyID checks the shape of a family ID (64 lower-case hex digits).
func checkFamilyID(id string) error {
	if len(id) != 2*sha256.Size {
		return fmt.Errorf("%w: family ID %.70q is not 64 hex digits", ErrFormat, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: family ID %q is not 64 lower-case hex digits", ErrFormat, id)
		}
	}
	return nil
}

// canonicalBootstrap validates a bootstrap address and returns its canonical
// string form: a multiaddr with a transport part followed by /p2p/PEER_ID.
func canonicalBootstrap(addr string) (string, error) {
	if addr == "" {
		return "", fmt.Errorf("%w: bootstrap address is empty", ErrFormat)
	}
	if len(addr) > maxAddrBytes {
		return "", fmt.Errorf("%w: bootstrap address is %d bytes, the limit is %d", ErrFormat, len(addr), maxAddrBytes)
	}
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return "", fmt.Errorf("%w: bootstrap address %.80q is not a multiaddr: %v", ErrFormat, addr, err)
	}
	transport, id := peer.SplitAddr(m)
	if id == "" {
		return "", fmt.Errorf("%w: bootstrap address %.80q does not end in /p2p/PEER_ID; add the relay's peer ID (see its runtime.json addrs)", ErrFormat, addr)
	}
	if len(transport) == 0 {
		return "", fmt.Errorf("%w: bootstrap address %.80q has no transport part (like /ip4/1.2.3.4/tcp/4001) before /p2p/", ErrFormat, addr)
	}
	return m.String(), nil
}

// AddBootstrap adds a bootstrap address (a multiaddr ending in /p2p/PEER_ID)
// unless an equal one is already listed.
func (in *Info) AddBootstrap(addr string) error {
	canon, err := canonicalBootstrap(addr)
	if err != nil {
		return fmt.Errorf("add bootstrap address: %w", err)
	}
	for _, have := range in.Bootstrap {
		if c, err := canonicalBootstrap(have); err == nil && c == canon {
			return nil
		}
	}
	if len(in.Bootstrap) >= maxBootstrapAddrs {
		return fmt.Errorf("%w: the family already has %d bootstrap addresses, the limit", ErrFormat, len(in.Bootstrap))
	}
	in.Bootstrap = append(in.Bootstrap, canon)
	return nil
}

// Clone returns a deep copy.
func (in *Info) Clone() *Info {
	c := *in
	c.AuthorityPublicKey = bytes.Clone(in.AuthorityPublicKey)
	c.Bootstrap = slices.Clone(in.Bootstrap)
	return &c
}

// Marshal renders the info as a family.json file.
func (in *Info) Marshal() ([]byte, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	c := in.Clone()
	c.Type = kindInfo
	if c.Bootstrap == nil {
		c.Bootstrap = []string{}
	}
	return encodeFile(c)
}

// ParseInfo parses and validates a family.json file.
func ParseInfo(data []byte) (*Info, error) {
	var in Info
	if err := decodeFile(data, kindInfo, "family file", &in); err != nil {
		return nil, err
	}
	if err := in.Validate(); err != nil {
		return nil, err
	}
	return &in, nil
}

// LoadInfo reads and validates a family.json file.
func LoadInfo(path string) (*Info, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("family: load family file: %w", err)
	}
	in, err := ParseInfo(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return in, nil
}

// SaveInfo validates info and writes it atomically to path with mode 0644.
func SaveInfo(path string, info *Info) error {
	data, err := info.Marshal()
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return writeFileAtomic(path, data, 0o644)
}
