// Package seal is the cryptography of end-to-end encrypted entries: a
// family's data keys, sealing an entry's body with one (XChaCha20-Poly1305,
// the entry's header as associated data), and giving a key to another site by
// wrapping it to that site's X25519 key, which is derived from the site's
// Ed25519 node key (the one its certificate names). It holds no state and
// does no I/O.
package seal

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of a data key.
const KeySize = chacha20poly1305.KeySize

// ErrOpen is matched by every failure to open a sealed body or a wrapped key:
// a wrong key, a body moved to another entry, a change of one bit.
var ErrOpen = errors.New("seal: cannot open (wrong key, or the data was altered or moved)")

// Key is one data key of a family.
type Key struct {
	ID     string // hex of the first 16 bytes of SHA-256 over a label and the secret: names the key without revealing it
	Epoch  uint64 // the key epoch: a rotation starts a new one
	Secret [KeySize]byte
}

// NewKey makes a fresh random data key of an epoch.
func NewKey(epoch uint64) Key {
	var k Key
	_, _ = rand.Read(k.Secret[:]) // crypto/rand.Read never fails (Go 1.24+)
	k.Epoch = epoch
	k.ID = keyID(k.Secret)
	return k
}

// KeyFrom rebuilds a key from its secret (as stored).
func KeyFrom(epoch uint64, secret []byte) (Key, error) {
	var k Key
	if len(secret) != KeySize {
		return k, fmt.Errorf("seal: a data key is %d bytes, not %d", KeySize, len(secret))
	}
	copy(k.Secret[:], secret)
	k.Epoch, k.ID = epoch, keyID(k.Secret)
	return k, nil
}

func keyID(secret [KeySize]byte) string {
	h := sha256.New()
	h.Write([]byte("ppsync data key id\x00"))
	h.Write(secret[:])
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Seal encrypts plaintext with the key; ad (the entry's header) is bound to
// the result but not encrypted. The nonce is random (24 bytes) and leads the
// result.
func Seal(k Key, plaintext, ad []byte) []byte {
	aead, _ := chacha20poly1305.NewX(k.Secret[:]) // the key size is right by construction
	out := make([]byte, chacha20poly1305.NonceSizeX, chacha20poly1305.NonceSizeX+len(plaintext)+aead.Overhead())
	_, _ = rand.Read(out)
	return aead.Seal(out, out, plaintext, ad)
}

// Open decrypts what Seal made with the same key and ad.
func Open(k Key, sealed, ad []byte) ([]byte, error) {
	aead, _ := chacha20poly1305.NewX(k.Secret[:])
	if len(sealed) < chacha20poly1305.NonceSizeX+aead.Overhead() {
		return nil, ErrOpen
	}
	out, err := aead.Open(nil, sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:], ad)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// Overhead is how many bytes Seal adds.
const Overhead = chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

// X25519Private derives a node's X25519 key from its Ed25519 key, as RFC 8032
// derives the signing scalar: the first half of SHA-512 of the seed (X25519
// clamps it).
func X25519Private(key ed25519.PrivateKey) (*ecdh.PrivateKey, error) {
	h := sha512.Sum512(key.Seed())
	return ecdh.X25519().NewPrivateKey(h[:32])
}

// X25519Public derives the X25519 public key matching X25519Private from an
// Ed25519 public key (the birational map from Edwards to Montgomery form).
func X25519Public(pub ed25519.PublicKey) (*ecdh.PublicKey, error) {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, fmt.Errorf("seal: not an Ed25519 public key: %w", err)
	}
	return ecdh.X25519().NewPublicKey(p.BytesMontgomery())
}

// Wrapped is a data key wrapped to one recipient: an ephemeral X25519 public
// key and the sealed key. Only the holder of the recipient's node key opens it.
type Wrapped struct {
	Ephemeral []byte // 32 bytes
	Box       []byte // the key's secret, sealed
}

// Wrap seals k's secret to the recipient's Ed25519 public key. ad names
// what the wrap is for (family, key ID, epoch, recipient) and must be given
// again to Unwrap.
func Wrap(k Key, to ed25519.PublicKey, ad []byte) (Wrapped, error) {
	pub, err := X25519Public(to)
	if err != nil {
		return Wrapped{}, err
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Wrapped{}, fmt.Errorf("seal: ephemeral key: %w", err)
	}
	kek, err := wrapKey(eph, pub, eph.PublicKey().Bytes(), pub.Bytes())
	if err != nil {
		return Wrapped{}, err
	}
	return Wrapped{Ephemeral: eph.PublicKey().Bytes(), Box: Seal(kek, k.Secret[:], ad)}, nil
}

// Unwrap opens a wrapped key with the recipient's node key.
func Unwrap(w Wrapped, mine ed25519.PrivateKey, epoch uint64, ad []byte) (Key, error) {
	priv, err := X25519Private(mine)
	if err != nil {
		return Key{}, err
	}
	eph, err := ecdh.X25519().NewPublicKey(w.Ephemeral)
	if err != nil {
		return Key{}, ErrOpen
	}
	kek, err := wrapKey(priv, eph, w.Ephemeral, priv.PublicKey().Bytes())
	if err != nil {
		return Key{}, err
	}
	secret, err := Open(kek, w.Box, ad)
	if err != nil {
		return Key{}, err
	}
	return KeyFrom(epoch, secret)
}

// wrapKey derives the key-encryption key of one wrap from the X25519 shared
// secret, bound to both public keys.
func wrapKey(priv *ecdh.PrivateKey, pub *ecdh.PublicKey, ephPub, toPub []byte) (Key, error) {
	shared, err := priv.ECDH(pub)
	if err != nil {
		return Key{}, ErrOpen // a low-order point
	}
	info := append(append([]byte("ppsync key wrap v1\x00"), ephPub...), toPub...)
	kek, err := hkdf.Key(sha256.New, shared, nil, string(info), KeySize)
	if err != nil {
		return Key{}, fmt.Errorf("seal: derive: %w", err)
	}
	var k Key
	copy(k.Secret[:], kek)
	return k, nil
}
