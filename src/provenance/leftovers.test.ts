/**
 * What a crash leaves behind (review finding 12): VM directories whose creation never finished and import/export
 * staging are erased at the next start, each as an audited recovery action; an export whose client hangs up
 * before the first chunk removes its staging.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import { VmRepository } from "../vm/vm-repository.ts";
import { DataRegistry } from "./data-registry.ts";

function home(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-leftovers-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
const start = (h: string) => startDaemon({ home: h, cache: join(h, "no-cache"), listen: "none", log: silentLogger() });
const spec = (name: string) => resolveSpec(createVmRequestSchema.parse({ name, disks: [{ name: "data", sizeMiB: 16 }] }), { name: "blank", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });

test("a crash's leftovers in vms/ are overwritten, removed and audited at the next start", async (t) => {
  const h = home(t);
  await (await start(h)).close();
  const vms = join(h, "vms");
  const secret = Buffer.alloc(256 * 1024, 0x5a);
  // Staging of an import and an export, and a .tmp- directory, as a kill -9 leaves them.
  const staged = join(vms, `import-${crypto.randomUUID()}`, "data-0.qcow2");
  for (const p of [staged, join(vms, `export-${crypto.randomUUID()}`, "data-0.qcow2.zst"), join(vms, `.tmp-${crypto.randomUUID()}`, "disks", "data.qcow2")]) {
    mkdirSync(join(p, ".."), { recursive: true });
    writeFileSync(p, secret);
  }
  // A clone cut short in prepareDisks (intent open, no row) and one cut short after its row was inserted.
  const db = await openSqlite(join(h, "vigil.db"));
  const registry = new DataRegistry(db, hostname());
  const noRow = crypto.randomUUID();
  const withRow = crypto.randomUUID();
  for (const id of [noRow, withRow]) {
    await registry.intend(id, "materialize", join(vms, id));
    mkdirSync(join(vms, id, "disks"), { recursive: true });
    writeFileSync(join(vms, id, "disks", "data.qcow2"), secret);
  }
  await new VmRepository(db).insert({ id: withRow, name: "half", spec: spec("half"), state: "stopped", host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner: "user:bob", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: "bob", createdAt: new Date().toISOString() });
  await db.destroy();
  // A second name for one leftover's inode, to see its bytes after the sweep.
  const fd = openSync(staged, "r");

  const d = await start(h);
  t.after(() => d.close());
  assert.deepEqual(readdirSync(vms), [], "nothing left in vms/");
  const buf = Buffer.alloc(secret.length);
  readSync(fd, buf, 0, buf.length, 0);
  closeSync(fd);
  assert.equal(buf.indexOf(0x5a), -1, "overwritten before it was unlinked");
  assert.deepEqual(await d.repo.list(), [], "the half-made VM's row is rolled back");
  const records = await d.deps.audit.list({ action: "vm.leftover-erased" });
  assert.equal(records.length, 5);
  assert.ok(records.every((r) => r.actor === "system" && r.result === "ok"));
  assert.ok(records.some((r) => r.target.id === withRow));
  assert.equal((await d.deps.audit.verify()).ok, true);
  // Done once: the next start has nothing to sweep.
  await d.close();
  const again = await start(h);
  t.after(() => again.close());
  assert.equal((await again.deps.audit.list({ action: "vm.leftover-erased" })).length, 5);
});

test("an export whose client hangs up before the first chunk removes its staging", async (t) => {
  const h = home(t);
  const d = await start(h);
  t.after(() => d.close());
  const id = crypto.randomUUID();
  await d.repo.insert({ id, name: "mine", spec: spec("mine"), state: "stopped", host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner: `user:${(await d.deps.users.list())[0]!.name}`, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: "bob", createdAt: new Date().toISOString() });
  mkdirSync(join(h, "vms", id, "disks"), { recursive: true });
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(h, "vms", id, "disks", "data.qcow2"), "16M"]);
  const res = await d.app.request("/v1/vms/mine/export", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }, { transport: "unix" });
  assert.equal(res.status, 200);
  const staging = () => readdirSync(join(h, "vms")).filter((n) => n.startsWith("export-"));
  assert.equal(staging().length, 1, "staged while the response is pending");
  await res.body!.cancel();
  for (let i = 0; i < 50 && staging().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(staging(), []);
});

test("an image import cut short leaves its staging in images/: overwritten, removed and audited at the next start", async (t) => {
  const h = home(t);
  await (await start(h)).close();
  const upload = join(h, "images", `import-${crypto.randomUUID()}`, "upload.raw");
  mkdirSync(join(upload, ".."), { recursive: true });
  const secret = Buffer.alloc(128 * 1024, 0x6b);
  writeFileSync(upload, secret);
  const fd = openSync(upload, "r");

  const d = await start(h);
  t.after(() => d.close());
  assert.deepEqual(readdirSync(join(h, "images")).filter((n) => n.startsWith("import-")), [], "no import staging left");
  const buf = Buffer.alloc(secret.length);
  readSync(fd, buf, 0, buf.length, 0);
  closeSync(fd);
  assert.equal(buf.indexOf(0x6b), -1, "overwritten before it was unlinked");
  const erased = await d.deps.audit.list({ action: "image.leftover-erased" });
  assert.equal(erased.length, 1, "audited once");
  assert.equal((erased[0]!.details as { files: number }).files, 1);
});
