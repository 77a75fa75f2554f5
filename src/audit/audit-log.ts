/**
 * The audit log: every state-changing request, allowed or denied, and every event vigil itself observes (a VM
 * that crashed, a finding of the IDS) becomes one hash-chained record and one leaf of an RFC 9162 Merkle tree.
 * Appends are serialized; each stores the record and the tree's new perfect subtrees in one transaction (O(log
 * n) rows), then rewrites the signed tree head file outside the database (fsynced, and its directory), and every
 * CHECKPOINT_EVERY records stores a signed checkpoint. Heads go to the configured witnesses at most once a second.
 *
 * At open, before anything is signed, the stored head, the checkpoints, the tree and the witnesses' latest heads
 * are compared with the database: a shorter or diverging log is a tamper finding, recorded as an `audit.tamper`
 * record after the surviving ones (the old head file is kept beside it as evidence), never silently re-signed.
 */
import { randomUUID } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { sql } from "kysely";
import type { Db } from "../inventory/db.ts";
import { jsonTextList } from "../inventory/dialect.ts";
import type { AuditCheckpointsTable, AuditRow } from "../inventory/schema.ts";
import { VigilError, messageOf } from "../errors.ts";
import { Mutex } from "../util/mutex.ts";
import { canonicalJson } from "./canonical-json.ts";
import {
  ChainVerifier,
  GENESIS_HASH,
  checkpointHead,
  checkpointValid,
  leafData,
  parseHeadFile,
  recordHash,
  treeHeadBytes,
  verifyStatement,
  verifyTreeHead,
  type AuditRecord,
  type Checkpoint,
  type HashedRecord,
  type HeadFile,
  type TreeHead,
  type VerifyResult,
} from "./chain.ts";
import { consistencyPath, Frontier, inclusionPath, leafHash, rangeHash, type NodeSource } from "./merkle.ts";
import type { SiteKey } from "./site-key.ts";
import { DenialAggregator } from "./denials.ts";
import { WitnessPublisher, type Witness, type WitnessStatus } from "./witness.ts";

export const CHECKPOINT_EVERY = 100;
/** The target of `audit.tamper` records (target_id is indexed, so health finds them without a scan). */
export const AUDIT_TARGET = { kind: "audit", id: "audit-log", name: "audit log" } as const;

export interface AuditEntry {
  actor: string;
  action: string;
  target: { kind: string; id?: string | null | undefined; name?: string | null | undefined };
  result: AuditRecord["result"];
  requestId?: string | undefined;
  details?: Record<string, unknown> | undefined;
}

export interface AuditHealth {
  /** False when this start found tampering or the log holds an `audit.tamper` record. */
  ok: boolean;
  /** What the check at this start found (empty when the stored head, checkpoints and witnesses agree). */
  findings: string[];
  /** What could not be checked at this start (a witness that could not be read). */
  warnings: string[];
  /** `audit.tamper` records in the log. */
  tamperRecords: Array<{ seq: number; time: string }>;
  head: TreeHead | null;
  witnesses: WitnessStatus[];
}

export interface InclusionProof {
  type: "vigil-audit-inclusion-proof";
  record: HashedRecord;
  leafIndex: number;
  treeSize: number;
  path: string[];
  head: TreeHead;
}

export interface ConsistencyProof {
  type: "vigil-audit-consistency-proof";
  fromSize: number;
  toSize: number;
  path: string[];
  head: TreeHead;
}

export function rowToRecord(row: AuditRow): HashedRecord {
  return {
    seq: row.seq,
    id: row.id,
    time: row.time,
    actor: row.actor,
    action: row.action,
    target: { kind: row.target_kind, id: row.target_id, name: row.target_name },
    result: row.result as AuditRecord["result"],
    host: row.host,
    requestId: row.request_id,
    details: JSON.parse(row.details) as Record<string, unknown>,
    prevHash: row.prev_hash,
    hash: row.hash,
  };
}

const toCheckpoint = (r: AuditCheckpointsTable): Checkpoint => ({ seq: r.seq, hash: r.hash, time: r.time, keyId: r.key_id, signature: r.signature, rootHash: r.root_hash });

const hex = (b: Buffer) => b.toString("hex");

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export interface AuditLogOptions {
  witnesses?: readonly Witness[] | undefined;
  /** Minimum time between two publications to the witnesses (default 1000 ms). */
  publishIntervalMs?: number | undefined;
  onPublishError?: ((witness: string, err: unknown) => void) | undefined;
}

export class AuditLog {
  private readonly mutex = new Mutex();
  private readonly listeners = new Set<(r: HashedRecord) => void>();
  private head: TreeHead | undefined;
  private findings: string[] = [];
  private warnings: string[] = [];
  private publisher: WitnessPublisher | undefined;
  /** Unauthenticated requests: one record per source per interval, with a count. */
  readonly denials = new DenialAggregator((e) => this.append(e));

  private constructor(
    private readonly db: Db,
    private readonly key: SiteKey,
    private readonly host: string,
    private readonly headPath: string,
    private lastSeq: number,
    private lastHash: string,
    private frontier: Frontier,
  ) {}

  /** Stored nodes, the right edge answered from memory. */
  private readonly nodes: NodeSource = {
    node: async (level, index) => {
      const cached = this.frontier.lookup(level, index);
      if (cached) return cached;
      const row = await this.db.selectFrom("audit_tree").select("hash").where("level", "=", level).where("idx", "=", index).executeTakeFirst();
      if (!row) throw new VigilError("VIGIL_CONFLICT", `The audit log's Merkle tree has no node (level ${level}, index ${index}): the tree table was altered`);
      return Buffer.from(row.hash, "hex");
    },
  };

  static async open(db: Db, key: SiteKey, host: string, headPath: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    const last = await db.selectFrom("audit_log").select(["seq", "hash"]).orderBy("seq", "desc").limit(1).executeTakeFirst();
    const lastSeq = last?.seq ?? 0;
    const log = new AuditLog(db, key, host, headPath, lastSeq, last?.hash ?? GENESIS_HASH, new Frontier());
    const findings: string[] = [];
    const warnings: string[] = [];
    await log.syncTree(findings);
    await log.checkHead(findings);
    await log.checkCheckpoints(findings);
    for (const w of options.witnesses ?? []) {
      try {
        const h = await w.latest();
        if (h) findings.push(...(await log.compareHead(h, `the head witnessed by ${w.name}`)));
      } catch (err) {
        // Unreachable is not evidence of tampering (a network or mount outage); it is shown, not recorded.
        warnings.push(`cannot read the latest head witnessed by ${w.name}: ${messageOf(err)}`);
      }
    }
    log.findings = findings;
    log.warnings = warnings;
    if (findings.length > 0) {
      // Keep the head that disagrees as evidence, then record the finding after the surviving records.
      if (existsSync(headPath)) renameSync(headPath, `${headPath}.tampered-${new Date().toISOString().replace(/[:.]/g, "-")}`);
      await log.append({ actor: "system", action: "audit.tamper", target: AUDIT_TARGET, result: "error", details: { findings, lastSeq } });
    } else if (lastSeq > 0) {
      log.head = log.signHead();
    }
    if (options.witnesses && options.witnesses.length > 0) {
      log.publisher = new WitnessPublisher(options.witnesses, (from, to) => log.consistencyPathHex(from, to), options.publishIntervalMs ?? 1000, options.onPublishError);
      if (log.head) log.publisher.offer(log.head);
    }
    return log;
  }

  /** Brings the stored tree to the log's length: builds missing leaves (upgrade), flags and cuts extra ones. */
  private async syncTree(findings: string[]): Promise<void> {
    const top = await this.db.selectFrom("audit_tree").select((eb) => eb.fn.max("idx").as("m")).where("level", "=", 0).executeTakeFirst();
    let size = top?.m === null || top?.m === undefined ? 0 : Number(top.m) + 1;
    if (size > this.lastSeq) {
      findings.push(`the Merkle tree holds ${size} leaves but the log ends at record ${this.lastSeq}: records were deleted`);
      // A node covers leaves up to (idx + 1)·2^level; the shift amount cast to 32 bits so PostgreSQL has an operator for it.
      await sql`DELETE FROM audit_tree WHERE ((idx + 1) << CAST(level AS integer)) > ${this.lastSeq}`.execute(this.db);
      size = this.lastSeq;
    }
    this.frontier = await Frontier.load(this.nodes, size);
    while (size < this.lastSeq) {
      const rows = await this.db.selectFrom("audit_log").selectAll().where("seq", ">", size).orderBy("seq").limit(2000).execute();
      if (rows.length === 0) break;
      await this.db.transaction().execute(async (trx) => {
        for (const row of rows) {
          const { hash: _hash, ...body } = rowToRecord(row);
          const made = this.frontier.push(leafHash(leafData(body)));
          await trx.insertInto("audit_tree").values(made.map((n) => ({ level: n.level, idx: n.index, hash: hex(n.hash) }))).execute();
        }
      });
      size = this.frontier.size;
    }
  }

  /** Reasons a signed head (file or witness) disagrees with the database; empty when it is a prefix of it. */
  private async compareHead(h: TreeHead, what: string): Promise<string[]> {
    if (h.keyId !== this.key.keyId || !verifyTreeHead(h, this.key.publicKey)) return [`${what} is not validly signed by this site's key`];
    if (h.size > this.lastSeq) return [`${what} covers ${h.size} records but the log ends at record ${this.lastSeq}: the log was truncated`];
    if (h.size === 0) return [];
    if ((await this.hashAt(h.size)) !== h.lastHash) return [`record ${h.size} does not match ${what}: the log was rewritten`];
    const root = hex(await rangeHash(this.nodes, 0, h.size));
    if (root !== h.rootHash) return [`the Merkle root at ${h.size} does not match ${what}: the log was rewritten`];
    return [];
  }

  /** The stored chain hash of record `seq`, if there is one. */
  private async hashAt(seq: number): Promise<string | undefined> {
    return (await this.db.selectFrom("audit_log").select("hash").where("seq", "=", seq).executeTakeFirst())?.hash;
  }

  private async checkHead(findings: string[]): Promise<void> {
    let file: HeadFile;
    try {
      file = parseHeadFile(readFileSync(this.headPath, "utf8"));
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === "ENOENT") {
        if (this.lastSeq > 0) findings.push(`the signed head file is missing while the log holds ${this.lastSeq} records`);
        return;
      }
      findings.push(`the signed head file cannot be read: ${messageOf(err)}`);
      return;
    }
    if (file.kind === "tree") {
      findings.push(...(await this.compareHead(file.head, "the signed head file")));
      return;
    }
    // A head written before the Merkle tree: compare its chain position.
    const h = file.head;
    if (!verifyStatement("head", h, this.key.publicKey)) findings.push("the signed head file has an invalid signature");
    else if (h.seq > this.lastSeq) findings.push(`the signed head file covers ${h.seq} records but the log ends at record ${this.lastSeq}: the log was truncated`);
    else if ((await this.hashAt(h.seq)) !== h.hash) findings.push(`record ${h.seq} does not match the signed head file: the log was rewritten`);
  }

  private async checkCheckpoints(findings: string[]): Promise<void> {
    const regular = await sql<{ c: number; m: number | null }>`SELECT count(*) AS c, max(seq) AS m FROM audit_checkpoints WHERE seq % ${CHECKPOINT_EVERY} = 0`.execute(this.db);
    const { c, m } = regular.rows[0] ?? { c: 0, m: null };
    if (m !== null && m > this.lastSeq) findings.push(`a signed checkpoint covers record ${m} but the log ends at record ${this.lastSeq}: the log was truncated`);
    const expected = Math.floor(this.lastSeq / CHECKPOINT_EVERY);
    if (Number(c) < expected) findings.push(`${expected - Number(c)} of the ${expected} signed checkpoints are missing (deleted)`);
    const newest = await this.db.selectFrom("audit_checkpoints").selectAll().where("seq", "<=", this.lastSeq).orderBy("seq", "desc").limit(1).executeTakeFirst();
    if (!newest) return;
    const cp = toCheckpoint(newest);
    if (!checkpointValid(cp, this.key.publicKey)) findings.push(`the checkpoint at record ${cp.seq} has an invalid signature`);
    else if (cp.rootHash) findings.push(...(await this.compareHead(checkpointHead(cp, cp.rootHash), `the checkpoint at record ${cp.seq}`)));
    else if ((await this.hashAt(cp.seq)) !== cp.hash) findings.push(`record ${cp.seq} does not match the signed checkpoint there: the log was rewritten`);
  }

  get publicKey() {
    return this.key.publicKey;
  }

  get publicKeyPem(): string {
    return this.key.publicKeyPem;
  }

  get keyId(): string {
    return this.key.keyId;
  }

  /** Appends one record; resolves once it is durable (the record and tree in the database, the head file). */
  append(entry: AuditEntry): Promise<HashedRecord> {
    return this.mutex.run(async () => {
      const body: AuditRecord = {
        seq: this.lastSeq + 1,
        id: randomUUID(),
        time: new Date().toISOString(),
        actor: entry.actor,
        action: entry.action,
        target: { kind: entry.target.kind, id: entry.target.id ?? null, name: entry.target.name ?? null },
        result: entry.result,
        host: this.host,
        requestId: entry.requestId ?? null,
        details: JSON.parse(canonicalJson(entry.details ?? {})) as Record<string, unknown>,
        prevHash: this.lastHash,
      };
      const record: HashedRecord = { ...body, hash: recordHash(body) };
      // The tree grows on a copy: if the transaction fails, the in-memory right edge is unchanged.
      const next = Frontier.clone(this.frontier);
      const made = next.push(leafHash(leafData(body)));
      await this.db.transaction().execute(async (trx) => {
        await trx
          .insertInto("audit_log")
          .values({
            seq: record.seq,
            id: record.id,
            time: record.time,
            actor: record.actor,
            action: record.action,
            target_kind: record.target.kind,
            target_id: record.target.id,
            target_name: record.target.name,
            result: record.result,
            host: record.host,
            request_id: record.requestId,
            details: canonicalJson(record.details),
            prev_hash: record.prevHash,
            hash: record.hash,
          })
          .execute();
        await trx.insertInto("audit_tree").values(made.map((n) => ({ level: n.level, idx: n.index, hash: hex(n.hash) }))).execute();
      });
      this.frontier = next;
      this.lastSeq = record.seq;
      this.lastHash = record.hash;
      this.head = this.signHead();
      this.writeHead(this.head);
      if (record.seq % CHECKPOINT_EVERY === 0) await this.storeCheckpoint();
      this.publisher?.offer(this.head);
      for (const l of [...this.listeners]) l(record);
      return record;
    });
  }

  /** Signs and stores a checkpoint at the newest record (no-op on an empty log or if one exists there). */
  checkpoint(): Promise<void> {
    return this.mutex.run(() => this.storeCheckpoint());
  }

  /** At shutdown: a checkpoint, and one last publication to the witnesses. */
  async close(): Promise<void> {
    await this.denials.close();
    await this.checkpoint();
    await this.publisher?.close();
  }

  private async storeCheckpoint(): Promise<void> {
    if (this.lastSeq === 0) return;
    const h = this.head ?? this.signHead();
    await this.db
      .insertInto("audit_checkpoints")
      .values({ seq: h.size, hash: h.lastHash, time: h.time, key_id: h.keyId, signature: h.signature, root_hash: h.rootHash })
      .onConflict((oc) => oc.column("seq").doNothing())
      .execute();
  }

  private signHead(): TreeHead {
    const unsigned = { size: this.lastSeq, rootHash: hex(this.frontier.root()), lastHash: this.lastHash, time: new Date().toISOString(), keyId: this.key.keyId };
    return { ...unsigned, signature: this.key.sign(treeHeadBytes(unsigned)) };
  }

  /** Replaces the head file durably: temp file fsynced, renamed, directory fsynced. */
  private writeHead(h: TreeHead): void {
    const tmp = `${this.headPath}.tmp`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, JSON.stringify({ type: "vigil-audit-tree-head", ...h }) + "\n");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.headPath);
    fsyncDir(dirname(this.headPath));
  }

  /** The signed head file, if present and well-formed. */
  readHead(): HeadFile | undefined {
    try {
      return parseHeadFile(readFileSync(this.headPath, "utf8"));
    } catch {
      return undefined;
    }
  }

  /** The newest signed tree head (signed now for an empty log). */
  currentHead(): TreeHead {
    return this.head ?? this.signHead();
  }

  async health(): Promise<AuditHealth> {
    const rows = await this.db.selectFrom("audit_log").select(["seq", "time"]).where("target_id", "=", AUDIT_TARGET.id).where("action", "=", "audit.tamper").orderBy("seq").limit(100).execute();
    return { ok: this.findings.length === 0 && rows.length === 0, findings: this.findings, warnings: this.warnings, tamperRecords: rows, head: this.head ?? null, witnesses: this.publisher?.status() ?? [] };
  }

  private checkSize(size: number, field: string): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.lastSeq) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${size}: the log holds ${this.lastSeq} records`, { field });
  }

  /** RFC 9162 audit path for record `seq` in the tree of the current head. */
  inclusionProof(seq: number): Promise<InclusionProof> {
    return this.mutex.run(async () => {
      if (!Number.isSafeInteger(seq) || seq < 1 || seq > this.lastSeq) throw new VigilError("VIGIL_NOT_FOUND", `No audit record ${seq}: the log holds ${this.lastSeq} records`, { field: "seq" });
      const row = await this.db.selectFrom("audit_log").selectAll().where("seq", "=", seq).executeTakeFirst();
      if (!row) throw new VigilError("VIGIL_CONFLICT", `Audit record ${seq} is missing from the database: the log was altered`);
      const head = this.currentHead();
      const path = await inclusionPath(this.nodes, seq - 1, 0, head.size);
      return { type: "vigil-audit-inclusion-proof", record: rowToRecord(row), leafIndex: seq - 1, treeSize: head.size, path: path.map(hex), head };
    });
  }

  private async consistencyPathHex(from: number, to: number): Promise<string[]> {
    return (await consistencyPath(this.nodes, from, to)).map(hex);
  }

  /** RFC 9162 consistency proof from an earlier tree size to the current head. */
  consistencyProof(fromSize: number): Promise<ConsistencyProof> {
    return this.mutex.run(async () => {
      this.checkSize(fromSize, "from");
      const head = this.currentHead();
      return { type: "vigil-audit-consistency-proof", fromSize, toSize: head.size, path: await this.consistencyPathHex(fromSize, head.size), head };
    });
  }

  subscribe(listener: (r: HashedRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Records in seq order, optionally after a seq, for one target (or any of `targetIds`), of one action, newest N (`tail`). */
  async list(options: { afterSeq?: number; targetId?: string; targetIds?: string[]; action?: string; limit?: number; tail?: boolean } = {}): Promise<HashedRecord[]> {
    let query = this.db.selectFrom("audit_log").selectAll();
    if (options.afterSeq !== undefined) query = query.where("seq", ">", options.afterSeq);
    if (options.targetId !== undefined) query = query.where("target_id", "=", options.targetId);
    // One JSON parameter, not one per id: an operator's list of readable VMs may exceed SQLite's variable limit.
    if (options.targetIds !== undefined) query = query.where("target_id", "in", jsonTextList(this.db, options.targetIds));
    if (options.action !== undefined) query = query.where("action", "=", options.action);
    query = query.orderBy("seq", options.tail ? "desc" : "asc").limit(options.limit ?? 1000);
    const rows = await query.execute();
    const records = rows.map(rowToRecord);
    return options.tail ? records.reverse() : records;
  }

  /**
   * Stored records in seq order (up to `through`), read in pages: memory stays bounded whatever the log's size.
   * Ordering by seq is enough to catch reordering: seq is part of each hash, so moving a record means rewriting
   * seq, and the chain then breaks at that record.
   */
  private async *allRecords(through = Number.MAX_SAFE_INTEGER): AsyncGenerator<HashedRecord> {
    let after = 0;
    for (;;) {
      const rows = await this.db.selectFrom("audit_log").selectAll().where("seq", ">", after).where("seq", "<=", through).orderBy("seq").limit(2000).execute();
      if (rows.length === 0) return;
      for (const row of rows) yield rowToRecord(row);
      after = rows[rows.length - 1]!.seq;
    }
  }

  async checkpoints(): Promise<Checkpoint[]> {
    const rows = await this.db.selectFrom("audit_checkpoints").selectAll().orderBy("seq").execute();
    return rows.map(toCheckpoint);
  }

  /** Verifies the whole stored chain, its tree, checkpoints (none may be missing) and the signed head, streaming. */
  async verify(): Promise<VerifyResult> {
    const v = new ChainVerifier(await this.checkpoints(), this.key.publicKey, this.readHead());
    for await (const r of this.allRecords()) {
      v.add(r);
      if (v.failed) break;
    }
    const result = v.finish({ headRequired: true, checkpointEvery: CHECKPOINT_EVERY });
    if (result.firstBad || result.lastSeq !== this.frontier.size) return result;
    if (!v.root.equals(this.frontier.root())) return { ...result, ok: false, firstBad: { seq: result.lastSeq, reason: "the stored Merkle tree does not match the records (the tree table was altered)" } };
    return result;
  }

  /**
   * JSON lines for outside verification: a header, the records up to the current head with every checkpoint
   * after its record (checkpoints past the end too: they show truncation), and the signed tree head last.
   */
  async *exportLines(): AsyncGenerator<string> {
    // One consistent snapshot: the head and the checkpoints as of the same moment.
    const { head, checkpoints } = await this.mutex.run(async () => ({ head: this.currentHead(), checkpoints: await this.checkpoints() }));
    yield JSON.stringify({ type: "vigil-audit-export", version: 2, keyId: this.key.keyId, publicKey: this.key.publicKeyPem, exportedAt: new Date().toISOString() });
    const line = (c: Checkpoint) => JSON.stringify({ type: "checkpoint", seq: c.seq, hash: c.hash, time: c.time, keyId: c.keyId, signature: c.signature, ...(c.rootHash ? { rootHash: c.rootHash } : {}) });
    let i = 0;
    for await (const r of this.allRecords(head.size)) {
      yield JSON.stringify({ type: "record", ...r });
      while (i < checkpoints.length && checkpoints[i]!.seq <= r.seq) yield line(checkpoints[i++]!);
    }
    while (i < checkpoints.length) yield line(checkpoints[i++]!);
    yield JSON.stringify({ type: "tree-head", ...head });
  }
}
