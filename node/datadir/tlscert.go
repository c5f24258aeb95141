package datadir

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ppsync/ppsync/node/api"
)

// apiCertValidity is how long the API's self-signed certificate is valid.
// Clients pin its fingerprint, so it never needs a CA; a new one is made
// by deleting both files.
const apiCertValidity = 10 * 365 * 24 * time.Hour

// APICert is the API's TLS certificate and its fingerprint (hex SHA-256 of
// the certificate), which runtime.json carries for clients to pin.
type APICert struct {
	Cert        tls.Certificate
	Fingerprint string
}

// LoadOrCreateAPICert loads DATA/api-tls.crt and api-tls.key, or makes them
// (a self-signed ECDSA P-256 certificate for localhost, the loopback
// addresses and names; the key mode 0600) when neither exists.
func LoadOrCreateAPICert(dataDir string, names []string, now time.Time) (APICert, error) {
	certPath, keyPath := filepath.Join(dataDir, APITLSCertFile), filepath.Join(dataDir, APITLSKeyFile)
	_, cerr := os.Stat(certPath)
	_, kerr := os.Stat(keyPath)
	if errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist) {
		if err := writeAPICert(certPath, keyPath, names, now); err != nil {
			return APICert{}, err
		}
	}
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return APICert{}, fmt.Errorf("node: the API's TLS certificate %s or its key %s cannot be used (%v); delete both files and start the node again to get new ones", certPath, keyPath, err)
	}
	return APICert{Cert: c, Fingerprint: api.CertFingerprint(c.Certificate[0])}, nil
}

// writeAPICert makes a self-signed certificate and its key.
func writeAPICert(certPath, keyPath string, names []string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("node: make the API's TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("node: make the API's TLS certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ppsync local API"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(apiCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if !ip.IsUnspecified() {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if n != "" && n != "localhost" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("node: make the API's TLS certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("node: encode the API's TLS key: %w", err)
	}
	if err := WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
