package state

import (
	"encoding/binary"
	"fmt"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
)

// Sub-spaces of the state key space (the byte after store.PrefixState).
const (
	spaceRecord   byte = 'r' // table, key -> storedRecord: the digested state
	spaceLast     byte = 'l' // table, key -> feed cursor of the record's latest change, for records stored before they carried it (format 0x01)
	spaceFeed     byte = 'f' // cursor -> table, key
	spaceConflict byte = 'c' // conflict ID -> storedConflict
	spaceDeps     byte = 'd' // site, seq -> deps of that entry (other sites only)
	spaceSeen     byte = 'x' // table, key, field, the two entries -> conflict ID
	spaceMeta     byte = 'm' // name -> value
)

// Meta keys.
const (
	metaCounts = "counts" // storedCounts: live records and conflicts
	metaFloor  = "floor"  // storedFloor: feed cursor and conflict ID reached before the last Clear
)

// Name components (table names, record keys, site IDs) are written escaped and
// terminated, so that one component never is a prefix of another and the
// encoding sorts like the raw bytes: 0x00 becomes 0x00 0xff and the component
// ends with 0x00 0x01.
const (
	escByte  = 0x00
	escZero  = 0xff
	termByte = 0x01
)

func appendName(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == escByte {
			dst = append(dst, escByte, escZero)
		} else {
			dst = append(dst, s[i])
		}
	}
	return append(dst, escByte, termByte)
}

// readName decodes one name component from the front of b.
func readName(b []byte) (name string, rest []byte, err error) {
	var out []byte
	for i := 0; i < len(b); i++ {
		if b[i] != escByte {
			continue
		}
		if i+1 >= len(b) {
			break
		}
		switch b[i+1] {
		case termByte:
			if out == nil {
				return string(b[:i]), b[i+2:], nil
			}
			out = append(out, b[:i]...)
			return string(out), b[i+2:], nil
		case escZero:
			out = append(out, b[:i+1]...)
			b = b[i+2:]
			i = -1
		default:
			return "", nil, fmt.Errorf("bad escape 0x00 0x%02x in key component", b[i+1])
		}
	}
	return "", nil, fmt.Errorf("unterminated key component")
}

func spacePrefix(space byte) []byte { return []byte{store.PrefixState, space} }

func recordKey(table, key string) []byte {
	b := make([]byte, 0, 2+len(table)+len(key)+4)
	b = append(b, store.PrefixState, spaceRecord)
	b = appendName(b, table)
	return appendName(b, key)
}

// tablePrefix is the common prefix of every record key of table.
func tablePrefix(table string) []byte {
	b := make([]byte, 0, 2+len(table)+2)
	b = append(b, store.PrefixState, spaceRecord)
	return appendName(b, table)
}

// tableEnd is the smallest key after every record key of table: the
// component terminator 0x00 0x01 bumped to 0x00 0x02.
func tableEnd(table string) []byte {
	p := tablePrefix(table)
	p[len(p)-1]++
	return p
}

// splitRecordKey returns the table and key of a record key.
func splitRecordKey(k []byte) (table, key string, err error) {
	if len(k) < 2 || k[0] != store.PrefixState || k[1] != spaceRecord {
		return "", "", fmt.Errorf("not a record key")
	}
	table, rest, err := readName(k[2:])
	if err != nil {
		return "", "", err
	}
	key, rest, err = readName(rest)
	if err != nil {
		return "", "", err
	}
	if len(rest) != 0 {
		return "", "", fmt.Errorf("%d stray bytes after the record key", len(rest))
	}
	return table, key, nil
}

func lastKey(table, key string) []byte {
	b := make([]byte, 0, 2+len(table)+len(key)+4)
	b = append(b, store.PrefixState, spaceLast)
	b = appendName(b, table)
	return appendName(b, key)
}

func feedKey(cursor uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{store.PrefixState, spaceFeed}, cursor)
}

func conflictKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{store.PrefixState, spaceConflict}, id)
}

func depsKey(site string, seq uint64) []byte {
	b := make([]byte, 0, 2+len(site)+2+8)
	b = append(b, store.PrefixState, spaceDeps)
	b = appendName(b, site)
	return binary.BigEndian.AppendUint64(b, seq)
}

// conflictSeenKey identifies a conflict by what met, whichever arrived
// first: the record, the field, and the two entries (in ID order).
func conflictSeenKey(table, key, field string, x, y wire.ID) []byte {
	if x.Site > y.Site || (x.Site == y.Site && x.Seq > y.Seq) {
		x, y = y, x
	}
	b := make([]byte, 0, 2+len(table)+len(key)+len(field)+len(x.Site)+len(y.Site)+10+16)
	b = append(b, store.PrefixState, spaceSeen)
	b = appendName(b, table)
	b = appendName(b, key)
	b = appendName(b, field)
	b = appendName(b, x.Site)
	b = binary.BigEndian.AppendUint64(b, x.Seq)
	b = appendName(b, y.Site)
	return binary.BigEndian.AppendUint64(b, y.Seq)
}

func metaKey(name string) []byte {
	return append([]byte{store.PrefixState, spaceMeta}, name...)
}

// seqOfKey returns the big-endian uint64 that ends a feed or conflict key.
func seqOfKey(k []byte) (uint64, error) {
	if len(k) != 2+8 {
		return 0, fmt.Errorf("key of %d bytes, want 10", len(k))
	}
	return binary.BigEndian.Uint64(k[2:]), nil
}

// feedValue names the record a feed entry points to.
func feedValue(table, key string) []byte {
	b := make([]byte, 0, len(table)+len(key)+4)
	return appendName(appendName(b, table), key)
}

func splitFeedValue(v []byte) (table, key string, err error) {
	table, rest, err := readName(v)
	if err != nil {
		return "", "", err
	}
	key, rest, err = readName(rest)
	if err != nil {
		return "", "", err
	}
	if len(rest) != 0 {
		return "", "", fmt.Errorf("%d stray bytes after the record name", len(rest))
	}
	return table, key, nil
}
