/**
 * Test support: a fresh PostgreSQL database per test file on the server set-up starts (scripts/bootstrap.sh),
 * reached as root by peer authentication over the unix socket, so no password exists anywhere. The database has
 * a random name and is dropped (WITH FORCE: a connection a test left open does not keep it) after the file's
 * tests. A server that is not running is a failure saying so, never a skipped test.
 */
import { randomBytes } from "node:crypto";
import { userInfo } from "node:os";
import { after } from "node:test";
import pg from "pg";
import { messageOf } from "../../errors.ts";

/** Where the server's unix socket is (Debian's default); VIGIL_TEST_PGHOST overrides it. */
export const PG_SOCKET_DIR = process.env["VIGIL_TEST_PGHOST"] ?? "/var/run/postgresql";

/** A postgres:// URL for database `name` over the unix socket, as this process's OS user (peer authentication). */
export function socketUrl(name: string): string {
  return `postgresql:///${encodeURIComponent(name)}?host=${encodeURIComponent(PG_SOCKET_DIR)}&user=${encodeURIComponent(userInfo().username)}`;
}

/** Runs `sql` on the server's `postgres` database as an administrator of the test databases. */
export async function adminQuery(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: socketUrl("postgres") });
  try {
    await client.connect();
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_SOCKET_DIR} (${messageOf(err)}): set-up (scripts/bootstrap.sh, run by npm test and .ci/run) ` +
        "should have installed and started it and created the role root; run it as root",
      { cause: err },
    );
  }
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

export interface TestDatabase {
  name: string;
  url: string;
  /** Drops it now (also done after the file's tests). */
  drop(): Promise<void>;
}

/**
 * DROP DATABASE … WITH (FORCE) terminates the database's other sessions, and PostgreSQL 15 checks each one's role:
 * an autovacuum worker that happens to be in the new database has no role a non-superuser may signal, so the drop
 * fails with 42501 ("must be a member of the role whose process is being terminated"; seen once in CI). The worker
 * is gone within moments, so the drop is retried for a few seconds instead of granting root pg_signal_backend.
 */
async function dropWithRetry(name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      return;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (attempt >= 20 || (code !== "42501" && code !== "55006")) throw err;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

/** Creates an empty database with a random name, dropped after the calling test file's tests. */
export async function freshDatabase(): Promise<TestDatabase> {
  const name = `vt_${randomBytes(6).toString("hex")}`;
  await adminQuery(`CREATE DATABASE "${name}" TEMPLATE template0 ENCODING 'UTF8'`);
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await dropWithRetry(name);
  };
  after(drop);
  return { name, url: socketUrl(name), drop };
}
