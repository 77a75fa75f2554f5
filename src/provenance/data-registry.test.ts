import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite } from "../inventory/db.ts";
import { DataRegistry } from "./data-registry.ts";

async function setUp(t: { after(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), "registry-"));
  const db = await openSqlite(":memory:");
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, db, registry: new DataRegistry(db, "host-a") };
}

test("a path registered again by another VM closes the older registration with the reason", async (t) => {
  const { dir, registry } = await setUp(t);
  const bundle = join(dir, "a.vigil");
  writeFileSync(bundle, "web's export");
  await registry.register("web", bundle, "bundle", { hash: false, supersededBy: 'the export of VM "web"' });
  writeFileSync(bundle, "web3's export, written over it");
  await registry.register("web3", bundle, "bundle", { hash: false, supersededBy: 'the export of VM "web3"' });

  // Purge walks only live registrations: web no longer has one for the file, web3 does.
  assert.deepEqual(await registry.list("web"), []);
  const [old] = await registry.list("web", { includeRemoved: true });
  assert.equal(old?.path, bundle);
  assert.notEqual(old?.removedAt, null);
  assert.equal(old?.removedHow, 'overwritten by the export of VM "web3"');
  assert.deepEqual((await registry.list("web3")).map((f) => [f.path, f.removedAt]), [[bundle, null]]);
});

test("registering again for the same VM refreshes, and placeholders or other hosts supersede nothing", async (t) => {
  const { dir, db, registry } = await setUp(t);
  const bundle = join(dir, "b.vigil");
  writeFileSync(bundle, "x");
  await registry.register("web", bundle, "bundle", { hash: false });
  writeFileSync(bundle, "xyz");
  await registry.register("web", bundle, "bundle", { hash: false });
  assert.deepEqual((await registry.list("web", { includeRemoved: true })).map((f) => [f.size, f.removedAt]), [[3, null]], "one live record, refreshed");

  // "(downloaded by …)" is not a file: two VMs downloaded by the same user both keep theirs.
  const placeholder = "(downloaded by alice, location unknown)";
  await registry.register("web", placeholder, "bundle", { hash: false });
  await registry.register("db", placeholder, "bundle", { hash: false });
  assert.ok((await registry.list("web")).some((f) => f.path === placeholder));

  // The same path on another host is another file.
  const other = new DataRegistry(db, "host-b");
  await other.register("db", bundle, "bundle", { hash: false });
  assert.ok((await registry.list("web")).some((f) => f.path === bundle), "host-b's file does not close host-a's");
});
