/**
 * The audit hash chain, pure: how a record's hash is computed and how a sequence of records, checkpoints and a
 * signed head is verified. docs/audit.md describes the same algorithm for outside verifiers, and
 * scripts/verify-audit-export.mjs implements it independently with node:crypto only.
 */
import { createHash, verify as verifySignature, type KeyObject } from "node:crypto";
import { canonicalJson } from "./canonical-json.ts";

export const GENESIS_HASH = "0".repeat(64);

/** One audit record as it is hashed and exported. */
export interface AuditRecord {
  seq: number;
  id: string;
  time: string;
  actor: string;
  action: string;
  target: { kind: string; id: string | null; name: string | null };
  result: "ok" | "denied" | "error";
  host: string;
  requestId: string | null;
  details: Record<string, unknown>;
  prevHash: string;
}

export interface HashedRecord extends AuditRecord {
  hash: string;
}

/** A signed statement "the chain up to `seq` ends in `hash`". Checkpoints and heads share this form. */
export interface SignedStatement {
  seq: number;
  hash: string;
  time: string;
  keyId: string;
  signature: string; // base64
}

export function recordHash(record: AuditRecord): string {
  return createHash("sha256").update(canonicalJson(record)).digest("hex");
}

/** The exact bytes a checkpoint or head signature covers. */
export function statementBytes(kind: "checkpoint" | "head", s: Omit<SignedStatement, "signature">): Buffer {
  return Buffer.from(canonicalJson({ type: `vigil-audit-${kind}`, seq: s.seq, hash: s.hash, time: s.time, keyId: s.keyId }));
}

export function verifyStatement(kind: "checkpoint" | "head", s: SignedStatement, publicKey: KeyObject): boolean {
  try {
    return verifySignature(null, statementBytes(kind, s), publicKey, Buffer.from(s.signature, "base64"));
  } catch {
    return false;
  }
}

export interface VerifyResult {
  ok: boolean;
  records: number;
  checkpoints: number;
  lastSeq: number;
  /** The first record (or checkpoint/head) found bad, and why. */
  firstBad?: { seq: number; reason: string };
}

/**
 * Verifies records (in the order stored, expected seq 1..n), the checkpoints (each must be validly signed and
 * match the record at its seq) and optionally a signed head (the newest statement written outside the
 * database: it catches a truncated tail).
 */
export function verifyChain(
  records: Iterable<HashedRecord>,
  checkpoints: readonly SignedStatement[],
  publicKey: KeyObject,
  head?: SignedStatement,
): VerifyResult {
  const hashes = new Map<number, string>();
  const checkpointAt = new Map(checkpoints.map((c) => [c.seq, c]));
  let expectedSeq = 1;
  let prev = GENESIS_HASH;
  let count = 0;
  const bad = (seq: number, reason: string): VerifyResult => ({ ok: false, records: count, checkpoints: checkpoints.length, lastSeq: expectedSeq - 1, firstBad: { seq, reason } });

  for (const r of records) {
    if (r.seq !== expectedSeq) {
      return bad(
        expectedSeq,
        r.seq > expectedSeq ? `record ${expectedSeq} is missing (next stored is ${r.seq}): deleted` : `record ${r.seq} appears out of order after ${expectedSeq - 1}: inserted or reordered`,
      );
    }
    if (r.prevHash !== prev) return bad(r.seq, `record ${r.seq} does not link to record ${r.seq - 1} (prevHash mismatch): inserted, deleted or reordered`);
    const { hash, ...body } = r;
    if (recordHash(body) !== hash) return bad(r.seq, `record ${r.seq} was modified (its hash does not match its content)`);
    const cp = checkpointAt.get(r.seq);
    if (cp && cp.hash !== hash) return bad(r.seq, `record ${r.seq} does not match the signed checkpoint at ${r.seq}`);
    hashes.set(r.seq, hash);
    prev = hash;
    expectedSeq++;
    count++;
  }
  const last = expectedSeq - 1;
  for (const cp of checkpoints) {
    if (!verifyStatement("checkpoint", cp, publicKey)) return bad(cp.seq, `the checkpoint at record ${cp.seq} has an invalid signature`);
    if (cp.seq > last) return bad(last + 1, `records after ${last} are missing: a signed checkpoint covers record ${cp.seq} (truncated)`);
  }
  if (head) {
    if (!verifyStatement("head", head, publicKey)) return bad(head.seq, "the signed head has an invalid signature");
    if (head.seq > last) return bad(last + 1, `records after ${last} are missing: the signed head covers record ${head.seq} (truncated)`);
    if (hashes.get(head.seq) !== head.hash) return bad(head.seq, `record ${head.seq} does not match the signed head`);
  }
  return { ok: true, records: count, checkpoints: checkpoints.length, lastSeq: last };
}
