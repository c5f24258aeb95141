//go:build linux

package fault

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/hlc"
	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/txlog"
)

// Held is what a stopped node's database holds of one site: the hashes of
// its applied log, of its quarantined entries and of its fork evidence. The
// API shows none of the last two, so the harness reads the database itself
// (read only in effect: nothing is appended).
type Held struct {
	Head        uint64
	Applied     map[string]uint64 // entry hash -> seq, seqs 1..Head
	Quarantined map[string]uint64
	Evidence    map[string]uint64
}

// Has says where the entry with that hash is kept: "applied", "quarantined",
// "evidence" or "" (not held).
func (h Held) Has(hash string) string {
	switch {
	case h.Applied[hash] > 0:
		return "applied"
	case h.Quarantined[hash] > 0:
		return "quarantined"
	case h.Evidence[hash] > 0:
		return "evidence"
	}
	return ""
}

// InspectSite reads what the stopped node on data holds of site.
func InspectSite(data, familyID, site string) (Held, error) {
	held := Held{Applied: map[string]uint64{}, Quarantined: map[string]uint64{}, Evidence: map[string]uint64{}}
	db, err := store.Open(filepath.Join(data, node.DBDir), store.Options{})
	if err != nil {
		return held, err
	}
	defer db.Close()
	lg, err := txlog.Open(txlog.Config{DB: db, Family: familyID, Keys: noKeys{}, Apply: noApply{}, Clock: hlc.New(time.Now)})
	if err != nil {
		return held, err
	}
	defer lg.Close()
	held.Head = lg.Head(site).Seq
	for from := uint64(1); from <= held.Head; {
		es, err := lg.Range(site, from, 5000)
		if err != nil {
			return held, err
		}
		if len(es) == 0 {
			return held, fmt.Errorf("fault: %s: %s's log ends at %d, its head says %d", data, site, from-1, held.Head)
		}
		for _, e := range es {
			held.Applied[e.Hash.String()] = e.Seq
		}
		from = es[len(es)-1].Seq + 1
	}
	q, err := lg.Quarantined(site)
	if err != nil {
		return held, err
	}
	for _, e := range q {
		held.Quarantined[e.Hash.String()] = e.Seq
	}
	ev, err := lg.Evidence(site)
	if err != nil {
		return held, err
	}
	for _, e := range ev {
		held.Evidence[e.Hash.String()] = e.Seq
	}
	return held, nil
}

// noKeys and noApply satisfy txlog.Open for reading: nothing is verified or
// applied through them.
type noKeys struct{}

func (noKeys) SiteKey(string, uint64) (ed25519.PublicKey, error) {
	return nil, errors.New("fault: the inspector verifies nothing")
}

type noApply struct{}

func (noApply) ApplyAll(*pebble.Batch, []*wire.Signed) error {
	return errors.New("fault: the inspector applies nothing")
}
