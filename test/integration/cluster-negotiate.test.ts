/**
 * Negotiation and balancing across two agents (test/cluster-topology.ts), with 128 MiB guests: a target whose QEMU
 * lacks a required migration capability is refused before it holds anything (the lack is simulated with the
 * target agent's test hook VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES: QEMU 7.2 cannot be made to lack one), and
 * `vigil cluster balance --apply` spreads two guests started on one host with a live migration.
 */
import { strict as assert } from "node:assert";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { cluster } from "../cluster-topology.ts";
import { guestExec, waitFor, type DaemonHandle } from "../harness.ts";

async function runningGuest(manager: DaemonHandle, name: string, host: string) {
  await manager.api("POST", "/v1/vms", { name, memoryMiB: 128, vcpus: 1, host });
  await manager.api("POST", `/v1/vms/${name}/start`, { wait: true });
}
const report = (s: string) => Object.fromEntries(s.split(/\s+/).map((kv) => kv.split("=") as [string, string]));
const vmsOn = (d: DaemonHandle) => (existsSync(join(d.home, "vms")) ? readdirSync(join(d.home, "vms")) : []);
const placements = async (manager: DaemonHandle) => Object.fromEntries((await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms")).vms.map((v) => [v.name, v.host]));

test("a target whose QEMU lacks return-path is refused before anything is created there", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t, { agentEnv: (h) => (h === "h2" ? { VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES: "return-path" } : {}) });
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  await runningGuest(manager, "picky", "h1");
  const r = manager.cli("vm", "migrate", "picky", "--to", "h2");
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /Cannot migrate VM "picky" from "h1" to "h2": host "h2": its QEMU lacks the migration capability "return-path" \(required\)/);
  assert.deepEqual(vmsOn(a2), [], "nothing on the target");
  await assert.rejects(a2.api("GET", "/v1/vms/picky"), /does not exist|not found/i);
  assert.equal((await a1.api<{ state: string }>("GET", "/v1/vms/picky")).state, "running");
  assert.deepEqual(await manager.api("GET", "/v1/migrations"), [], "no migration row");
  const audit = (await manager.api<{ records: { action: string; result: string; details: { state?: string; refused?: string[] } }[] }>("GET", "/v1/audit?limit=1000")).records;
  const refused = audit.find((x) => x.action === "vm.migrate");
  assert.equal(refused?.result, "error");
  assert.equal(refused?.details.state, "refused");
  assert.match(refused?.details.refused?.join() ?? "", /"h2".*"return-path"/);
});

test("cluster balance --apply: two guests on h1, one moves live to h2, with the reasoning and the negotiated set", { timeout: 900_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  await runningGuest(manager, "bal-a", "h1");
  await runningGuest(manager, "bal-b", "h1");
  // The heartbeat carries the running VMs to the manager's view of h1.
  await waitFor(() => {
    const r = manager.cli("cluster", "balance", "--min-gain", "0.1", "--json");
    return r.status === 0 && (JSON.parse(r.stdout) as { moves: unknown[] }).moves.length === 1;
  }, 30_000, "a recommended move");
  const r = manager.cli("cluster", "balance", "--min-gain", "0.1", "--apply");
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /1 migration recommended: memory load spread [0-9.]+ points → 0 points\./);
  assert.match(r.stdout, /Reasoning:\n {2}1\. /);
  assert.match(r.stdout, /negotiated: QEMU (\d+\.\d+\.\d+) → \1, machine pc-i440fx-[0-9.]+, cpu \w+; capabilities return-path, pause-before-switchover, events, auto-converge; off: multifd/);
  assert.match(r.stdout, /Migrated bal-a to h2: downtime \d+ ms/);
  assert.deepEqual(await placements(manager), { "bal-a": "h2", "bal-b": "h1" });
  assert.equal((await a2.api<{ state: string }>("GET", "/v1/vms/bal-a")).state, "running");
  assert.equal((await a1.api<{ state: string }>("GET", "/v1/vms/bal-b")).state, "running");
  assert.equal(vmsOn(a1).length, 1);
  // Spread: nothing more to recommend.
  await waitFor(() => {
    const again = manager.cli("cluster", "balance", "--min-gain", "0.1", "--json");
    return again.status === 0 && (JSON.parse(again.stdout) as { moves: unknown[] }).moves.length === 0;
  }, 30_000, "a balanced cluster");
  const row = (await manager.api<{ records: { action: string; result: string; details: { capabilities?: string[] } }[] }>("GET", "/v1/audit?limit=1000")).records.find((x) => x.action === "vm.migrate" && x.result === "ok");
  assert.deepEqual(row?.details.capabilities, ["return-path", "pause-before-switchover", "events", "auto-converge"]);
});

test("a stopped VM moves through the agents: its disk, identity, owner and location history follow; the source keeps nothing", { timeout: 600_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  await runningGuest(manager, "sleeper", "h1");
  assert.equal((await guestExec(a1, "sleeper", ["ticker", "start"])).out, "started");
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await guestExec(a1, "sleeper", ["ticker", "stop"])).out, "stopped");
  const before = report((await guestExec(a1, "sleeper", ["ticker", "report"])).out);
  assert.ok(Number(before.last) > 5, JSON.stringify(before));
  await manager.api("POST", "/v1/vms/sleeper/stop", {});
  for (let i = 0; i < 120 && (await a1.api<{ state: string }>("GET", "/v1/vms/sleeper")).state !== "stopped"; i++) await new Promise((res) => setTimeout(res, 500));
  const src = await a1.api<{ id: string; owner: string; state: string }>("GET", "/v1/vms/sleeper");
  assert.equal(src.state, "stopped");

  // First a move that fails half-way: something in the way of the root disk on h2 (its upload is refused there).
  const obstacle = join(a2.home, "vms", src.id, "disks", "root.qcow2");
  mkdirSync(join(a2.home, "vms", src.id, "disks"), { recursive: true });
  writeFileSync(obstacle, "in the way");
  const failed = manager.cli("vm", "migrate", "sleeper", "--to", "h2");
  assert.equal(failed.status, 1, failed.stdout + failed.stderr);
  assert.match(failed.stdout, /Migration of sleeper failed: copying the disks failed: .*disk "root" of VM "sleeper": it exists already.*; the VM stays on h1/);
  assert.deepEqual(vmsOn(a2), [], "h2 removed what it had made (and what was in the way)");
  await assert.rejects(a2.api("GET", "/v1/vms/sleeper"), /does not exist|not found/i);
  assert.equal((await a1.api<{ state: string }>("GET", "/v1/vms/sleeper")).state, "stopped", "the source is intact");
  assert.deepEqual(await placements(manager), { sleeper: "h1" });

  const r = manager.cli("vm", "migrate", "sleeper", "--to", "h2");
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /negotiated: cold move of a stopped VM .* runnable on h2/);
  assert.match(r.stdout, /Moved stopped VM sleeper to h2: \d+ MiB of disk copied in [0-9.]+ s/);
  const dst = await a2.api<{ id: string; owner: string; state: string }>("GET", "/v1/vms/sleeper");
  assert.deepEqual([dst.id, dst.owner, dst.state], [src.id, src.owner, "stopped"], "the same VM, stopped, on h2");
  await assert.rejects(a1.api("GET", "/v1/vms/sleeper"), /does not exist|not found/i);
  assert.deepEqual(vmsOn(a1), [], "nothing of the VM stays on h1");
  assert.deepEqual(await placements(manager), { sleeper: "h2" });
  const history = await a2.api<{ locations: { host: string; until: string | null }[] }>("GET", "/v1/vms/sleeper/history");
  assert.deepEqual(history.locations.map((l) => l.host).slice(-2), ["h1", "h2"], "the location history came along and goes on");
  assert.equal(history.locations.at(-1)?.until, null);
  const audit = (await manager.api<{ records: { action: string; result: string; details: { state?: string } }[] }>("GET", "/v1/audit?limit=1000")).records;
  assert.ok(audit.some((x) => x.action === "vm.migrate" && x.result === "ok" && x.details.state === "completed"));
  // It boots on h2 from the copied disk: the ticker's log written on h1 is there.
  await manager.api("POST", "/v1/vms/sleeper/start", { wait: true });
  let out = "";
  for (let i = 0; i < 60 && !/last=/.test(out); i++) {
    out = (await guestExec(a2, "sleeper", ["ticker", "report"]).catch(() => ({ out: "" }))).out;
    if (!/last=/.test(out)) await new Promise((res) => setTimeout(res, 500));
  }
  const after = report(out);
  assert.equal(after.last, before.last, `the disk log came across (${out})`);
  assert.equal(after.gaps, "0");
});
