/**
 * HA restarts, end to end (docs/cluster.md "Shared storage and HA restarts"): a manager and two agents on
 * PostgreSQL, each in a host namespace of its own (test/cluster-topology.ts), both agents with `--shared-storage`
 * on ONE root-owned 0700 directory (what shared storage is on one machine) and `--lease-db`. h1 reaches the lease
 * database through a unix-socket relay (as in fencing.test.ts); cutting it makes h1 lose its lease: it self-fences
 * (kills its QEMUs), the lease expires, and the manager restarts the shared-storage HA VM on h2 — only after the
 * lease's expires_at, exactly once, on the same disk with the same uuid and owner — and records (does not perform)
 * the restart of the local-storage HA VM. When h1 holds a lease again it drops its stale row (`vm.ha-dropped`)
 * without starting the VM or touching the shared files.
 */
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pg from "pg";
import { freshDatabase, socketUrl } from "../../src/inventory/testing/pg.ts";
import { clusterTopology } from "../cluster-topology.ts";
import { pgRelay } from "../pg-relay.ts";
import { BIN, guestExec, requireTinyImage, startDaemon, pollFor, waitFor, type DaemonHandle } from "../harness.ts";

const TTL_S = 8;
const MARGIN_S = 3;

interface HostRow { name: string; state: string; status: { epoch: number } | null }
interface AuditRecord { action: string; actor: string; result: string; time: string; details: Record<string, unknown>; target: { name?: string; id?: string } }
interface VmView { id: string; name: string; state: string; owner: string | null }
interface Event { kind: string; subject: string; payload: Record<string, unknown> }

/** The QEMU processes of VM `uuid` on this machine (argv[0] is qemu-system-*, `-uuid <uuid>` in argv). */
function qemusOf(uuid: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
    } catch {
      continue;
    }
    const i = argv.indexOf("-uuid");
    if (/(^|\/)qemu-system-/.test(argv[0] ?? "") && i >= 0 && argv[i + 1] === uuid) pids.push(Number(p));
  }
  return pids;
}

test("HA restart on shared storage: h1 loses its lease, the VM restarts on h2 after the lease expired, exactly once, same disk/uuid/owner; h1 back drops its stale row; a local-storage HA VM is not restarted", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const topo = clusterTopology(t, 2);
  const db = await freshDatabase();
  const relay = await pgRelay(t);
  // ONE shared directory both agents see: root-owned (we are root), 0700 (mkdtemp).
  const shared = mkdtempSync(join(tmpdir(), "vigil-shared-"));
  t.after(() => rmSync(shared, { recursive: true, force: true }));
  assert.equal(statSync(shared).mode & 0o777, 0o700);
  const home = mkdtempSync(join(tmpdir(), "vigil-mgr-"));
  const ca = spawnSync(process.execPath, [BIN, "ca", "init"], { env: { ...process.env, VIGIL_HOME: home }, encoding: "utf8" });
  assert.equal(ca.status, 0, ca.stderr);
  const manager = await startDaemon(t, { home, command: ["serve", "--cluster", "--db", db.url], wrap: topo.manager.wrap });
  const agents: DaemonHandle[] = [];
  for (const [i, h] of topo.hosts.entries()) {
    const name = `h${i + 1}`;
    const credsDir = mkdtempSync(join(tmpdir(), "vigil-creds-"));
    t.after(() => rmSync(credsDir, { recursive: true, force: true }));
    const creds = join(credsDir, "agent");
    const add = manager.cli("host", "add", name, "--addr", `${h.addr}:7451`, "--out", creds);
    assert.equal(add.status, 0, add.stderr);
    // h1 holds its lease through the relay (cut to lose it), h2 directly.
    const leaseDb = i === 0 ? relay.url(db.name) : db.url;
    agents.push(await startDaemon(t, {
      command: ["agent", "--listen", `${h.addr}:7451`, "--credentials", creds, "--lease-db", leaseDb, "--lease-ttl", String(TTL_S), "--lease-margin", String(MARGIN_S), "--shared-storage", shared],
      wrap: h.wrap,
    }));
  }
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  const hostRow = async (n: string) => (await manager.api<HostRow[]>("GET", "/v1/hosts")).find((x) => x.name === n)!;
  await pollFor(async () => ((await hostRow("h1")).state === "ready" && (await hostRow("h2")).state === "ready" ? true : undefined), 30_000, "both hosts ready");

  const sql = async <R extends pg.QueryResultRow>(text: string, values: unknown[] = []) => {
    const c = new pg.Client({ connectionString: socketUrl(db.name) });
    await c.connect();
    try {
      return (await c.query<R>(text, values)).rows;
    } finally {
      await c.end();
    }
  };
  const audit = async (d: DaemonHandle) => (await d.api<{ records: AuditRecord[] }>("GET", "/v1/audit?limit=10000")).records;
  const events = async () => manager.api<Event[]>("GET", "/v1/events?after=0");

  // A shared-storage HA VM and a local-storage HA VM, both running on h1.
  await manager.api("POST", "/v1/vms", { name: "hashared", memoryMiB: 128, vcpus: 1, host: "h1", storage: "shared" });
  await manager.api("POST", "/v1/vms", { name: "halocal", memoryMiB: 128, vcpus: 1, host: "h1" });
  for (const name of ["hashared", "halocal"]) {
    const set = manager.cli("vm", "set", name, "--ha", "--json");
    assert.equal(set.status, 0, set.stderr);
    await manager.api("POST", `/v1/vms/${name}/start`, { wait: true });
  }
  const before = await a1.api<VmView>("GET", "/v1/vms/hashared");
  const uuid = before.id;
  const vmDir = join(shared, uuid);
  assert.ok(existsSync(join(vmDir, "disks")), "the shared VM's disks are on the shared storage");
  const text = `before-ha-${uuid.slice(0, 8)}`;
  const w = await pollFor(async () => {
    const r = await guestExec(a1, "hashared", ["data-write", "ha-proof", text]);
    return r.exitCode === 0 ? r : undefined;
  }, 90_000, "the guest to write its disk");
  assert.match(w.out, /wrote \/data\/ha-proof/);
  await waitFor(() => existsSync(join(vmDir, "dossier.json")) && existsSync(join(vmDir, "store.json")), 20_000, "the shared dossier and store").catch((err: unknown) => {
    throw new Error(`${String(err)}; h1's log says: ${a1.log().split("\n").filter((l) => /dossier|shared/.test(l)).slice(-3).join("\n")}`);
  });
  assert.equal(qemusOf(uuid).length, 1, "one QEMU for the VM before the loss");
  // The monotonic store goes to store.json every sync (2 s): what the guest counted survives the restart.
  assert.equal((await guestExec(a1, "hashared", ["vtime", "incr", "ha"])).out, "1");
  assert.equal((await guestExec(a1, "hashared", ["vtime", "incr", "ha"])).out, "2");
  await new Promise((r) => setTimeout(r, 4500));

  // h1 loses its lease: it self-fences (kills its QEMUs), the lease expires, the manager fences h1.
  await relay.cut();
  const [lease] = await sql<{ epoch: string; expires_at: Date }>("SELECT epoch, expires_at FROM host_leases WHERE host = 'h1'");
  const expiresAt = new Date(lease!.expires_at).getTime();

  const onH2 = await pollFor(async () => {
    const v = await a2.api<VmView>("GET", "/v1/vms/hashared");
    return v.state === "running" ? v : undefined;
  }, TTL_S * 1000 + 60_000, "the shared VM to run on h2");
  const seenAt = Date.now();
  assert.ok(seenAt >= expiresAt, "running on h2 only after h1's lease expired");
  // The lease row did not move (h1 never renewed), and every step of the restart is after expires_at.
  const [leaseAfter] = await sql<{ epoch: string; expires_at: Date }>("SELECT epoch, expires_at FROM host_leases WHERE host = 'h1'");
  assert.equal(new Date(leaseAfter!.expires_at).getTime(), expiresAt, "h1's lease was not renewed");
  const claims = await sql<{ vm_id: string; vm_name: string; lost_epoch: string; from_host: string; to_host: string; state: string; claimed_at: string; finished_at: string | null }>("SELECT * FROM cluster_ha_restarts");
  assert.equal(claims.length, 1, `one claim: ${JSON.stringify(claims)}`);
  const claim = claims[0]!;
  assert.deepEqual([claim.vm_id, claim.vm_name, Number(claim.lost_epoch), claim.from_host, claim.to_host, claim.state], [uuid, "hashared", Number(lease!.epoch), "h1", "h2", "restarted"]);
  assert.ok(Date.parse(claim.claimed_at) >= expiresAt, `claimed (${claim.claimed_at}) after the lease expired (${new Date(expiresAt).toISOString()})`);
  const inH2 = (await audit(a2)).find((r) => r.action === "vm.migrated-in" && r.target.name === "hashared");
  assert.ok(inH2, "h2 audits the VM coming in");
  assert.ok(Date.parse(inH2.time) >= expiresAt, `taken in on h2 (${inH2.time}) after the lease expired`);
  const fence = (await audit(a1)).find((r) => r.action === "host.self-fenced");
  assert.ok(fence, "h1 fenced itself");
  assert.ok((fence.details.killed as string[]).includes("hashared"), "the self-fence killed the shared VM's QEMU");

  // Same VM: uuid, owner; its disk holds what was written before.
  assert.equal(onH2.id, uuid);
  assert.equal(onH2.owner, before.owner);
  const read = await pollFor(async () => {
    const r = await guestExec(a2, "hashared", ["cat", "/data/ha-proof"]);
    return r.exitCode === 0 ? r : undefined;
  }, 90_000, "the guest on h2 to read its disk");
  assert.equal(read.out.trim(), text);
  assert.equal((await guestExec(a2, "hashared", ["vtime", "read", "ha"])).out, "2", "the monotonic store restarted where it was");
  assert.equal((await guestExec(a2, "hashared", ["vtime", "incr", "ha"])).out, "3");
  const history = await a2.api<{ id: string; locations: { host: string; until: string | null }[]; events: AuditRecord[] }>("GET", "/v1/vms/hashared/history");
  assert.equal(history.id, uuid);
  assert.deepEqual(history.locations.map((l) => l.host), ["h1", "h2"], JSON.stringify(history.locations));
  assert.equal(history.locations.at(-1)!.until, null);
  assert.ok(history.events.some((e) => e.action === "vm.migrated-in" && e.details.how === "ha-restart"), "the history shows the HA restart");
  const { vms } = await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms");
  assert.deepEqual(vms.filter((v) => v.name === "hashared").map((v) => v.host), ["h2"]);
  assert.ok((await events()).some((e) => e.kind === "vm.ha-restarted" && e.subject === "hashared"));

  // The local-storage HA VM is not restarted: recorded, with the reason.
  const refused = await pollFor(async () => (await events()).find((e) => e.kind === "vm.ha-restart-refused" && e.subject === "halocal"), 15_000, "the refusal of halocal");
  assert.equal(refused.payload.storage, "local");
  assert.equal(refused.payload.refused, "the VM's disks are on the lost host; HA restart needs shared storage");
  await assert.rejects(a2.api("GET", "/v1/vms/halocal"), /does not exist|not found/i);
  assert.ok(!(await events()).some((e) => e.kind === "vm.ha-restart-refused" && e.subject === "hashared"));

  // Exactly once: more manager ticks (heartbeats every few seconds) change nothing.
  await new Promise((r) => setTimeout(r, 12_000));
  assert.equal((await sql("SELECT 1 FROM cluster_ha_restarts")).length, 1);
  assert.equal(qemusOf(uuid).length, 1, "one QEMU for the VM, on h2");
  assert.equal((await audit(a2)).filter((r) => r.action === "vm.migrated-in" && r.target.name === "hashared").length, 1);
  assert.equal((await events()).filter((e) => e.kind === "vm.ha-restarted").length, 1);

  // h1 gets its lease back: it does not start the VM, drops its stale row, the shared files stay.
  const a1Starts = (await audit(a1)).filter((r) => r.action === "vm.start").length;
  await relay.restore();
  await pollFor(async () => ((await hostRow("h1")).state === "ready" && (await hostRow("h1")).status?.epoch === Number(lease!.epoch) + 1 ? true : undefined), 40_000, "h1 ready at a new epoch");
  const dropped = await pollFor(async () => (await audit(a1)).find((r) => r.action === "vm.ha-dropped"), 20_000, "h1's vm.ha-dropped record");
  assert.equal(dropped.target.id, uuid);
  assert.equal(dropped.details.restartedOn, "h2");
  await assert.rejects(a1.api("GET", "/v1/vms/hashared"), /does not exist|not found/i);
  assert.equal((await audit(a1)).filter((r) => r.action === "vm.start").length, a1Starts, "h1 started nothing");
  assert.equal(qemusOf(uuid).length, 1, "still one QEMU for the VM");
  assert.equal((await a2.api<VmView>("GET", "/v1/vms/hashared")).state, "running");
  assert.ok(existsSync(join(vmDir, "dossier.json")), "the shared dossier stays");
  assert.ok(readdirSync(join(vmDir, "disks")).length > 0, "the shared disks stay");
  assert.equal((await guestExec(a2, "hashared", ["cat", "/data/ha-proof"])).out.trim(), text, "the disk still reads back on h2");
  // The local VM stays h1's (stopped by the fence, not dropped).
  assert.equal((await a1.api<VmView>("GET", "/v1/vms/halocal")).state, "stopped");
});
