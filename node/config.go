package node

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/datadir"
	"github.com/ppsync/ppsync/notify"
)

// Files in a node's data directory (node/datadir names them).
const (
	ConfigFile      = datadir.ConfigFile
	NodeKeyFile     = datadir.NodeKeyFile
	APIKeyFile      = datadir.APIKeyFile
	FamilyFile      = datadir.FamilyFile
	JoinRequestFile = datadir.JoinRequestFile
	RuntimeFile     = datadir.RuntimeFile
	CertsDir        = datadir.CertsDir
	DBDir           = datadir.DBDir
	IngestDir       = datadir.IngestDir
)

// Defaults of the settings in ppsync.toml.
const (
	DefaultAPI          = "127.0.0.1:7474"
	DefaultSyncInterval = 30 * time.Second
	DefaultListen       = "/ip4/0.0.0.0/tcp/7475"
	// DefaultMemoryLimit is the soft memory limit of a node: sized for a
	// clinic's desktop machine, where ppsync runs beside the practice
	// software. See MemoryLimit.
	DefaultMemoryLimit = 96 << 20
	// MinMemoryLimit is the smallest memory_limit a node accepts: below it the
	// node would spend its time collecting garbage.
	MinMemoryLimit = 48 << 20
	// DefaultRelayMemoryLimit is the memory_limit `ppsync init --role relay`
	// writes: a relay serves many families from one process on a server of
	// its own, about 50 KB a family while idle and about 1.3 MB while its
	// three sites are connected (the goroutines and buffers of their
	// connections and circuits). A soft limit below what the process holds
	// only makes the garbage collector run without end: at 1 GiB, with 2,400
	// sites connected, it took a quarter of the relay's CPU.
	DefaultRelayMemoryLimit = 1536 << 20
)

// Config is a node's configuration: DATA/ppsync.toml, then flags. Only the
// cmd package reads flags and the environment; it fills the fields here.
type Config struct {
	// DataDir is the node's data directory (required).
	DataDir string `toml:"-"`
	// Listen are the libp2p addresses the node listens on.
	Listen []string `toml:"listen"`
	// API is the HOST:PORT of the local HTTP API; 127.0.0.1 keeps it on this machine.
	// Any other address is served over HTTPS (DATA/api-tls.crt) unless
	// APIInsecure.
	API string `toml:"api"`
	// APIInsecure serves a non-loopback API as plain HTTP, with a warning at
	// every start (only on a network where nobody can listen in).
	APIInsecure bool `toml:"api_insecure"`
	// APIHosts are names, besides loopback and the API's own address, that
	// requests may carry in their Host header (the name of this machine on
	// the LAN). Any other name is refused, against DNS rebinding.
	APIHosts []string `toml:"api_hosts"`
	// Bootstrap are extra addresses of family members (usually the relay),
	// added to those in family.json.
	Bootstrap []string `toml:"bootstrap"`
	// SyncInterval is how often the node runs a sync round with its peers.
	SyncInterval Duration `toml:"sync_interval"`
	// ConnectivityCheck lets the node judge itself offline by probing; turn it
	// off where antivirus or a firewall breaks the probe.
	ConnectivityCheck bool `toml:"connectivity_check"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// MDNS finds family members on the local network (multicast DNS).
	MDNS bool `toml:"lan_discovery"`
	// DB is the practice database to sync: sqlite:PATH (empty: none; the
	// node then syncs only what is written through its API).
	DB string `toml:"db"`
	// DBTables, when set, are the only tables synced; DBExclude are never.
	DBTables  []string `toml:"db_tables"`
	DBExclude []string `toml:"db_exclude"`
	// DBPasswordFile holds the PostgreSQL password (else the environment's
	// PPSYNC_DB_PASSWORD or PGPASSWORD); never printed.
	DBPasswordFile string `toml:"db_password_file"`
	// MemoryLimit is the node's soft memory limit in bytes (memory_limit,
	// like "96MB"; PPSYNC_MEMORY_LIMIT overrides it). `ppsync run` gives it to
	// the Go runtime (debug.SetMemoryLimit), which collects garbage harder as
	// the process nears it, and the node sizes its database caches from it.
	// It is soft: the node keeps working above it, only slower. Zero means
	// DefaultMemoryLimit.
	MemoryLimit ByteSize `toml:"memory_limit"`
	// SMTP is the mail server alerts are sent through ([smtp]).
	SMTP SMTPConfig `toml:"smtp"`
	// Relay holds each family a relay serves to its limits.
	Relay RelayConfig `toml:"relay"`
	// HeartbeatInterval is how often the node gossips its heartbeat (tests
	// shorten it; default 5s).
	HeartbeatInterval time.Duration `toml:"-"`
	// DiskReserve is the free space below which writes are refused (default
	// 64 MiB; 0 turns the check off).
	DiskReserve uint64 `toml:"-"`
	// SleepAfter is how long a relay's family stays awake (its gossip and
	// loops running) after its last connected member left (default 1
	// minute, mesh.Config.SleepAfter). Tests shorten it.
	SleepAfter time.Duration `toml:"-"`

	// Set by the program, not the file.
	Version string       `toml:"-"` // software version, gossiped to peers
	Logger  *slog.Logger `toml:"-"`
	// Level, when set, is the running logger's level: `ppsync set
	// log-level` changes it at once, besides saving the setting.
	Level *slog.LevelVar      `toml:"-"`
	Env   func(string) string `toml:"-"` // environment (PPSYNC_MACHINE_ID); nil: empty
	// Account returns the operating system account this process runs as
	// (nil: lock.CurrentAccount); tests give another.
	Account func() (lock.Account, error) `toml:"-"`
	Now     func() time.Time             `toml:"-"` // clock; nil: time.Now
	// AlertNow is the alert monitor's clock (nil: Now). Fault tests set it
	// (PPSYNC_ALERT_CLOCK) to put the monitor inside or outside opening
	// hours without shifting the node's own clock.
	AlertNow func() time.Time `toml:"-"`

	// plain writes own entries unsealed: only the benchmarks that measure
	// what encryption costs set it (never a user: there is no setting).
	plain bool
}

// SMTPConfig is the [smtp] table of ppsync.toml: the mail server the alert
// monitor sends through. The password comes from password_file or
// PPSYNC_SMTP_PASSWORD and is never printed.
type SMTPConfig struct {
	Server       string `toml:"server"` // host:port
	From         string `toml:"from"`
	TLS          string `toml:"tls"` // starttls (default), tls, none (only to 127.0.0.1)
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	CAFile       string `toml:"ca_file"` // PEM certificates to trust besides the system's (a private mail server)
}

// Duration is a time.Duration written as "30s" in TOML and JSON.
type Duration time.Duration

// MarshalText writes the duration as Go's time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses "30s", "5m", "1h".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like 30s, 5m or 1h)", string(b))
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a number of bytes written as "96MB" in TOML and JSON. KB, MB
// and GB count in units of 1024 (as a task manager shows memory); KiB, MiB
// and GiB are the same; a plain number is bytes.
type ByteSize uint64

// MarshalText writes the size in the largest unit that divides it.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		size uint64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}} {
		if uint64(b) >= u.size && uint64(b)%u.size == 0 {
			return fmt.Sprintf("%d%s", uint64(b)/u.size, u.name)
		}
	}
	return fmt.Sprintf("%dB", uint64(b))
}

// UnmarshalText parses "96MB", "1GB", "512MiB", "100000000".
func (b *ByteSize) UnmarshalText(t []byte) error {
	v, err := ParseByteSize(string(t))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// ParseByteSize parses a size like "96MB", "1.5GB", "512MiB" or "100000000"
// (bytes).
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	mult := map[string]float64{"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
		"G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}[unit]
	f, err := strconv.ParseFloat(num, 64)
	if mult == 0 || err != nil {
		return 0, fmt.Errorf("%q is not a size (write it like 96MB, 512MB or 1GB)", s)
	}
	v := f * mult
	if v >= 1<<50 {
		return 0, fmt.Errorf("%q is too large a size", s)
	}
	return ByteSize(v), nil
}

// Memory is the soft memory limit in force: MemoryLimit, or the default.
func (c *Config) Memory() uint64 {
	if c.MemoryLimit == 0 {
		return DefaultMemoryLimit
	}
	return uint64(c.MemoryLimit)
}

// DefaultConfig returns the defaults for a data directory.
func DefaultConfig(dataDir string) Config {
	return Config{
		DataDir:           dataDir,
		Listen:            []string{DefaultListen},
		API:               DefaultAPI,
		SyncInterval:      Duration(DefaultSyncInterval),
		Relay:             defaultRelayConfig(),
		ConnectivityCheck: true,
		LogLevel:          "info",
		MDNS:              true,
		DiskReserve:       64 << 20,
		MemoryLimit:       DefaultMemoryLimit,
	}
}

// Validate checks every setting and says which one is wrong and how to fix it
// (in the API's words: PUT /v1/settings answers 400 with the message).
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return badRequest("no data directory given (use --data DIR)")
	}
	host, port, err := net.SplitHostPort(c.API)
	if err != nil || port == "" {
		return badRequest("api address %q is not HOST:PORT (for example 127.0.0.1:7474)", c.API)
	}
	if host == "" {
		return badRequest("api address %q has no host; use 127.0.0.1 to keep the API on this machine", c.API)
	}
	for _, h := range c.APIHosts {
		if h == "" || net.ParseIP(h) == nil && strings.ContainsAny(h, " /:@[]") {
			return badRequest("api_hosts entry %q is not a host name or address (write it like reception-pc.clinic.local)", h)
		}
	}
	if d := time.Duration(c.SyncInterval); d < time.Second || d > 24*time.Hour {
		return badRequest("sync_interval %s is out of range (1s to 24h)", d)
	}
	if c.MemoryLimit != 0 && c.MemoryLimit < MinMemoryLimit {
		return badRequest("memory_limit %s is below the smallest a node runs in, %s (write it like 96MB or 1GB)", c.MemoryLimit, ByteSize(MinMemoryLimit))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return badRequest("log_level %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.DB != "" && !strings.HasPrefix(c.DB, "sqlite:") && !strings.HasPrefix(c.DB, "postgres://") && !strings.HasPrefix(c.DB, "postgresql://") {
		return badRequest("db %q is not a database URL ppsync knows (use sqlite:/path/to/practice.db or postgres://USER@HOST:PORT/DBNAME)", c.DB)
	}
	if c.SMTP != (SMTPConfig{}) {
		if err := (notify.SMTP{Server: c.SMTP.Server, From: c.SMTP.From, TLS: c.SMTP.TLS, Username: c.SMTP.Username}).Check(); err != nil {
			return badRequest("%v", err)
		}
	}
	if err := c.Relay.validate(); err != nil {
		return err
	}
	for _, a := range append(append([]string(nil), c.Listen...), c.Bootstrap...) {
		if !strings.HasPrefix(a, "/") {
			return badRequest("address %q is not a multiaddress (like /ip4/0.0.0.0/tcp/7475)", a)
		}
	}
	return nil
}

// notOwnerError refuses (exit 4) an account that cannot read a file of the
// data directory: it is not the account that set the node up.
func notOwnerError(dataDir, path string) error {
	who := "this account"
	if a, err := lock.CurrentAccount(); err == nil {
		who = "the account " + a.String()
	}
	return fmt.Errorf("%w: %s cannot read %s, so it is not the account that set this node up; run ppsync as the account that owns %s (the service that `ppsync service install` sets up does)",
		lock.ErrWrongAccount, who, path, dataDir)
}

// LoadConfig reads DATA/ppsync.toml over the defaults. A missing file gives
// the defaults; a damaged one gives an error that names the file and line.
func LoadConfig(dataDir string) (Config, error) {
	c := DefaultConfig(dataDir)
	path := filepath.Join(dataDir, ConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(dataDir); serr != nil {
			return c, fmt.Errorf("node: data directory %s does not exist; create it with `ppsync init --data %s ...`", dataDir, dataDir)
		}
		return c, nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return c, notOwnerError(dataDir, path)
	}
	if err != nil {
		return c, fmt.Errorf("node: read %s: %w", path, err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return c, fmt.Errorf("node: %s line %d column %d: %s; fix the file or delete it to get the defaults", path, row, col, de.Error())
		}
		var se *toml.StrictMissingError
		if errors.As(err, &se) {
			return c, fmt.Errorf("node: %s has a setting ppsync does not know: %s", path, strings.TrimSpace(se.String()))
		}
		return c, fmt.Errorf("node: %s is not valid: %v; fix the file or delete it to get the defaults", path, err)
	}
	c.DataDir = dataDir
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("node: %w (in %s)", err, path)
	}
	return c, nil
}

var configTemplate = template.Must(template.New("toml").Parse(`# ppsync node settings. Command-line flags override these;
# ` + "`ppsync set`" + ` changes them for the running node and saves them here.

# libp2p addresses this node listens on for its family's peers.
listen = [{{range $i, $a := .Listen}}{{if $i}}, {{end}}{{printf "%q" $a}}{{end}}]

# The local API and sync page (HOST:PORT). 127.0.0.1 keeps it on this machine.
api = {{printf "%q" .API}}

# A non-loopback api is served over HTTPS with a self-signed certificate
# (api-tls.crt in the data directory; ppsync status and the other commands pin
# it). api_insecure = true serves plain HTTP instead, with a warning at every start.
api_insecure = {{.APIInsecure}}

# Names this machine's API answers to besides 127.0.0.1, localhost and the api
# address (like "reception-pc.clinic.local"); other names are refused.
api_hosts = [{{range $i, $a := .APIHosts}}{{if $i}}, {{end}}{{printf "%q" $a}}{{end}}]

# Addresses of family members to dial (the relay), in addition to family.json's.
bootstrap = [{{range $i, $a := .Bootstrap}}{{if $i}}, {{end}}{{printf "%q" $a}}{{end}}]

# How often the node runs a sync round with its peers (30s, 5m, 1h).
sync_interval = {{printf "%q" .SyncIntervalText}}

# Probe the network to judge whether this node is online. Turn off where an
# antivirus or firewall breaks the probe and the node wrongly shows offline.
connectivity_check = {{.ConnectivityCheck}}

# The node's soft memory limit (like 96MB, 256MB or 1GB; PPSYNC_MEMORY_LIMIT in
# the environment overrides it). Near it the node collects garbage harder; its
# database caches are sized from it. Raise it on a relay serving many families.
memory_limit = {{printf "%q" .MemoryLimit.String}}

# debug, info, warn or error.
log_level = {{printf "%q" .LogLevel}}

# Find family members on the local network (multicast DNS), so sites in one
# building sync directly even without the internet.
lan_discovery = {{.MDNS}}

# The practice database this node keeps in sync: sqlite:/path/to/practice.db or
# postgres://USER@HOST:PORT/DBNAME?sslmode=... (password: db_password_file below,
# or PPSYNC_DB_PASSWORD in the environment).
# Set by ` + "`ppsync init --db`" + `, which binds the node to that database. Empty:
# none (only what is written through the API is synced).
db = {{printf "%q" .DB}}

# Sync only these tables (empty: every table with a primary key).
db_tables = [{{range $i, $a := .DBTables}}{{if $i}}, {{end}}{{printf "%q" $a}}{{end}}]

# Never sync these tables.
db_exclude = [{{range $i, $a := .DBExclude}}{{if $i}}, {{end}}{{printf "%q" $a}}{{end}}]

# PostgreSQL: a file holding the database password (mode 0600).
db_password_file = {{printf "%q" .DBPasswordFile}}

# The mail server alert emails go through (` + "`ppsync alerts add --email`" + `).
[smtp]
# host:port, like "smtp.example.com:587" (empty: no email alerts).
server = {{printf "%q" .SMTP.Server}}
# The sender's address.
from = {{printf "%q" .SMTP.From}}
# "starttls" (port 587), "tls" (port 465), or "none" (only to a server on 127.0.0.1).
tls = {{printf "%q" .SMTP.TLS}}
username = {{printf "%q" .SMTP.Username}}
# A file holding the password (mode 0600); or PPSYNC_SMTP_PASSWORD in the environment.
password_file = {{printf "%q" .SMTP.PasswordFile}}
# PEM certificates to trust for a mail server with a private certificate.
ca_file = {{printf "%q" .SMTP.CAFile}}

# A relay only: the limits it holds each family it serves to, so that one
# family's flood or bug cannot starve the others. Going over refuses what
# goes over (counted and logged); the family goes on. 0: no limit.
[relay]
# Connections to the family's members at once.
family_connections = {{.Relay.Connections}}
# Streams the family's members have open to the relay at once.
family_streams = {{.Relay.Streams}}
# Catch-up sessions served to the family's members at once.
family_catchups = {{.Relay.Catchups}}
# Gossip messages (entries and heartbeats) taken from the family per second.
family_gossip_per_second = {{.Relay.GossipPerSecond}}
# Megabytes of the family's logs the relay stores; beyond, it takes no new
# entries of the family (its sites keep them and sync directly or through
# another relay) until support raises the limit.
family_max_mb = {{.Relay.MaxMB}}
`))

// SaveConfig writes c to DATA/ppsync.toml, every setting present and commented.
func SaveConfig(c Config) error {
	var buf bytes.Buffer
	data := struct {
		Config
		SyncIntervalText string
	}{c, time.Duration(c.SyncInterval).String()}
	if err := configTemplate.Execute(&buf, data); err != nil {
		return fmt.Errorf("node: render config: %w", err)
	}
	return datadir.WriteFileAtomic(filepath.Join(c.DataDir, ConfigFile), buf.Bytes(), 0o644)
}

// RelayConfig is [relay] of ppsync.toml: the limits a relay holds each
// family it serves to (0: no limit).
type RelayConfig struct {
	Connections     int     `toml:"family_connections"`
	Streams         int     `toml:"family_streams"`
	Catchups        int     `toml:"family_catchups"`
	GossipPerSecond float64 `toml:"family_gossip_per_second"`
	MaxMB           int64   `toml:"family_max_mb"`
}

func defaultRelayConfig() RelayConfig {
	l := mesh.RelayLimits()
	return RelayConfig{Connections: l.Conns, Streams: l.Streams, Catchups: l.Catchups, GossipPerSecond: l.Gossip}
}

func (r RelayConfig) validate() error {
	if r.Connections < 0 || r.Streams < 0 || r.Catchups < 0 || r.GossipPerSecond < 0 || r.MaxMB < 0 {
		return badRequest("[relay] limits must not be negative (0 means no limit)")
	}
	return nil
}

// meshLimits are the family limits of the mesh.
func (r RelayConfig) meshLimits() mesh.Limits {
	return mesh.Limits{Conns: r.Connections, Streams: r.Streams, Catchups: r.Catchups, Gossip: r.GossipPerSecond}
}
