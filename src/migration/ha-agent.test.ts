/**
 * HaAgent's refusals on the target (an in-process daemon, no QEMU): a restart request is input, and so is what the
 * shared storage holds. Each refusal names its field and creates nothing here. The restart that succeeds, the sync
 * and dropStale run against real agents in test/integration/cluster-ha.test.ts.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { fakeTiny } from "../image/testing/fake-tiny.ts";
import { silentLogger } from "../log.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import { HaAgent, SHARED_DOSSIER_MAX_BYTES } from "./ha-agent.ts";

async function target(t: TestContext) {
  const home = mkdtempSync(join(tmpdir(), "vigil-ha-agent-"));
  const cache = join(home, "cache");
  fakeTiny(cache);
  const shared = join(home, "shared");
  mkdirSync(shared, { mode: 0o700 });
  const daemon = await startDaemon({ home, cache, listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const d = daemon.deps;
  const db = daemon.repo.db;
  const registry = new DataRegistry(db, d.host.name, join(home, "vms"), shared);
  const ha = new HaAgent({ vms: d.vms, db, guard: d.guard, audit: d.audit, catalog: d.catalog, hostName: d.host.name, vmsDir: join(home, "vms"), registry, log: d.log, watches: d.introspection, sharedStorage: shared });
  await d.users.create({ name: "ada", roles: ["admin"], introspect: false }, "test");
  const ctx = { actor: await d.users.actorFor((await d.users.findByName("ada"))!, "token"), requestId: randomUUID() };
  const vmRows = async () => (await db.selectFrom("vms").select("id").execute()).length;
  return { ha, ctx, shared, d, vmRows };
}

test("restartHere refuses a bad request and a missing, oversized, foreign or local dossier, creating nothing", async (t) => {
  const { ha, ctx, shared, vmRows } = await target(t);
  const vmId = randomUUID();
  const dir = join(shared, vmId);
  const body = { vmId, from: "h1", lostEpoch: 1 };
  await assert.rejects(ha.restartHere(ctx, { ...body, lostEpoch: 0 }), { code: "VIGIL_BAD_REQUEST" });
  await assert.rejects(ha.restartHere(ctx, { ...body, vmId: "not-a-uuid" }), { code: "VIGIL_BAD_REQUEST" });
  await assert.rejects(ha.restartHere(ctx, { ...body, extra: 1 }), { code: "VIGIL_BAD_REQUEST" });
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "dossier", message: /is not on the shared storage/ });
  mkdirSync(dir);
  writeFileSync(join(dir, "dossier.json"), "{not json");
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "dossier", message: /is not JSON/ });
  writeFileSync(join(dir, "dossier.json"), " ".repeat(SHARED_DOSSIER_MAX_BYTES + 1));
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "dossier", message: /larger than/ });
  writeFileSync(join(dir, "dossier.json"), "[]");
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "dossier", message: /not an object/ });
  writeFileSync(join(dir, "dossier.json"), JSON.stringify({ vm: { id: randomUUID(), spec: { storage: "shared" } } }));
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "vmId", message: /is of VM/ });
  writeFileSync(join(dir, "dossier.json"), JSON.stringify({ vm: { id: vmId, spec: { storage: "local" } } }));
  await assert.rejects(ha.restartHere(ctx, body), { code: "VIGIL_CONFLICT", field: "storage", message: /not on shared storage/ });
  assert.equal(await vmRows(), 0, "no VM row was created");
});

test("sync writes no dossier for a local VM; dropStale without a lease database drops nothing", async (t) => {
  const { ha, ctx, shared, d } = await target(t);
  const vm = await d.vms.create(ctx, { name: "loc", nics: [] });
  mkdirSync(join(shared, vm.id));
  await ha.sync();
  assert.deepEqual(readdirSync(join(shared, vm.id)), [], "nothing written for a local VM");
  assert.deepEqual(await ha.dropStale(), []);
  assert.equal((await d.vms.recordById(vm.id)).name, "loc", "the local VM stays");
});
