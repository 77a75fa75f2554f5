/**
 * The cluster inventory on both dialects (the same test bodies on SQLite and on a real PostgreSQL server), and
 * on PostgreSQL the event log's promises: NOTIFY wakes a listener, a listener whose connection was killed
 * misses nothing appended meanwhile, and seq values become visible in order.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import { VigilError } from "../errors.ts";
import { openPostgres, type Db } from "../inventory/db.ts";
import { dialectTest, testInventory } from "../inventory/testing/dialects.ts";
import { adminQuery, freshDatabase } from "../inventory/testing/pg.ts";
import { ClusterRepository, watchEvents, type ClusterEvent, type EventWatch } from "./cluster-repository.ts";
import type { HostStatus, MigrationProgress, MigrationResult } from "./types.ts";

const LIMITS = { maxDowntimeMs: 300, timeoutMs: 600_000, maxBandwidth: 0 };

function isError(code: string, field?: string) {
  return (err: unknown) => err instanceof VigilError && err.code === code && (field === undefined || err.field === field);
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

dialectTest("hosts: add, conflict, update with the heartbeat's status, list, get, delete", async (t, dialect) => {
  const repo = new ClusterRepository(await testInventory(t, dialect));
  const a = await repo.addHost({ name: "hostb", address: "10.9.0.2:7443", certFingerprint: "AA:BB" });
  assert.deepEqual({ state: a.state, lastSeen: a.lastSeen, status: a.status }, { state: "ready", lastSeen: null, status: null });
  await repo.addHost({ name: "hosta", address: "10.9.0.1:7443", certFingerprint: "CC:DD" });
  await assert.rejects(repo.addHost({ name: "hosta", address: "x", certFingerprint: "y" }), isError("VIGIL_CONFLICT", "name"));
  await assert.rejects(repo.addHost({ name: "hostc", address: "x", certFingerprint: "y", state: "gone" as "ready" }), isError("VIGIL_BAD_REQUEST", "state"));
  await assert.rejects(repo.addHost({ name: "", address: "x", certFingerprint: "y" }), isError("VIGIL_BAD_REQUEST", "name"));

  const status: HostStatus = { name: "hosta", memTotalMiB: 65_536, memFreeMiB: 30_000, cpus: 16, load1: 0.25, vms: [{ id: "v1", name: "web", state: "running", memoryMiB: 256, vcpus: 1, owner: "user:alice" }], version: "0.12.0", epoch: 7 };
  const seen = "2026-12-07T01:00:00.000Z";
  const u = await repo.updateHost("hosta", { status, lastSeen: seen, state: "unreachable" });
  assert.deepEqual({ status: u.status, lastSeen: u.lastSeen, state: u.state, address: u.address }, { status, lastSeen: seen, state: "unreachable", address: "10.9.0.1:7443" });
  await assert.rejects(repo.updateHost("hosta", { state: "lost" as "ready" }), isError("VIGIL_BAD_REQUEST", "state"));
  await assert.rejects(repo.updateHost("nohost", { state: "fenced" }), isError("VIGIL_NOT_FOUND", "host"));
  assert.deepEqual((await repo.listHosts()).map((h) => [h.name, h.state]), [["hosta", "unreachable"], ["hostb", "ready"]]);
  assert.deepEqual(await repo.getHost("hosta"), u);
  await assert.rejects(repo.getHost("nohost"), isError("VIGIL_NOT_FOUND", "host"));
  assert.equal(await repo.deleteHost("hostb"), true);
  assert.equal(await repo.deleteHost("hostb"), false);
  assert.equal(await repo.findHost("hostb"), undefined);
});

dialectTest("placements: set, move, a taken name is a conflict, by name, by host, delete", async (t, dialect) => {
  const repo = new ClusterRepository(await testInventory(t, dialect));
  await repo.setPlacement({ vmId: "id-web", vmName: "web", host: "hosta", owner: "user:alice" });
  await repo.setPlacement({ vmId: "id-db", vmName: "db", host: "hosta", owner: "group:ops" });
  const moved = await repo.setPlacement({ vmId: "id-web", vmName: "web", host: "hostb", owner: "user:alice" });
  assert.equal(moved.host, "hostb");
  assert.deepEqual(await repo.getPlacement("id-web"), moved);
  assert.deepEqual((await repo.findPlacementByName("db"))?.vmId, "id-db");
  await assert.rejects(repo.setPlacement({ vmId: "id-other", vmName: "web", host: "hosta", owner: "user:bob" }), isError("VIGIL_CONFLICT", "vmName"));
  assert.deepEqual((await repo.listPlacements()).map((p) => [p.vmName, p.host]), [["db", "hosta"], ["web", "hostb"]]);
  assert.deepEqual((await repo.listPlacements({ host: "hosta" })).map((p) => p.vmName), ["db"]);
  assert.equal(await repo.deletePlacement("id-web"), true);
  assert.equal(await repo.deletePlacement("id-web"), false);
  assert.equal(await repo.getPlacement("id-web"), undefined);
});

dialectTest("migrations: one running per VM, progress, a finished one is final, active list", async (t, dialect) => {
  const repo = new ClusterRepository(await testInventory(t, dialect));
  const m = await repo.createMigration({ vmId: "id-web", vmName: "web", source: "hosta", target: "hostb", requestedBy: "alice", options: LIMITS });
  assert.deepEqual({ state: m.state, phase: m.phase, options: m.options, progress: m.progress, finishedAt: m.finishedAt }, { state: "running", phase: "setup", options: LIMITS, progress: null, finishedAt: null });
  await assert.rejects(repo.createMigration({ vmId: "id-web", vmName: "web", source: "hosta", target: "hostc", requestedBy: "bob", options: LIMITS }), isError("VIGIL_CONFLICT", "vm"));
  await assert.rejects(repo.createMigration({ vmId: "id-db", vmName: "db", source: "hosta", target: "hosta", requestedBy: "bob", options: LIMITS }), isError("VIGIL_BAD_REQUEST", "target"));
  const other = await repo.createMigration({ vmId: "id-db", vmName: "db", source: "hostb", target: "hosta", requestedBy: "bob", options: LIMITS });

  const progress: MigrationProgress = { phase: "ram", ramTransferred: 2 ** 33, ramRemaining: 1024, ramTotal: 2 ** 34, dirtyRate: 1.5e6, expectedDowntimeMs: 12, downtimeLimitMs: 20, iterations: 3, diskDone: 0, diskTotal: 0 };
  const p = await repo.updateMigration(m.id, { phase: "ram", progress });
  assert.deepEqual({ phase: p.phase, progress: p.progress, state: p.state }, { phase: "ram", progress, state: "running" });
  await assert.rejects(repo.updateMigration(m.id, { phase: "warp" as "ram" }), isError("VIGIL_BAD_REQUEST", "phase"));

  const result: MigrationResult = { downtimeMs: 18, totalMs: 4200, ramTransferred: 2 ** 33, diskTransferred: 0, iterations: 4, finalDowntimeLimitMs: 20, throttlePercent: 0 };
  const done = await repo.updateMigration(m.id, { state: "completed", phase: "completed", result });
  assert.equal(done.state, "completed");
  assert.deepEqual(done.result, result);
  assert.notEqual(done.finishedAt, null);
  await assert.rejects(repo.updateMigration(m.id, { state: "failed", error: "late" }), (e: unknown) => isError("VIGIL_CONFLICT")(e) && /it is completed/.test((e as Error).message));
  await assert.rejects(repo.updateMigration("no-such", { phase: "ram" }), isError("VIGIL_NOT_FOUND", "id"));
  assert.deepEqual((await repo.listActiveMigrations()).map((x) => x.id), [other.id]);
  assert.deepEqual(await repo.getMigration(m.id), done);

  // Once finished, the VM may migrate again.
  const again = await repo.createMigration({ vmId: "id-web", vmName: "web", source: "hostb", target: "hosta", requestedBy: "alice", options: LIMITS });
  assert.deepEqual((await repo.listMigrationsOf("id-web")).map((x) => x.id).sort(), [m.id, again.id].sort());
});

dialectTest("events: validated, in seq order, paged, and part of the caller's transaction", async (t, dialect) => {
  const db = await testInventory(t, dialect);
  const repo = new ClusterRepository(db);
  assert.equal(await repo.lastEventSeq(), 0);
  const a = await repo.appendEvent({ kind: "host.added", subject: "hosta", payload: { address: "10.9.0.1:7443" } });
  const b = await repo.appendEvent({ kind: "migration.progress", subject: "m1", payload: { ramRemaining: 2 ** 40 } });
  assert.ok(b.seq > a.seq);
  await assert.rejects(repo.appendEvent({ kind: "Bad Kind", subject: "x" }), isError("VIGIL_BAD_REQUEST", "kind"));
  await assert.rejects(repo.appendEvent({ kind: "a.b", subject: "x", payload: [] as unknown as Record<string, unknown> }), isError("VIGIL_BAD_REQUEST", "payload"));
  await assert.rejects(repo.listEventsAfter(0, 0), isError("VIGIL_BAD_REQUEST", "limit"));
  await assert.rejects(repo.listEventsAfter(-1), isError("VIGIL_BAD_REQUEST", "after"));

  // Rolled back with the transaction it was part of; committed with the one that commits.
  await assert.rejects(
    db.transaction().execute(async (trx) => {
      await repo.appendEvent({ kind: "vm.placed", subject: "web" }, trx);
      throw new Error("abort");
    }),
    /abort/,
  );
  const c = await db.transaction().execute(async (trx) => {
    await repo.setPlacement({ vmId: "id-web", vmName: "web", host: "hosta", owner: "user:alice" }, trx);
    return repo.appendEvent({ kind: "vm.placed", subject: "web", payload: { host: "hosta" } }, trx);
  });
  const all = await repo.listEventsAfter(0);
  assert.deepEqual(all, [a, b, c]);
  assert.deepEqual(all[1]!.payload, { ramRemaining: 2 ** 40 });
  assert.deepEqual(await repo.listEventsAfter(a.seq, 1), [b]);
  assert.equal(await repo.lastEventSeq(), c.seq);
});

async function collect(t: TestContext, source: Db | string, after: number, options: Parameters<typeof watchEvents>[3] = {}): Promise<{ got: ClusterEvent[]; watch: EventWatch; status: string[] }> {
  const got: ClusterEvent[] = [];
  const status: string[] = [];
  const watch = watchEvents(source, after, (e) => void got.push(e), { ...options, onStatus: (s) => status.push(s) });
  t.after(() => watch.close());
  return { got, watch, status };
}

dialectTest("watchEvents delivers what is after its start, then each new event once, in order", async (t, dialect) => {
  const db = await testInventory(t, dialect);
  const repo = new ClusterRepository(db);
  const first = await repo.appendEvent({ kind: "host.added", subject: "hosta" });
  const second = await repo.appendEvent({ kind: "host.added", subject: "hostb" });
  // PostgreSQL with no polling at all: only the NOTIFY wake-up can deliver the later events.
  const { got, watch } = await collect(t, db, first.seq, { pollMs: dialect === "sqlite" ? 20 : 0, batch: 2 });
  await waitFor("the backlog", () => got.length === 1);
  const more = [];
  for (let i = 0; i < 5; i++) more.push(await repo.appendEvent({ kind: "vm.state", subject: `vm${i}`, payload: { i } }));
  await waitFor("the new events", () => got.length === 6);
  await sleep(100);
  assert.deepEqual(got, [second, ...more]);
  assert.equal(watch.lastSeq, more[4]!.seq);
});

test("PostgreSQL: a listener whose connection was killed gets every event appended meanwhile when it reconnects", async (t) => {
  const fresh = await freshDatabase();
  const db = await openPostgres(fresh.url);
  t.after(async () => {
    await db.destroy();
    await fresh.drop();
  });
  const repo = new ClusterRepository(db);
  const errors: unknown[] = [];
  const { got, watch, status } = await collect(t, db, 0, { pollMs: 0, reconnectMs: 400, onError: (e) => errors.push(e) });
  await waitFor("the listener", () => status.includes("connected"));
  const e1 = await repo.appendEvent({ kind: "host.added", subject: "hosta" });
  await waitFor("e1", () => got.length === 1);

  const pid = watch.backendPid;
  assert.ok(pid !== null);
  const killed = await adminQuery("SELECT pg_terminate_backend($1) AS ok", [pid]);
  assert.equal(killed.rows[0]?.ok, true);
  await waitFor("the listener to notice", () => status.includes("disconnected"));
  // Appended while nobody listens: their NOTIFYs reach no one.
  const e2 = await repo.appendEvent({ kind: "host.unreachable", subject: "hosta" });
  const e3 = await repo.appendEvent({ kind: "vm.unknown", subject: "web" });
  assert.deepEqual(status, ["connected", "disconnected"], "still disconnected while e2 and e3 were appended");
  await waitFor("the reconnect's catch-up", () => got.length === 3);
  assert.deepEqual(got, [e1, e2, e3]);
  assert.deepEqual(status, ["connected", "disconnected", "connected"]);
  assert.notEqual(watch.backendPid, pid);
  assert.ok(errors.length >= 1, "the lost connection was reported");
  // And the new connection is woken by NOTIFY again.
  const e4 = await repo.appendEvent({ kind: "host.ready", subject: "hosta" });
  await waitFor("e4", () => got.length === 4);
  assert.deepEqual(got[3], e4);
});

test("PostgreSQL: an event becomes visible only after every event with a smaller seq (appends take the table's lock)", async (t) => {
  const fresh = await freshDatabase();
  const db = await openPostgres(fresh.url);
  const reader = await openPostgres(fresh.url);
  t.after(async () => {
    await db.destroy();
    await reader.destroy();
    await fresh.drop();
  });
  const repo = new ClusterRepository(db);
  let later: Promise<ClusterEvent> | undefined;
  const seen: number[][] = [];
  const first = await db.transaction().execute(async (trx) => {
    const e = await repo.appendEvent({ kind: "a.first", subject: "x" }, trx);
    // Another connection appends while this transaction holds its seq uncommitted.
    later = repo.appendEvent({ kind: "a.second", subject: "y" });
    await sleep(300);
    seen.push((await new ClusterRepository(reader).listEventsAfter(0)).map((x) => x.seq));
    return e;
  });
  const second = await later!;
  assert.deepEqual(seen, [[]], "nothing visible while the smaller seq is uncommitted (without the lock the second append would have committed)");
  assert.ok(second.seq > first.seq);
  assert.deepEqual((await new ClusterRepository(reader).listEventsAfter(0)).map((x) => x.seq), [first.seq, second.seq]);
});

test("PostgreSQL: watchEvents from a URL has its own pool and closes it", async (t) => {
  const fresh = await freshDatabase();
  const db = await openPostgres(fresh.url);
  t.after(async () => {
    await db.destroy();
    await fresh.drop();
  });
  const repo = new ClusterRepository(db);
  const { got, watch, status } = await collect(t, fresh.url, 0);
  await waitFor("the listener", () => status.includes("connected"));
  const e = await repo.appendEvent({ kind: "host.added", subject: "hosta" });
  await waitFor("the event", () => got.length === 1);
  assert.deepEqual(got, [e]);
  await watch.close();
  const left = await sql<{ n: number }>`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'vigil' AND query LIKE 'LISTEN%'`.execute(db);
  assert.equal(left.rows[0]!.n, 0);
  assert.throws(() => watchEvents("/var/lib/vigil/vigil.db", 0, () => {}), isError("VIGIL_BAD_REQUEST", "db"));
});
