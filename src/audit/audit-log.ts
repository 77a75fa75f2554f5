/**
 * The audit log: every state-changing request, allowed or denied, and every event vigil itself observes (a VM
 * that crashed, a finding of the IDS) becomes one hash-chained record. Appends are serialized; every append also
 * rewrites a signed head file outside the database, and every CHECKPOINT_EVERY records a signed checkpoint is
 * stored, so deleting the newest records is detected too. Subscribers (the events stream) see each record.
 */
import { randomUUID } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import type { Db } from "../inventory/db.ts";
import type { AuditRow } from "../inventory/schema.ts";
import { Mutex } from "../util/mutex.ts";
import { canonicalJson } from "./canonical-json.ts";
import { GENESIS_HASH, recordHash, statementBytes, verifyChain, type AuditRecord, type HashedRecord, type SignedStatement, type VerifyResult } from "./chain.ts";
import type { SiteKey } from "./site-key.ts";

export const CHECKPOINT_EVERY = 100;

export interface AuditEntry {
  actor: string;
  action: string;
  target: { kind: string; id?: string | null | undefined; name?: string | null | undefined };
  result: AuditRecord["result"];
  requestId?: string | undefined;
  details?: Record<string, unknown> | undefined;
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

export class AuditLog {
  private readonly mutex = new Mutex();
  private readonly listeners = new Set<(r: HashedRecord) => void>();

  private constructor(
    private readonly db: Db,
    private readonly key: SiteKey,
    private readonly host: string,
    private readonly headPath: string,
    private lastSeq: number,
    private lastHash: string,
  ) {}

  static async open(db: Db, key: SiteKey, host: string, headPath: string): Promise<AuditLog> {
    const last = await db.selectFrom("audit_log").select(["seq", "hash"]).orderBy("seq", "desc").limit(1).executeTakeFirst();
    return new AuditLog(db, key, host, headPath, last?.seq ?? 0, last?.hash ?? GENESIS_HASH);
  }

  get publicKey() {
    return this.key.publicKey;
  }

  /** Appends one record; resolves once it is durable. */
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
      await this.db
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
      this.lastSeq = record.seq;
      this.lastHash = record.hash;
      this.writeHead();
      if (record.seq % CHECKPOINT_EVERY === 0) await this.storeCheckpoint();
      for (const l of [...this.listeners]) l(record);
      return record;
    });
  }

  /** Signs and stores a checkpoint at the newest record (no-op on an empty log or if one exists there). */
  checkpoint(): Promise<void> {
    return this.mutex.run(() => this.storeCheckpoint());
  }

  private async storeCheckpoint(): Promise<void> {
    if (this.lastSeq === 0) return;
    const s = this.sign("checkpoint");
    await this.db
      .insertInto("audit_checkpoints")
      .values({ seq: s.seq, hash: s.hash, time: s.time, key_id: s.keyId, signature: s.signature })
      .onConflict((oc) => oc.column("seq").doNothing())
      .execute();
  }

  private sign(kind: "checkpoint" | "head"): SignedStatement {
    const unsigned = { seq: this.lastSeq, hash: this.lastHash, time: new Date().toISOString(), keyId: this.key.keyId };
    return { ...unsigned, signature: this.key.sign(statementBytes(kind, unsigned)) };
  }

  private writeHead(): void {
    const tmp = `${this.headPath}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.sign("head")) + "\n", { mode: 0o600 });
    renameSync(tmp, this.headPath);
  }

  /** The signed head file, if present and readable. */
  readHead(): SignedStatement | undefined {
    try {
      return JSON.parse(readFileSync(this.headPath, "utf8")) as SignedStatement;
    } catch {
      return undefined;
    }
  }

  subscribe(listener: (r: HashedRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Records in seq order, optionally after a seq, for one target, of one action, newest N (`tail`). */
  async list(options: { afterSeq?: number; targetId?: string; action?: string; limit?: number; tail?: boolean } = {}): Promise<HashedRecord[]> {
    let query = this.db.selectFrom("audit_log").selectAll();
    if (options.afterSeq !== undefined) query = query.where("seq", ">", options.afterSeq);
    if (options.targetId !== undefined) query = query.where("target_id", "=", options.targetId);
    if (options.action !== undefined) query = query.where("action", "=", options.action);
    query = query.orderBy("seq", options.tail ? "desc" : "asc").limit(options.limit ?? 1000);
    const rows = await query.execute();
    const records = rows.map(rowToRecord);
    return options.tail ? records.reverse() : records;
  }

  /**
   * Every stored record in seq order, read in pages. Ordering by seq is enough to catch reordering: seq is part
   * of each hash, so moving a record means rewriting seq, and the chain then breaks at that record.
   */
  private async *allRecords(): AsyncGenerator<HashedRecord> {
    let after = 0;
    for (;;) {
      const rows = await this.db.selectFrom("audit_log").selectAll().where("seq", ">", after).orderBy("seq").limit(5000).execute();
      if (rows.length === 0) return;
      for (const row of rows) yield rowToRecord(row);
      after = rows[rows.length - 1]!.seq;
    }
  }

  async checkpoints(): Promise<SignedStatement[]> {
    const rows = await this.db.selectFrom("audit_checkpoints").selectAll().orderBy("seq").execute();
    return rows.map((r) => ({ seq: r.seq, hash: r.hash, time: r.time, keyId: r.key_id, signature: r.signature }));
  }

  /** Verifies the whole stored chain, its checkpoints and the signed head. */
  async verify(): Promise<VerifyResult> {
    const records: HashedRecord[] = [];
    for await (const r of this.allRecords()) records.push(r);
    return verifyChain(records, await this.checkpoints(), this.key.publicKey, this.readHead());
  }

  /** JSON lines for outside verification: a header, the records with checkpoints in place, a fresh signed head. */
  async *exportLines(): AsyncGenerator<string> {
    yield JSON.stringify({ type: "vigil-audit-export", version: 1, keyId: this.key.keyId, publicKey: this.key.publicKeyPem, exportedAt: new Date().toISOString() });
    const checkpoints = new Map((await this.checkpoints()).map((c) => [c.seq, c]));
    let last: HashedRecord | undefined;
    for await (const r of this.allRecords()) {
      yield JSON.stringify({ type: "record", ...r });
      const cp = checkpoints.get(r.seq);
      if (cp) yield JSON.stringify({ type: "checkpoint", ...cp });
      last = r;
    }
    if (last) {
      const unsigned = { seq: last.seq, hash: last.hash, time: new Date().toISOString(), keyId: this.key.keyId };
      yield JSON.stringify({ type: "head", ...unsigned, signature: this.key.sign(statementBytes("head", unsigned)) });
    }
  }
}
