package state

import (
	"bytes"
	"errors"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ppsync/ppsync/internal/wire"
)

// readAheadEntries is the length of an ApplyAll from which the records its
// operations touch are read ahead, in key order, with one iterator: a run of
// a catch-up or a large commit group. Reading them one Get at a time costs a
// lookup through every level of the store each (most miss: a node catching up
// meets new records); one iterator that moves forward through sorted keys
// reuses its position in every level.
const readAheadEntries = 64

// records holds the stored records an ApplyAll touches, by record key: the
// stored bytes, or nil for a record that is not stored. Applying keeps it
// current, so a later operation on the same record reads what an earlier one
// wrote, exactly as a read of the batch would.
type records map[string][]byte

// get returns the record stored under key, as records says.
func (r records) get(key []byte) ([]byte, bool) {
	v := r[string(key)]
	return v, v != nil
}

// readRecords reads, through b (an indexed batch, so its earlier writes
// count), every record the operations of es touch; those the presence filter
// says were never stored it does not look for.
func (s *State) readRecords(b *pebble.Batch, es []*wire.Signed) (records, error) {
	recs := records{}
	var keys [][]byte
	for _, e := range es {
		for _, op := range e.Payload() {
			k := recordKey(op.Table, op.Key)
			if s.neverStored(k) {
				recs[string(k)] = nil
				continue
			}
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return recs, nil
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	it, err := b.NewIter(&pebble.IterOptions{
		LowerBound: keys[0],
		UpperBound: append(slices.Clone(keys[len(keys)-1]), 0),
	})
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if it.SeekGE(k) && bytes.Equal(it.Key(), k) {
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, errors.Join(err, it.Close())
			}
			recs[string(k)] = append(make([]byte, 0, len(v)), v...)
			continue
		}
		recs[string(k)] = nil
	}
	return recs, errors.Join(it.Error(), it.Close())
}
