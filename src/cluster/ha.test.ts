import { test } from "node:test";
import assert from "node:assert/strict";
import { openSqlite } from "../inventory/db.ts";
import { ClusterRepository } from "./cluster-repository.ts";
import { HA_NEEDS_SHARED_STORAGE, HaMonitor } from "./ha.ts";
import { LeaseStore } from "./leases.ts";
import { HaClaims } from "./ha-claims.ts";
import type { HostStatus } from "./types.ts";

const status = (name: string, vms: HostStatus["vms"]): HostStatus => ({ name, memTotalMiB: 8192, memFreeMiB: 4096, cpus: 4, load1: 0, vms, version: "t", epoch: 1 });
const vm = (name: string, memoryMiB = 512) => ({ id: `id-${name}`, name, state: "running", memoryMiB, vcpus: 1, owner: "user:alice" });

test("HA planning: an HA VM of a fenced host is reported once as a restart it would do, refused for want of shared storage", async () => {
  const db = await openSqlite(":memory:");
  const repo = new ClusterRepository(db);
  const NOW = Date.parse("2026-12-07T01:00:00.000Z");
  await repo.addHost({ name: "h1", address: "10.0.0.1:7451", certFingerprint: "AA", state: "fenced" });
  await repo.addHost({ name: "h2", address: "10.0.0.2:7451", certFingerprint: "BB", state: "ready" });
  await repo.updateHost("h1", { status: status("h1", [vm("web", 1024), vm("batch")]) });
  await repo.updateHost("h2", { status: status("h2", []) });
  for (const [n, host] of [["web", "h1"], ["batch", "h1"]] as const) await repo.setPlacement({ vmId: `id-${n}`, vmName: n, host, owner: "user:alice" });
  // The flag defaults to off (0007-cluster-ha) and is kept with the placement.
  assert.equal((await repo.findPlacementByName("web"))!.ha, false);
  assert.equal(await repo.setHa("web", true), true);
  assert.equal(await repo.setHa("nope", true), false);
  await repo.setPlacement({ vmId: "id-web", vmName: "web", host: "h1", owner: "user:alice" });
  assert.equal((await repo.findPlacementByName("web"))!.ha, true, "re-placing a VM keeps its flag");
  await db.insertInto("host_leases").values([
    { host: "h1", epoch: 3, holder: "h1", expires_at: "2026-12-07T00:59:00.000Z", renewed_at: "2026-12-07T00:58:45.000Z" },
    { host: "h2", epoch: 1, holder: "h2", expires_at: "2026-12-07T01:00:10.000Z", renewed_at: "2026-12-07T00:59:55.000Z" },
  ]).execute();
  const leases = new LeaseStore(db, { ttlMs: 15_000 });
  const events: { kind: string; subject: string; payload: Record<string, unknown> }[] = [];
  const records: { vm: string; details: Record<string, unknown> }[] = [];
  const ha = new HaMonitor({
    repo, leases: () => leases.list(), isReady: (h) => h === "h2", now: () => NOW, log: { warn: () => undefined },
    event: async (kind, subject, payload) => void events.push({ kind, subject, payload }),
    record: async (v, details) => void records.push({ vm: v, details }),
  });
  await ha.tick();
  await ha.tick();
  assert.deepEqual(events.map((e) => [e.kind, e.subject, e.payload.wouldRestartOn, e.payload.lostEpoch, e.payload.refused]), [["vm.ha-restart-refused", "web", "h2", 3, HA_NEEDS_SHARED_STORAGE]]);
  assert.match(String((events[0]!.payload.reasons as string[])[0]), /lost its lease \(epoch 3 expired/);
  assert.deepEqual(records.map((r) => r.vm), ["web"]);
  assert.equal(ha.last!.refused, HA_NEEDS_SHARED_STORAGE);
  assert.deepEqual(ha.last!.restarts.map((r) => r.vm), ["web"], "batch is not HA");
  await db.destroy();
});

test("HA restart: a shared-storage VM of a fenced host is claimed, then restarted once; a local one is refused; a second manager does nothing", async () => {
  const db = await openSqlite(":memory:");
  const repo = new ClusterRepository(db);
  const NOW = Date.parse("2026-12-07T01:00:00.000Z");
  await repo.addHost({ name: "h1", address: "10.0.0.1:7451", certFingerprint: "AA", state: "fenced" });
  await repo.addHost({ name: "h2", address: "10.0.0.2:7451", certFingerprint: "BB", state: "ready" });
  const shared = { ...vm("db"), id: "0a1b2c3d-0000-4000-8000-000000000002", storage: "shared" as const };
  await repo.updateHost("h1", { status: status("h1", [shared, { ...vm("web"), storage: "local" }]) });
  await repo.updateHost("h2", { status: status("h2", []) });
  await repo.setPlacement({ vmId: shared.id, vmName: "db", host: "h1", owner: "user:alice" });
  await repo.setPlacement({ vmId: "id-web", vmName: "web", host: "h1", owner: "user:alice" });
  await repo.setHa("db", true);
  await repo.setHa("web", true);
  await db.insertInto("host_leases").values([
    { host: "h1", epoch: 3, holder: "h1", expires_at: "2026-12-07T00:59:00.000Z", renewed_at: "2026-12-07T00:58:45.000Z" },
    { host: "h2", epoch: 1, holder: "h2", expires_at: "2026-12-07T01:00:10.000Z", renewed_at: "2026-12-07T00:59:55.000Z" },
  ]).execute();
  const leases = new LeaseStore(db, { ttlMs: 15_000 });
  const calls: { to: string; body: unknown }[] = [];
  const events: string[] = [];
  const records: string[] = [];
  const monitor = () => new HaMonitor({
    repo, leases: () => leases.list(), isReady: (h) => h === "h2", now: () => NOW, log: { warn: () => undefined },
    event: async (kind, subject) => void events.push(`${kind} ${subject}`),
    record: async (v, details, result = "error") => void records.push(`${v} ${String(details.step ?? "refused")} ${result}`),
    claims: new HaClaims(db),
    restart: async (to, body) => void calls.push({ to, body }),
  });
  const a = monitor();
  await a.tick();
  await a.tick();
  await monitor().tick(); // a second manager (or a restarted one)
  assert.deepEqual(calls, [{ to: "h2", body: { vmId: shared.id, from: "h1", lostEpoch: 3 } }], "restarted exactly once");
  assert.deepEqual(events.sort(), ["vm.ha-restart-refused web", "vm.ha-restart-refused web", "vm.ha-restarted db"].sort(), "the local VM is refused (once per manager process)");
  assert.ok(records.includes("db claimed ok") && records.includes("db restarted ok") && records.includes("web refused error"));
  assert.equal((await repo.findPlacementByName("db"))!.host, "h2", "the placement follows");
  const claims = await new HaClaims(db).list();
  assert.deepEqual(claims.map((c) => [c.vmName, c.lostEpoch, c.state, c.to]), [["db", 3, "restarted", "h2"]]);
  await db.destroy();
});

test("HA restart: a target that fails leaves the claim failed, never retried for that epoch", async () => {
  const db = await openSqlite(":memory:");
  const repo = new ClusterRepository(db);
  const NOW = Date.parse("2026-12-07T01:00:00.000Z");
  await repo.addHost({ name: "h1", address: "10.0.0.1:7451", certFingerprint: "AA", state: "fenced" });
  await repo.addHost({ name: "h2", address: "10.0.0.2:7451", certFingerprint: "BB", state: "ready" });
  const shared = { ...vm("db"), id: "0a1b2c3d-0000-4000-8000-000000000003", storage: "shared" as const };
  await repo.updateHost("h1", { status: status("h1", [shared]) });
  await repo.updateHost("h2", { status: status("h2", []) });
  await repo.setPlacement({ vmId: shared.id, vmName: "db", host: "h1", owner: "user:alice" });
  await repo.setHa("db", true);
  await db.insertInto("host_leases").values([
    { host: "h1", epoch: 3, holder: "h1", expires_at: "2026-12-07T00:59:00.000Z", renewed_at: "2026-12-07T00:58:45.000Z" },
    { host: "h2", epoch: 1, holder: "h2", expires_at: "2026-12-07T01:00:10.000Z", renewed_at: "2026-12-07T00:59:55.000Z" },
  ]).execute();
  let tries = 0;
  const ha = new HaMonitor({
    repo, leases: () => new LeaseStore(db, { ttlMs: 15_000 }).list(), isReady: (h) => h === "h2", now: () => NOW, log: { warn: () => undefined },
    event: async () => undefined, record: async () => undefined, claims: new HaClaims(db),
    restart: async () => {
      tries++;
      throw new Error("target refused");
    },
  });
  await ha.tick();
  await ha.tick();
  assert.equal(tries, 1);
  const [claim] = await new HaClaims(db).list();
  assert.equal(claim!.state, "failed");
  assert.equal(claim!.error, "target refused");
  assert.equal((await repo.findPlacementByName("db"))!.host, "h1", "the placement stays");
  await db.destroy();
});
