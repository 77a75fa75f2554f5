#!/usr/bin/env node
// Verifies a vigil audit export (JSON lines from `vigil audit export`) with nothing but the site's public key
// and node:crypto — no vigil code. Written from the algorithm in docs/audit.md, so it doubles as a check that
// the documentation is complete.
//
//   node scripts/verify-audit-export.mjs EXPORT.jsonl SITE-PUBLIC-KEY.pem
//
// Exit 0 and "OK ..." when every record hashes and links correctly, every checkpoint and the final head are
// signed by that key and match their records; exit 1 naming the first bad line otherwise.
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const [exportPath, keyPath] = process.argv.slice(2);
if (!exportPath || !keyPath) {
  console.error("usage: verify-audit-export.mjs EXPORT.jsonl SITE-PUBLIC-KEY.pem");
  process.exit(2);
}

function canonical(v) {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  return `{${Object.keys(v).filter((k) => v[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
}
const sha256 = (s) => createHash("sha256").update(s).digest("hex");
const publicKey = createPublicKey(readFileSync(keyPath));
const keyId = createHash("sha256").update(publicKey.export({ type: "spki", format: "der" })).digest("hex").slice(0, 16);
const checkSignature = (kind, s) =>
  verify(null, Buffer.from(canonical({ type: `vigil-audit-${kind}`, seq: s.seq, hash: s.hash, time: s.time, keyId: s.keyId })), publicKey, Buffer.from(s.signature, "base64"));

function fail(line, why) {
  console.log(`BAD at line ${line}: ${why}`);
  process.exit(1);
}

const lines = readFileSync(exportPath, "utf8").split("\n").filter((l) => l.length > 0);
let prev = "0".repeat(64);
let expectSeq = 1;
const hashes = new Map();
let head;
let checkpoints = 0;
lines.forEach((text, i) => {
  const n = i + 1;
  let o;
  try {
    o = JSON.parse(text);
  } catch {
    fail(n, "not JSON");
  }
  if (n === 1) {
    if (o.type !== "vigil-audit-export" || o.version !== 1) fail(n, "not a vigil audit export (version 1)");
    if (o.keyId !== keyId) fail(n, `exported by key ${o.keyId}, but the key given is ${keyId}`);
    return;
  }
  if (head) fail(n, "lines after the signed head");
  if (o.type === "record") {
    const { type, hash, ...record } = o;
    if (record.seq !== expectSeq) fail(n, `record ${record.seq} where ${expectSeq} was expected (deleted, inserted or reordered)`);
    if (record.prevHash !== prev) fail(n, `record ${record.seq} does not link to the previous record`);
    if (sha256(canonical(record)) !== hash) fail(n, `record ${record.seq} was modified`);
    hashes.set(record.seq, hash);
    prev = hash;
    expectSeq++;
  } else if (o.type === "checkpoint" || o.type === "head") {
    if (o.keyId !== keyId || !checkSignature(o.type, o)) fail(n, `${o.type} at record ${o.seq} is not signed by this key`);
    if (hashes.get(o.seq) !== o.hash) fail(n, `${o.type} at record ${o.seq} does not match the record`);
    if (o.type === "head") head = o;
    else checkpoints++;
  } else {
    fail(n, `unknown line type ${JSON.stringify(o.type)}`);
  }
});
if (expectSeq > 1 && !head) fail(lines.length, "no signed head: the export is truncated");
if (head && head.seq !== expectSeq - 1) fail(lines.length, "the signed head does not cover the last record");
console.log(`OK: ${expectSeq - 1} records, ${checkpoints} checkpoints, head signed by ${keyId}`);
