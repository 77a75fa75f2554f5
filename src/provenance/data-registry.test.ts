import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
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

test("a location a client reports is information only: it closes no registration and is not vigil's", async (t) => {
  const { dir, registry } = await setUp(t);
  // VM web's disk, made by vigil; then the owner of VM eve reports an export "saved" at that very path.
  const disk = join(dir, "web-disk.qcow2");
  writeFileSync(disk, "web's disk");
  await registry.register("web", disk, "disk");
  await registry.reportLocation("eve", disk, "bundle", "eve");
  await registry.reportLocation("eve", undefined, "bundle", "eve");

  assert.deepEqual((await registry.list("web")).map((f) => [f.path, f.removedAt]), [[disk, null]], "web's registration stays live");
  const eves = await registry.listForRemoval("eve");
  assert.deepEqual(
    eves.map((f) => [f.path, f.origin, f.identity]),
    [
      [`(reported by eve, not verified) ${disk}`, "client", undefined],
      ["(downloaded by eve, location unknown)", "client", undefined],
    ],
  );
  const [webDisk] = await registry.listForRemoval("web");
  const st = statSync(disk, { bigint: true });
  assert.deepEqual([webDisk?.origin, webDisk?.identity, webDisk?.size], ["vigil", { dev: st.dev.toString(), ino: st.ino.toString() }, 10]);
});

test("registering again refreshes size and identity; only plain absolute paths are registered", async (t) => {
  const { dir, registry } = await setUp(t);
  const file = join(dir, "console.log");
  writeFileSync(file, "x");
  await registry.register("web", file, "console-log", { hash: false });
  rmSync(file);
  writeFileSync(file, "xyz");
  await registry.register("web", file, "console-log", { hash: false });
  const all = await registry.listForRemoval("web");
  assert.deepEqual(all.map((f) => [f.size, f.removedAt, f.identity?.ino]), [[3, null, statSync(file, { bigint: true }).ino.toString()]], "one live record, refreshed");

  await assert.rejects(registry.register("web", "relative/disk", "disk"), /not a plain absolute path/);
  await assert.rejects(registry.register("web", `${dir}/../etc/passwd`, "disk"), /not a plain absolute path/);
});

test("with vigil's vms/ directory given, nothing outside it can be registered", async (t) => {
  const { dir, db } = await setUp(t);
  const registry = new DataRegistry(db, "host-a", join(dir, "vms"));
  writeFileSync(join(dir, "vigil.db"), "");
  await assert.rejects(registry.register("web", join(dir, "vigil.db"), "disk"), /not below vigil's directory/);
  await assert.rejects(registry.register("web", join(dir, "vms-evil", "x"), "disk"), /not below vigil's directory/);
  await registry.register("web", join(dir, "vms", "web", "disks", "a.qcow2"), "disk");
  assert.equal((await registry.list("web")).length, 1);
});

test("with a shared storage directory given too, files below it can be registered, nothing else outside vms/", async (t) => {
  const { dir, db } = await setUp(t);
  const registry = new DataRegistry(db, "host-a", join(dir, "vms"), join(dir, "shared"));
  await registry.register("web", join(dir, "shared", "u1", "disks", "root.qcow2"), "disk");
  await registry.register("web", join(dir, "vms", "web", "disks", "a.qcow2"), "disk");
  await assert.rejects(registry.register("web", join(dir, "shared-evil", "x"), "disk"), /not below vigil's directory/);
  await assert.rejects(registry.register("web", join(dir, "vigil.db"), "disk"), /not below vigil's directory/);
  assert.equal((await registry.list("web")).length, 2);
});
