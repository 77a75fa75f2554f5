/**
 * The extra-VM monotonic store: state that must not roll back with the VM ("move state out of the VM"). It
 * lives in the inventory, namespaced per VM lineage (a revert keeps the namespace, a clone gets its own), and
 * offers only operations that move forward: counters that increase, compare-and-set forward only, append-only
 * record streams, and a clock. Every operation is one transaction committed before it is answered
 * (synchronous=FULL), and carries the client's request id so a retry after a lost answer is never applied twice:
 * after a crash the value is either the old one or the new one, never lost, never doubled.
 *
 * The guest decides what is written, so every namespace has quotas (checked inside the same transaction as the
 * write): a number of counters, a number of stream records and a number of bytes of record data. A write past
 * a quota is refused with an error naming the quota; a retry of a write already applied is still answered.
 */
import type { Db } from "../inventory/db.ts";
import { VigilError, q } from "../errors.ts";

export const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

/** Per-namespace limits on what guests may store (a namespace is one VM lineage, or VMs linked to share it). */
export interface StoreQuotas {
  /** Distinct counter names. */
  counters: number;
  /** Stream records, all streams together. */
  records: number;
  /** Bytes of record data, all streams together (a record holds at most 1024). */
  recordBytes: number;
}

export const DEFAULT_QUOTAS: StoreQuotas = { counters: 1000, records: 10_000, recordBytes: 4 * 1024 * 1024 };

export type CasResult = { ok: true; value: number } | { ok: false; value: number };

export class MonotonicStore {
  private lastClock = 0;
  /**
   * Counter values this daemon has read or written. The daemon is the store's only writer, so a committed value
   * it remembers is the current one: reads are answered without touching the database (the guest's hot path).
   */
  private readonly cache = new Map<string, number>();

  constructor(
    private readonly db: Db,
    readonly quotas: StoreQuotas = DEFAULT_QUOTAS,
  ) {}

  /**
   * Forgets every remembered value: the store's rows were changed by someone else (a VM left this host or arrived
   * with its store, migration/dossier.ts). The next reads go to the database.
   */
  forgetCached(): void {
    this.cache.clear();
  }

  async read(ns: string, name: string): Promise<number> {
    const key = `${ns}\0${name}`;
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    const row = await this.db.selectFrom("vtime_counters").select("value").where("ns", "=", ns).where("name", "=", name).executeTakeFirst();
    const value = row?.value ?? 0;
    if (this.cache.size > 100_000) this.cache.clear();
    this.cache.set(key, value);
    return value;
  }

  async incr(ns: string, name: string, by: number, rid: string): Promise<number> {
    if (!Number.isSafeInteger(by) || by < 1) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot increase counter ${q(name)} by ${by}: counters only move forward, by 1 or more`);
    return this.db.transaction().execute(async (tx) => {
      const row = await tx.selectFrom("vtime_counters").selectAll().where("ns", "=", ns).where("name", "=", name).executeTakeFirst();
      if (row && row.last_rid === rid) return row.value; // a retry of what was already applied
      const value = (row?.value ?? 0) + by;
      if (value > MAX_COUNTER) throw new VigilError("VIGIL_BAD_REQUEST", `Counter ${q(name)} would overflow`);
      if (!row) await this.checkCounterQuota(tx, ns, name);
      await this.put(tx, ns, name, value, rid, row !== undefined);
      return value;
    });
  }

  /** Sets `name` to `value` if it is `expect` now; `value` must be greater (forward only). */
  async cas(ns: string, name: string, expect: number, value: number, rid: string): Promise<CasResult> {
    return this.db.transaction().execute(async (tx) => {
      const row = await tx.selectFrom("vtime_counters").selectAll().where("ns", "=", ns).where("name", "=", name).executeTakeFirst();
      if (row && row.last_rid === rid) return { ok: true as const, value: row.value };
      const current = row?.value ?? 0;
      if (current !== expect) return { ok: false as const, value: current };
      if (!Number.isSafeInteger(value) || value <= current) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot set counter ${q(name)} from ${current} to ${value}: counters only move forward`);
      if (!row) await this.checkCounterQuota(tx, ns, name);
      await this.put(tx, ns, name, value, rid, row !== undefined);
      return { ok: true as const, value };
    });
  }

  private async checkCounterQuota(tx: Db, ns: string, name: string): Promise<void> {
    const { n } = await tx.selectFrom("vtime_counters").select((eb) => eb.fn.countAll<number>().as("n")).where("ns", "=", ns).executeTakeFirstOrThrow();
    if (Number(n) >= this.quotas.counters) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot create counter ${q(name)}: quota exceeded, the store already holds ${n} counters (at most ${this.quotas.counters})`);
  }

  private async put(tx: Db, ns: string, name: string, value: number, rid: string, exists: boolean): Promise<void> {
    const now = new Date().toISOString();
    // Forget the remembered value first: if the transaction fails, the next read goes to the database.
    this.cache.delete(`${ns}\0${name}`);
    if (exists) await tx.updateTable("vtime_counters").set({ value, last_rid: rid, updated_at: now }).where("ns", "=", ns).where("name", "=", name).execute();
    else await tx.insertInto("vtime_counters").values({ ns, name, value, last_rid: rid, updated_at: now }).execute();
  }

  /** Appends a record to an append-only stream; returns its sequence number (1, 2, ...). */
  async append(ns: string, stream: string, data: string, rid: string): Promise<number> {
    return this.db.transaction().execute(async (tx) => {
      const again = await tx.selectFrom("vtime_records").select("seq").where("ns", "=", ns).where("stream", "=", stream).where("rid", "=", rid).executeTakeFirst();
      if (again) return again.seq;
      const last = await tx.selectFrom("vtime_records").select("seq").where("ns", "=", ns).where("stream", "=", stream).orderBy("seq", "desc").limit(1).executeTakeFirst();
      const seq = (last?.seq ?? 0) + 1;
      const used = await tx
        .selectFrom("vtime_records")
        .select((eb) => [eb.fn.countAll<number>().as("n"), eb.fn.coalesce(eb.fn.sum<number>(eb.fn("length", ["data"])), eb.val(0)).as("bytes")])
        .where("ns", "=", ns)
        .executeTakeFirstOrThrow();
      if (Number(used.n) >= this.quotas.records) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot append to stream ${q(stream)}: quota exceeded, the store already holds ${used.n} records (at most ${this.quotas.records})`);
      if (Number(used.bytes) + data.length > this.quotas.recordBytes) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot append to stream ${q(stream)}: quota exceeded, the records would hold ${Number(used.bytes) + data.length} bytes (at most ${this.quotas.recordBytes})`);
      await tx.insertInto("vtime_records").values({ ns, stream, seq, data, rid, time: new Date().toISOString() }).execute();
      return seq;
    });
  }

  async records(ns: string, stream: string, after: number, limit: number): Promise<Array<{ seq: number; data: string; time: string }>> {
    return this.db.selectFrom("vtime_records").select(["seq", "data", "time"]).where("ns", "=", ns).where("stream", "=", stream).where("seq", ">", after).orderBy("seq").limit(limit).execute();
  }

  /** The host's clock, never going backwards while the daemon runs. */
  clock(): number {
    this.lastClock = Math.max(Date.now(), this.lastClock + 1);
    return this.lastClock;
  }

  /** Everything in a namespace, for owners and auditors. */
  async dump(ns: string): Promise<{ counters: Array<{ name: string; value: number; updatedAt: string }>; streams: Array<{ stream: string; records: number }> }> {
    const counters = await this.db.selectFrom("vtime_counters").select(["name", "value", "updated_at"]).where("ns", "=", ns).orderBy("name").execute();
    const streams = await this.db.selectFrom("vtime_records").select(["stream"]).select((eb) => eb.fn.countAll<number>().as("n")).where("ns", "=", ns).groupBy("stream").orderBy("stream").execute();
    return { counters: counters.map((c) => ({ name: c.name, value: c.value, updatedAt: c.updated_at })), streams: streams.map((s) => ({ stream: s.stream, records: Number(s.n) })) };
  }
}
