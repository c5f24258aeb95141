// Package api holds the local HTTP API's request and response bodies (their
// JSON field names are a stable contract, documented in docs/api.md) and the
// client programs use to talk to a running node. It depends on the standard
// library only: a program that talks to a node does not link the node.
package api

import (
	"encoding/json"
	"time"
)

// Files of a data directory the client reads.
const (
	APIKeyFile  = "api.key"      // the API key (Authorization: Bearer KEY)
	RuntimeFile = "runtime.json" // a Runtime, written by a running node
)

// The local API's request and response bodies. docs/api.md documents them;
// the JSON field names are a stable contract.

// APIError is the body of every error response.
type APIError struct {
	Error string `json:"error"`          // one plain-language line: what happened and what to do
	Code  string `json:"code,omitempty"` // machine-readable: bad_request, unauthorized, forbidden, not_found, too_large, catching_up, forked, read_only, refused, disk_full, stopping, internal
}

// OpJSON is one operation as the API takes and shows it.
type OpJSON struct {
	Op     string         `json:"op"` // "put" or "delete"
	Table  string         `json:"table"`
	Key    string         `json:"key"`
	Fields map[string]any `json:"fields,omitempty"`
}

// TxRequest is one transaction: POST /v1/transactions, and one line of a batch.
type TxRequest struct {
	Ops []OpJSON `json:"ops"`
}

// TxResult answers POST /v1/transactions (and `ppsync put`/`delete`).
type TxResult struct {
	Site string `json:"site"`
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// BatchRequest is POST /v1/transactions/batch: many transactions, one entry
// each, committed all or none.
type BatchRequest struct {
	Transactions []TxRequest `json:"transactions"`
}

// BatchResult answers POST /v1/transactions/batch (and `ppsync import`).
type BatchResult struct {
	Transactions int    `json:"transactions"`
	LastSeq      uint64 `json:"last_seq"`
}

// RecordJSON is one record.
type RecordJSON struct {
	Table   string         `json:"table,omitempty"`
	Key     string         `json:"key"`
	Fields  map[string]any `json:"fields"`
	Deleted bool           `json:"deleted,omitempty"`
	Version *VersionJSON   `json:"version,omitempty"`
}

// VersionJSON says which entry wrote something.
type VersionJSON struct {
	Site string    `json:"site"`
	Seq  uint64    `json:"seq"`
	HLC  uint64    `json:"hlc"`
	Time time.Time `json:"time"` // wall-clock part of the HLC
}

// ListResult answers GET /v1/records/{table}.
type ListResult struct {
	Records []RecordJSON `json:"records"`
	Next    *string      `json:"next"` // pass as ?after= for the next page; null at the end
}

// ChangeJSON is one change feed item.
type ChangeJSON struct {
	Cursor uint64 `json:"cursor"`
	RecordJSON
}

// ChangesResult answers GET /v1/changes.
type ChangesResult struct {
	Changes []ChangeJSON `json:"changes"`
	Next    uint64       `json:"next"`       // pass as ?after= to follow on
	Cleared uint64       `json:"cleared_at"` // cursor at the last state rebuild (0: never)
}

// DigestResult answers GET /v1/digest.
type DigestResult struct {
	Digest string `json:"digest"`
}

// EntryJSON is one log entry, as `ppsync log` shows it.
type EntryJSON struct {
	Site   string            `json:"site"`
	Seq    uint64            `json:"seq"`
	Epoch  uint64            `json:"epoch"`
	Hash   string            `json:"hash"`
	Prev   string            `json:"prev"`
	HLC    uint64            `json:"hlc"`
	Time   time.Time         `json:"time"`
	Schema uint32            `json:"schema"`
	Deps   map[string]uint64 `json:"deps,omitempty"`
	Ops    []OpJSON          `json:"ops"`
	Key    string            `json:"key,omitempty"`    // the data key that sealed it ("": written in clear)
	Sealed bool              `json:"sealed,omitempty"` // its operations cannot be shown here (no key: a relay, or not given yet)
	Grants int               `json:"grants,omitempty"` // data keys it gives to sites
}

// LogResult answers GET /v1/log.
type LogResult struct {
	Entries []EntryJSON `json:"entries"` // newest last
}

// ConflictSideJSON is one side of a conflict.
type ConflictSideJSON struct {
	Site    string    `json:"site"`
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Deleted bool      `json:"deleted,omitempty"`
	Value   any       `json:"value"`
}

// ConflictJSON is one recorded conflict.
type ConflictJSON struct {
	ID       uint64           `json:"id"`
	Table    string           `json:"table"`
	Key      string           `json:"key"`
	Field    string           `json:"field"` // "" when a delete raced a write of the whole record
	Incoming ConflictSideJSON `json:"incoming"`
	Existing ConflictSideJSON `json:"existing"`
	Winner   string           `json:"winner"` // "site#seq"; "" for a row the database refused
	// Refused, set for a merged row the practice database would not take,
	// says why: Incoming is then the family's merged row, Existing the row
	// as the database holds it (deleted: it has none). The row is tried
	// again after every change until the database takes it.
	Refused string `json:"refused,omitempty"`
}

// ConflictsResult answers GET /v1/conflicts.
type ConflictsResult struct {
	// Conflicts are the rows the practice database refused (oldest first),
	// then the concurrent writes, newest first.
	Conflicts []ConflictJSON `json:"conflicts"`
}

// ForkJSON describes a detected fork.
type ForkJSON struct {
	Site    string `json:"site"`
	Seq     uint64 `json:"seq"`
	Held    string `json:"held"`
	Offered string `json:"offered"`
}

// Status answers GET /v1/status and is `ppsync status --json`.
type Status struct {
	Site            string            `json:"site"` // "" for a relay
	Role            string            `json:"role"`
	PeerID          string            `json:"peer_id"`
	Version         string            `json:"version"`
	FamilyID        string            `json:"family_id"`
	FamilyName      string            `json:"family_name"`
	Epoch           uint64            `json:"epoch"`
	Online          bool              `json:"online"`
	OfflineReason   string            `json:"offline_reason,omitempty"`
	Frontier        map[string]uint64 `json:"frontier"`
	Peers           int               `json:"peers"`
	Pending         uint64            `json:"pending"`
	VersionMismatch bool              `json:"version_mismatch"`
	Forks           []ForkJSON        `json:"forks"`
	LastSync        *time.Time        `json:"last_sync"`
	Records         uint64            `json:"records"`
	Conflicts       uint64            `json:"conflicts"`
	Held            int               `json:"held"` // entries waiting for a newer ppsync
	SyncInterval    string            `json:"sync_interval"`
	StartedAt       time.Time         `json:"started_at"`
	DataDir         string            `json:"data_dir"`
	API             string            `json:"api"`
	Writable        bool              `json:"writable"`
	WriteBlocked    string            `json:"write_blocked,omitempty"` // why writes are refused, if they are
	Warnings        []string          `json:"warnings"`                // plain-language problems to show prominently
	Bootstrap       []BootstrapJSON   `json:"bootstrap"`               // the addresses this node was given to reach the family
	Encryption      *EncryptionJSON   `json:"encryption,omitempty"`    // the family's data keys as this node stands with them
}

// EncryptionJSON is how a node stands with the family's data keys.
type EncryptionJSON struct {
	// State: sealing (own entries are sealed with Key), waiting (a key
	// exists that this site does not hold yet: entries sealed with it are
	// held), no-key (none made yet), blind (a relay: holds none).
	State  string `json:"state"`
	Key    string `json:"key,omitempty"` // the key own entries are sealed with
	Epoch  uint64 `json:"epoch,omitempty"`
	Keys   int    `json:"keys"` // keys known (held or seen given)
	Detail string `json:"detail"`
}

// KeysJSON answers GET /v1/keys and POST /v1/keys/rotate.
type KeysJSON struct {
	Blind bool      `json:"blind,omitempty"` // a relay: no keys
	Keys  []KeyJSON `json:"keys"`
}

// KeyJSON is one data key: never its secret.
type KeyJSON struct {
	ID      string `json:"id"`
	Epoch   uint64 `json:"epoch"`
	Held    bool   `json:"held"`
	GivenTo int    `json:"given_to"` // site certificates that have it
	Sealing bool   `json:"sealing,omitempty"`
}

// BootstrapJSON is one bootstrap address (family.json, --bootstrap or
// ppsync.toml) as the node sees it.
type BootstrapJSON struct {
	Addr   string     `json:"addr"`
	PeerID string     `json:"peer_id"`
	Site   string     `json:"site,omitempty"` // the member it proved to be
	State  string     `json:"state"`          // connected, trying, unreachable, not-member
	Detail string     `json:"detail,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
}

// Settings answers GET /v1/settings; PUT /v1/settings takes the fields to
// change (absent fields are kept) and saves them to ppsync.toml.
type Settings struct {
	SyncInterval      string `json:"sync_interval,omitempty"`
	ConnectivityCheck *bool  `json:"connectivity_check,omitempty"`
	LogLevel          string `json:"log_level,omitempty"`
}

// InstallResult answers POST /v1/install (body: a certificate or revocation
// file) and is what `ppsync install` prints.
type InstallResult struct {
	Installed string `json:"installed"` // "certificate" or "revocation"
	Site      string `json:"site"`
	Epoch     uint64 `json:"epoch"`
	Changed   bool   `json:"changed"` // false when it was already installed
	Running   bool   `json:"running"` // installed into a running node
}

// Runtime is DATA/runtime.json, written once the node is ready and removed on
// a clean stop.
type Runtime struct {
	PID    int      `json:"pid"`
	API    string   `json:"api"` // "http://127.0.0.1:PORT", or https:// when the API is not on loopback
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	// TLSFingerprint is the hex SHA-256 of the API's certificate when it
	// serves HTTPS: the client accepts that certificate only.
	TLSFingerprint string `json:"tls_fingerprint,omitempty"`
}

// Event is one item of GET /v1/events (server-sent events: "id: N",
// "event: TYPE", "data: JSON").
type Event struct {
	ID   uint64          `json:"id"`
	Type string          `json:"type"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data,omitempty"`
}

// DBStatus answers GET /v1/db and is `ppsync db status --json`.
type DBStatus struct {
	Driver         string          `json:"driver"` // "" when the node syncs no practice database
	Database       string          `json:"database,omitempty"`
	Tables         []string        `json:"tables"`
	PerTable       []DBTableStatus `json:"per_table"`
	Skipped        []string        `json:"skipped"` // tables not synced, with why
	SchemaVersion  uint32          `json:"schema_version"`
	Captured       uint64          `json:"captured"`        // changes captured into this site's log since start
	Applied        uint64          `json:"applied"`         // merged rows written into the database since start
	PendingCapture uint64          `json:"pending_capture"` // changes waiting in the database's change table
	PendingApply   uint64          `json:"pending_apply"`   // merged changes not yet written into the database
	LastCapture    *time.Time      `json:"last_capture"`
	LastApply      *time.Time      `json:"last_apply"`
	Loading        bool            `json:"loading"`   // the initial load runs
	LoadedRows     uint64          `json:"load_rows"` // rows published by the initial load so far
	Refused        []DBRowConflict `json:"refused"`   // merged rows the database refused (newest last)
	Warnings       []string        `json:"warnings"`  // tables whose new IDs can collide between sites, ...
	Problem        string          `json:"problem,omitempty"`
}

// DBTableStatus is one synced table's sync.
type DBTableStatus struct {
	Table          string     `json:"table"`
	Captured       uint64     `json:"captured"`        // changes captured since start
	Applied        uint64     `json:"applied"`         // merged rows written since start
	PendingCapture uint64     `json:"pending_capture"` // changes waiting in the change table
	PendingApply   uint64     `json:"pending_apply"`   // merged changes not yet written (of the first 10,000 waiting)
	LastCapture    *time.Time `json:"last_capture"`
	LastApply      *time.Time `json:"last_apply"`
	Refused        int        `json:"refused"`           // rows the database refused
	Problem        string     `json:"problem,omitempty"` // in plain words
}

// DBRowConflict is a merged row the database refused, with both sides.
type DBRowConflict struct {
	Table  string         `json:"table"`
	Key    string         `json:"key"`
	Reason string         `json:"reason"`
	Merged map[string]any `json:"merged"`
}

// DBCheckResult answers POST /v1/db/check and is `ppsync db check --json`.
type DBCheckResult struct {
	Checked     int          `json:"checked"` // rows compared
	Differences []DBRowDiff  `json:"differences"`
	Repaired    int          `json:"repaired"`
	Tables      []string     `json:"tables"`
	Complete    bool         `json:"complete"`  // false when the list was cut at the limit
	Conflicts   []DBConflict `json:"conflicts"` // rows two sites wrote concurrently (merged; ppsync conflicts shows both sides)
	Problem     string       `json:"problem,omitempty"`
	Time        time.Time    `json:"time"`
	Elapsed     string       `json:"elapsed"`
}

// DBConflict is a column two sites wrote concurrently with different values:
// the merged row holds the winner; both sides are named.
type DBConflict struct {
	Table  string   `json:"table"`
	Key    string   `json:"key"`
	Column string   `json:"column,omitempty"` // "" when one side deleted the row
	Sites  []string `json:"sites"`
	Values []any    `json:"values"` // in the order of Sites
	Winner string   `json:"winner"`
}

// DBRowDiff is one row that differs between the database and the merged
// state: missing (in the state, not in the database), extra (in the database,
// deleted in the state), different (columns differ), new (in the database,
// never seen by the family: captured by a repair).
type DBRowDiff struct {
	Table    string         `json:"table"`
	Key      string         `json:"key"`
	Kind     string         `json:"kind"`
	Columns  []string       `json:"columns,omitempty"`
	Database map[string]any `json:"database,omitempty"`
	Merged   map[string]any `json:"merged,omitempty"`
}

// LoginLink answers POST /v1/login-token.
type LoginLink struct {
	URL     string    `json:"url"`     // "http://127.0.0.1:PORT/?token=T"
	Expires time.Time `json:"expires"` // the link works once, until then
}

// SyncRequest is the body of POST /v1/sync.
type SyncRequest struct {
	Wait string `json:"wait,omitempty"` // e.g. "30s": wait for every member to catch up
}

// FamiliesResult answers GET /v1/families: the families a node serves (a
// relay may serve many; any other node, one).
type FamiliesResult struct {
	Families []FamilyInfo `json:"families"`
}

// FamilyInfo is one family a node serves (`ppsync relay families`).
type FamilyInfo struct {
	FamilyID    string            `json:"family_id"`
	Name        string            `json:"name"`
	Site        string            `json:"site,omitempty"` // this node's site name in the family
	First       bool              `json:"first,omitempty"`
	State       string            `json:"state"` // "serving", or "waiting for its certificate"
	Sites       []string          `json:"sites"`
	Frontier    map[string]uint64 `json:"frontier"`
	Backlog     uint64            `json:"backlog"`      // entries held here that connected or known members lack, summed
	BytesStored uint64            `json:"bytes_stored"` // the family's logs on disk (an estimate)
	OverStorage bool              `json:"over_storage"` // over [relay] family_max_mb: new entries are refused
	Online      bool              `json:"online"`
	Peers       int               `json:"peers"`        // members connected now
	LastContact *time.Time        `json:"last_contact"` // last heartbeat or hello of any member
	LastSync    *time.Time        `json:"last_sync"`
}

// RemoveFamilyResult answers DELETE /v1/families/{id}.
type RemoveFamilyResult struct {
	FamilyID string `json:"family_id"`
	Name     string `json:"name"`
}

// PeersResult answers GET /v1/peers.
type PeersResult struct {
	Peers []PeerJSON `json:"peers"`
}

// PeerJSON is one row of GET /v1/peers and `ppsync peers`.
type PeerJSON struct {
	Site      string            `json:"site"`
	Role      string            `json:"role"`
	PeerID    string            `json:"peer_id"`
	Connected bool              `json:"connected"`
	Via       string            `json:"via"` // direct, relay or "" when not connected
	Version   string            `json:"version"`
	Frontier  map[string]uint64 `json:"frontier"`
	Lag       uint64            `json:"lag"` // entries this node holds that the member does not
	LastSeen  *time.Time        `json:"last_seen"`
	ClockSkew string            `json:"clock_skew,omitempty"` // set when over 2 minutes
}

// Receipt is the answer of POST /v1/sync: per member, caught up or why not.
type Receipt struct {
	CaughtUp bool            `json:"caught_up"` // every member holds everything this node holds
	Members  []ReceiptMember `json:"members"`
	Waited   string          `json:"waited"`
}

// ReceiptMember is one member's line of a receipt.
type ReceiptMember struct {
	Site     string `json:"site"`
	PeerID   string `json:"peer_id"`
	CaughtUp bool   `json:"caught_up"`
	Behind   uint64 `json:"behind"` // entries it lacks
	Reason   string `json:"reason,omitempty"`
}
