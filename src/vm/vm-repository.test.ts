/**
 * The VM repository reads back exactly what it wrote, on SQLite and on PostgreSQL: spec and labels as JSON,
 * the template flag (0/1), generation and pid numbers, nulls, name order, and a corrupted row is an error naming
 * the VM. The shared list (vm-list-cache.ts) never serves rows the table no longer holds.
 */
import assert from "node:assert/strict";
import { dialectTest, testInventory } from "../inventory/testing/dialects.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite } from "../inventory/db.ts";
import { VmRepository, type VmInsert, type VmRecord } from "./vm-repository.ts";
import type { VmSpec } from "./spec.ts";

function spec(name: string): VmSpec {
  return {
    version: 1,
    name,
    machine: "pc-i440fx-7.2",
    cpu: "max",
    vcpus: 1,
    memoryMiB: 256,
    image: "tiny",
    boot: { kind: "kernel", kernel: "/k/vmlinuz", initrd: "/k/initrd", cmdline: "console=ttyS0 quiet" },
    disks: [{ name: "root", sizeMiB: 16 * 1024 * 1024 }],
    nics: [{ name: "net0", mode: "bridge", network: "lab", mac: "52:54:00:01:02:03" }],
    agent: true,
    vtime: true,
  };
}

function vm(name: string, template: boolean): VmInsert {
  return {
    id: `00000000-0000-4000-8000-${name.padStart(12, "0")}`,
    name,
    spec: spec(name),
    state: "stopped",
    host: "hosta",
    vmgenid: "11111111-2222-4333-8444-555555555555",
    generation: 1,
    owner: "group:ops",
    approver: null,
    purpose: "tests: ünïcødé ' \"",
    expiresAt: "2027-01-01",
    labels: { tier: "web", "app.io/x": "1" },
    lineage: { kind: "image", image: "tiny" },
    isTemplate: template,
    createdBy: "alice",
    createdAt: "2026-12-07T00:00:00.000Z",
  };
}

dialectTest("VM records round-trip: insert, find, list in name order, update, dependents, delete", async (t, dialect) => {
  const repo = new VmRepository(await testInventory(t, dialect));
  const web = await repo.insert(vm("web", false));
  await repo.insert(vm("base", true));
  await repo.insert(vm("db1", false));
  await repo.insert(vm("db-2", false));
  assert.deepEqual(web.spec, spec("web"));
  assert.deepEqual({ isTemplate: web.isTemplate, pid: web.pid, labels: web.labels, lineage: web.lineage, vtimeNs: web.vtimeNs, securityFloor: web.securityFloor }, {
    isTemplate: false,
    pid: null,
    labels: { tier: "web", "app.io/x": "1" },
    lineage: { kind: "image", image: "tiny" },
    vtimeNs: web.id,
    securityFloor: {},
  });
  assert.equal((await repo.getByName("base")).isTemplate, true);
  assert.deepEqual((await repo.list()).map((v) => v.name), ["base", "db-2", "db1", "web"]);

  const base = await repo.getByName("base");
  const updated = await repo.update(web.id, { state: "running", pid: 4_194_304, generation: 2, accelerator: "tcg", isTemplate: true, securityFloor: { kernel: "6.12.1" } });
  assert.deepEqual({ state: updated.state, pid: updated.pid, generation: updated.generation, accelerator: updated.accelerator, isTemplate: updated.isTemplate, floor: updated.securityFloor }, {
    state: "running",
    pid: 4_194_304,
    generation: 2,
    accelerator: "tcg",
    isTemplate: true,
    floor: { kernel: "6.12.1" },
  });
  assert.equal(typeof updated.pid, "number");
  await repo.db.updateTable("vms").set({ base_vm_id: base.id }).where("name", "=", "db1").execute();
  assert.deepEqual((await repo.dependentsOf(base.id)).map((v) => v.name), ["db1"]);

  await repo.delete(web.id);
  assert.equal(await repo.findByName("web"), undefined);
  await assert.rejects(repo.getByName("web"), /VM "web" does not exist/);
});

dialectTest("a stored spec that no longer validates is an error naming the VM", async (t, dialect) => {
  const repo = new VmRepository(await testInventory(t, dialect));
  await repo.insert(vm("web", false));
  await repo.db.updateTable("vms").set({ spec: JSON.stringify({ ...spec("web"), vcpus: 0 }) }).where("name", "=", "web").execute();
  await assert.rejects(repo.getByName("web"), /The stored spec of VM "web" is invalid/);
});

dialectTest("the shared list follows every change of the table — ours, a raw statement's, a rolled-back transaction's, another connection's — and is frozen", async (t, dialect) => {
  const dir = mkdtempSync(join(tmpdir(), "vt-vmlist-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "inventory.sqlite");
  const repo = new VmRepository(await testInventory(t, dialect, path));
  const names = async () => (await repo.listShared()).map((v) => `${v.name}:${v.state}`);
  assert.deepEqual(await names(), []);
  const web = await repo.insert(vm("web", false));
  assert.deepEqual(await names(), ["web:stopped"]);
  const first = await repo.listShared();
  if (dialect === "sqlite") assert.equal(await repo.listShared(), first, "unchanged table: the same list, not a re-read");
  else assert.notEqual(await repo.listShared(), first, "PostgreSQL: read every time");
  assert.throws(() => ((first[0] as VmRecord).spec.vcpus = 4), TypeError);
  assert.throws(() => ((first[0] as VmRecord).labels["tier"] = "db"), TypeError);

  await repo.update(web.id, { state: "running" });
  assert.deepEqual(await names(), ["web:running"]);
  await repo.db.updateTable("vms").set({ state: "paused" }).where("id", "=", web.id).execute();
  assert.deepEqual(await names(), ["web:paused"]);
  await repo.db
    .transaction()
    .execute(async (tx) => {
      await new VmRepository(tx).insert(vm("db1", false));
      await tx.updateTable("vms").set({ state: "stopped" }).where("id", "=", web.id).execute();
      throw new Error("roll back");
    })
    .catch(() => undefined);
  assert.deepEqual(await names(), ["web:paused"]);
  await repo.insert(vm("db1", false));
  assert.deepEqual(await names(), ["db1:stopped", "web:paused"], "a change after a rollback is seen");
  await repo.db.transaction().execute(async (tx) => {
    await new VmRepository(tx).insert(vm("aaa", false));
  });
  const twin = new VmRepository(repo.db); // a second repository on the same connection shares the list
  assert.deepEqual((await twin.listShared()).map((v) => v.name), ["aaa", "db1", "web"]);
  await twin.delete((await twin.getByName("aaa")).id);
  assert.deepEqual(await names(), ["db1:stopped", "web:paused"]);
  if (dialect === "sqlite") {
    // another process (the CLI, a second daemon) writing the same file: no trigger of ours fires there
    const other = new VmRepository(await openSqlite(path));
    await other.update(web.id, { state: "stopped" });
    await other.db.destroy();
  } else {
    await repo.update(web.id, { state: "stopped" });
  }
  assert.deepEqual(await names(), ["db1:stopped", "web:stopped"]);
  await repo.delete(web.id);
  assert.deepEqual(await names(), ["db1:stopped"]);
});
