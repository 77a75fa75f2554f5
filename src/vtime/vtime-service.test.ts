/**
 * vtime operations without QEMU: linking two VMs' stores at the same time in opposite directions must neither
 * deadlock nor leave the VMs' operation locks held (review finding 7).
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import type { VmRecord } from "../vm/vm-repository.ts";

async function daemon(t: TestContext): Promise<Daemon> {
  const home = mkdtempSync(join(tmpdir(), "vigil-vtime-svc-"));
  const d = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await d.close();
    rmSync(home, { recursive: true, force: true });
  });
  return d;
}

function insertVm(d: Daemon, name: string): Promise<VmRecord> {
  const spec = resolveSpec(createVmRequestSchema.parse({ name, memoryMiB: 128, vtime: true }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  return d.repo.insert({ id: crypto.randomUUID(), name, spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
}

const TIMEOUT = Symbol("timeout");
/** The call's status, or TIMEOUT when it has not answered within `ms`. */
async function within(ms: number, call: Response | Promise<Response>): Promise<number | typeof TIMEOUT> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof TIMEOUT>((r) => (timer = setTimeout(() => r(TIMEOUT), ms)));
  try {
    return await Promise.race([Promise.resolve(call).then((res) => res.status), late]);
  } finally {
    clearTimeout(timer);
  }
}

test("two opposite links at once both finish, and the VMs answer afterwards (no nested VM locks)", async (t) => {
  const d = await daemon(t);
  const va = await insertVm(d, "va");
  const vb = await insertVm(d, "vb");
  const link = (name: string, source: string) =>
    d.app.request(`/v1/vms/${name}/vtime/link`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ source }) }, { transport: "unix" });
  const [ab, ba] = await Promise.all([within(3000, link("va", "vb")), within(3000, link("vb", "va"))]);
  assert.deepEqual([ab, ba], [200, 200], "both links answered");
  const after = await within(3000, d.app.request("/v1/vms/va/template", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }, { transport: "unix" }));
  assert.notEqual(after, TIMEOUT, "an operation on va after the links answers");
  // The links ran one after the other: both VMs end up on one store, not on each other's.
  const [a, b] = [await d.repo.getById(va.id), await d.repo.getById(vb.id)];
  assert.equal(a.vtimeNs, b.vtimeNs, `one shared namespace (va → ${a.vtimeNs}, vb → ${b.vtimeNs})`);
});

test("when a VM leaves or arrives (migration), the store answers from the database again, never from what it remembered", async (t) => {
  const d = await daemon(t);
  const store = (d.deps.vtime as unknown as { store: import("./store.ts").MonotonicStore }).store;
  assert.equal(await store.read("ns-moving", "c"), 0);
  // Rows written behind the store's back, as an arriving dossier does.
  await d.repo.db.insertInto("vtime_counters").values({ ns: "ns-moving", name: "c", value: 5, last_rid: null, updated_at: new Date().toISOString() }).execute();
  assert.equal(await store.read("ns-moving", "c"), 0, "remembered");
  await d.deps.audit.append({ actor: "system", action: "vm.stopped", target: { kind: "vm", id: "x", name: "x" }, result: "ok" });
  assert.equal(await store.read("ns-moving", "c"), 0, "other records change nothing");
  await d.deps.audit.append({ actor: "ada", action: "vm.incoming", target: { kind: "vm", id: "x", name: "x" }, result: "ok" });
  assert.equal(await store.read("ns-moving", "c"), 5);
  await d.repo.db.updateTable("vtime_counters").set({ value: 9 }).execute();
  await d.deps.audit.append({ actor: "ada", action: "vm.migrated-out", target: { kind: "vm", id: "x", name: "x" }, result: "ok" });
  assert.equal(await store.read("ns-moving", "c"), 9);
});
