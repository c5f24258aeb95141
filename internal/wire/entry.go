package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
)

// SchemaVersion is the newest entry schema this build can apply. Entries with a
// newer schema are stored and forwarded but applied only after an upgrade.
// Schema 2 entries may carry App, the practice software's schema version
// (schema 1 builds hold them: they cannot tell whether their practice
// database has the columns).
//
// Schema 3 entries are sealed (end-to-end encrypted: Key and Sealed instead of
// Ops) or carry key grants; schema 2 builds hold them.
const SchemaVersion = 3

// SchemaSealed is the schema of a sealed entry and of one that carries grants.
const SchemaSealed = 3

// SchemaFor returns the entry schema an entry needs: 2 when it carries a
// practice schema version, else 1 (readable by every build).
func SchemaFor(app uint32) uint32 {
	if app > 0 {
		return 2
	}
	return 1
}

// OpKind says what an operation does.
type OpKind uint8

// Operation kinds.
const (
	OpPut    OpKind = 1 // set the given fields of a record (other fields are kept)
	OpDelete OpKind = 2 // delete a whole record
)

func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one operation of an entry. Fields holds JSON-compatible values only
// (see NormalizeValue); it is nil for a delete.
type Op struct {
	Kind   OpKind         `codec:"k"`
	Table  string         `codec:"t"`
	Key    string         `codec:"y"`
	Fields map[string]any `codec:"f,omitempty"`
}

// Hash is the SHA-256 hash of an entry's canonical body.
type Hash [32]byte

// HashOf returns the hash of encoded body bytes.
func HashOf(body []byte) Hash { return sha256.Sum256(body) }

// IsZero reports whether h is the zero hash (the "previous hash" of seq 1).
func (h Hash) IsZero() bool { return h == Hash{} }

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Short returns the first 12 hex digits, for people.
func (h Hash) Short() string { return hex.EncodeToString(h[:6]) }

// ParseHash parses a 64-digit hex hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, errorf(ErrMalformed, "%q is not a 64-digit hex hash", s)
	}
	copy(h[:], b)
	return h, nil
}

// Entry is one transaction of one site: the unit that is signed, chained,
// stored, gossiped and applied. The zero Prev marks the first entry (seq 1).
type Entry struct {
	Family string            `codec:"fa"`           // family ID (hex)
	Site   string            `codec:"si"`           // writing site
	Epoch  uint64            `codec:"ep"`           // certificate epoch of the writer
	Seq    uint64            `codec:"sq"`           // 1, 2, 3, ... without gaps per site
	Prev   Hash              `codec:"pv"`           // hash of the site's entry seq-1 (zero for seq 1)
	HLC    uint64            `codec:"hl"`           // hybrid logical clock timestamp (see package hlc)
	Schema uint32            `codec:"sc"`           // schema version of the ops
	App    uint32            `codec:"ap,omitempty"` // the practice software's schema version it was written with (0: none)
	Deps   map[string]uint64 `codec:"dp,omitempty"` // writer's frontier: site -> highest contiguous seq held
	Ops    []Op              `codec:"op"`
	// Key names the family data key that sealed the operations (its ID); the
	// operations are then in Sealed (encrypted, the header as associated
	// data, see SealAD) and Ops is empty. "": the operations are in clear
	// (entries written before encryption).
	Key    string  `codec:"ky,omitempty"`
	Sealed []byte  `codec:"sl,omitempty"`
	Grants []Grant `codec:"gr,omitempty"` // data keys given to sites, each wrapped to its node key

	// Opened holds the operations of a sealed entry once they are known here
	// (sealed by this node, or opened with a key it holds). Never encoded.
	Opened []Op `codec:"-"`
}

// Grant gives one data key to one site: the key's secret wrapped to the
// X25519 key derived from the site's node key of one certificate epoch. It is
// in clear (a relay stores and forwards it, and cannot open it) and signed
// with its entry by the giver.
type Grant struct {
	Key      string `codec:"k"`  // the data key's ID
	KeyEpoch uint64 `codec:"e"`  // the key epoch (a rotation starts a new one)
	To       string `codec:"t"`  // the receiving site
	ToEpoch  uint64 `codec:"te"` // the certificate epoch whose node key it is wrapped to
	// Excl names the certificates (site@epoch) that must never receive this
	// key: the ones revoked when it was made. Every giver repeats it.
	Excl []string `codec:"x,omitempty"`
	Eph  []byte   `codec:"p"` // the wrap's ephemeral X25519 public key
	Box  []byte   `codec:"b"` // the key's secret, sealed
}

// MaxGrants bounds the grants of one entry.
const MaxGrants = 1024

// Payload returns the entry's operations as known here: Ops in clear, or the
// opened operations of a sealed entry (nil while it cannot be opened).
func (e *Entry) Payload() []Op {
	if e.Key != "" {
		return e.Opened
	}
	return e.Ops
}

// SealAD returns the associated data a sealed entry's operations are bound
// to: the entry's header (family, site, epoch, seq, prev, hlc, schema, app,
// deps, the key's ID and the grants' keys and recipients), so a ciphertext
// cannot be moved to another entry, another place in a chain or another key.
// It is built by hand, not by the codec: it runs once per entry sealed or
// opened.
func SealAD(e *Entry) ([]byte, error) {
	b := make([]byte, 0, 128+len(e.Deps)*24+len(e.Grants)*64)
	b = append(b, "ppsync sealed entry v1\x00"...)
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	num := func(v uint64) { b = binary.AppendUvarint(b, v) }
	str(e.Family)
	str(e.Site)
	num(e.Epoch)
	num(e.Seq)
	b = append(b, e.Prev[:]...)
	num(e.HLC)
	num(uint64(e.Schema))
	num(uint64(e.App))
	str(e.Key)
	sites := make([]string, 0, len(e.Deps))
	for s := range e.Deps {
		sites = append(sites, s)
	}
	slices.Sort(sites)
	num(uint64(len(sites)))
	for _, s := range sites {
		str(s)
		num(e.Deps[s])
	}
	num(uint64(len(e.Grants)))
	for i := range e.Grants {
		g := &e.Grants[i]
		str(g.Key)
		num(g.KeyEpoch)
		str(g.To)
		num(g.ToEpoch)
	}
	return b, nil
}

// ID names an entry: (site, seq). It is unique unless the site forked.
type ID struct {
	Site string
	Seq  uint64
}

func (id ID) String() string { return fmt.Sprintf("%s#%d", id.Site, id.Seq) }

// ID returns the entry's (site, seq).
func (e *Entry) ID() ID { return ID{Site: e.Site, Seq: e.Seq} }

// Validate checks every rule an entry must meet apart from its signature and
// its place in the chain: names, limits, op kinds and field values. It
// normalizes field values in place (see NormalizeValue).
func (e *Entry) Validate() error {
	checkOps, err := e.validateHeader()
	if err != nil || !checkOps {
		return err
	}
	return ValidateOps(e.Ops)
}

// validateHeader checks every rule of Validate but the operations in clear,
// and says whether the entry carries such operations to check (it is neither
// sealed nor a grant entry).
func (e *Entry) validateHeader() (checkOps bool, err error) {
	if err := ValidateSiteID(e.Site); err != nil {
		return false, err
	}
	if e.Family == "" || len(e.Family) > 128 {
		return false, errorf(ErrInvalid, "entry %s has no valid family ID", e.ID())
	}
	if e.Seq == 0 {
		return false, errorf(ErrInvalid, "entry of site %q has seq 0 (seqs start at 1)", e.Site)
	}
	if e.Epoch == 0 {
		return false, errorf(ErrInvalid, "entry %s has epoch 0 (epochs start at 1)", e.ID())
	}
	if e.Seq == 1 && !e.Prev.IsZero() {
		return false, errorf(ErrInvalid, "entry %s is the first of its site but names a previous hash", e.ID())
	}
	if e.Seq > 1 && e.Prev.IsZero() {
		return false, errorf(ErrInvalid, "entry %s has no previous hash", e.ID())
	}
	if e.Schema == 0 {
		return false, errorf(ErrInvalid, "entry %s has schema version 0", e.ID())
	}
	if len(e.Deps) > MaxDeps {
		return false, errorf(ErrTooLarge, "entry %s names %d sites in its deps, the limit is %d", e.ID(), len(e.Deps), MaxDeps)
	}
	for s := range e.Deps {
		if err := ValidateSiteID(s); err != nil {
			return false, fmt.Errorf("entry %s deps: %w", e.ID(), err)
		}
	}
	if len(e.Grants) > MaxGrants {
		return false, errorf(ErrTooLarge, "entry %s carries %d key grants, the limit is %d", e.ID(), len(e.Grants), MaxGrants)
	}
	for i := range e.Grants {
		g := &e.Grants[i]
		if g.Key == "" || len(g.Key) > 64 || g.KeyEpoch == 0 || g.ToEpoch == 0 || len(g.Eph) != 32 || len(g.Box) == 0 || len(g.Box) > 256 || len(g.Excl) > MaxDeps {
			return false, errorf(ErrInvalid, "entry %s has a malformed key grant (%d)", e.ID(), i+1)
		}
		if err := ValidateSiteID(g.To); err != nil {
			return false, fmt.Errorf("entry %s key grant %d: %w", e.ID(), i+1, err)
		}
	}
	switch {
	case e.Key != "":
		if len(e.Ops) > 0 || len(e.Sealed) == 0 || len(e.Key) > 64 || e.Schema < SchemaSealed {
			return false, errorf(ErrInvalid, "entry %s is sealed with key %q but carries operations in clear, no sealed body or schema %d", e.ID(), e.Key, e.Schema)
		}
		return false, nil // the operations are checked when opened
	case len(e.Sealed) > 0:
		return false, errorf(ErrInvalid, "entry %s has a sealed body but names no key", e.ID())
	case len(e.Grants) > 0 && len(e.Ops) == 0:
		if e.Schema < SchemaSealed {
			return false, errorf(ErrInvalid, "entry %s carries key grants with schema %d", e.ID(), e.Schema)
		}
		return false, nil // a grant entry: keys only
	}
	return true, nil
}
