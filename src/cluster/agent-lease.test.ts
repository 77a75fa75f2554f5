import { after, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { openSqlite, type Db } from "../inventory/db.ts";
import { VigilError } from "../errors.ts";
import { AgentLease } from "./agent-lease.ts";
import { ClusterRepository } from "./cluster-repository.ts";
import { HostRegistry } from "./host-registry.ts";
import type { Ca } from "./ca.ts";
import { LeaseStore, type Lease } from "./leases.ts";
import { leaseOptions } from "../cli/commands/cluster.ts";

/** A LeaseStore whose database can be made unreachable (what a cut network or a stopped server looks like). */
class CuttableStore extends LeaseStore {
  cut = false;
  override async acquire(host: string, holder: string): Promise<Lease> {
    if (this.cut) throw new Error("connect ECONNREFUSED /var/run/postgresql/.s.PGSQL.5432");
    return super.acquire(host, holder);
  }
  override async renew(host: string, epoch: number): Promise<Lease> {
    if (this.cut) throw new Error("connect ECONNREFUSED /var/run/postgresql/.s.PGSQL.5432");
    return super.renew(host, epoch);
  }
}

const quiet = { info: () => undefined, warn: () => undefined };

// The fence's timers are unref'd (they never keep an agent alive by themselves); the daemon's listeners do that.
const keepAlive = setInterval(() => undefined, 1000);
after(() => clearInterval(keepAlive));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test("an agent that cannot renew stops its VMs before the lease expires, starts none while fenced, and comes back at a new epoch", async () => {
  const db: Db = await openSqlite(":memory:");
  const store = new CuttableStore(db, { ttlMs: 600 });
  const stops: number[] = [];
  const fences: string[] = [];
  const again: number[] = [];
  const lease = await AgentLease.start({
    store, host: "h1", holder: "h1", ttlMs: 600, marginMs: 200, log: quiet,
    stopVms: async () => void stops.push(Date.now()),
    onFenced: (r) => void fences.push(r.reason),
    onReacquired: (l) => void again.push(l.epoch),
  });
  try {
    assert.equal(lease.epoch, 1);
    assert.equal(lease.state, "holding");
    lease.assertMayRun("vm1");
    // Renewals keep it alive past its first ttl.
    await sleep(900);
    assert.equal(lease.state, "holding");
    assert.deepEqual(stops, []);

    store.cut = true;
    const expiresAt = Date.parse((await new LeaseStore(db, { ttlMs: 600 }).get("h1"))!.expiresAt);
    await lease.whenFenced();
    assert.equal(stops.length, 1);
    assert.ok(stops[0]! < expiresAt, `stopped at ${stops[0]}, before the lease expired at ${expiresAt}`);
    assert.match(fences[0]!, /not renewed by .*ECONNREFUSED/);
    assert.equal(lease.state, "fenced");
    assert.throws(() => lease.assertMayRun("vm1"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT" && /fenced itself/.test(e.message));

    // The database comes back: the agent takes its lease again, but only at a new epoch (after the old one expired).
    store.cut = false;
    await until(() => lease.state === "holding", 5000, "the lease to be held again");
    assert.ok(Date.now() >= expiresAt, "not before the fenced lease expired");
    assert.equal(lease.epoch, 2);
    assert.deepEqual(again, [2]);
    lease.assertMayRun("vm1");
    assert.throws(() => lease.admit("1"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT" && /stale epoch 1/.test(e.message));
    assert.equal(lease.admit("2"), 2);
    assert.equal(stops.length, 1, "fenced once");
  } finally {
    lease.close();
    await db.destroy();
  }
});

test("the epoch gate of a lease: the header is required, starts at the agent's own epoch, newer raises the bar", async () => {
  const db = await openSqlite(":memory:");
  const store = new LeaseStore(db, { ttlMs: 60_000 });
  // The host had an older lease that expired: this agent holds epoch 2.
  await db.insertInto("host_leases").values({ host: "h1", epoch: 1, holder: "h1", expires_at: "2000-01-01T00:00:00.000Z", renewed_at: "2000-01-01T00:00:00.000Z" }).execute();
  const lease = await AgentLease.start({ store, host: "h1", holder: "h1", ttlMs: 60_000, marginMs: 5000, log: quiet, stopVms: async () => undefined });
  try {
    assert.equal(lease.epoch, 2);
    assert.throws(() => lease.admit(undefined), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && e.field === "x-vigil-epoch");
    assert.throws(() => lease.admit("1"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT");
    assert.throws(() => lease.admit("two"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST");
    assert.equal(lease.admit("3"), 3);
    assert.throws(() => lease.admit("2"), /stale epoch 2 \(this host has accepted epoch 3\)/);
    // A margin that leaves no time to renew is refused before any lease is taken.
    await assert.rejects(AgentLease.start({ store, host: "h9", holder: "h9", ttlMs: 6000, marginMs: 4000, log: quiet, stopVms: async () => undefined }), (e: unknown) => e instanceof VigilError && e.field === "lease-margin");
    assert.equal(await store.get("h9"), undefined);
    // Another agent claiming the same host while this lease lives is refused.
    await assert.rejects(AgentLease.start({ store, host: "h1", holder: "intruder", ttlMs: 60_000, marginMs: 5000, log: quiet, stopVms: async () => undefined }), /holds it \(epoch 2\)/);
  } finally {
    lease.close();
    await db.destroy();
  }
});

test("the manager marks a host whose lease expired fenced (event host.fenced), once", async () => {
  const db = await openSqlite(":memory:");
  const repo = new ClusterRepository(db);
  await repo.addHost({ name: "h1", address: "10.0.0.1:7451", certFingerprint: "AA", state: "ready" });
  await db.insertInto("host_leases").values({ host: "h1", epoch: 4, holder: "h1", expires_at: "2026-12-07T00:00:00.000Z", renewed_at: "2026-12-06T23:59:45.000Z" }).execute();
  const leases = new LeaseStore(db, { ttlMs: 15_000 });
  const events: { kind: string; subject: string; payload: Record<string, unknown> }[] = [];
  let now = Date.parse("2026-12-06T23:59:59.000Z");
  let beats = 0;
  // No CA: a fenced host is never called (a live lease would be, and would need one).
  const hosts = new HostRegistry(repo, {} as Ca, { log: quiet, event: async (kind, subject, payload) => void events.push({ kind, subject, payload }), lease: (n) => leases.get(n), now: () => now, afterBeat: async () => void beats++ });
  try {
    assert.equal(await hosts.epochOf("h1"), 4);
    assert.equal(await hosts.epochOf("h2"), undefined);
    now = Date.parse("2026-12-07T00:00:00.000Z"); // expired at expires_at
    await hosts.beat();
    await hosts.beat();
    assert.equal(hosts.isReady("h1"), false);
    assert.equal((await repo.getHost("h1")).state, "fenced");
    assert.equal(beats, 2, "HA planning runs after every heartbeat");
    assert.deepEqual(events, [{ kind: "host.fenced", subject: "h1", payload: { epoch: 4, expiresAt: "2026-12-07T00:00:00.000Z", holder: "h1" } }]);
  } finally {
    hosts.close();
    await db.destroy();
  }
});

test("vigil agent --lease-*: seconds to ms, bad values refused naming the flag", () => {
  assert.deepEqual(leaseOptions({}), {});
  assert.deepEqual(leaseOptions({ leaseDb: "postgres:///x", leaseTtl: "6", leaseMargin: "1.5" }), { leaseDb: "postgres:///x", leaseTtlMs: 6000, leaseMarginMs: 1500 });
  assert.throws(() => leaseOptions({ leaseDb: "postgres:///x", leaseTtl: "0" }), (e: unknown) => e instanceof VigilError && e.field === "lease-ttl");
  assert.throws(() => leaseOptions({ leaseDb: "postgres:///x", leaseMargin: "-1" }), (e: unknown) => e instanceof VigilError && e.field === "lease-margin");
  assert.throws(() => leaseOptions({ leaseTtl: "6" }), (e: unknown) => e instanceof VigilError && e.field === "lease-db");
});
