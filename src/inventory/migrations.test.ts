/**
 * The inventory's migrations on both dialects: SQLite's schema is exactly the golden file (released migrations
 * unchanged), every migration runs on a real PostgreSQL server and yields the same tables, columns, nullability,
 * keys, defaults and indexes, and values (integers, 0/1 booleans, text, nulls, ordering) round-trip identically.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
import { openInventory, openPostgres, openSqlite, parseInt8, type Db } from "./db.ts";
import { dialectOf, redactUrl } from "./dialect.ts";
import { freshDatabase } from "./testing/pg.ts";

const GOLDEN = join(import.meta.dirname, "testdata", "sqlite-schema.sql");
const KYSELY_TABLES = new Set(["schema_migrations", "schema_migrations_lock"]);

const pgDb = await freshDatabase();

async function sqliteSchema(db: Db): Promise<string> {
  const r = await sql<{ type: string; name: string; sql: string | null }>`SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name`.execute(db);
  return r.rows.map((x) => `-- ${x.type} ${x.name}\n${x.sql ?? ""};\n`).join("");
}

interface Column {
  name: string;
  type: string;
  notNull: boolean;
  pk: boolean;
  default: string | null;
}

async function sqliteColumns(db: Db): Promise<Map<string, Column[]>> {
  const tables = await sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`.execute(db);
  const out = new Map<string, Column[]>();
  for (const { name } of tables.rows) {
    if (KYSELY_TABLES.has(name)) continue;
    const cols = await sql<{ name: string; type: string; notnull: number; dflt_value: string | null; pk: number }>`SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(${name})`.execute(db);
    out.set(
      name,
      cols.rows.map((c) => ({
        name: c.name,
        // What PostgreSQL must hold for it (src/inventory/dialect.ts).
        type: c.type.toLowerCase() === "integer" ? "bigint" : c.type.toLowerCase(),
        notNull: c.notnull === 1 || c.pk > 0,
        pk: c.pk > 0,
        default: c.dflt_value,
      })),
    );
  }
  return out;
}

async function postgresColumns(db: Db): Promise<Map<string, Column[]>> {
  const cols = await sql<{ table_name: string; column_name: string; data_type: string; is_nullable: string; column_default: string | null; collation_name: string | null }>`
    SELECT table_name, column_name, data_type, is_nullable, column_default, collation_name FROM information_schema.columns
    WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position`.execute(db);
  const pks = await sql<{ table_name: string; column_name: string }>`
    SELECT k.table_name, k.column_name FROM information_schema.table_constraints c
    JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema
    WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema()`.execute(db);
  const pk = new Set(pks.rows.map((r) => `${r.table_name}.${r.column_name}`));
  const out = new Map<string, Column[]>();
  for (const c of cols.rows) {
    if (KYSELY_TABLES.has(c.table_name)) continue;
    // Text compares bytewise on both (SQLite's BINARY): every text column is collate "C".
    if (c.data_type === "text") assert.equal(c.collation_name, "C", `${c.table_name}.${c.column_name} is collate "C"`);
    const serial = c.column_default?.startsWith("nextval(") ?? false;
    const list = out.get(c.table_name) ?? [];
    list.push({
      name: c.column_name,
      type: c.data_type,
      notNull: c.is_nullable === "NO",
      pk: pk.has(`${c.table_name}.${c.column_name}`),
      // SQLite's autoincrement column has no default; PostgreSQL's bigserial is a sequence default.
      default: serial ? null : (c.column_default?.replace(/::(text|bigint)$/, "") ?? null),
    });
    out.set(c.table_name, list);
  }
  return out;
}

async function indexNames(db: Db): Promise<string[]> {
  if (dialectOf(db) === "sqlite") {
    const r = await sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name`.execute(db);
    return r.rows.map((x) => x.name);
  }
  // Explicit indexes only: constraints' own indexes are named by each engine its own way.
  const r = await sql<{ indexname: string }>`
    SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()
    AND indexname NOT IN (SELECT conname FROM pg_constraint) ORDER BY indexname`.execute(db);
  return r.rows.map((x) => x.indexname);
}

test("SQLite's schema is the golden one (released migrations unchanged; VIGIL_UPDATE_GOLDEN=1 rewrites it)", async (t) => {
  const db = await openSqlite(":memory:");
  t.after(() => db.destroy());
  const schema = await sqliteSchema(db);
  if (process.env["VIGIL_UPDATE_GOLDEN"] === "1") writeFileSync(GOLDEN, schema);
  assert.equal(schema, readFileSync(GOLDEN, "utf8"));
});

test("every migration runs on PostgreSQL and yields SQLite's tables, columns, keys, defaults and indexes", async (t) => {
  const lite = await openSqlite(":memory:");
  const pg = await openPostgres(pgDb.url);
  t.after(async () => {
    await lite.destroy();
    await pg.destroy();
  });
  assert.equal(dialectOf(pg), "postgres");
  const names = async (db: Db) => (await sql<{ name: string }>`SELECT name FROM schema_migrations ORDER BY name`.execute(db)).rows.map((r) => r.name);
  assert.deepEqual(await names(pg), await names(lite));
  assert.ok((await names(pg)).includes("0006-cluster"));
  const [l, p] = [await sqliteColumns(lite), await postgresColumns(pg)];
  assert.deepEqual([...p.keys()].sort(), [...l.keys()].sort());
  for (const [table, cols] of l) assert.deepEqual(p.get(table), cols, `table ${table}`);
  assert.deepEqual(await indexNames(pg), await indexNames(lite));
  // Opening again is a no-op, not a second run.
  const again = await openPostgres(pgDb.url);
  await again.destroy();
  assert.deepEqual(await names(pg), await names(lite));
});

test("managers starting at once on a fresh database migrate it once (the migrator's lock)", async (t) => {
  const fresh = await freshDatabase();
  const dbs = await Promise.all([openPostgres(fresh.url), openPostgres(fresh.url), openPostgres(fresh.url)]);
  t.after(async () => {
    for (const db of dbs) await db.destroy();
    await fresh.drop();
  });
  const n = await sql<{ n: number }>`SELECT count(*) AS n FROM schema_migrations`.execute(dbs[0]!);
  const lite = await openSqlite(":memory:");
  const m = await sql<{ n: number }>`SELECT count(*) AS n FROM schema_migrations`.execute(lite);
  await lite.destroy();
  assert.equal(n.rows[0]!.n, m.rows[0]!.n);
});

/** The same writes on either dialect; returns what reads give back. */
async function roundTrip(db: Db): Promise<unknown> {
  const now = "2026-12-07T01:02:03.456Z";
  const big = 2 ** 40 + 7; // a 1 TiB disk: beyond PostgreSQL's 32-bit integer
  for (const [name, template] of [["web", 1], ["B-db", 0], ["a_x", 0], ["Zed", 1], ["é-cache", 0]] as const) {
    await db
      .insertInto("vms")
      .values({
        id: `id-${name}`,
        name,
        spec: JSON.stringify({ name, note: "quotes ' \" and\nnewline, ünïcødé ✓" }),
        state: "stopped",
        host: "h1",
        accelerator: null,
        vmgenid: "00000000-0000-4000-8000-000000000000",
        generation: 3,
        pid: null,
        owner: "user:alice",
        approver: null,
        purpose: "",
        expires_at: null,
        labels: "{}",
        lineage: "{}",
        is_template: template,
        created_by: "alice",
        created_at: now,
        updated_at: now,
        state_changed_at: now,
        current_snapshot_id: null,
        resume_snapshot_id: null,
        base_vm_id: null,
        vtime_ns: `id-${name}`,
        security_floor: "{}",
      })
      .execute();
  }
  await db.insertInto("images").values({ name: "big", disk: "/d", source_format: "qcow2", size: big, virtual_size: big * 2, sha256: "ab", description: "", source: "s", created_by: "a", created_at: now }).execute();
  await db.insertInto("data_files").values({ id: "f1", vm_id: "id-web", host: "h1", path: "/p", purpose: "disk", size: null, sha256: null, created_at: now, removed_at: null, removed_how: null, dev: "2049", ino: "12345678901" }).execute();
  await db.insertInto("vm_locations").values({ vm_id: "id-web", host: "h1", path: "/p", since: now, until: null }).execute();
  await db.insertInto("vm_locations").values({ vm_id: "id-web", host: "h2", path: "/q", since: now, until: null }).execute();
  const vms = await db.selectFrom("vms").selectAll().orderBy("name").execute();
  const byTemplate = await db.selectFrom("vms").select("name").where("is_template", "=", 1).orderBy("name").execute();
  const counts = await db.selectFrom("vms").select((eb) => [eb.fn.countAll<number>().as("n"), eb.fn.sum<number>("generation").as("g"), eb.fn.max("generation").as("m")]).executeTakeFirstOrThrow();
  const raw = await sql<{ c: number; s: number }>`SELECT count(*) AS c, sum(size) AS s FROM images`.execute(db);
  return {
    vms,
    byTemplate,
    counts,
    raw: raw.rows,
    images: await db.selectFrom("images").selectAll().execute(),
    files: await db.selectFrom("data_files").selectAll().execute(),
    locations: await db.selectFrom("vm_locations").selectAll().orderBy("id").execute(),
    range: await db.selectFrom("vms").select("name").where("name", ">=", "B").where("name", "<", "a").orderBy("name").execute(),
  };
}

test("integers, 0/1 booleans, text, nulls and ordering round-trip identically on SQLite and PostgreSQL", async (t) => {
  const lite = await openSqlite(":memory:");
  const fresh = await freshDatabase();
  const pg = await openPostgres(fresh.url);
  t.after(async () => {
    await lite.destroy();
    await pg.destroy();
    await fresh.drop();
  });
  const expected = await roundTrip(lite);
  const got = await roundTrip(pg);
  assert.deepEqual(got, expected);
  // The comparison above must be about something: bytewise order, exact big integers, numbers not strings.
  const e = expected as { vms: Array<{ name: string; is_template: unknown }>; images: Array<{ size: unknown }>; raw: Array<{ c: unknown }> };
  assert.deepEqual(e.vms.map((v) => v.name), ["B-db", "Zed", "a_x", "web", "é-cache"]);
  assert.equal(e.images[0]!.size, 2 ** 40 + 7);
  assert.equal(typeof e.vms[0]!.is_template, "number");
  assert.equal(e.raw[0]!.c, 1);
});

test("a PostgreSQL integer beyond 2^53 is an error, never a rounded number", async (t) => {
  const pg = await openPostgres(pgDb.url);
  t.after(() => pg.destroy());
  await assert.rejects(sql`SELECT 9007199254740993::bigint AS n`.execute(pg), /outside the range vigil handles exactly/);
  assert.equal((await sql<{ n: number }>`SELECT 9007199254740991::bigint AS n`.execute(pg)).rows[0]!.n, Number.MAX_SAFE_INTEGER);
  assert.equal((await sql<{ n: number }>`SELECT avg(x) AS n FROM (VALUES (1), (2)) v(x)`.execute(pg)).rows[0]!.n, 1.5);
  assert.equal(parseInt8("-42"), -42);
});

test("openInventory picks the dialect from the spec and refuses other URL schemes", async (t) => {
  const pg = await openInventory(pgDb.url);
  const lite = await openInventory(":memory:");
  t.after(async () => {
    await pg.destroy();
    await lite.destroy();
  });
  assert.equal(dialectOf(pg), "postgres");
  assert.equal(dialectOf(lite), "sqlite");
  await assert.rejects(openInventory("mysql://u:pw@h/db"), (err: Error & { field?: string }) => err.field === "db" && /SQLite file path or a postgres:\/\/ URL/.test(err.message) && !err.message.includes("pw"));
  await assert.rejects(openInventory(""), (err: Error & { field?: string }) => err.field === "db");
});

test("a URL's password never appears in an error", async () => {
  const url = "postgres://vigil:s3cr3t-Pa55@127.0.0.1:1/vigil?sslpassword=k3y-Pa55";
  await assert.rejects(openPostgres(url), (err: Error & { field?: string }) => {
    assert.equal(err.field, "db");
    assert.match(err.message, /Cannot connect to PostgreSQL at postgres:\/\/vigil:\*\*\*@127\.0\.0\.1:1\/vigil\?sslpassword=\*\*\*/);
    assert.doesNotMatch(`${err.message} ${String((err as { cause?: unknown }).cause)}`, /s3cr3t|k3y-Pa55/);
    return true;
  });
  assert.equal(redactUrl("postgresql://u@h/db"), "postgresql://u@h/db");
  assert.doesNotMatch(redactUrl("postgres://u:p%40ss@[::1/x"), /p%40ss|p@ss/);
});
