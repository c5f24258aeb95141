// The PouchDB baseline of BenchmarkCatchUpVsPouchDB: a source database of N
// ~200-byte documents (the same fields as the benchmark's import lines) is
// filled with bulkDocs (not timed), then PouchDB.replicate copies it to an
// empty database (timed). Both are local LevelDB databases (pouchdb-node).
//
// usage: node pouchdb_replicate.js N DIR   (pouchdb-node resolved from NODE_PATH)
// prints one JSON line: {"docs":N,"seconds":S,"docs_per_s":R,"load_seconds":L,"version":V}
'use strict';
const path = require('path');
const PouchDB = require('pouchdb-node');

function doc(i) {
  const id = 'p' + String(i).padStart(8, '0');
  const d = {
    _id: id,
    name: 'Patient ' + String(i).padStart(8, '0'),
    dob: '1970-01-01',
    phone: '555-' + String(i % 10000000).padStart(7, '0'),
    note: '',
  };
  // ~200 bytes of JSON, as the benchmark's import lines' fields.
  d.note = 'x'.repeat(Math.max(200 - JSON.stringify(d).length, 0));
  return d;
}

async function main() {
  const n = parseInt(process.argv[2], 10);
  const dir = process.argv[3];
  if (!(n > 0) || !dir) {
    throw new Error('usage: node pouchdb_replicate.js N DIR');
  }
  const src = new PouchDB(path.join(dir, 'src'));
  const dst = new PouchDB(path.join(dir, 'dst'));
  let t = process.hrtime.bigint();
  const batch = 5000;
  for (let i = 1; i <= n; i += batch) {
    const docs = [];
    for (let j = i; j < i + batch && j <= n; j++) {
      docs.push(doc(j));
    }
    const res = await src.bulkDocs(docs);
    for (const r of res) {
      if (r.error) {
        throw new Error('bulkDocs: ' + JSON.stringify(r));
      }
    }
  }
  const loadSeconds = Number(process.hrtime.bigint() - t) / 1e9;

  t = process.hrtime.bigint();
  const res = await PouchDB.replicate(src, dst);
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (!res.ok || res.docs_written !== n) {
    throw new Error('replicate: ' + JSON.stringify({ ok: res.ok, docs_written: res.docs_written, errors: res.errors }));
  }
  const info = await dst.info();
  if (info.doc_count !== n) {
    throw new Error(`the copy holds ${info.doc_count} documents, want ${n}`);
  }
  await src.close();
  await dst.close();
  console.log(JSON.stringify({
    docs: n, seconds, docs_per_s: n / seconds, load_seconds: loadSeconds,
    version: PouchDB.version,
  }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
