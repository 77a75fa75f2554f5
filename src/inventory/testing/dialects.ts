/**
 * Test support: one test body run on each inventory dialect — SQLite in a file, and PostgreSQL in a fresh
 * database of the server set-up starts (testing/pg.ts) — so code shared by a single host and a cluster's
 * manager is shown to behave the same on both.
 */
import { test, type TestContext } from "node:test";
import { openPostgres, openSqlite, type Db } from "../db.ts";
import type { Dialect } from "../dialect.ts";
import { freshDatabase } from "./pg.ts";

export const DIALECTS: readonly Dialect[] = ["sqlite", "postgres"];

/**
 * A migrated inventory of `dialect`, destroyed (and its PostgreSQL database dropped) after the test. SQLite lives
 * at `sqlitePath` (default in memory).
 */
export async function testInventory(t: TestContext, dialect: Dialect, sqlitePath = ":memory:"): Promise<Db> {
  if (dialect === "sqlite") {
    const db = await openSqlite(sqlitePath);
    t.after(() => db.destroy());
    return db;
  }
  const fresh = await freshDatabase();
  const db = await openPostgres(fresh.url);
  t.after(async () => {
    await db.destroy();
    await fresh.drop();
  });
  return db;
}

/** `test(name [dialect])` once per dialect. */
export function dialectTest(name: string, fn: (t: TestContext, dialect: Dialect) => Promise<void>): void {
  for (const dialect of DIALECTS) test(`${name} [${dialect}]`, (t) => fn(t, dialect));
}
