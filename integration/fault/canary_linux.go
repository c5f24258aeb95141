//go:build linux

package fault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ppsync/ppsync/internal/store"
	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

// maxCapture bounds what the canary scenario keeps of the relay's traffic.
const maxCapture = 512 << 20

// Canary is the proof that the vendor's relay holds nothing it can read. A
// site writes a record holding a fresh random 64-byte value (incompressible:
// Pebble's block compression cannot hide it) and a patient's name, under
// the usual write load. After sync both appear at every site, and neither
// appears
//
//   - in any byte of the relay's data directory or its log, after the relay
//     stopped and its Pebble database was compacted (every file, the WAL and
//     the manifest included);
//   - in any byte the relay sent or received on the mesh after transport
//     decryption (PPSYNC_MESH_TAP, the relay's own audit copy);
//   - in any byte that crossed the proxy to or from the relay (these are
//     transport-encrypted anyway: the check that matters is the one above).
//
// Positive controls: the same scan finds both values in a site's data
// directory, and the tap holds the family's clear headers.
func Canary(ctx context.Context, env Env, seed uint64) (res Result, err error) {
	res = Result{Name: "canary", Seed: seed}
	var capMu sync.Mutex
	var captured bytes.Buffer
	var tapPath string
	h, load, err := start(ctx, env, seed, 3, lightLoad, func(h *Harness) error {
		tapPath = filepath.Join(h.dir, "relay-mesh-tap")
		h.Relay.SetEnv("PPSYNC_MESH_TAP", tapPath)
		h.Net.Capture(func(from, to string, b []byte) {
			if from != RelayName && to != RelayName {
				return
			}
			capMu.Lock()
			if captured.Len()+len(b) <= maxCapture {
				captured.Write(b)
			}
			capMu.Unlock()
		})
		return nil
	})
	if err != nil {
		return res, err
	}
	defer h.release(&err)
	if _, err := h.waitMesh(ctx, h.Nodes()); err != nil {
		h.Violate("membership", "%v", err)
		return res, nil
	}

	// The write load runs a while before and after the canary: the relay
	// stores and forwards thousands of entries besides it.
	if err := pause(ctx, 15*time.Second); err != nil {
		return res, err
	}
	raw := make([]byte, 64)
	_, _ = rand.Read(raw)
	tag := make([]byte, 4)
	_, _ = rand.Read(tag)
	secret := hex.EncodeToString(raw)
	name := "Wilhelmina Canarybright-" + hex.EncodeToString(tag)
	key := "canary-" + hex.EncodeToString(tag)
	writer := h.Sites[0]
	c := writer.Client()
	if c == nil {
		return res, fmt.Errorf("fault: %s is not running", writer.Name)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	tx, err := c.Transact(wctx, api.TxRequest{Ops: []api.OpJSON{{Op: "put", Table: "patients", Key: key,
		Fields: map[string]any{"name": name, "note": secret}}}})
	cancel()
	if err != nil {
		h.Violate("harness", "write the canary at %s: %v", writer.Name, err)
		return res, nil
	}
	h.Logf("canary: %s wrote patients/%s as seq %d", writer.Name, key, tx.Seq)
	_, werr := waitFor(ctx, 60*time.Second, 250*time.Millisecond, "the canary at every site", func() (bool, string) {
		for _, s := range h.Sites {
			sc := s.Client()
			if sc == nil {
				return false, s.Name + " is not running"
			}
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			rec, err := sc.Get(gctx, "patients", key)
			cancel()
			if err != nil || rec.Fields["name"] != name || rec.Fields["note"] != secret {
				return false, fmt.Sprintf("%s: %v %v", s.Name, rec.Fields["name"], err)
			}
		}
		return true, ""
	})
	if werr != nil {
		h.Violate("canary", "the canary did not reach every site: %v", werr)
	}
	if err := pause(ctx, 5*time.Second); err != nil {
		return res, err
	}
	load.Stop()
	h.settle(ctx, &res, h.Nodes(), CheckOptions{Extra: map[string]bool{"patients/" + key: true}}) // stops every node
	h.Net.Capture(nil)

	needles := map[string][]byte{"the random value (hex)": []byte(secret), "the random value (raw bytes)": raw, "the patient's name": []byte(name)}
	// The relay's database compacted, then every byte of its directory.
	for _, n := range []*Node{h.Relay, h.Sites[1]} {
		if err := compactStore(ctx, filepath.Join(n.Data, node.DBDir)); err != nil {
			h.Violate("harness", "compact %s's database: %v", n.Name, err)
		}
	}
	found, scanned, err := scanDir(h.Relay.Data, needles)
	if err != nil {
		h.Violate("harness", "scan the relay's data directory: %v", err)
	}
	// Block compression could split a value across a back-reference: every
	// key and value of the database is read decompressed as well.
	kvFound, kvs, err := scanStore(filepath.Join(h.Relay.Data, node.DBDir), needles)
	if err != nil {
		h.Violate("harness", "read the relay's database: %v", err)
	}
	found = append(found, kvFound...)
	for _, f := range found {
		h.Violate("blind", "the relay's data directory holds %s", f)
	}
	logFound, _, _ := scanFile(h.Relay.logPath, needles)
	for _, f := range logFound {
		h.Violate("blind", "the relay's log holds %s", f)
	}
	// Positive control: the same scans find the plain values at a site.
	siteFound, _, err := scanStore(filepath.Join(h.Sites[1].Data, node.DBDir), map[string][]byte{"the random value (hex)": []byte(secret), "the patient's name": []byte(name)})
	if err != nil || len(siteFound) != 2 {
		h.Violate("harness", "the scan does not find the canary in %s's data directory (%v, %v): it cannot prove its absence at the relay", h.Sites[1].Name, siteFound, err)
	}
	tap, err := os.ReadFile(tapPath)
	if err != nil || len(tap) == 0 {
		h.Violate("harness", "the relay's mesh tap is empty or missing (%v)", err)
	} else if !bytes.Contains(tap, []byte(writer.Site)) {
		h.Violate("harness", "the relay's mesh tap does not hold the clear headers (site %q): it is not what the relay received", writer.Site)
	}
	for what, b := range needles {
		if bytes.Contains(tap, b) {
			h.Violate("blind", "the relay received or sent %s on the mesh (after transport decryption)", what)
		}
	}
	capMu.Lock()
	wireBytes := captured.Len()
	for what, b := range needles {
		if bytes.Contains(captured.Bytes(), b) {
			h.Violate("blind", "%s crossed the network to or from the relay", what)
		}
	}
	capMu.Unlock()
	res.Notes = append(res.Notes,
		fmt.Sprintf("relay: %d files, %d bytes scanned after compaction, %d keys and values read; %d bytes of decrypted mesh traffic; %d bytes on the wire: no canary", scanned.files, scanned.bytes, kvs, len(tap), wireBytes),
		fmt.Sprintf("positive control: both values found in %s's data directory", h.Sites[1].Name))
	h.finish(&res)
	return res, ctx.Err()
}

// compactStore opens a stopped node's database, flushes and compacts it all,
// and closes it.
func compactStore(ctx context.Context, dir string) error {
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		return err
	}
	if err := db.Flush(); err != nil {
		db.Close()
		return err
	}
	if err := db.Compact(ctx, []byte{0}, bytes.Repeat([]byte{0xff}, 16), true); err != nil {
		db.Close()
		return err
	}
	return db.Close()
}

// scanStore reads every key and value of a stopped node's database and
// reports which needles occur in one.
func scanStore(dir string, needles map[string][]byte) ([]string, int, error) {
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	it, err := db.NewIter(nil)
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	seen := map[string]bool{}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, n, err
		}
		for what, b := range needles {
			if bytes.Contains(it.Key(), b) || bytes.Contains(v, b) {
				seen[what+" (a key or value of its database)"] = true
			}
		}
	}
	var out []string
	for f := range seen {
		out = append(out, f)
	}
	return out, n, it.Error()
}

type scanStats struct{ files, bytes int }

// scanDir reports which needles occur in any file under dir, each once
// with the first file it was found in.
func scanDir(dir string, needles map[string][]byte) ([]string, scanStats, error) {
	var st scanStats
	first := map[string]string{} // what -> the first file holding it
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		found, n, err := scanFile(path, needles)
		if err != nil {
			return err
		}
		st.files++
		st.bytes += n
		for _, what := range found {
			if _, ok := first[what]; !ok {
				first[what] = filepath.Base(path)
			}
		}
		return nil
	})
	var out []string
	for what, file := range first {
		out = append(out, what+" (in "+file+")")
	}
	return out, st, err
}

func scanFile(path string, needles map[string][]byte) ([]string, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var out []string
	for what, n := range needles {
		if bytes.Contains(b, n) {
			out = append(out, what)
		}
	}
	return out, len(b), nil
}
