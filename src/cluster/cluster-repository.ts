/**
 * The manager's cluster inventory (docs/cluster.md, "PostgreSQL"): hosts, which host holds which VM, live
 * migrations and the durable event log, over the same Kysely data layer on SQLite and PostgreSQL.
 *
 * Events are rows first. `seq` only grows and, on PostgreSQL, is handed out in commit order: an append takes
 * the table's EXCLUSIVE lock (readers are not blocked) before its sequence value, so a reader that saw seq n
 * will never later find a committed n-1 it skipped. On PostgreSQL the append also sends `NOTIFY vigil_events`,
 * which the server delivers at commit: a wake-up only, lost while a listener is disconnected. watchEvents
 * therefore reads the table after the last seq it delivered on every wake-up AND every time it (re)connects;
 * on SQLite it polls.
 */
import { randomUUID } from "node:crypto";
import { sql, type Transaction } from "kysely";
import type pg from "pg";
import { VigilError, messageOf, q } from "../errors.ts";
import { connectPostgres, poolOf, type Db } from "../inventory/db.ts";
import { dialectOf, isPostgresUrl } from "../inventory/dialect.ts";
import type { Database, HostsTable, MigrationsTable, PlacementsTable } from "../inventory/schema.ts";
import type { HostRecord, HostStatus, MigrationLimits, MigrationPhase, MigrationProgress, MigrationResult } from "./types.ts";

/** The PostgreSQL channel appends notify. */
export const EVENTS_CHANNEL = "vigil_events";

export const HOST_STATES: readonly HostRecord["state"][] = ["ready", "unreachable", "fenced", "removed"];
export const MIGRATION_STATES = ["running", "completed", "failed", "cancelled"] as const;
export type MigrationState = (typeof MIGRATION_STATES)[number];
export const MIGRATION_PHASES: readonly MigrationPhase[] = ["setup", "disks", "ram", "switchover", "completed", "failed", "cancelled"];

/** A host with the status of its last heartbeat. */
export interface ClusterHost extends HostRecord {
  status: HostStatus | null;
}

export interface Placement {
  vmId: string;
  vmName: string;
  host: string;
  owner: string;
  updatedAt: string;
  /** Restart it on another host when its host is fenced (0007-cluster-ha). */
  ha: boolean;
}

/** A live migration's row. */
export interface MigrationRecord {
  id: string;
  vmId: string;
  vmName: string;
  source: string;
  target: string;
  state: MigrationState;
  phase: MigrationPhase;
  requestedBy: string;
  options: MigrationLimits;
  progress: MigrationProgress | null;
  result: MigrationResult | null;
  error: string | null;
  startedAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

export interface ClusterEvent {
  seq: number;
  time: string;
  /** What happened, dotted lower case (`host.unreachable`, `migration.progress`). */
  kind: string;
  /** What it happened to (a host or VM name, a migration id). */
  subject: string;
  payload: Record<string, unknown>;
}

/** Where an append runs: the repository's database or a transaction the caller holds (then it commits with it). */
export type Executor = Db | Transaction<Database>;

const KIND = /^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*$/;
export const MAX_EVENT_BATCH = 1000;

function bad(field: string, message: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", message, { field });
}

function oneOf<T extends string>(field: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw bad(field, `Invalid ${field} ${q(value)}: allowed are ${allowed.join(", ")}`);
  return value as T;
}

function text(field: string, value: string, max: number): string {
  if (typeof value !== "string" || value.length === 0 || value.length > max) throw bad(field, `Invalid ${field} ${q(value)}: 1-${max} characters`);
  if (value.includes("\u0000")) throw bad(field, `Invalid ${field}: it contains a NUL character`);
  return value;
}

/** JSON text of a plain object (NUL characters are escaped by JSON.stringify, so any string fits PostgreSQL's text). */
function objectJson(field: string, value: unknown): string {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw bad(field, `Invalid ${field}: a JSON object is required`);
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    throw bad(field, `Invalid ${field}: not serializable as JSON (${messageOf(err)})`);
  }
  if (json.length > 1024 * 1024) throw bad(field, `Invalid ${field}: ${json.length} bytes of JSON, at most 1 MiB`);
  return json;
}

/** A stored JSON column; a row altered by hand is an error naming it, not a crash later. */
function parseJson<T>(what: string, json: string): T {
  try {
    return JSON.parse(json) as T;
  } catch {
    throw new VigilError("VIGIL_HOST", `The stored ${what} is not valid JSON: the inventory was altered`);
  }
}

function toHost(row: HostsTable): ClusterHost {
  return {
    name: row.name,
    address: row.address,
    state: oneOf("state", row.state, HOST_STATES),
    certFingerprint: row.cert_fingerprint,
    lastSeen: row.last_seen,
    addedAt: row.added_at,
    status: row.status === null ? null : parseJson<HostStatus>(`status of host ${q(row.name)}`, row.status),
  };
}

const toPlacement = (row: PlacementsTable): Placement => ({ vmId: row.vm_id, vmName: row.vm_name, host: row.host, owner: row.owner, updatedAt: row.updated_at, ha: row.ha === 1 });

function toMigration(row: MigrationsTable): MigrationRecord {
  const what = (c: string) => `${c} of migration ${q(row.id)}`;
  return {
    id: row.id,
    vmId: row.vm_id,
    vmName: row.vm_name,
    source: row.source,
    target: row.target,
    state: oneOf("state", row.state, MIGRATION_STATES),
    phase: oneOf("phase", row.phase, MIGRATION_PHASES),
    requestedBy: row.requested_by,
    options: parseJson<MigrationLimits>(what("options"), row.options),
    progress: row.progress === null ? null : parseJson<MigrationProgress>(what("progress"), row.progress),
    result: row.result === null ? null : parseJson<MigrationResult>(what("result"), row.result),
    error: row.error,
    startedAt: row.started_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}

function toEvent(row: { seq: number; time: string; kind: string; subject: string; payload: string }): ClusterEvent {
  return { seq: row.seq, time: row.time, kind: row.kind, subject: row.subject, payload: parseJson<Record<string, unknown>>(`payload of event ${row.seq}`, row.payload) };
}

/** True for a unique-constraint violation on either dialect. */
function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: unknown };
  return e?.code === "23505" || e?.code === "SQLITE_CONSTRAINT_UNIQUE" || e?.code === "SQLITE_CONSTRAINT_PRIMARYKEY";
}

export class ClusterRepository {
  constructor(readonly db: Db) {}

  // ---- hosts

  /** Records a new host (state `ready` unless told). */
  async addHost(input: { name: string; address: string; certFingerprint: string; state?: HostRecord["state"] | undefined }): Promise<ClusterHost> {
    const row: HostsTable = {
      name: text("name", input.name, 63),
      address: text("address", input.address, 300),
      state: oneOf("state", input.state ?? "ready", HOST_STATES),
      cert_fingerprint: text("certFingerprint", input.certFingerprint, 200),
      last_seen: null,
      added_at: new Date().toISOString(),
      status: null,
    };
    const r = await this.db.insertInto("hosts").values(row).onConflict((oc) => oc.column("name").doNothing()).executeTakeFirst();
    if (Number(r.numInsertedOrUpdatedRows ?? 0n) === 0) throw new VigilError("VIGIL_CONFLICT", `Cannot add host ${q(input.name)}: it exists`, { field: "name" });
    return toHost(row);
  }

  async findHost(name: string): Promise<ClusterHost | undefined> {
    const row = await this.db.selectFrom("hosts").selectAll().where("name", "=", name).executeTakeFirst();
    return row ? toHost(row) : undefined;
  }

  async getHost(name: string): Promise<ClusterHost> {
    const host = await this.findHost(name);
    if (!host) throw new VigilError("VIGIL_NOT_FOUND", `Host ${q(name)} does not exist`, { field: "host" });
    return host;
  }

  async listHosts(): Promise<ClusterHost[]> {
    return (await this.db.selectFrom("hosts").selectAll().orderBy("name").execute()).map(toHost);
  }

  async updateHost(
    name: string,
    change: { address?: string | undefined; state?: HostRecord["state"] | undefined; certFingerprint?: string | undefined; lastSeen?: string | null | undefined; status?: HostStatus | null | undefined },
  ): Promise<ClusterHost> {
    const values: Partial<HostsTable> = {};
    if (change.address !== undefined) values.address = text("address", change.address, 300);
    if (change.state !== undefined) values.state = oneOf("state", change.state, HOST_STATES);
    if (change.certFingerprint !== undefined) values.cert_fingerprint = text("certFingerprint", change.certFingerprint, 200);
    if (change.lastSeen !== undefined) values.last_seen = change.lastSeen;
    if (change.status !== undefined) values.status = change.status === null ? null : objectJson("status", change.status);
    if (Object.keys(values).length > 0) {
      const r = await this.db.updateTable("hosts").set(values).where("name", "=", name).executeTakeFirst();
      if (r.numUpdatedRows === 0n) throw new VigilError("VIGIL_NOT_FOUND", `Host ${q(name)} does not exist`, { field: "host" });
    }
    return this.getHost(name);
  }

  /** Deletes a host's row; false if there was none. */
  async deleteHost(name: string): Promise<boolean> {
    const r = await this.db.deleteFrom("hosts").where("name", "=", name).executeTakeFirst();
    return r.numDeletedRows > 0n;
  }

  // ---- placements

  async getPlacement(vmId: string): Promise<Placement | undefined> {
    const row = await this.db.selectFrom("placements").selectAll().where("vm_id", "=", vmId).executeTakeFirst();
    return row ? toPlacement(row) : undefined;
  }

  async findPlacementByName(vmName: string): Promise<Placement | undefined> {
    const row = await this.db.selectFrom("placements").selectAll().where("vm_name", "=", vmName).executeTakeFirst();
    return row ? toPlacement(row) : undefined;
  }

  /** Records (or moves) which host holds a VM. A name another VM has is a conflict. */
  async setPlacement(p: { vmId: string; vmName: string; host: string; owner: string }, db: Executor = this.db): Promise<Placement> {
    const row: PlacementsTable = { vm_id: text("vmId", p.vmId, 100), vm_name: text("vmName", p.vmName, 63), host: text("host", p.host, 63), owner: text("owner", p.owner, 200), updated_at: new Date().toISOString() };
    try {
      await db
        .insertInto("placements")
        .values(row)
        .onConflict((oc) => oc.column("vm_id").doUpdateSet({ vm_name: row.vm_name, host: row.host, owner: row.owner, updated_at: row.updated_at }))
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw new VigilError("VIGIL_CONFLICT", `Cannot place VM ${q(p.vmName)}: another VM of that name is placed`, { field: "vmName", cause: err });
      throw err;
    }
    return toPlacement(row);
  }

  /** Sets a placed VM's HA flag; false if it has no placement. */
  async setHa(vmName: string, ha: boolean): Promise<boolean> {
    const r = await this.db.updateTable("placements").set({ ha: ha ? 1 : 0 }).where("vm_name", "=", vmName).executeTakeFirst();
    return r.numUpdatedRows > 0n;
  }

  /** Forgets where a VM is; false if it had no placement. */
  async deletePlacement(vmId: string, db: Executor = this.db): Promise<boolean> {
    const r = await db.deleteFrom("placements").where("vm_id", "=", vmId).executeTakeFirst();
    return r.numDeletedRows > 0n;
  }

  /** Placements in VM name order, optionally of one host. */
  async listPlacements(filter: { host?: string | undefined } = {}): Promise<Placement[]> {
    let query = this.db.selectFrom("placements").selectAll();
    if (filter.host !== undefined) query = query.where("host", "=", filter.host);
    return (await query.orderBy("vm_name").execute()).map(toPlacement);
  }

  // ---- migrations

  /** A new running migration (phase `setup`). A VM with a running migration is a conflict, enforced by a unique index. */
  async createMigration(m: { id?: string | undefined; vmId: string; vmName: string; source: string; target: string; requestedBy: string; options: MigrationLimits }, db: Executor = this.db): Promise<MigrationRecord> {
    if (m.source === m.target) throw bad("target", `Cannot migrate VM ${q(m.vmName)} to ${q(m.target)}: it is on that host`);
    const now = new Date().toISOString();
    const row: MigrationsTable = {
      id: m.id ?? randomUUID(),
      vm_id: text("vmId", m.vmId, 100),
      vm_name: text("vmName", m.vmName, 63),
      source: text("source", m.source, 63),
      target: text("target", m.target, 63),
      state: "running",
      phase: "setup",
      requested_by: text("requestedBy", m.requestedBy, 200),
      options: objectJson("options", m.options),
      progress: null,
      result: null,
      error: null,
      started_at: now,
      updated_at: now,
      finished_at: null,
    };
    try {
      await db.insertInto("migrations").values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw new VigilError("VIGIL_CONFLICT", `Cannot migrate VM ${q(m.vmName)}: a migration of it is running (or id ${q(row.id)} is taken)`, { field: "vm", cause: err });
      throw err;
    }
    return toMigration(row);
  }

  async findMigration(id: string): Promise<MigrationRecord | undefined> {
    const row = await this.db.selectFrom("migrations").selectAll().where("id", "=", id).executeTakeFirst();
    return row ? toMigration(row) : undefined;
  }

  async getMigration(id: string): Promise<MigrationRecord> {
    const m = await this.findMigration(id);
    if (!m) throw new VigilError("VIGIL_NOT_FOUND", `Migration ${q(id)} does not exist`, { field: "id" });
    return m;
  }

  /**
   * Changes a running migration. Leaving `running` stamps finished_at; a finished migration is final (a
   * conflict), checked in the same UPDATE so two writers cannot both finish it.
   */
  async updateMigration(
    id: string,
    change: { state?: MigrationState | undefined; phase?: MigrationPhase | undefined; progress?: MigrationProgress | undefined; result?: MigrationResult | undefined; error?: string | null | undefined },
    db: Executor = this.db,
  ): Promise<MigrationRecord> {
    const now = new Date().toISOString();
    const values: Partial<MigrationsTable> = { updated_at: now };
    if (change.state !== undefined) {
      values.state = oneOf("state", change.state, MIGRATION_STATES);
      if (change.state !== "running") values.finished_at = now;
    }
    if (change.phase !== undefined) values.phase = oneOf("phase", change.phase, MIGRATION_PHASES);
    if (change.progress !== undefined) values.progress = objectJson("progress", change.progress);
    if (change.result !== undefined) values.result = objectJson("result", change.result);
    if (change.error !== undefined) values.error = change.error;
    const r = await db.updateTable("migrations").set(values).where("id", "=", id).where("state", "=", "running").executeTakeFirst();
    if (r.numUpdatedRows === 0n) {
      const row = await db.selectFrom("migrations").select("state").where("id", "=", id).executeTakeFirst();
      if (!row) throw new VigilError("VIGIL_NOT_FOUND", `Migration ${q(id)} does not exist`, { field: "id" });
      throw new VigilError("VIGIL_CONFLICT", `Cannot update migration ${q(id)}: it is ${row.state}`);
    }
    const row = await db.selectFrom("migrations").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    return toMigration(row);
  }

  /** Running migrations, oldest first (what a restarted manager reconciles). */
  async listActiveMigrations(): Promise<MigrationRecord[]> {
    return (await this.db.selectFrom("migrations").selectAll().where("state", "=", "running").orderBy("started_at").orderBy("id").execute()).map(toMigration);
  }

  /** A VM's migrations, newest first. */
  async listMigrationsOf(vmId: string, limit = 50): Promise<MigrationRecord[]> {
    return (await this.db.selectFrom("migrations").selectAll().where("vm_id", "=", vmId).orderBy("started_at", "desc").orderBy("id", "desc").limit(limit).execute()).map(toMigration);
  }

  // ---- events

  /**
   * Appends one event. With a caller's transaction it commits (and notifies) with it; otherwise in a
   * transaction of its own.
   */
  async appendEvent(e: { kind: string; subject: string; payload?: Record<string, unknown> | undefined }, db: Executor = this.db): Promise<ClusterEvent> {
    if (typeof e.kind !== "string" || e.kind.length > 100 || !KIND.test(e.kind)) throw bad("kind", `Invalid event kind ${q(e.kind)}: dotted lower-case words (host.unreachable), at most 100 characters`);
    const values = { time: new Date().toISOString(), kind: e.kind, subject: text("subject", e.subject, 200), payload: objectJson("payload", e.payload ?? {}) };
    const write = async (trx: Executor): Promise<ClusterEvent> => {
      const postgres = dialectOf(trx) === "postgres";
      // Held to commit: seq values become visible in the order they were handed out (see the header).
      if (postgres) await sql`LOCK TABLE cluster_events IN EXCLUSIVE MODE`.execute(trx);
      const { seq } = await trx.insertInto("cluster_events").values(values).returning("seq").executeTakeFirstOrThrow();
      if (postgres) await sql`SELECT pg_notify(${EVENTS_CHANNEL}, ${String(seq)})`.execute(trx);
      return toEvent({ seq, ...values });
    };
    return db.isTransaction ? write(db) : db.transaction().execute(write);
  }

  /** Up to `limit` events with seq > `afterSeq`, in seq order. */
  async listEventsAfter(afterSeq: number, limit = 100): Promise<ClusterEvent[]> {
    if (!Number.isSafeInteger(afterSeq) || afterSeq < 0) throw bad("after", `Invalid after ${q(afterSeq)}: a sequence number ≥ 0`);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_EVENT_BATCH) throw bad("limit", `Invalid limit ${q(limit)}: 1-${MAX_EVENT_BATCH}`);
    const rows = await this.db.selectFrom("cluster_events").selectAll().where("seq", ">", afterSeq).orderBy("seq").limit(limit).execute();
    return rows.map(toEvent);
  }

  /** The newest seq (0 when there is none): where a listener that wants only new events starts. */
  async lastEventSeq(): Promise<number> {
    const row = await this.db.selectFrom("cluster_events").select((eb) => eb.fn.max("seq").as("m")).executeTakeFirst();
    return row?.m === null || row?.m === undefined ? 0 : Number(row.m);
  }
}

export interface WatchOptions {
  /** SQLite: how often the table is read (default 500 ms). PostgreSQL: a read besides the wake-ups (default 0: none). */
  pollMs?: number | undefined;
  /** First delay before reconnecting a lost LISTEN connection (default 200 ms; doubles up to 5 s). */
  reconnectMs?: number | undefined;
  /** Events read per query (default 100). */
  batch?: number | undefined;
  /** A failed read, a lost connection, a handler that threw (the event still counts as delivered). */
  onError?: ((err: unknown) => void) | undefined;
  /** PostgreSQL: the LISTEN connection came up (after its catch-up read) or went down. */
  onStatus?: ((status: "connected" | "disconnected") => void) | undefined;
}

export interface EventWatch {
  /** The seq of the last event delivered. */
  readonly lastSeq: number;
  /** PostgreSQL: the server pid of the LISTEN connection (null while disconnected, and on SQLite). */
  readonly backendPid: number | null;
  close(): Promise<void>;
}

/**
 * Delivers every event with seq > `afterSeq`, in order, each once, to `onEvent` (awaited: a slow handler slows
 * the reads, nothing piles up). `source` is an inventory or a postgres:// URL (then the watch has a pool of its
 * own, closed with it).
 */
export function watchEvents(source: Db | string, afterSeq: number, onEvent: (e: ClusterEvent) => void | Promise<void>, options: WatchOptions = {}): EventWatch {
  if (!Number.isSafeInteger(afterSeq) || afterSeq < 0) throw bad("after", `Invalid after ${q(afterSeq)}: a sequence number ≥ 0`);
  let db: Db;
  let owned = false;
  if (typeof source === "string") {
    if (!isPostgresUrl(source)) throw bad("db", "watchEvents takes an inventory or a postgres:// URL");
    db = connectPostgres(source, { onIdleError: options.onError });
    owned = true;
  } else {
    db = source;
  }
  const watcher = new EventWatcher(db, owned, afterSeq, onEvent, options);
  watcher.start();
  return watcher;
}

interface Listening {
  client: pg.PoolClient;
  /** Released (lost or closed): its later events are ignored. */
  done: boolean;
}

class EventWatcher implements EventWatch {
  lastSeq: number;
  backendPid: number | null = null;
  private readonly repo: ClusterRepository;
  private closed = false;
  private draining: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private conn: Listening | undefined;
  private delay: number;

  constructor(
    private readonly db: Db,
    private readonly owned: boolean,
    afterSeq: number,
    private readonly onEvent: (e: ClusterEvent) => void | Promise<void>,
    private readonly options: WatchOptions,
  ) {
    this.lastSeq = afterSeq;
    this.repo = new ClusterRepository(db);
    this.delay = options.reconnectMs ?? 200;
  }

  start(): void {
    const pool = poolOf(this.db);
    const pollMs = this.options.pollMs ?? (pool ? 0 : 500);
    if (pollMs > 0) this.timer = setInterval(() => void this.drain(), pollMs);
    if (pool) void this.listen(pool);
    else void this.drain();
  }

  private status(s: "connected" | "disconnected"): void {
    try {
      this.options.onStatus?.(s);
    } catch (err) {
      this.report(err);
    }
  }

  private report(err: unknown): void {
    try {
      this.options.onError?.(err);
    } catch {
      // A reporter that throws must not stop the watch.
    }
  }

  /** Reads and delivers until nothing is left; a wake-up during a read makes it read again. */
  private drain(): Promise<void> {
    if (this.draining) {
      this.again = true;
      return this.draining;
    }
    this.draining = (async () => {
      try {
        const batch = this.options.batch ?? 100;
        for (;;) {
          this.again = false;
          const events = await this.repo.listEventsAfter(this.lastSeq, batch);
          for (const e of events) {
            if (this.closed) return;
            try {
              await this.onEvent(e);
            } catch (err) {
              this.report(err);
            }
            this.lastSeq = e.seq;
          }
          if (this.closed || (events.length < batch && !this.again)) return;
        }
      } catch (err) {
        if (!this.closed) this.report(err);
      } finally {
        this.draining = undefined;
      }
    })();
    return this.draining;
  }

  /** LISTEN first, then read: whatever committed before LISTEN is read, whatever after it wakes us. */
  private async listen(pool: pg.Pool): Promise<void> {
    if (this.closed) return;
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      this.report(err);
      this.scheduleReconnect(pool);
      return;
    }
    const conn: Listening = { client, done: false };
    this.conn = conn;
    const onLost = (err?: unknown) => {
      if (conn.done) return;
      this.drop(conn);
      if (this.closed) return;
      if (err !== undefined) this.report(err);
      this.status("disconnected");
      this.scheduleReconnect(pool);
    };
    client.on("error", onLost);
    client.on("end", () => onLost());
    client.on("notification", (n) => {
      if (n.channel === EVENTS_CHANNEL && !conn.done) void this.drain();
    });
    try {
      await client.query(`LISTEN ${EVENTS_CHANNEL}`);
      const pid = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      if (conn.done) return;
      this.backendPid = pid.rows[0]?.pid ?? null;
      this.delay = this.options.reconnectMs ?? 200;
    } catch (err) {
      onLost(err);
      return;
    }
    await this.drain();
    if (!conn.done) this.status("connected");
  }

  /** Ends a LISTEN connection once (its own error, its end, or close). */
  private drop(conn: Listening): void {
    if (conn.done) return;
    conn.done = true;
    if (this.conn === conn) {
      this.conn = undefined;
      this.backendPid = null;
    }
    try {
      conn.client.release(true);
    } catch (err) {
      this.report(err);
    }
  }

  private scheduleReconnect(pool: pg.Pool): void {
    if (this.closed || this.reconnectTimer) return;
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, 5000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.listen(pool);
    }, delay);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.conn) this.drop(this.conn);
    await this.draining;
    if (this.owned) await this.db.destroy();
  }
}
