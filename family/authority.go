package family

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// AuthorityKeyFile is the name of the secret authority key inside an authority directory.
const AuthorityKeyFile = "authority.key"

// Authority holds a family's secret signing key. It never runs inside a node;
// the `ppsync family` commands load it from the authority directory.
//
// It formats (fmt, slog) as its family ID only: the key is never printed.
type Authority struct {
	familyID string
	priv     ed25519.PrivateKey
}

// authorityKeyFile is the JSON form of authority.key.
type authorityKeyFile struct {
	Format     int    `json:"format"`
	Type       string `json:"type,omitempty"`
	FamilyID   string `json:"family_id"`
	PrivateKey []byte `json:"private_key"` // 64-byte Ed25519 private key, base64 in JSON
}

// FamilyID returns the ID of the family this authority administers.
func (a *Authority) FamilyID() string { return a.familyID }

// PublicKey returns the authority's public key.
func (a *Authority) PublicKey() ed25519.PublicKey {
	return bytes.Clone(a.priv.Public().(ed25519.PublicKey))
}

// String returns a description without the secret key.
func (a Authority) String() string { return "family authority " + a.familyID }

// GoString returns a description without the secret key.
func (a Authority) GoString() string { return "family.Authority{" + a.familyID + "}" }

// Format prints the authority as String does, whatever the verb, so that no
// verb (%x, %d, %+v...) can print the key.
func (a Authority) Format(f fmt.State, _ rune) { io.WriteString(f, a.String()) }

// LogValue keeps the key out of structured logs.
func (a Authority) LogValue() slog.Value { return slog.StringValue(a.String()) }

func (a *Authority) sign(msg []byte) []byte { return ed25519.Sign(a.priv, msg) }

// CreateFamily creates a new family in dir: a fresh authority key written to
// dir/authority.key (mode 0600) and the public dir/family.json. It refuses if
// either file already exists. dir is created (mode 0700) if needed.
func CreateFamily(dir, name string, now time.Time) (*Authority, *Info, error) {
	return createFamily(dir, name, now, rand.Reader)
}

func createFamily(dir, name string, now time.Time, random io.Reader) (*Authority, *Info, error) {
	if err := checkText("family name", name, maxNameBytes, false); err != nil {
		return nil, nil, fmt.Errorf("create family: %w", err)
	}
	keyPath, infoPath := filepath.Join(dir, AuthorityKeyFile), filepath.Join(dir, InfoFile)
	for _, p := range []string{keyPath, infoPath} {
		ok, err := exists(p)
		if err != nil {
			return nil, nil, fmt.Errorf("family: create family: %w", err)
		}
		if ok {
			return nil, nil, fmt.Errorf("%w: a family already exists in %s (%s is there); use another directory", ErrConflict, dir, filepath.Base(p))
		}
	}
	pub, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return nil, nil, fmt.Errorf("family: create family: generate key: %w", err)
	}
	auth := &Authority{familyID: FamilyIDOf(pub), priv: priv}
	info := &Info{
		Format:             FormatVersion,
		FamilyID:           auth.familyID,
		Name:               name,
		AuthorityPublicKey: bytes.Clone(pub),
		Bootstrap:          []string{},
		CreatedAt:          stamp(now),
	}
	infoData, err := info.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("create family: %w", err)
	}
	keyData, err := encodeFile(authorityKeyFile{
		Format: FormatVersion, Type: kindAuthorityKey, FamilyID: auth.familyID, PrivateKey: priv,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create family: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("family: create family: %w", err)
	}
	// The key first: a crash in between leaves a directory that refuses a
	// second create, never a family.json whose key is lost.
	if err := writeFileAtomic(keyPath, keyData, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(infoPath, infoData, 0o644); err != nil {
		return nil, nil, err
	}
	return auth, info, nil
}

// LoadAuthority loads dir/family.json and dir/authority.key and checks that
// they belong together.
func LoadAuthority(dir string) (*Authority, *Info, error) {
	info, err := LoadInfo(filepath.Join(dir, InfoFile))
	if err != nil {
		return nil, nil, err
	}
	keyPath := filepath.Join(dir, AuthorityKeyFile)
	data, err := readFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("family: %s has no %s: this is not the family's authority directory", dir, AuthorityKeyFile)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("family: load authority key: %w", err)
	}
	auth, err := parseAuthorityKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if auth.familyID != info.FamilyID || !bytes.Equal(auth.PublicKey(), info.AuthorityPublicKey) {
		return nil, nil, fmt.Errorf("%w: %s belongs to family %s but %s describes family %s", ErrWrongFamily, AuthorityKeyFile, auth.familyID, InfoFile, info.FamilyID)
	}
	return auth, info, nil
}

// parseAuthorityKey decodes authority.key. Its errors never quote the file.
func parseAuthorityKey(data []byte) (*Authority, error) {
	var f authorityKeyFile
	if err := decodeFile(data, kindAuthorityKey, "authority key", &f); err != nil {
		return nil, err
	}
	if len(f.PrivateKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: authority key holds %d key bytes, want %d", ErrFormat, len(f.PrivateKey), ed25519.PrivateKeySize)
	}
	priv := ed25519.PrivateKey(f.PrivateKey)
	// The 64 bytes are seed||public; a damaged file could pair them wrongly.
	if !bytes.Equal(ed25519.NewKeyFromSeed(priv.Seed()), priv) {
		return nil, fmt.Errorf("%w: authority key is damaged (its public half does not match its seed)", ErrFormat)
	}
	id := FamilyIDOf(priv.Public().(ed25519.PublicKey))
	if f.FamilyID != id {
		return nil, fmt.Errorf("%w: authority key names family %.70q but its key gives %s; the file was altered", ErrFormat, f.FamilyID, id)
	}
	return &Authority{familyID: id, priv: priv}, nil
}
