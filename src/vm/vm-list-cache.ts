/**
 * The inventory's VM list, kept in memory and brought up to date from what changed instead of read whole on every
 * request: the web console's inventory lists every VM, quota checks sum over every VM on each create, and parsing
 * and re-validating 10,000 rows took ~300 ms here (docs/benchmarks.md, "Web console").
 *
 * SQLite only. What changed is recorded by SQLite itself, not by remembering our own writes (a transaction, a raw
 * statement or a second process writes `vms` too):
 * - TEMP triggers on this connection put the id of every inserted, updated or deleted `vms` row into a temp table.
 *   A transaction that rolls back takes its ids back out with its rows, so nothing uncommitted is ever read.
 * - `PRAGMA data_version` moves whenever another connection commits (anything: then the whole list is re-read).
 * A refresh reads the changed ids, their rows and clears the ids in one transaction, so a change cannot slip in
 * between reading a row and clearing its id.
 *
 * PostgreSQL (a cluster's manager, several writers): no cache, a read every time (frozen all the same); triggers
 * there would add a write to every change of `vms` on a server many hosts share.
 */
import { sql, type Kysely } from "kysely";
import type { Db } from "../inventory/db.ts";
import type { Database } from "../inventory/schema.ts";
import { dialectOf } from "../inventory/dialect.ts";

export interface ListSource<T> {
  /** Every item, in list order. */
  all(db: Kysely<Database>): Promise<T[]>;
  /** The items with these ids that still exist. */
  some(db: Kysely<Database>, ids: string[]): Promise<T[]>;
  id(item: T): string;
  /** List order. */
  compare(a: T, b: T): number;
}

export class VmListCache<T extends object> {
  private installed: Promise<boolean> | undefined;
  private cached: { version: number; byId: Map<string, T>; items: readonly T[] } | undefined;

  constructor(
    private readonly db: Db,
    private readonly source: ListSource<T>,
  ) {}

  /** Every item as the table holds it now, frozen (the array and each item are shared by every caller). */
  async get(): Promise<readonly T[]> {
    if (!(await (this.installed ??= this.install()))) return deepFreeze(await this.source.all(this.db));
    return this.db.transaction().execute(async (tx) => {
      const version = Number((await sql<{ v: number }>`SELECT data_version AS v FROM pragma_data_version`.execute(tx)).rows[0]?.v);
      const changed = (await sql<{ id: string }>`SELECT id FROM temp.vigil_vms_changed`.execute(tx)).rows.map((r) => r.id);
      if (changed.length > 0) await sql`DELETE FROM temp.vigil_vms_changed`.execute(tx);
      if (this.cached?.version !== version) {
        const items = deepFreeze(await this.source.all(tx));
        this.cached = { version, byId: new Map(items.map((item) => [this.source.id(item), item])), items };
      } else if (changed.length > 0) {
        const byId = new Map(this.cached.byId);
        for (const id of changed) byId.delete(id);
        // bounded: a statement with thousands of parameters is refused by SQLite, so big changes go in chunks
        for (let i = 0; i < changed.length; i += 500) {
          for (const item of await this.source.some(tx, changed.slice(i, i + 500))) byId.set(this.source.id(item), deepFreeze(item));
        }
        this.cached = { version, byId, items: Object.freeze([...byId.values()].sort(this.source.compare)) };
      }
      return this.cached.items;
    });
  }

  private async install(): Promise<boolean> {
    if (dialectOf(this.db) !== "sqlite" || this.db.isTransaction) return false;
    await sql`CREATE TEMP TABLE IF NOT EXISTS vigil_vms_changed (id TEXT PRIMARY KEY)`.execute(this.db);
    // (a trigger's own statements may not name a schema: an unqualified name finds the temp table first)
    for (const [event, row] of [["INSERT", "NEW"], ["UPDATE", "OLD"], ["DELETE", "OLD"]] as const) {
      await sql.raw(`CREATE TEMP TRIGGER IF NOT EXISTS vigil_vms_${event.toLowerCase()} AFTER ${event} ON main.vms BEGIN INSERT OR IGNORE INTO vigil_vms_changed (id) VALUES (${row}.id); END`).execute(this.db);
    }
    // an update may change the id itself: the new one is changed too
    await sql.raw(`CREATE TEMP TRIGGER IF NOT EXISTS vigil_vms_update_new AFTER UPDATE OF id ON main.vms BEGIN INSERT OR IGNORE INTO vigil_vms_changed (id) VALUES (NEW.id); END`).execute(this.db);
    return true;
  }
}

/** Freezes `value` and everything it holds: cached items are shared by every caller, none may change them. */
function deepFreeze<V>(value: V): V {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}
