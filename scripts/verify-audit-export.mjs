#!/usr/bin/env node
// Verifies a vigil audit export (JSON lines from `vigil audit export`) and vigil audit proofs with nothing but
// the site's public key and node:crypto — no vigil code. Written from the algorithms in docs/audit.md (the hash
// chain, RFC 9162 Merkle tree hashing, audit paths and consistency proofs), so it doubles as a check that the
// documentation is complete.
//
//   node scripts/verify-audit-export.mjs EXPORT.jsonl SITE-PUBLIC-KEY.pem [--since OLD-HEAD.json|OLD-EXPORT.jsonl]
//   node scripts/verify-audit-export.mjs --proof PROOF.json SITE-PUBLIC-KEY.pem
//
// Exit 0 and "OK ..." when every record hashes and links correctly, every checkpoint and the final tree head are
// signed by that key and match the records and the Merkle tree (and, with --since, the export extends the old
// head: the tree of its first N records has the old head's root); exit 1 naming the first bad line otherwise.
// The export is read line by line: memory stays O(log n) whatever its size.
import { createHash, createPublicKey, verify } from "node:crypto";
import { createReadStream, readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const proofPath = flag("--proof");
const sincePath = flag("--since");
const [exportPath, keyPath] = proofPath ? [undefined, args[0]] : args;
if (!keyPath || (!proofPath && !exportPath)) {
  console.error("usage: verify-audit-export.mjs EXPORT.jsonl SITE-PUBLIC-KEY.pem [--since OLD-HEAD|OLD-EXPORT]\n       verify-audit-export.mjs --proof PROOF.json SITE-PUBLIC-KEY.pem");
  process.exit(2);
}

function canonical(v) {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  return `{${Object.keys(v).filter((k) => v[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
}
const sha256 = (...parts) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};
const leafHash = (data) => sha256(Buffer.of(0), data);
const nodeHash = (l, r) => sha256(Buffer.of(1), l, r);
const publicKey = createPublicKey(readFileSync(keyPath));
const keyId = createHash("sha256").update(publicKey.export({ type: "spki", format: "der" })).digest("hex").slice(0, 16);

// Signed statements. Tree heads carry an explicit context string and a NUL before the canonical JSON.
const sig = (bytes, s) => {
  try {
    return verify(null, bytes, publicKey, Buffer.from(String(s.signature), "base64"));
  } catch {
    return false;
  }
};
const legacyValid = (kind, s) => sig(Buffer.from(canonical({ type: `vigil-audit-${kind}`, seq: s.seq, hash: s.hash, time: s.time, keyId: s.keyId })), s);
const treeHeadValid = (h) =>
  sig(Buffer.concat([Buffer.from("vigil/audit/tree-head/v1\0"), Buffer.from(canonical({ size: h.size, rootHash: h.rootHash, lastHash: h.lastHash, time: h.time, keyId: h.keyId }))]), h);

// The right edge of the Merkle tree: perfect subtrees [level, hash], largest first.
function frontierPush(edge, size, leaf) {
  let h = leaf;
  let index = size;
  while (index % 2 === 1) {
    h = nodeHash(edge.pop()[1], h);
    index = Math.floor(index / 2);
  }
  edge.push([0, h]);
}
function frontierRoot(edge) {
  if (edge.length === 0) return sha256();
  let r = edge[edge.length - 1][1];
  for (let i = edge.length - 2; i >= 0; i--) r = nodeHash(edge[i][1], r);
  return r.toString("hex");
}

// RFC 9162 §2.1.3.2 and §2.1.4.2.
const odd = (x) => x % 2 === 1;
const half = (x) => Math.floor(x / 2);
function verifyInclusion(leaf, index, size, path, root) {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = nodeHash(p, r);
      while (!odd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else r = nodeHash(r, p);
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && r.equals(root);
}
function verifyConsistency(size1, size2, root1, root2, path) {
  if (!Number.isSafeInteger(size1) || !Number.isSafeInteger(size2) || size1 < 0 || size2 < size1) return false;
  if (size1 === size2) return path.length === 0 && root1.equals(root2);
  if (size1 === 0) return path.length === 0;
  if (path.length === 0) return false;
  let pow = 1;
  while (pow < size1) pow *= 2;
  const p = pow === size1 ? [root1, ...path] : [...path];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = p[0];
  let sr = p[0];
  for (const c of p.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!odd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else sr = nodeHash(sr, c);
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && fr.equals(root1) && sr.equals(root2);
}
const hexes = (a) => (Array.isArray(a) && a.every((x) => typeof x === "string" && /^[0-9a-f]{64}$/.test(x)) ? a.map((x) => Buffer.from(x, "hex")) : undefined);

function fail(line, why) {
  console.log(line === undefined ? `BAD: ${why}` : `BAD at line ${line}: ${why}`);
  process.exit(1);
}

// ---- --proof: an inclusion or consistency proof document (`vigil audit prove SEQ --json`) ----
if (proofPath) {
  let doc;
  try {
    doc = JSON.parse(readFileSync(proofPath, "utf8"));
  } catch {
    fail(undefined, "the proof is not JSON");
  }
  const head = doc.head ?? {};
  if (head.keyId !== keyId || !treeHeadValid(head)) fail(undefined, `the proof's tree head is not signed by this key (${keyId})`);
  const path = hexes(doc.path);
  if (!path) fail(undefined, "the proof's path is not a list of SHA-256 hashes");
  const root = Buffer.from(String(head.rootHash), "hex");
  if (doc.type === "vigil-audit-inclusion-proof") {
    const { type: _t, hash, ...body } = doc.record ?? {};
    if (sha256(canonical(body)).toString("hex") !== hash) fail(undefined, `record ${body.seq} does not match its hash`);
    if (doc.leafIndex !== body.seq - 1 || doc.treeSize !== head.size) fail(undefined, "the proof's leaf index or tree size does not match its record and head");
    if (!verifyInclusion(leafHash(Buffer.from(canonical(body))), doc.leafIndex, doc.treeSize, path, root)) fail(undefined, `record ${body.seq} is NOT in the tree of size ${head.size} signed at ${head.time}`);
    console.log(`OK: record ${body.seq} (${body.action} by ${body.actor}) is in the tree of size ${head.size}, root ${head.rootHash}, signed by ${keyId} at ${head.time}`);
  } else if (doc.type === "vigil-audit-consistency-proof") {
    const old = doc.fromHead;
    if (!old || old.keyId !== keyId || !treeHeadValid(old)) fail(undefined, "the proof carries no old tree head signed by this key (fromHead)");
    if (old.size !== doc.fromSize || head.size !== doc.toSize) fail(undefined, "the proof's sizes do not match its heads");
    if (!verifyConsistency(old.size, head.size, Buffer.from(String(old.rootHash), "hex"), root, path)) fail(undefined, `the tree of size ${head.size} does NOT extend the tree of size ${old.size}: truncated or rewritten`);
    console.log(`OK: the tree of size ${head.size} extends the tree of size ${old.size} (consistency proof checked)`);
  } else fail(undefined, `unknown proof type ${JSON.stringify(doc.type)}`);
  process.exit(0);
}

// ---- --since: the old head, from a head file or the last head of an older export ----
let since;
if (sincePath) {
  const text = readFileSync(sincePath, "utf8");
  const candidates = text.trim().startsWith("{") && !text.trim().includes("\n") ? [text] : text.split("\n").filter((l) => l.trim());
  for (const l of candidates) {
    try {
      const o = JSON.parse(l);
      if (o.type === "tree-head" || o.type === "vigil-audit-tree-head") since = { size: o.size, hash: o.lastHash, rootHash: o.rootHash, ok: o.keyId === keyId && treeHeadValid(o) };
      else if (o.type === "head" || (o.type === undefined && typeof o.seq === "number")) since = { size: o.seq, hash: o.hash, rootHash: undefined, ok: o.keyId === keyId && legacyValid("head", o) };
    } catch {
      /* not a head line */
    }
  }
  if (!since) fail(undefined, `${sincePath} holds no signed head`);
  if (!since.ok) fail(undefined, `the old head in ${sincePath} is not signed by this key (${keyId})`);
}

const edge = [];
let prev = "0".repeat(64);
let expectSeq = 1;
let head;
let checkpoints = 0;
let sinceChecked = !since || since.size === 0;
let n = 0;
let version;
for await (const text of createInterface({ input: createReadStream(exportPath), crlfDelay: Infinity })) {
  if (text.length === 0) continue;
  n++;
  let o;
  try {
    o = JSON.parse(text);
  } catch {
    fail(n, "not JSON");
  }
  if (n === 1) {
    if (o.type !== "vigil-audit-export" || (o.version !== 1 && o.version !== 2)) fail(n, "not a vigil audit export (version 1 or 2)");
    if (o.keyId !== keyId) fail(n, `exported by key ${o.keyId}, but the key given is ${keyId}`);
    version = o.version;
    continue;
  }
  if (head) fail(n, "lines after the signed head");
  const last = expectSeq - 1;
  if (o.type === "record") {
    const { type: _type, hash, ...record } = o;
    if (record.seq !== expectSeq) fail(n, `record ${record.seq} where ${expectSeq} was expected (deleted, inserted or reordered)`);
    if (record.prevHash !== prev) fail(n, `record ${record.seq} does not link to the previous record`);
    const bytes = Buffer.from(canonical(record));
    if (sha256(bytes).toString("hex") !== hash) fail(n, `record ${record.seq} was modified`);
    frontierPush(edge, last, leafHash(bytes));
    prev = hash;
    expectSeq++;
    if (since && record.seq === since.size) {
      if (since.hash !== hash || (since.rootHash !== undefined && since.rootHash !== frontierRoot(edge))) fail(n, `record ${record.seq} does not match the old head: the log was rewritten since then`);
      sinceChecked = true;
    }
  } else if (o.type === "checkpoint" || o.type === "head" || o.type === "tree-head") {
    const size = o.type === "tree-head" ? o.size : o.seq;
    const hash = o.type === "tree-head" ? o.lastHash : o.hash;
    const signed = o.keyId === keyId && (o.type === "tree-head" || o.rootHash !== undefined ? treeHeadValid(o.type === "tree-head" ? o : { size: o.seq, rootHash: o.rootHash, lastHash: o.hash, time: o.time, keyId: o.keyId, signature: o.signature }) : legacyValid(o.type, o));
    if (!signed) fail(n, `${o.type} at record ${size} is not signed by this key`);
    if (size > last) fail(n, `${o.type} covers record ${size} but the log ends at record ${last}: truncated`);
    if (size !== last || hash !== prev) fail(n, `${o.type} at record ${size} does not match the record`);
    if (o.rootHash !== undefined && o.rootHash !== frontierRoot(edge)) fail(n, `${o.type} at record ${size} does not match the Merkle tree of the records`);
    if (o.type === "checkpoint") checkpoints++;
    else head = o;
  } else {
    fail(n, `unknown line type ${JSON.stringify(o.type)}`);
  }
}
if (n === 0) fail(undefined, "empty file");
if ((expectSeq > 1 || version === 2) && !head) fail(n, "no signed head: the export is truncated");
if (head && (head.type === "tree-head" ? head.size : head.seq) !== expectSeq - 1) fail(n, "the signed head does not cover the last record");
if (!sinceChecked) fail(n, `the old head covers ${since.size} records but this export ends at record ${expectSeq - 1}: the log was truncated since then`);
const root = frontierRoot(edge);
console.log(`OK: ${expectSeq - 1} records, ${checkpoints} checkpoints, head signed by ${keyId}${version === 2 ? `, Merkle root ${root}` : ""}${since ? `; extends the old head of ${since.size} records` : ""}`);
