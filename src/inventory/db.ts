/**
 * Opens the inventory. SQLite (better-sqlite3) by default: WAL with synchronous=FULL, so a committed change
 * survives a crash of vigil or the host — the monotonic store and the audit log depend on that.
 */
import SqliteDatabase from "better-sqlite3";
import { Kysely, SqliteDialect } from "kysely";
import { chmodSync, existsSync } from "node:fs";
import type { Database } from "./schema.ts";
import { migrateToLatest } from "./migrations.ts";

export type Db = Kysely<Database>;

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
