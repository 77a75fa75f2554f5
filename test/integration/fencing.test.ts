/**
 * Fencing, wired (docs/cluster.md): a manager and an agent on PostgreSQL, the agent in a host namespace of its own
 * (test/cluster-topology.ts) holding its lease through `--lease-db`. The agent reaches the server through a unix
 * socket relay this test runs in a child process, so that cutting the relay makes the lease database unreachable
 * for the agent alone (the manager keeps its own connection): the agent kills its running VM before its lease
 * expires (audited `host.self-fenced`), refuses to start VMs while fenced, the manager marks the host `fenced` once
 * the lease has expired and lists its VMs `unknown`; when the database is back the agent holds a new epoch and a
 * command sent with the old one is refused (409) by its cluster listener before it reaches the app.
 */
import { strict as assert } from "node:assert";
import { spawnSync, execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { test } from "node:test";
import pg from "pg";
import { freshDatabase, socketUrl } from "../../src/inventory/testing/pg.ts";
import { clusterTopology } from "../cluster-topology.ts";
import { pgRelay } from "../pg-relay.ts";
import { BIN, requireTinyImage, startDaemon, pollFor, type DaemonHandle } from "../harness.ts";

const run = promisify(execFile);
const TTL_S = 8;
const MARGIN_S = 3;

interface HostRow { name: string; state: string; status: { epoch: number } | null }
interface AuditRecord { action: string; actor: string; result: string; at?: string; details: Record<string, unknown>; target: { name?: string } }

test("an agent that loses its lease database kills its VM before the lease expires; the manager marks it fenced and plans (refuses) the HA restart; a stale epoch is refused", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const topo = clusterTopology(t, 2);
  const db = await freshDatabase();
  const relay = await pgRelay(t);
  const home = mkdtempSync(join(tmpdir(), "vigil-mgr-"));
  const ca = spawnSync(process.execPath, [BIN, "ca", "init"], { env: { ...process.env, VIGIL_HOME: home }, encoding: "utf8" });
  assert.equal(ca.status, 0, ca.stderr);
  const manager = await startDaemon(t, { home, command: ["serve", "--cluster", "--db", db.url], wrap: topo.manager.wrap });
  const h = topo.hosts[0]!;
  const creds = join(mkdtempSync(join(tmpdir(), "vigil-creds-")), "agent");
  const add = manager.cli("host", "add", "h1", "--addr", `${h.addr}:7451`, "--out", creds);
  assert.equal(add.status, 0, add.stderr);
  const agent: DaemonHandle = await startDaemon(t, {
    command: ["agent", "--listen", `${h.addr}:7451`, "--credentials", creds, "--lease-db", relay.url(db.name), "--lease-ttl", String(TTL_S), "--lease-margin", String(MARGIN_S)],
    wrap: h.wrap,
  });
  // h2 holds its lease directly (never cut): the host an HA restart would go to.
  const h2 = topo.hosts[1]!;
  const creds2 = join(mkdtempSync(join(tmpdir(), "vigil-creds-")), "agent");
  const add2 = manager.cli("host", "add", "h2", "--addr", `${h2.addr}:7451`, "--out", creds2);
  assert.equal(add2.status, 0, add2.stderr);
  await startDaemon(t, { command: ["agent", "--listen", `${h2.addr}:7451`, "--credentials", creds2, "--lease-db", db.url, "--lease-ttl", String(TTL_S), "--lease-margin", String(MARGIN_S)], wrap: h2.wrap });
  const hostRow = async () => (await manager.api<HostRow[]>("GET", "/v1/hosts")).find((x) => x.name === "h1")!;
  await pollFor(async () => ((await hostRow()).state === "ready" && (await hostRow()).status?.epoch === 1 ? true : undefined), 30_000, "h1 ready at epoch 1");

  const leaseRow = async () => {
    const c = new pg.Client({ connectionString: socketUrl(db.name) });
    await c.connect();
    try {
      return (await c.query<{ epoch: string; expires_at: string }>("SELECT epoch, expires_at FROM host_leases WHERE host = 'h1'")).rows[0]!;
    } finally {
      await c.end();
    }
  };
  const audit = async () => (await agent.api<{ records: AuditRecord[] }>("GET", "/v1/audit?limit=10000")).records;

  await manager.api("POST", "/v1/vms", { name: "fenced1", memoryMiB: 256, vcpus: 1, host: "h1" });
  await manager.api("POST", "/v1/vms/fenced1/start", {});
  const set = manager.cli("vm", "set", "fenced1", "--ha", "--json");
  assert.equal(set.status, 0, set.stderr);
  assert.deepEqual(JSON.parse(set.stdout), { name: "fenced1", host: "h1", ha: true });
  assert.equal((await agent.api<{ state: string }>("GET", "/v1/vms/fenced1")).state, "running");

  // The lease database becomes unreachable for the agent: no renewal, so it fences at expires_at − margin.
  await relay.cut();
  await pollFor(async () => ((await agent.api<{ state: string }>("GET", "/v1/vms/fenced1")).state === "stopped" ? true : undefined), TTL_S * 1000 + 10_000, "the VM to be stopped by the fence");
  const lease = await leaseRow();
  const expiresAt = Date.parse(lease.expires_at);
  const fence = await pollFor(async () => (await audit()).find((r) => r.action === "host.self-fenced"), 10_000, "the host.self-fenced record");
  assert.equal(fence.actor, "system");
  assert.equal(fence.result, "ok");
  assert.equal(fence.details.epoch, 1);
  assert.match(String(fence.details.reason), /not renewed by/);
  assert.deepEqual(fence.details.killed, ["fenced1"]);
  assert.ok(Date.parse(String(fence.details.stoppedAt)) < expiresAt, `the VM was stopped (${String(fence.details.stoppedAt)}) before the lease expired (${lease.expires_at})`);
  assert.ok((await audit()).some((r) => r.action === "vm.kill" && r.actor === "system" && r.target.name === "fenced1"), "the kill is audited as system");

  // The manager sees the lease expired: the host is fenced, its VM unknown.
  await pollFor(async () => ((await hostRow()).state === "fenced" ? true : undefined), TTL_S * 1000 + 10_000, "h1 fenced");
  assert.ok(Date.now() >= expiresAt, "fenced only once the lease has expired");
  const list = manager.cli("host", "list");
  assert.equal(list.status, 0, list.stderr);
  assert.match(list.stdout, /h1\s+\S+\s+fenced/);
  assert.match(list.stdout, /h2\s+\S+\s+ready/);
  const { vms } = await manager.api<{ vms: { name: string; state: string }[] }>("GET", "/v1/vms");
  assert.deepEqual(vms.filter((v) => v.name === "fenced1").map((v) => v.state), ["unknown"]);
  const events = await manager.api<{ kind: string; subject: string }[]>("GET", "/v1/events?after=0");
  assert.ok(events.some((e) => e.kind === "host.fenced" && e.subject === "h1"), "event host.fenced");

  // HA: the manager plans to restart it on h2 and records that it would, but refuses (no shared storage).
  const refused = await pollFor(async () => (await manager.api<{ kind: string; subject: string; payload: Record<string, unknown> }[]>("GET", "/v1/events?after=0")).find((e) => e.kind === "vm.ha-restart-refused" && e.subject === "fenced1"), 15_000, "the HA plan");
  assert.equal(refused.payload.wouldRestartOn, "h2");
  assert.equal(refused.payload.lostEpoch, 1);
  assert.equal(refused.payload.refused, "the VM's disks are on the lost host; HA restart needs shared storage");
  const haCli = manager.cli("cluster", "ha");
  assert.equal(haCli.status, 0, haCli.stderr);
  assert.match(haCli.stdout, /would restart fenced1 \(from h1, lost epoch 1\) on h2: refused, the VM's disks are on the lost host/);
  const mgrAudit = (await manager.api<{ records: AuditRecord[] }>("GET", "/v1/audit?limit=1000")).records;
  assert.ok(mgrAudit.some((r) => r.action === "vm.ha-restart" && r.result === "error" && r.target.name === "fenced1"));
  assert.ok(mgrAudit.some((r) => r.action === "vm.set-ha" && r.result === "ok"));

  // Requests to h1's cluster listener with the manager's own certificate, from the manager's namespace.
  const keys = join(home, "keys", "ca");
  const curl = async (method: string, path: string, epoch: number | undefined) => {
    const args = ["-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--cacert", join(keys, "ca-cert.pem"), "--cert", join(keys, "manager-cert.pem"), "--key", join(keys, "manager-key.pem"),
      "-H", `x-vigil-actor: ${JSON.stringify({ name: "system", roles: ["admin"], groups: [], introspect: false })}`, "-H", "content-type: application/json",
      ...(epoch !== undefined ? ["-H", `x-vigil-epoch: ${epoch}`] : []), ...(method === "POST" ? ["--data", "{}"] : []), `https://${h.addr}:7451${path}`];
    const { stdout } = await run(topo.manager.wrap[0]!, [...topo.manager.wrap.slice(1), "curl", ...args]);
    const lines = stdout.trimEnd().split("\n");
    return { status: Number(lines.pop()), body: lines.join("\n") };
  };
  // A fenced agent starts no VM.
  await assert.rejects(manager.api("POST", "/v1/vms/fenced1/start", {}), /fenced itself/);
  assert.equal((await agent.api<{ state: string }>("GET", "/v1/vms/fenced1")).state, "stopped");

  // Nor does it take a VM in by migration (refused at its cluster listener, under a valid epoch).
  const incoming = await curl("POST", "/v1/agent/migrations/incoming", 1);
  assert.equal(incoming.status, 409, incoming.body);
  assert.match(incoming.body, /Cannot take a VM in by migration: host \\"h1\\" fenced itself/);

  // The database is back: a new lease at epoch 2, the host ready again.
  await relay.restore();
  await pollFor(async () => ((await hostRow()).state === "ready" && (await hostRow()).status?.epoch === 2 ? true : undefined), 30_000, "h1 ready at epoch 2");
  assert.equal(Number((await leaseRow()).epoch), 2);
  assert.ok((await audit()).some((r) => r.action === "host.lease-acquired" && r.details.epoch === 2));

  // A command under the old epoch, with the manager's own certificate, is refused before it reaches the app.
  const starts = (await audit()).filter((r) => r.action === "vm.start").length;
  const stale = await curl("POST", "/v1/vms/fenced1/start", 1);
  assert.equal(stale.status, 409, stale.body);
  assert.match(stale.body, /stale epoch 1 \(this host has accepted epoch 2\)/);
  assert.equal((await audit()).filter((r) => r.action === "vm.start").length, starts, "the refused command never reached the app");
  assert.equal((await curl("GET", "/v1/agent/status", undefined)).status, 400, "the epoch header is required");
  const ok = await curl("GET", "/v1/agent/status", 2);
  assert.equal(ok.status, 200, ok.body);
  assert.equal((JSON.parse(ok.body) as { epoch: number }).epoch, 2);
});
