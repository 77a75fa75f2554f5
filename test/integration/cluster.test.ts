/**
 * Two agents and a manager on PostgreSQL, each host its own network namespace on an underlay the test makes
 * (test/cluster-topology.ts): a running guest migrates live from h1 to h2 over QEMU's TLS with its disk mirrored —
 * its RAM counter goes on without a gap and its disk log is whole — and a migration whose target agent is killed
 * mid-way leaves the VM running on the source and nothing on the target once it restarts.
 */
import { strict as assert } from "node:assert";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { cluster } from "../cluster-topology.ts";
import { guestExec, waitFor, type DaemonHandle } from "../harness.ts";
import { kernelTrouble } from "../migration-fixture.ts";

interface Migration { id: string; state: string; phase: string; error: string | null; result: { downtimeMs: number; totalMs: number } | null }

async function runningGuest(manager: DaemonHandle, name: string) {
  await manager.api("POST", "/v1/vms", { name, memoryMiB: 256, vcpus: 1, host: "h1" });
  await manager.api("POST", `/v1/vms/${name}/start`, { wait: true });
}

async function followMigration(manager: DaemonHandle, id: string, until: (m: Migration) => boolean, timeoutMs = 240_000): Promise<Migration> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await manager.api<Migration>("GET", `/v1/migrations/${id}`);
    if (until(m) || m.state !== "running") return m;
    if (Date.now() > deadline) throw new Error(`migration ${id} still ${m.phase} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const report = (s: string) => Object.fromEntries(s.split(/\s+/).map((kv) => kv.split("=") as [string, string]));

test("a running guest migrates live between two agents: the RAM counter goes on without a gap, the disk log is whole", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  await runningGuest(manager, "mover");
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  assert.equal((await guestExec(a1, "mover", ["ticker", "start"])).out, "started");
  await new Promise((r) => setTimeout(r, 1500));
  const before = Number(report((await guestExec(a1, "mover", ["ticker", "report"])).out).value);
  assert.ok(before > 10, `the ticker ticks (${before})`);

  assert.equal((await guestExec(a1, "mover", ["vtime", "incr", "moves"])).out, "1");
  // A bandwidth cap makes the RAM copy last a few seconds, while the guest keeps writing its monotonic store.
  const started = await manager.api<Migration>("POST", "/v1/vms/mover/migrate", { to: "h2", maxBandwidth: 16 * 1024 * 1024 });
  let seen = 1;
  for (;;) {
    const m = await manager.api<Migration>("GET", `/v1/migrations/${started.id}`);
    if (m.state !== "running" || m.phase === "switchover" || m.phase === "completed") break;
    if (m.phase === "ram") {
      const r = await guestExec(a1, "mover", ["vtime", "incr", "moves"]).catch(() => undefined);
      if (r?.exitCode === 0) seen = Number(r.out);
    } else await new Promise((res) => setTimeout(res, 100));
  }
  const final = await followMigration(manager, started.id, () => false);
  assert.equal(final.state, "completed", final.error ?? "");
  assert.ok(seen > 1, `the guest wrote its store during the RAM copy (${seen})`);
  assert.ok(final.result && final.result.downtimeMs >= 0 && final.result.totalMs > 0);

  // The VM is h2's now: running there, gone from h1 (row and files), and the manager places it there.
  assert.equal((await a2.api<{ state: string }>("GET", "/v1/vms/mover")).state, "running");
  await assert.rejects(a1.api("GET", "/v1/vms/mover"), /does not exist|not found/i);
  const { vms: list } = await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms");
  assert.deepEqual(list.filter((v) => v.name === "mover").map((v) => v.host), ["h2"]);
  assert.deepEqual(existsSync(join(a1.home, "vms")) ? readdirSync(join(a1.home, "vms")) : [], [], "nothing of the VM stays on h1");

  // The target's daemon connects to the guest agent anew after the switchover: ask until it answers.
  let out = "";
  for (let i = 0; i < 60 && !/running=/.test(out); i++) {
    out = (await guestExec(a2, "mover", ["ticker", "report"]).catch(() => ({ out: "" }))).out;
    if (!/running=/.test(out)) await new Promise((res) => setTimeout(res, 500));
  }
  const r = report(out);
  // The store the guest wrote on h1 during the RAM copy came across at the switchover: no value went back.
  const moves = Number((await guestExec(a2, "mover", ["vtime", "read", "moves"])).out);
  assert.ok(moves >= seen, `the monotonic store kept the writes made during the migration (${moves} ≥ ${seen})`);
  // A guest whose RAM came across with stale pages oopses within a second or so of resuming (slab, RCU lists):
  // its console on h2 (written since the switchover only) says so.
  const consoles = readdirSync(join(a2.home, "vms")).map((id) => join(a2.home, "vms", id, "console.log")).filter((f) => existsSync(f));
  assert.equal(consoles.length, 1, "the VM's console log on h2");
  assert.deepEqual(kernelTrouble(readFileSync(consoles[0]!, "utf8")), [], "the guest's kernel on h2 is healthy");
  assert.equal(r.running, "yes", "the ticker process came across and still runs");
  assert.ok(Number(r.value) > before, `the counter went on (${before} → ${r.value})`);
  assert.equal((await guestExec(a2, "mover", ["ticker", "stop"])).out, "stopped");
  const done = report((await guestExec(a2, "mover", ["ticker", "report"])).out);
  assert.equal(done.gaps, "0", `no value missing from the disk log: ${JSON.stringify(done)}`);
  assert.equal(done.first, "1");
  assert.equal(done.last, done.value, "the disk log ends where RAM is");
  // Both audit logs say it, each from its own side.
  const actions = async (d: DaemonHandle) => (await d.api<{ records: { action: string; actor: string }[] }>("GET", "/v1/audit?limit=10000")).records.map((r) => r.action);
  assert.ok((await actions(a1)).includes("vm.migrated-out"), "h1's audit log says the VM left");
  assert.ok((await actions(a2)).includes("vm.migrated-in"), "h2's audit log says it arrived");
  assert.ok((await actions(manager)).includes("vm.migrate"), "the manager's audit log (PostgreSQL) records the migration");
});

test("kill -9 of the target agent mid-migration: the VM keeps running on the source, the target is clean after its restart", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  await runningGuest(manager, "stayer");
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  // Slow it down so there is a "mid-way": 2 MiB/s for 256 MiB of RAM.
  const started = await manager.api<Migration>("POST", "/v1/vms/stayer/migrate", { to: "h2", timeoutMs: 300_000, maxBandwidth: 2 * 1024 * 1024 });
  await followMigration(manager, started.id, (m) => m.phase === "ram" || m.phase === "disks");
  await a2.kill9();
  const final = await followMigration(manager, started.id, () => false);
  assert.notEqual(final.state, "completed");
  assert.equal((await a1.api<{ state: string }>("GET", "/v1/vms/stayer")).state, "running");
  assert.equal((await guestExec(a1, "stayer", ["counter", "incr"])).exitCode, 0, "the guest still answers on the source");
  await a2.restart();
  await waitFor(() => !existsSync(join(a2.home, "vms")) || readdirSync(join(a2.home, "vms")).length === 0, 30_000, "the target's incoming VM to be removed");
});

test("cancel mid-migration: the VM keeps running on the source and nothing stays on the target", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  await runningGuest(manager, "undecided");
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  const started = await manager.api<Migration>("POST", "/v1/vms/undecided/migrate", { to: "h2", maxBandwidth: 2 * 1024 * 1024 });
  await followMigration(manager, started.id, (m) => m.phase === "ram");
  const cancel = manager.cli("vm", "migrate", "undecided", "--cancel");
  assert.equal(cancel.status, 0, cancel.stderr);
  const final = await followMigration(manager, started.id, () => false);
  assert.equal(final.state, "cancelled", JSON.stringify(final));
  assert.equal((await a1.api<{ state: string }>("GET", "/v1/vms/undecided")).state, "running");
  assert.equal((await guestExec(a1, "undecided", ["counter", "incr"])).exitCode, 0, "the guest still answers on the source");
  await waitFor(() => !existsSync(join(a2.home, "vms")) || readdirSync(join(a2.home, "vms")).length === 0, 30_000, "the target's incoming VM to be removed");
  await assert.rejects(a2.api("GET", "/v1/vms/undecided"), /does not exist|not found/i);
  const { vms } = await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms");
  assert.deepEqual(vms.filter((v) => v.name === "undecided").map((v) => v.host), ["h1"]);
});

test("the manager on PostgreSQL restarts during a migration and records how it ended", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  await runningGuest(manager, "traveller");
  const [, a2] = agents as [DaemonHandle, DaemonHandle];
  const started = await manager.api<Migration>("POST", "/v1/vms/traveller/migrate", { to: "h2", maxBandwidth: 8 * 1024 * 1024 });
  await followMigration(manager, started.id, (m) => m.phase === "ram");
  await manager.kill9();
  // The agents go on without it: the source finishes, the target resumes the VM by itself.
  for (let i = 0; i < 240; i++) {
    const vm = await a2.api<{ state: string }>("GET", "/v1/vms/traveller").catch(() => undefined);
    if (vm?.state === "running") break;
    await new Promise((r) => setTimeout(r, 500));
  }
  await manager.restart();
  const final = await followMigration(manager, started.id, () => false);
  assert.equal(final.state, "completed", JSON.stringify(final));
  assert.equal((await a2.api<{ state: string }>("GET", "/v1/vms/traveller")).state, "running");
  const { vms } = await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms");
  assert.deepEqual(vms.filter((v) => v.name === "traveller").map((v) => v.host), ["h2"]);
});

test("a shared-storage VM migrates live with no disk copy: the same file on the shared storage, the disk log whole, h1 keeps nothing", { timeout: 600_000 }, async (t) => {
  // ONE directory both agents mount at the same path (root-owned, 0700: mkdtemp as root).
  const shared = mkdtempSync(join(tmpdir(), "vigil-shared-"));
  t.after(() => rmSync(shared, { recursive: true, force: true }));
  const { manager, agents } = await cluster(t, { agentArgs: ["--shared-storage", shared] });
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  await manager.api("POST", "/v1/vms", { name: "onshared", memoryMiB: 256, vcpus: 1, host: "h1", storage: "shared" });
  await manager.api("POST", "/v1/vms/onshared/start", { wait: true });
  const id = (await a1.api<{ id: string }>("GET", "/v1/vms/onshared")).id;
  const disk = join(shared, id, "disks", "root.qcow2");
  const inode = statSync(disk).ino;
  assert.equal((await guestExec(a1, "onshared", ["ticker", "start"])).out, "started");
  await new Promise((r) => setTimeout(r, 1500));
  const before = Number(report((await guestExec(a1, "onshared", ["ticker", "report"])).out).value);
  assert.ok(before > 10, `the ticker ticks (${before})`);

  const started = await manager.api<Migration>("POST", "/v1/vms/onshared/migrate", { to: "h2" });
  const final = await followMigration(manager, started.id, () => false);
  assert.equal(final.state, "completed", final.error ?? "");
  assert.equal((await a2.api<{ state: string }>("GET", "/v1/vms/onshared")).state, "running");
  await assert.rejects(a1.api("GET", "/v1/vms/onshared"), /does not exist|not found/i);
  // Not copied: the same file (same inode) is the disk h2 runs on, and no disk was made under h2's own VM dir.
  assert.equal(statSync(disk).ino, inode, "the disk is the same file");
  assert.deepEqual(readdirSync(join(a2.home, "vms", id)).filter((f) => f === "disks"), [], "no local disks on h2");
  assert.deepEqual(existsSync(join(a1.home, "vms")) ? readdirSync(join(a1.home, "vms")) : [], [], "nothing of the VM stays on h1");

  let out = "";
  for (let i = 0; i < 60 && !/running=/.test(out); i++) {
    out = (await guestExec(a2, "onshared", ["ticker", "report"]).catch(() => ({ out: "" }))).out;
    if (!/running=/.test(out)) await new Promise((res) => setTimeout(res, 500));
  }
  assert.equal(report(out).running, "yes", "the ticker came across and still runs");
  assert.ok(Number(report(out).value) > before, `the counter went on (${before} → ${report(out).value})`);
  assert.equal((await guestExec(a2, "onshared", ["ticker", "stop"])).out, "stopped");
  const done = report((await guestExec(a2, "onshared", ["ticker", "report"])).out);
  assert.equal(done.gaps, "0", `no value missing from the disk log: ${JSON.stringify(done)}`);
  assert.equal(done.last, done.value, "the disk log ends where RAM is");
  // The shared VM's data on h2 is the shared disk (a purge there erases it); the source's left it to h2.
  const where = await a2.api<{ live: { path: string; purpose: string }[] }>("GET", "/v1/vms/onshared/where");
  assert.ok(where.live.some((f) => f.path === disk && f.purpose === "disk"), JSON.stringify(where.live));
});
