package api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Client errors. Errors of these classes wrap the sentinel (test with
// errors.Is).
var (
	// ErrNotRunning: no node runs on the data directory (no runtime.json, or
	// nothing answers at the address it names).
	ErrNotRunning = errors.New("node: the node is not running")
	// ErrNotFound: the record (or other thing asked for) does not exist.
	ErrNotFound = errors.New("node: not found")
)

// Client timeouts and limits.
const (
	clientDialTimeout    = 5 * time.Second
	clientProbeTimeout   = 2 * time.Second
	clientHeaderTimeout  = 5 * time.Minute // a large batch is answered once it is durable
	clientMaxErrorBody   = 64 << 10
	clientMaxSmallFile   = 64 << 10
	clientMaxResponse    = 1 << 30
	clientIdleConns      = 4
	clientIdleConnExpiry = 90 * time.Second
)

// APIStatusError is an error answer of the local API: a non-2xx status with
// an [APIError] body. Its message is the server's, written for people.
// errors.Is(err, ErrNotFound) holds when its code is "not_found".
type APIStatusError struct {
	Status int
	APIError
}

// Error returns the server's message.
func (e *APIStatusError) Error() string {
	if e.APIError.Error != "" {
		return e.APIError.Error
	}
	return fmt.Sprintf("the node answered %d %s", e.Status, http.StatusText(e.Status))
}

// Unwrap makes errors.Is(err, ErrNotFound) true for a not_found answer.
func (e *APIStatusError) Unwrap() error {
	if e.Code == "not_found" {
		return ErrNotFound
	}
	return nil
}

// Client talks to a running node through its local HTTP API. It is safe for
// concurrent use.
type Client struct {
	base   string // "http://127.0.0.1:PORT", no trailing slash
	key    string
	http   *http.Client
	family string // the family addressed at a relay serving several ("": its first)
}

// FamilyHeader names the family a request is for, at a relay that serves
// several (`--family ID`); without it a request is for the relay's first
// family. A node that serves no such family answers 404 unknown_family.
const FamilyHeader = "X-Ppsync-Family"

// SetFamily addresses every later request to family id at a relay serving
// several families ("" for its first).
func (c *Client) SetFamily(id string) { c.family = id }

// NewClient returns a client for the node running on dataDir: the API address
// comes from dataDir/runtime.json and the key from dataDir/api.key. Before
// it sends the key anywhere, the node must prove it holds it (Verify); when
// runtime.json is missing, nothing answers, or what answers cannot prove it,
// the error wraps ErrNotRunning (ErrNotTheNode for the last).
func NewClient(dataDir string) (*Client, error) {
	raw, err := clientReadSmall(filepath.Join(dataDir, RuntimeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotRunning, dataDir, RuntimeFile)
	}
	if err != nil {
		return nil, fmt.Errorf("node: client: %w", err)
	}
	var rt Runtime
	if err := json.Unmarshal(raw, &rt); err != nil {
		return nil, fmt.Errorf("node: client: %s is damaged (%v); stop the node if one runs, delete the file and start it again", filepath.Join(dataDir, RuntimeFile), err)
	}
	keyData, err := clientReadSmall(filepath.Join(dataDir, APIKeyFile))
	if err != nil {
		return nil, fmt.Errorf("node: client: cannot read the API key: %w", err)
	}
	key := strings.TrimSpace(string(keyData))
	if key == "" {
		return nil, fmt.Errorf("node: client: %s is empty; restart the node to write a new key", filepath.Join(dataDir, APIKeyFile))
	}
	c, err := NewClientPinned(rt.API, key, rt.TLSFingerprint)
	if err != nil {
		return nil, fmt.Errorf("node: client: %s: %w", filepath.Join(dataDir, RuntimeFile), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientProbeTimeout)
	defer cancel()
	if err := c.Verify(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ErrNotTheNode: something answers at the address runtime.json names, but it
// cannot prove it holds the API key (a program that took the port of a node
// that stopped, or a node that was set up again). The API key was not sent.
// It wraps ErrNotRunning.
var ErrNotTheNode = fmt.Errorf("%w: another program answers at its address", ErrNotRunning)

// ErrWrongKey: a node answers at the address runtime.json names, but its
// proof is for another API key than the one in api.key (another node, or
// api.key changed since it started). The key was not sent.
var ErrWrongKey = errors.New("node: the node does not hold this API key")

// Verify has the node prove that it holds the API key before any request
// carries the key: it sends a random nonce to GET /v1/hello and checks the
// answer against [ServerProof]. Nothing answering gives an error wrapping
// ErrNotRunning; no proof one wrapping ErrNotTheNode (and so
// ErrNotRunning); a proof for another key one wrapping ErrWrongKey.
func (c *Client) Verify(ctx context.Context) error {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("node: client: make a nonce: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+HelloPath+"?nonce="+hex.EncodeToString(nonce), nil)
	if err != nil {
		return fmt.Errorf("node: client: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w: nothing answers at %s (%s is left from a run that did not stop cleanly)", ErrNotRunning, c.base, RuntimeFile)
		}
		return fmt.Errorf("%w: %s did not prove it is this node (%v); the API key was not sent", ErrNotTheNode, c.base, err)
	}
	defer resp.Body.Close()
	var h Hello
	dec := json.NewDecoder(io.LimitReader(resp.Body, clientMaxErrorBody))
	if resp.StatusCode != http.StatusOK || dec.Decode(&h) != nil {
		return fmt.Errorf("%w: %s answered %d, not this node's proof of its API key; the key was not sent (%s is left from an earlier run, or the node is an older ppsync)", ErrNotTheNode, c.base, resp.StatusCode, RuntimeFile)
	}
	got, err := hex.DecodeString(h.Proof)
	if err != nil || !hmac.Equal(got, ServerProof(c.key, nonce)) {
		return fmt.Errorf("%w: the node at %s does not hold the API key in %s (it is another node, or %s changed since it started: restart it); the key was not sent", ErrWrongKey, c.base, APIKeyFile, APIKeyFile)
	}
	return nil
}

// NewClientPinned is NewClientFor for an API that may serve HTTPS: with an
// https:// address it accepts only the certificate whose SHA-256 is
// fingerprint (runtime.json's tls_fingerprint), and refuses to be made
// without one. It does not contact the node.
func NewClientPinned(baseURL, key, fingerprint string) (*Client, error) {
	c, err := NewClientFor(baseURL, key)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(c.base, "https://") {
		return c, nil
	}
	fingerprint = strings.ToLower(strings.TrimSpace(fingerprint))
	if len(fingerprint) != 2*sha256.Size {
		return nil, fmt.Errorf("the API at %s serves HTTPS but its certificate's fingerprint is missing (tls_fingerprint); restart the node to write it", c.base)
	}
	tr := c.http.Transport.(*http.Transport)
	tr.TLSClientConfig = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // the certificate is self-signed: VerifyConnection pins it instead
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || CertFingerprint(cs.PeerCertificates[0].Raw) != fingerprint {
				return fmt.Errorf("the API's certificate is not the one in %s (fingerprint %.16s…); the connection was refused", RuntimeFile, fingerprint)
			}
			return nil
		},
	}
	return c, nil
}

// NewClientFor returns a client for the API at baseURL ("http://HOST:PORT")
// with the given key. It does not contact the node (see Verify); an https://
// address needs NewClientPinned.
func NewClientFor(baseURL, key string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("the API address %.100q is not an http:// URL", baseURL)
	}
	tr := &http.Transport{
		Proxy:                 nil, // the API is local: never through a proxy
		DialContext:           (&net.Dialer{Timeout: clientDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   clientIdleConns,
		IdleConnTimeout:       clientIdleConnExpiry,
		ResponseHeaderTimeout: clientHeaderTimeout,
		DisableCompression:    true,
	}
	return &Client{base: u.String(), key: key, http: &http.Client{Transport: tr}}, nil
}

// BaseURL returns the API's base URL.
func (c *Client) BaseURL() string { return c.base }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Status returns the node's status (GET /v1/status).
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, "", &s)
	return s, err
}

// DBStatus returns the practice database's sync (GET /v1/db).
func (c *Client) DBStatus(ctx context.Context) (DBStatus, error) {
	var s DBStatus
	err := c.do(ctx, http.MethodGet, "/v1/db", nil, "", &s)
	return s, err
}

// DBCheck compares the practice database with the merged state and, with
// repair, makes it match (POST /v1/db/check).
func (c *Client) DBCheck(ctx context.Context, repair bool) (DBCheckResult, error) {
	var r DBCheckResult
	body, _ := json.Marshal(map[string]bool{"repair": repair})
	err := c.do(ctx, http.MethodPost, "/v1/db/check", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// Transact commits one transaction (POST /v1/transactions).
func (c *Client) Transact(ctx context.Context, tx TxRequest) (TxResult, error) {
	var r TxResult
	body, err := json.Marshal(tx)
	if err != nil {
		return r, fmt.Errorf("node: transact: %w", err)
	}
	err = c.do(ctx, http.MethodPost, "/v1/transactions", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// Batch commits many transactions, all or none (POST /v1/transactions/batch).
func (c *Client) Batch(ctx context.Context, b BatchRequest) (BatchResult, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return BatchResult{}, fmt.Errorf("node: batch: %w", err)
	}
	return c.BatchRaw(ctx, body)
}

// BatchRaw is Batch with a body the caller already encoded as a JSON
// [BatchRequest]; importers use it to send lines they validated without
// encoding them again.
func (c *Client) BatchRaw(ctx context.Context, body []byte) (BatchResult, error) {
	var r BatchResult
	err := c.do(ctx, http.MethodPost, "/v1/transactions/batch", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// Get returns the live record table/key (GET /v1/records/{table}/{key}); an
// absent record gives an error wrapping ErrNotFound.
func (c *Client) Get(ctx context.Context, table, key string) (RecordJSON, error) {
	var r RecordJSON
	err := c.do(ctx, http.MethodGet, "/v1/records/"+url.PathEscape(table)+"/"+url.PathEscape(key), nil, "", &r)
	return r, err
}

// List returns up to limit live records of table with keys after after, in
// key order (GET /v1/records/{table}); limit <= 0 takes the server's default.
// Page on with the result's Next until it is nil.
func (c *Client) List(ctx context.Context, table, after string, limit int) (ListResult, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	clientSetLimit(q, limit)
	var r ListResult
	err := c.do(ctx, http.MethodGet, "/v1/records/"+url.PathEscape(table)+clientQuery(q), nil, "", &r)
	return r, err
}

// Changes returns the change feed after a cursor (GET /v1/changes).
func (c *Client) Changes(ctx context.Context, after uint64, limit int) (ChangesResult, error) {
	q := url.Values{}
	if after > 0 {
		q.Set("after", strconv.FormatUint(after, 10))
	}
	clientSetLimit(q, limit)
	var r ChangesResult
	err := c.do(ctx, http.MethodGet, "/v1/changes"+clientQuery(q), nil, "", &r)
	return r, err
}

// Digest returns the hex digest of the whole state (GET /v1/digest).
func (c *Client) Digest(ctx context.Context) (string, error) {
	var r DigestResult
	err := c.do(ctx, http.MethodGet, "/v1/digest", nil, "", &r)
	return r.Digest, err
}

// Keys lists the family's data keys as the node knows them (GET /v1/keys).
func (c *Client) Keys(ctx context.Context) (KeysJSON, error) {
	var r KeysJSON
	err := c.do(ctx, http.MethodGet, "/v1/keys", nil, "", &r)
	return r, err
}

// RotateKey starts a new key epoch (POST /v1/keys/rotate).
func (c *Client) RotateKey(ctx context.Context) (KeysJSON, error) {
	var r KeysJSON
	err := c.do(ctx, http.MethodPost, "/v1/keys/rotate", nil, "", &r)
	return r, err
}

// Log returns log entries, newest last (GET /v1/log): the newest limit
// entries of site, or of every site when site is "".
func (c *Client) Log(ctx context.Context, site string, limit int) (LogResult, error) {
	q := url.Values{}
	if site != "" {
		q.Set("site", site)
	}
	clientSetLimit(q, limit)
	var r LogResult
	err := c.do(ctx, http.MethodGet, "/v1/log"+clientQuery(q), nil, "", &r)
	return r, err
}

// LogRange returns up to limit entries of site from seq from on, oldest
// first (GET /v1/log?site=S&from=N).
func (c *Client) LogRange(ctx context.Context, site string, from uint64, limit int) (LogResult, error) {
	q := url.Values{}
	q.Set("site", site)
	q.Set("from", strconv.FormatUint(from, 10))
	clientSetLimit(q, limit)
	var r LogResult
	err := c.do(ctx, http.MethodGet, "/v1/log"+clientQuery(q), nil, "", &r)
	return r, err
}

// Conflicts returns recorded conflicts, newest first (GET /v1/conflicts).
func (c *Client) Conflicts(ctx context.Context, limit int) (ConflictsResult, error) {
	q := url.Values{}
	clientSetLimit(q, limit)
	var r ConflictsResult
	err := c.do(ctx, http.MethodGet, "/v1/conflicts"+clientQuery(q), nil, "", &r)
	return r, err
}

// Settings returns the node's changeable settings (GET /v1/settings).
func (c *Client) Settings(ctx context.Context) (Settings, error) {
	var r Settings
	err := c.do(ctx, http.MethodGet, "/v1/settings", nil, "", &r)
	return r, err
}

// UpdateSettings changes the settings given (empty fields are kept), saves
// them and returns them all (PUT /v1/settings).
func (c *Client) UpdateSettings(ctx context.Context, s Settings) (Settings, error) {
	body, err := json.Marshal(s)
	if err != nil {
		return Settings{}, fmt.Errorf("node: settings: %w", err)
	}
	var r Settings
	err = c.do(ctx, http.MethodPut, "/v1/settings", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// Install installs a certificate or revocation file into the running node
// (POST /v1/install with the file's bytes).
func (c *Client) Install(ctx context.Context, data []byte) (InstallResult, error) {
	var r InstallResult
	err := c.do(ctx, http.MethodPost, "/v1/install", bytes.NewReader(data), "application/json", &r)
	return r, err
}

// do sends one request and decodes a 2xx answer into out (numbers as
// json.Number, so integers keep every digit). An answer outside 2xx becomes
// an *APIStatusError; a refused connection an error wrapping ErrNotRunning.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("node: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Accept", "application/json")
	if c.family != "" {
		req.Header.Set(FamilyHeader, c.family)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w: nothing answers at %s", ErrNotRunning, c.base)
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("node: %s %s: %w", method, path, ctxErr)
		}
		return fmt.Errorf("node: %s %s: the node did not answer: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return clientStatusError(resp)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, clientMaxResponse))
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("node: %s %s: the node's answer is not valid JSON: %w", method, path, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, clientMaxErrorBody)) // let the connection be reused
	return nil
}

// clientStatusError decodes an error answer.
func clientStatusError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, clientMaxErrorBody))
	e := &APIStatusError{Status: resp.StatusCode}
	if json.Unmarshal(data, &e.APIError) != nil || e.APIError.Error == "" {
		e.APIError = APIError{Error: fmt.Sprintf("the node answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))}
		if resp.StatusCode == http.StatusNotFound {
			e.Code = "not_found"
		}
	}
	if e.Code == "" && resp.StatusCode == http.StatusUnauthorized {
		e.Code = "unauthorized"
	}
	return e
}

func clientSetLimit(q url.Values, limit int) {
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
}

func clientQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// clientReadSmall reads a small file whole, refusing one over clientMaxSmallFile.
func clientReadSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, clientMaxSmallFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > clientMaxSmallFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, clientMaxSmallFile)
	}
	return data, nil
}

// Peers lists every other family member as the node sees it (GET /v1/peers).
func (c *Client) Peers(ctx context.Context) (PeersResult, error) {
	var r PeersResult
	err := c.do(ctx, http.MethodGet, "/v1/peers", nil, "", &r)
	return r, err
}

// Families lists the families the node serves (GET /v1/families).
func (c *Client) Families(ctx context.Context) (FamiliesResult, error) {
	var r FamiliesResult
	err := c.do(ctx, http.MethodGet, "/v1/families", nil, "", &r)
	return r, err
}

// RemoveFamily stops a relay serving a further family and erases its data
// (DELETE /v1/families/{id}).
func (c *Client) RemoveFamily(ctx context.Context, id string) (RemoveFamilyResult, error) {
	var r RemoveFamilyResult
	err := c.do(ctx, http.MethodDelete, "/v1/families/"+url.PathEscape(id), nil, "", &r)
	return r, err
}

// SyncNow starts a sync round; with wait > 0 it waits until every member
// holds everything the node holds or the time runs out (POST /v1/sync).
func (c *Client) SyncNow(ctx context.Context, wait time.Duration) (Receipt, error) {
	var r Receipt
	req := SyncRequest{}
	if wait > 0 {
		req.Wait = wait.String()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return r, fmt.Errorf("node: sync now: %w", err)
	}
	err = c.do(ctx, http.MethodPost, "/v1/sync", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// LoginLink asks the node for a one-time link to its sync page (POST
// /v1/login-token); `ppsync open` prints it.
func (c *Client) LoginLink(ctx context.Context) (LoginLink, error) {
	var l LoginLink
	err := c.do(ctx, http.MethodPost, "/v1/login-token", nil, "", &l)
	return l, err
}
