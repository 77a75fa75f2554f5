/**
 * Checking audit proofs with the public key alone: what `vigil audit check-proof` and `vigil audit verify
 * --since` run on the client, so the answer does not depend on trusting the daemon. Pure (node:crypto, the
 * chain and Merkle hashing, the site key id), so the thin CLI can use it.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { leafData, parseHeadFile, recordHash, treeHeadOf, verifyStatement, verifyTreeHead, type HashedRecord, type HeadFile, type TreeHead } from "./chain.ts";
import { leafHash, parsePath, verifyConsistency, verifyInclusion } from "./merkle.ts";
import { keyIdOf } from "./site-key.ts";

export interface CheckResult {
  ok: boolean;
  message: string;
}

/** A PEM public key and its key id, as signed heads name it. */
export function publicKeyFrom(pem: string): { key: KeyObject; keyId: string } {
  const key = createPublicKey(pem);
  return { key, keyId: keyIdOf(key) };
}

function headOf(value: unknown): TreeHead | undefined {
  try {
    return treeHeadOf(value);
  } catch {
    return undefined;
  }
}

/** An inclusion proof (`vigil audit prove SEQ --json`): the record is in the tree its signed head names. */
export function checkInclusionProof(doc: unknown, publicKey: KeyObject, keyId: string): CheckResult {
  const d = doc as { type?: unknown; record?: HashedRecord; leafIndex?: unknown; treeSize?: unknown; path?: unknown; head?: unknown };
  if (d?.type !== "vigil-audit-inclusion-proof") return { ok: false, message: "not a vigil audit inclusion proof" };
  const head = headOf(d.head);
  if (!head || head.keyId !== keyId || !verifyTreeHead(head, publicKey)) return { ok: false, message: `the proof's tree head is not signed by key ${keyId}` };
  const path = parsePath(d.path);
  if (!path) return { ok: false, message: "the proof's path is not a list of at most 64 SHA-256 hashes" };
  if (typeof d.record !== "object" || d.record === null) return { ok: false, message: "the proof carries no record" };
  const { hash, ...body } = d.record;
  if (recordHash(body) !== hash) return { ok: false, message: `record ${body.seq} does not match its hash` };
  if (d.leafIndex !== body.seq - 1 || d.treeSize !== head.size) return { ok: false, message: "the proof's leaf index or tree size does not match its record and head" };
  if (!verifyInclusion(leafHash(leafData(body)), body.seq - 1, head.size, path, Buffer.from(head.rootHash, "hex"))) {
    return { ok: false, message: `record ${body.seq} is NOT in the tree of size ${head.size} signed at ${head.time}` };
  }
  return { ok: true, message: `record ${body.seq} (${body.action} by ${body.actor}) is in the tree of size ${head.size}, root ${head.rootHash}, signed by ${keyId} at ${head.time}` };
}

/** The old head in a head file (audit-head.json, a witness line) or the last head of an older export. */
export function readOldHead(text: string): HeadFile {
  const trimmed = text.trim();
  if (trimmed.startsWith("{") && !trimmed.includes("\n")) return parseHeadFile(trimmed);
  let found: HeadFile | undefined;
  for (const line of trimmed.split("\n")) {
    if (!line.includes('"head"') && !line.includes('"tree-head"')) continue;
    try {
      const o = JSON.parse(line) as { type?: string };
      if (o.type === "head" || o.type === "tree-head") found = parseHeadFile(line);
    } catch {
      /* not a head line */
    }
  }
  if (!found) throw new Error("it holds no signed head (a head file, or an export ending in one)");
  return found;
}

/**
 * Does the current head extend the old one? For a tree head: the consistency proof between the two sizes; for
 * a pre-Merkle head {seq, hash}: the current log's record at seq (its hash, checked against the content).
 */
export function checkExtends(
  old: HeadFile,
  current: TreeHead,
  publicKey: KeyObject,
  keyId: string,
  evidence: { path?: unknown; record?: HashedRecord | undefined },
): CheckResult {
  if (current.keyId !== keyId || !verifyTreeHead(current, publicKey)) return { ok: false, message: "the current tree head is not signed by the site key" };
  if (old.head.keyId !== keyId) return { ok: false, message: `the old head was signed by key ${old.head.keyId}, the site key is ${keyId}` };
  if (old.kind === "legacy") {
    if (!verifyStatement("head", old.head, publicKey)) return { ok: false, message: "the old head's signature is invalid" };
    if (old.head.seq > current.size) return { ok: false, message: `the old head covers ${old.head.seq} records, the log now only ${current.size}: the log was truncated` };
    const r = evidence.record;
    if (!r || r.seq !== old.head.seq) return { ok: false, message: `record ${old.head.seq} is missing: the log was truncated or rewritten` };
    const { hash, ...body } = r;
    if (recordHash(body) !== hash || hash !== old.head.hash) return { ok: false, message: `record ${old.head.seq} differs from the old head: the log was rewritten` };
    return { ok: true, message: `the log (${current.size} records) extends the old head of ${old.head.seq} records` };
  }
  const h = old.head;
  if (!verifyTreeHead(h, publicKey)) return { ok: false, message: "the old head's signature is invalid" };
  if (h.size > current.size) return { ok: false, message: `the old head covers ${h.size} records, the log now only ${current.size}: the log was truncated` };
  const path = parsePath(evidence.path);
  if (!path) return { ok: false, message: "no consistency proof" };
  if (!verifyConsistency(h.size, current.size, Buffer.from(h.rootHash, "hex"), Buffer.from(current.rootHash, "hex"), path)) {
    return { ok: false, message: `the tree of ${current.size} records does NOT extend the old head of ${h.size} records (consistency proof fails): the log was truncated or rewritten` };
  }
  return { ok: true, message: `the log (${current.size} records) extends the old head of ${h.size} records signed at ${h.time} (consistency proof checked)` };
}
