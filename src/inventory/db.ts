/**
 * Opens the inventory. SQLite (better-sqlite3) by default: WAL with synchronous=FULL, so a committed change
 * survives a crash of vigil or the host — the monotonic store and the audit log depend on that. PostgreSQL for a
 * cluster's manager (docs/cluster.md, "PostgreSQL"): the same Kysely types and migrations over a pg Pool, its
 * 64-bit integers read back as numbers so that rows look exactly as SQLite returns them.
 */
import SqliteDatabase from "better-sqlite3";
import { Kysely, PostgresDialect, SqliteDialect } from "kysely";
import { chmodSync, existsSync } from "node:fs";
import pg from "pg";
import { VigilError, messageOf } from "../errors.ts";
import { isPostgresUrl, redactUrl } from "./dialect.ts";
import type { Database } from "./schema.ts";
import { migrateToLatest } from "./migrations.ts";

export type Db = Kysely<Database>;

const INT8_OID = 20;
const NUMERIC_OID = 1700;

/** int8 (bigint columns, count(*), sum of integers) as a number, as SQLite gives it; beyond 2^53 it is an error, never a rounded value. */
export function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new VigilError("VIGIL_HOST", `An integer read from PostgreSQL (${text}) is outside the range vigil handles exactly (±2^53)`);
  return n;
}

/** numeric (sum of bigints, avg) as a number: integers exactly (or an error, as int8), fractions as SQLite's REAL. */
export function parseNumeric(text: string): number {
  return /^-?\d+$/.test(text) ? parseInt8(text) : Number(text);
}

const pgTypes = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (format !== "binary" && oid === INT8_OID) return parseInt8;
    if (format !== "binary" && oid === NUMERIC_OID) return parseNumeric;
    return pg.types.getTypeParser(oid, format as "text");
  },
};

/** The pg Pool behind each PostgreSQL inventory: watchEvents needs a connection of its own for LISTEN. */
const pools = new WeakMap<object, pg.Pool>();

/** The pg Pool behind `db`, or undefined for a SQLite inventory. */
export function poolOf(db: Db): pg.Pool | undefined {
  return pools.get(db);
}

export interface PostgresOptions {
  /** Pool size (default 10). */
  max?: number | undefined;
  /** Errors of idle pooled connections (the server restarted, a connection was terminated): the pool drops them. */
  onIdleError?: ((err: Error) => void) | undefined;
}

/**
 * A Kysely over a pg Pool for `url`, without migrating (openPostgres migrates). The URL may carry a password:
 * it goes to pg only; messages name the server through redactUrl.
 */
export function connectPostgres(url: string, options: PostgresOptions = {}): Db {
  if (!isPostgresUrl(url)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid database URL ${redactUrl(url)}: a PostgreSQL URL starts with postgres:// or postgresql://`, { field: "db" });
  const pool = new pg.Pool({ connectionString: url, max: options.max ?? 10, types: pgTypes, keepAlive: true, application_name: "vigil" });
  // Without a listener an idle connection's error (pg_terminate_backend, a server restart) would end the process.
  pool.on("error", (err) => options.onIdleError?.(err));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  pools.set(db, pool);
  return db;
}

/** A driver message with the URL's password cut out, should a driver ever echo it. */
function scrubPassword(message: string, url: string): string {
  let password = "";
  try {
    password = decodeURIComponent(new URL(url).password);
  } catch {
    return "(the driver's message is withheld: the URL cannot be parsed)";
  }
  return password.length > 0 ? message.split(password).join("***") : message;
}

/** Opens a PostgreSQL inventory and brings its schema up to date (the same migrations as SQLite). */
export async function openPostgres(url: string, options: PostgresOptions = {}): Promise<Db> {
  const db = connectPostgres(url, options);
  try {
    try {
      await poolOf(db)!.query("SELECT 1");
    } catch (err) {
      throw new VigilError("VIGIL_HOST", `Cannot connect to PostgreSQL at ${redactUrl(url)}: ${scrubPassword(messageOf(err), url)}`, { field: "db" });
    }
    await migrateToLatest(db as Kysely<unknown>);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return db;
}

/**
 * The inventory `spec` names: a PostgreSQL URL (`postgres://…`, `postgresql://…`) or a SQLite file path
 * (`:memory:` too). Any other URL scheme is refused rather than taken for a file name.
 */
export async function openInventory(spec: string, options: PostgresOptions = {}): Promise<Db> {
  if (isPostgresUrl(spec)) return openPostgres(spec, options);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid database ${JSON.stringify(spec.replace(/\/\/.*$/, "//…"))}: give a SQLite file path or a postgres:// URL`, { field: "db" });
  if (spec === "") throw new VigilError("VIGIL_BAD_REQUEST", "Invalid database \"\": give a SQLite file path or a postgres:// URL", { field: "db" });
  return openSqlite(spec);
}

export async function openSqlite(path: string): Promise<Db> {
  const fresh = path !== ":memory:" && !existsSync(path);
  const sqlite = new SqliteDatabase(path);
  if (fresh) chmodSync(path, 0o600);
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = FULL");
  sqlite.pragma("foreign_keys = ON");
  sqlite.pragma("busy_timeout = 5000");
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  await migrateToLatest(db as Kysely<unknown>);
  return db;
}
