/**
 * The audit hash chain, pure: how a record's hash is computed and how a sequence of records, checkpoints and a
 * signed head is verified. docs/audit.md describes the same algorithm for outside verifiers, and
 * scripts/verify-audit-export.mjs implements it independently with node:crypto only.
 */
import { createHash, verify as verifySignature, type KeyObject } from "node:crypto";
import { canonicalJson } from "./canonical-json.ts";
import { EMPTY_ROOT, Frontier, leafHash } from "./merkle.ts";

export const GENESIS_HASH = "0".repeat(64);

/** One audit record as it is hashed and exported. */
export interface AuditRecord {
  seq: number;
  id: string;
  time: string;
  actor: string;
  action: string;
  target: { kind: string; id: string | null; name: string | null };
  /** "intent": recorded before a destructive operation runs; its outcome follows as ok, denied or error. */
  result: "ok" | "denied" | "error" | "intent";
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

/**
 * A signed tree head (RFC 9162 §4.10 in spirit): "the log's first `size` records form the Merkle tree with
 * `rootHash`, and record `size` has chain hash `lastHash`". Checkpoints (stored every CHECKPOINT_EVERY records),
 * the head file, exports and witnesses all carry this form.
 */
export interface TreeHead {
  size: number;
  rootHash: string; // hex
  lastHash: string; // hex: the chain hash of record `size` (GENESIS_HASH for an empty log)
  time: string;
  keyId: string;
  signature: string; // base64 Ed25519 over treeHeadBytes
}

/**
 * Domain separation: the site key also signs bundles, so what it signs for the audit log starts with this
 * context string and a NUL byte, which no bundle manifest (canonical JSON, starting with "{") can.
 */
export const TREE_HEAD_CONTEXT = "vigil/audit/tree-head/v1";

export function treeHeadBytes(h: Omit<TreeHead, "signature">): Buffer {
  return Buffer.concat([
    Buffer.from(`${TREE_HEAD_CONTEXT}\0`),
    Buffer.from(canonicalJson({ size: h.size, rootHash: h.rootHash, lastHash: h.lastHash, time: h.time, keyId: h.keyId })),
  ]);
}

export function verifyTreeHead(h: TreeHead, publicKey: KeyObject): boolean {
  try {
    return verifySignature(null, treeHeadBytes(h), publicKey, Buffer.from(h.signature, "base64"));
  } catch {
    return false;
  }
}

/** The bytes of a record a Merkle leaf covers: the same canonical JSON its chain hash covers. */
export function leafData(record: AuditRecord): Buffer {
  return Buffer.from(canonicalJson(record));
}

/** A checkpoint as stored: a tree head (rootHash set), or a pre-Merkle chain statement (rootHash null). */
export interface Checkpoint extends SignedStatement {
  rootHash: string | null;
}

/** A Merkle-era checkpoint (one with a root) as the tree head it is. */
export function checkpointHead(cp: SignedStatement, rootHash: string): TreeHead {
  return { size: cp.seq, rootHash, lastHash: cp.hash, time: cp.time, keyId: cp.keyId, signature: cp.signature };
}

export function checkpointValid(cp: Checkpoint, publicKey: KeyObject): boolean {
  return cp.rootHash === null ? verifyStatement("checkpoint", cp, publicKey) : verifyTreeHead(checkpointHead(cp, cp.rootHash), publicKey);
}

/** The head file: a tree head, or a pre-Merkle signed head {seq, hash} written by an older vigil. */
export type HeadFile = { kind: "tree"; head: TreeHead } | { kind: "legacy"; head: SignedStatement };

const str = (o: Record<string, unknown>, k: string) => (typeof o[k] === "string" ? (o[k] as string) : undefined);
const num = (o: Record<string, unknown>, k: string) => (Number.isSafeInteger(o[k]) && (o[k] as number) >= 0 ? (o[k] as number) : undefined);

/** A tree head from parsed JSON (a head file, a witness's answer, a proof): its six fields checked, nothing else kept. */
export function treeHeadOf(value: unknown): TreeHead {
  const o = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
  const head = { size: num(o, "size"), rootHash: str(o, "rootHash"), lastHash: str(o, "lastHash"), time: str(o, "time"), keyId: str(o, "keyId"), signature: str(o, "signature") };
  const missing = Object.entries(head).find(([, v]) => v === undefined);
  if (missing) throw new Error(`the tree head has no valid ${missing[0]}`);
  return head as TreeHead;
}

export function parseHeadFile(text: string): HeadFile {
  const o = JSON.parse(text) as Record<string, unknown>;
  if (o.type === "vigil-audit-tree-head" || o.type === "tree-head") return { kind: "tree", head: treeHeadOf(o) };
  const head = { seq: num(o, "seq"), hash: str(o, "hash"), time: str(o, "time"), keyId: str(o, "keyId"), signature: str(o, "signature") };
  const missing = Object.entries(head).find(([, v]) => v === undefined);
  if (missing) throw new Error(`the signed head has no valid ${missing[0]}`);
  return { kind: "legacy", head: head as SignedStatement };
}

export interface VerifyResult {
  ok: boolean;
  records: number;
  checkpoints: number;
  lastSeq: number;
  /** The Merkle root over all records (hex), when the chain verified. */
  rootHash?: string;
  /** The first record (or checkpoint/head) found bad, and why. */
  firstBad?: { seq: number; reason: string };
  /** Tamper findings recorded in the log (`audit.tamper` records written at a start that found one). */
  tamper?: Array<{ seq: number; time: string; findings: string[] }>;
}

/**
 * Streaming verification: feed records in stored order (expected seq 1..n); it checks the chain, computes the
 * Merkle tree alongside (O(log n) memory), compares every checkpoint and the head with the chain hash and the
 * root at their size, and notes `audit.tamper` records.
 */
export class ChainVerifier {
  private expectedSeq = 1;
  private prev = GENESIS_HASH;
  private count = 0;
  private readonly frontier = new Frontier();
  private readonly checkpointAt: Map<number, Checkpoint>;
  private bad?: { seq: number; reason: string };
  private readonly tamper: NonNullable<VerifyResult["tamper"]> = [];
  private headSeen = false;

  constructor(
    private readonly checkpoints: readonly Checkpoint[],
    private readonly publicKey: KeyObject,
    private readonly head?: HeadFile,
  ) {
    this.checkpointAt = new Map(checkpoints.map((c) => [c.seq, c]));
  }

  get failed(): boolean {
    return this.bad !== undefined;
  }

  get root(): Buffer {
    return this.frontier.root();
  }

  add(r: HashedRecord): void {
    if (this.bad) return;
    const fail = (seq: number, reason: string) => void (this.bad = { seq, reason });
    const e = this.expectedSeq;
    if (r.seq !== e) {
      return fail(e, r.seq > e ? `record ${e} is missing (next stored is ${r.seq}): deleted` : `record ${r.seq} appears out of order after ${e - 1}: inserted or reordered`);
    }
    if (r.prevHash !== this.prev) return fail(r.seq, `record ${r.seq} does not link to record ${r.seq - 1} (prevHash mismatch): inserted, deleted or reordered`);
    const { hash, ...body } = r;
    if (recordHash(body) !== hash) return fail(r.seq, `record ${r.seq} was modified (its hash does not match its content)`);
    this.frontier.push(leafHash(leafData(body)));
    const cp = this.checkpointAt.get(r.seq);
    if (cp && cp.hash !== hash) return fail(r.seq, `record ${r.seq} does not match the signed checkpoint at ${r.seq}`);
    if (cp?.rootHash && cp.rootHash !== this.frontier.root().toString("hex")) return fail(r.seq, `the Merkle root at ${r.seq} does not match the signed checkpoint there`);
    const h = this.head;
    if (h && (h.kind === "tree" ? h.head.size : h.head.seq) === r.seq) {
      this.headSeen = true;
      if (h.kind === "tree" && h.head.lastHash !== hash) return fail(r.seq, `record ${r.seq} does not match the signed head`);
      if (h.kind === "legacy" && h.head.hash !== hash) return fail(r.seq, `record ${r.seq} does not match the signed head`);
      if (h.kind === "tree" && h.head.rootHash !== this.frontier.root().toString("hex")) return fail(r.seq, `the Merkle root at ${r.seq} does not match the signed head`);
    }
    if (r.action === "audit.tamper") {
      const findings = Array.isArray(r.details.findings) ? r.details.findings.map(String) : [];
      this.tamper.push({ seq: r.seq, time: r.time, findings });
    }
    this.prev = hash;
    this.expectedSeq++;
    this.count++;
  }

  finish(options: { headRequired?: boolean; checkpointEvery?: number } = {}): VerifyResult {
    const last = this.expectedSeq - 1;
    const result = (extra: Partial<VerifyResult>): VerifyResult => ({ ok: false, records: this.count, checkpoints: this.checkpoints.length, lastSeq: last, ...extra });
    if (this.bad) return result({ firstBad: this.bad });
    const bad = (seq: number, reason: string) => result({ firstBad: { seq, reason } });
    for (const cp of this.checkpoints) {
      if (!checkpointValid(cp, this.publicKey)) return bad(cp.seq, `the checkpoint at record ${cp.seq} has an invalid signature`);
      if (cp.seq > last) return bad(last + 1, `records after ${last} are missing: a signed checkpoint covers record ${cp.seq} (truncated)`);
    }
    if (options.checkpointEvery) {
      for (let seq = options.checkpointEvery; seq <= last; seq += options.checkpointEvery) {
        if (!this.checkpointAt.has(seq)) return bad(seq, `the signed checkpoint at record ${seq} is missing (deleted)`);
      }
    }
    const h = this.head;
    if (!h && options.headRequired && last > 0) return bad(last, `the signed head is missing while the log holds ${last} records`);
    if (h) {
      const size = h.kind === "tree" ? h.head.size : h.head.seq;
      const signed = h.kind === "tree" ? verifyTreeHead(h.head, this.publicKey) : verifyStatement("head", h.head, this.publicKey);
      if (!signed) return bad(size, "the signed head has an invalid signature");
      if (size > last) return bad(last + 1, `records after ${last} are missing: the signed head covers record ${size} (truncated)`);
      if (size === 0 && h.kind === "tree" && h.head.rootHash !== EMPTY_ROOT.toString("hex")) return bad(0, "the signed head of the empty log has a wrong root");
      if (size > 0 && !this.headSeen) return bad(size, `record ${size} does not match the signed head`);
    }
    const ok: VerifyResult = { ok: true, records: this.count, checkpoints: this.checkpoints.length, lastSeq: last, rootHash: this.frontier.root().toString("hex") };
    if (this.tamper.length > 0) {
      const t = this.tamper[0]!;
      return { ...ok, ok: false, tamper: this.tamper, firstBad: { seq: t.seq, reason: `a tamper finding was recorded at record ${t.seq} (${t.time}): ${t.findings.join("; ")}` } };
    }
    return ok;
  }
}
