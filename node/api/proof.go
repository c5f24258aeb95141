package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// HelloPath is the one endpoint that needs no API key: GET
// /v1/hello?nonce=HEX answers a [Hello] with the node's proof that it holds
// the API key. The client checks it before it sends the key, so a program
// that took over the port of a node that stopped (a stale runtime.json)
// never receives the key.
const HelloPath = "/v1/hello"

// Nonce lengths GET /v1/hello accepts, in bytes.
const (
	MinNonce = 16
	MaxNonce = 64
)

// Hello answers GET /v1/hello.
type Hello struct {
	Proof string `json:"proof"` // hex HMAC-SHA256(API key, nonce || "server")
}

// ServerProof is the node's answer to a client's nonce: HMAC-SHA256 keyed
// with the API key of the nonce followed by "server". Only a holder of the
// key can compute it, and it tells nothing of the key.
func ServerProof(key string, nonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(nonce)
	m.Write([]byte("server"))
	return m.Sum(nil)
}

// CertFingerprint is the lower-case hex SHA-256 of a certificate's DER
// bytes: what runtime.json's tls_fingerprint holds and the client pins.
func CertFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
