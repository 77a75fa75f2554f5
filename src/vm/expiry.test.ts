/**
 * Expiry without QEMU: what a date-only expiry means (the end of that day, UTC), that no VM is created already
 * expired, and that under the site policy `expiredVms: "stop"` an expired VM is refused every path that would
 * run it (start, restart, a revert that starts QEMU) before anything changes.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { SnapshotRepository } from "../storage/snapshot-repository.ts";
import { MAX_EXPIRY_STOP_ATTEMPTS, expiryInstant, isExpired, startExpiryWatch } from "./expiry.ts";
import { createVmRequestSchema, resolveSpec } from "./spec.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmState } from "./state-machine.ts";

test("a date-only expiry is the end of that day (UTC); an ISO time is that instant", () => {
  assert.equal(new Date(expiryInstant("2026-11-26")).toISOString(), "2026-11-26T23:59:59.999Z");
  assert.equal(new Date(expiryInstant("2026-11-26T08:00:00Z")).toISOString(), "2026-11-26T08:00:00.000Z");
  const noon = Date.parse("2026-11-26T12:00:00Z");
  assert.equal(isExpired("2026-11-26", noon), false, "a VM expiring today runs until the day is over");
  assert.equal(isExpired("2026-11-25", noon), true);
  assert.equal(isExpired("2026-11-26T12:00:00Z", noon), true, "the expiry instant itself counts as expired");
  assert.equal(isExpired(null, noon), false);
});

async function daemonWith(t: TestContext, config: unknown): Promise<Daemon> {
  const home = mkdtempSync(join(tmpdir(), "vigil-expiry-"));
  writeFileSync(join(home, "config.json"), JSON.stringify(config));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  return daemon;
}

function insertVm(daemon: Daemon, name: string, state: VmState, expiresAt: string | null): Promise<VmRecord> {
  const spec = resolveSpec(createVmRequestSchema.parse({ name, memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  return daemon.repo.insert({ id: crypto.randomUUID(), name, spec, state, host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
}

/** The local (unix socket) caller: the daemon's own user, an admin. */
async function req(daemon: Daemon, method: string, path: string, body?: unknown): Promise<{ status: number; json: { error?: { code: string; message: string; field?: string } } }> {
  const headers: Record<string, string> = body !== undefined ? { "content-type": "application/json" } : {};
  const res = await daemon.app.request(path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }, { transport: "unix" });
  return { status: res.status, json: (await res.json()) as { error?: { code: string; message: string; field?: string } } };
}

test("creating a VM whose expiry has passed is refused with a 400 naming expiresAt; today's date is accepted", async (t) => {
  const daemon = await daemonWith(t, {});
  const past = await req(daemon, "POST", "/v1/vms", { name: "pol", memoryMiB: 128, expiresAt: "2020-01-01" });
  assert.equal(past.status, 400, JSON.stringify(past.json));
  assert.equal(past.json.error?.field, "expiresAt");
  assert.match(past.json.error?.message ?? "", /"expiresAt" must be in the future, got "2020-01-01"/);
  assert.equal((await daemon.repo.list()).length, 0, "nothing was created");
  // Today (a date) is not in the past: the request gets past the expiry check to the (missing) image.
  const today = new Date().toISOString().slice(0, 10);
  for (const expiresAt of [today, "2099-01-01"]) {
    const r = await req(daemon, "POST", "/v1/vms", { name: "pol", memoryMiB: 128, expiresAt });
    assert.notEqual(r.json.error?.field, "expiresAt", `${expiresAt}: ${JSON.stringify(r.json)}`);
  }
});

test('under expiredVms "stop", start, restart and a reverting start of an expired VM are refused naming expiresAt', async (t) => {
  const daemon = await daemonWith(t, { policy: { expiredVms: "stop", expiryCheckSeconds: 86_400 } });
  const stopped = await insertVm(daemon, "pol", "stopped", "2020-01-01");
  const refused = (r: { status: number; json: { error?: { code: string; message: string; field?: string } } }, what: string) => {
    assert.equal(r.status, 422, `${what}: ${JSON.stringify(r.json)}`);
    assert.equal(r.json.error?.code, "VIGIL_POLICY_DENIED", what);
    assert.equal(r.json.error?.field, "expiresAt", what);
    assert.match(r.json.error?.message ?? "", /it expired at "2020-01-01" \("expiresAt"\) and this site's policy stops expired VMs; .*recreate it or clone it with a later --expires/, what);
  };
  const start = await req(daemon, "POST", "/v1/vms/pol/start", {});
  refused(start, "start");
  assert.match(start.json.error?.message ?? "", /^Cannot start VM "pol": /);
  assert.equal((await daemon.repo.getById(stopped.id)).state, "stopped", "start: the VM is as it was");

  // A VM marked running without a QEMU: the refusal must come before restart stops anything.
  const running = await insertVm(daemon, "live", "running", "2020-01-01T00:00:00Z");
  const restart = await req(daemon, "POST", "/v1/vms/live/restart", {});
  assert.equal(restart.json.error?.code, "VIGIL_POLICY_DENIED", JSON.stringify(restart.json));
  assert.match(restart.json.error?.message ?? "", /^Cannot restart VM "live": it expired at "2020-01-01T00:00:00Z"/);
  assert.equal((await daemon.repo.getById(running.id)).state, "running", "restart: the VM is as it was");

  // Reverting to a memory snapshot starts QEMU: refused before the generation changes.
  const db = await openSqlite(daemon.home.database);
  t.after(() => db.destroy());
  await new SnapshotRepository(db).insert({ vmId: stopped.id, name: "s1", parentId: null, description: "", kind: "memory", spec: stopped.spec, generation: 1, vmgenid: stopped.vmgenid, vmStateSize: 1, stateSha256: null, diskBytes: 0, floor: {}, guestFacts: {}, singleUse: false, createdBy: "root" });
  const revert = await req(daemon, "POST", "/v1/vms/pol/snapshots/s1/revert", {});
  refused(revert, "revert");
  assert.match(revert.json.error?.message ?? "", /^Cannot revert VM "pol" to snapshot "s1": /);
  const after = await daemon.repo.getById(stopped.id);
  assert.deepEqual([after.state, after.generation, after.vmgenid], ["stopped", 1, stopped.vmgenid], "revert: the VM is as it was");

  // A VM that has not expired (a date-only expiry of today lasts until the day is over) is not refused by policy.
  const today = new Date().toISOString().slice(0, 10);
  daemon.deps.vms.checkNotExpired(await insertVm(daemon, "fresh", "stopped", today), "Cannot start VM \"fresh\"");
});

test('under the default policy ("flag") an expired VM is only flagged, not refused', async (t) => {
  const daemon = await daemonWith(t, {});
  const vm = await insertVm(daemon, "old", "stopped", "2020-01-01");
  daemon.deps.vms.checkNotExpired(vm, 'Cannot start VM "old"');
  const shown = (await (await daemon.app.request("/v1/vms/old", {}, { transport: "unix" })).json()) as { expired: boolean };
  assert.equal(shown.expired, true);
});

test('under "stop", a VM that was starting or whose stop failed is tried again on later checks, a bounded number of times, each attempt audited', async (t) => {
  const daemon = await daemonWith(t, {});
  // No QEMU behind either: stopping "stuck" fails every time; "booting" cannot be stopped while it is starting.
  const stuck = await insertVm(daemon, "stuck", "running", "2020-01-01");
  const booting = await insertVm(daemon, "booting", "starting", "2020-01-01");
  const { repo, vms, audit, log } = { repo: daemon.repo, vms: daemon.deps.vms, audit: daemon.deps.audit, log: daemon.deps.log };
  const stopWatch = startExpiryWatch({ repo, vms, audit, log, action: "stop" }, 20);
  t.after(stopWatch);
  const attemptsOn = async (id: string) => (await audit.list({ targetId: id })).filter((r) => r.action === "vm.stop");
  // The first check finds "booting" starting: its stop is refused. Then its start "fails": nothing left to stop.
  for (let i = 0; i < 200 && (await attemptsOn(booting.id)).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  await repo.update(booting.id, { state: "stopped" });
  for (let i = 0; i < 300 && (await audit.list({ targetId: stuck.id })).every((r) => r.action !== "vm.expiry-stop"); i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 200)); // more checks: no attempt beyond the bound
  const stuckAttempts = await attemptsOn(stuck.id);
  assert.equal(stuckAttempts.length, MAX_EXPIRY_STOP_ATTEMPTS, "retried on later checks, up to the bound");
  assert.ok(stuckAttempts.every((r) => r.result === "error"));
  assert.deepEqual(stuckAttempts.map((r) => r.requestId), Array.from({ length: MAX_EXPIRY_STOP_ATTEMPTS }, (_, i) => `expiry-${stuck.id}-${i + 1}`));
  const gaveUp = (await audit.list({ targetId: stuck.id })).filter((r) => r.action === "vm.expiry-stop");
  assert.equal(gaveUp.length, 1, "one record says vigil gave up");
  assert.equal(gaveUp[0]?.result, "error");
  const bootAttempts = await attemptsOn(booting.id);
  assert.ok(bootAttempts.length >= 1 && bootAttempts.length < MAX_EXPIRY_STOP_ATTEMPTS, `a starting VM was tried (${bootAttempts.length} attempts), then left alone once stopped`);
  assert.equal((await audit.list({ targetId: booting.id })).filter((r) => r.action === "vm.expired").length, 1, "the expiry itself is recorded once");
});
