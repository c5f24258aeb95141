package store

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// BenchmarkCatchUpWrites writes what a cold catch-up writes, with the
// options Open uses and, as the baseline, with Pebble's own defaults (the
// same cache and memtable sizes), and reports each one's rate, CPU per
// 1,000 entries and bytes written by flushes and compactions, and the
// ratios; and the store's options with each group's log entries stored as
// a table (Ingester), as the log stores a catch-up run, against the same
// options with everything in the batch. Per entry: a log entry of about 400 bytes (mostly ciphertext,
// which does not compress), a record of about 200 bytes, a change-feed key
// and the record's feed index; per group of 4,000: a head and the counts, then
// one synced commit. PPSYNC_BENCH_ENTRIES sets the entries (default
// 1,000,000). This isolates the database's own work (flushes and
// compactions are most of a catch-up's CPU): the end-to-end figure is
// integration's BenchmarkCatchUpVsPouchDB.
func BenchmarkCatchUpWrites(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PPSYNC_BENCH_ENTRIES")); err == nil && v > 0 {
		n = v
	}
	sizes := Options{CacheSize: 64 << 20, MemTableSize: 16 << 20}
	ours := func() *pebble.Options { return pebbleOptions(sizes) }
	defaults := func() *pebble.Options {
		return &pebble.Options{FormatMajorVersion: pebble.FormatNewest, CacheSize: sizes.CacheSize, MemTableSize: sizes.MemTableSize, Logger: pebbleLogger{}}
	}
	for b.Loop() {
		base := catchUpWrites(b, defaults(), n)
		now := catchUpWrites(b, ours(), n)
		ing := catchUpWritesWith(b, ours(), n, &sizes)
		b.Logf("Pebble's defaults: %.0f entries/s, %.1f ms CPU per 1,000, %d MB written by flushes and compactions", base.rate, base.cpuPer1k, base.written>>20)
		b.Logf("ppsync's options:  %.0f entries/s, %.1f ms CPU per 1,000, %d MB written by flushes and compactions", now.rate, now.cpuPer1k, now.written>>20)
		b.Logf("entries ingested:  %.0f entries/s, %.1f ms CPU per 1,000, %d MB written by flushes and compactions", ing.rate, ing.cpuPer1k, ing.written>>20)
		b.ReportMetric(ing.rate/now.rate, "ingested-rate/batch")
		b.ReportMetric(ing.cpuPer1k/now.cpuPer1k, "ingested-cpu/batch")
		b.ReportMetric(float64(ing.written)/float64(now.written), "ingested-written/batch")
		b.ReportMetric(base.rate, "defaults-entries/s")
		b.ReportMetric(now.rate, "entries/s")
		b.ReportMetric(now.rate/base.rate, "rate/defaults")
		b.ReportMetric(now.cpuPer1k/base.cpuPer1k, "cpu/defaults")
		b.ReportMetric(float64(now.written)/float64(base.written), "written/defaults")
	}
	b.ReportMetric(0, "ns/op")
}

type writesRun struct {
	rate, cpuPer1k float64
	written        uint64
}

// catchUpWrites writes n entries as a catch-up does into a new database
// opened with po, and measures it (the data is made by a seeded generator,
// the same for every run).
func catchUpWrites(b *testing.B, po *pebble.Options, n int) writesRun {
	return catchUpWritesWith(b, po, n, nil)
}

// catchUpWritesWith is catchUpWrites; with o, the log entries of each group
// are stored as a table by an Ingester (o: the options po was made from)
// before the group's batch is committed, as the log stores a catch-up run.
func catchUpWritesWith(b *testing.B, po *pebble.Options, n int, o *Options) writesRun {
	b.Helper()
	dir := b.TempDir()
	db, err := pebble.Open(filepath.Join(dir, "db"), po)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var in *Ingester
	if o != nil {
		if in, err = NewIngester(db, filepath.Join(dir, "ingest"), *o); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewChaCha8([32]byte{7}))
	family := []byte("a3f1c2d4e5f60718293a4b5c6d7e8f90a3f1c2d4e5f60718293a4b5c6d7e8f90")
	sealed := make([]byte, 304)
	var entryKey, recKey, feedKey, lastKey, entry, rec []byte
	const group = 4000
	start, cpu0 := time.Now(), cpuTime()
	var cursor uint64
	for seq := uint64(1); seq <= uint64(n); {
		batch := db.NewIndexedBatch()
		var table []KV
		for i := 0; i < group && seq <= uint64(n); i++ {
			for j := 0; j < len(sealed); j += 8 {
				binary.LittleEndian.PutUint64(sealed[j:], r.Uint64())
			}
			entryKey = binary.BigEndian.AppendUint64(append(entryKey[:0], "t\x01clinic-a\x00"...), seq)
			entry = append(append(append(entry[:0], family...), "clinic-a k1-0123456789abcdef"...), sealed...)
			recKey = appendPatient(append(recKey[:0], "sr"...), seq)
			rec = append(appendPatient(append(rec[:0], "\x01\x80\x01clinic-a\x02\x01\x04dob\x0a1970-01-01\x04name"...), seq),
				"\x04note\x80xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...)
			cursor++
			feedKey = binary.BigEndian.AppendUint64(append(feedKey[:0], "sf"...), cursor)
			lastKey = append(append(lastKey[:0], "sl"...), recKey[2:]...)
			kvs := [][2][]byte{{entryKey, entry}, {recKey, rec}, {feedKey, recKey[2:]}, {lastKey, feedKey[2:]}}
			if in != nil {
				table = append(table, KV{Key: bytes.Clone(entryKey), Value: bytes.Clone(entry)})
				kvs = kvs[1:]
			}
			for _, kv := range kvs {
				if err := batch.Set(kv[0], kv[1], nil); err != nil {
					b.Fatal(err)
				}
			}
			seq++
		}
		if err := batch.Set([]byte("t\x02head\x00clinic-a"), sealed[:44], nil); err != nil {
			b.Fatal(err)
		}
		if err := batch.Set([]byte("smcounts"), sealed[:10], nil); err != nil {
			b.Fatal(err)
		}
		if in != nil {
			if err := in.Ingest(b.Context(), [][]KV{table}); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		batch.Close()
		if err := db.LogData(nil, pebble.Sync); err != nil {
			b.Fatal(err)
		}
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	m := db.Metrics()
	var written uint64
	for _, l := range m.Levels {
		written += l.TableBytesFlushed + l.TableBytesCompacted
	}
	return writesRun{rate: float64(n) / elapsed.Seconds(), cpuPer1k: float64(cpu.Milliseconds()) / float64(n) * 1000, written: written}
}

// appendPatient appends "patients", a zero byte and the patient key of seq.
func appendPatient(b []byte, seq uint64) []byte {
	b = append(b, "patients\x00p"...)
	var d [8]byte
	for i := 7; i >= 0; i-- {
		d[i] = byte('0' + seq%10)
		seq /= 10
	}
	return append(b, d[:]...)
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
