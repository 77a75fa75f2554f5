/**
 * Upgrading from a vigil that kept guest RAM in `vms/<id>/mem/ram`: a RAM file left by a host crash is
 * overwritten (not merely unlinked) and recorded the next time the VM starts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import { createVmRequestSchema, resolveSpec } from "./spec.ts";

test("a RAM file left by an older vigil is overwritten and unlinked at the VM's next start", async (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-legacy-ram-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "old", memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/nonexistent/k", initrd: "/nonexistent/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const vm = await daemon.repo.insert({ id: crypto.randomUUID(), name: "old", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  const ram = join(home, "vms", vm.id, "mem", "ram");
  mkdirSync(join(home, "vms", vm.id, "mem"), { recursive: true, mode: 0o700 });
  writeFileSync(ram, Buffer.alloc(8192, "guest-secret-"), { mode: 0o600 });
  const db = await openSqlite(daemon.home.database);
  t.after(() => db.destroy());
  const registry = new DataRegistry(db, "h");
  await registry.register(vm.id, ram, "ram", { hash: false });
  const held = openSync(ram, "r"); // still sees the inode after the unlink: was it overwritten?
  t.after(() => closeSync(held));
  const res = await daemon.app.request("/v1/vms/old/start", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }, { transport: "unix" });
  assert.notEqual(res.status, 200, "this start fails later (no kernel): the erase comes first");
  assert.equal(existsSync(ram), false, "unlinked");
  assert.equal(existsSync(join(home, "vms", vm.id, "mem")), false, "its directory too");
  const after = Buffer.alloc(8192);
  readSync(held, after, 0, 8192, 0);
  assert.ok(after.every((b) => b === 0), "overwritten with zeros before the unlink");
  const files = await registry.list(vm.id, { includeRemoved: true });
  assert.equal(files.find((f) => f.path === ram)?.removedHow, "overwritten");
});
