/**
 * A VM's identity moving between two in-process daemons (two homes, jail on, TCG, the tiny image), with real
 * QEMUs: the incoming QEMU on B is jailed and waits in `inmigrate` with its bridged NIC plugged in; an abort
 * removes QEMU, row, files and tap; a daemon restart finds an incoming VM and aborts it; a cold move carries a
 * stopped VM whose disk content B then boots with, and leaves nothing on A but its record.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../../src/daemon/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import type { RequestContext } from "../../src/auth/guard.ts";
import { DataRegistry } from "../../src/provenance/data-registry.ts";
import { processAlive } from "../../src/host/qemu-process.ts";
import { exportDossier, importDossier, type DossierDeps } from "../../src/migration/dossier.ts";
import { prepareIncomingDisks } from "../../src/migration/disks.ts";
import { moveStopped } from "../../src/migration/cold.ts";
import { FirewallRepository } from "../../src/network/firewall/firewall-repository.ts";

interface Host {
  home: string;
  netns: string;
  daemon: Daemon;
  deps: DossierDeps;
  ctx: RequestContext;
  restart(): Promise<void>;
}

async function open(home: string, netns: string): Promise<Daemon> {
  // Each daemon's switch namespace is the test's own (vt- prefix), named while it starts.
  const before = process.env.VIGIL_NETNS;
  process.env.VIGIL_NETNS = netns;
  try {
    return await startDaemon({ home, listen: "none", log: silentLogger() });
  } finally {
    if (before === undefined) delete process.env.VIGIL_NETNS;
    else process.env.VIGIL_NETNS = before;
  }
}

function depsOf(d: Daemon, home: string): DossierDeps {
  const x = d.deps;
  return { vms: x.vms, db: d.repo.db, guard: x.guard, audit: x.audit, catalog: x.catalog, hostName: x.host.name, vmsDir: join(home, "vms"), registry: new DataRegistry(d.repo.db, x.host.name, join(home, "vms")), log: x.log, watches: x.introspection };
}

async function host(t: TestContext, name: string): Promise<Host> {
  const home = mkdtempSync(join(tmpdir(), `vigil-mig-${name}-`));
  const netns = `vt-mig${name}-${randomBytes(3).toString("hex")}`;
  const h = { home, netns } as Host;
  const init = async () => {
    h.daemon = await open(home, netns);
    h.deps = depsOf(h.daemon, home);
    const user = (await h.daemon.deps.users.findByName("ada")) ?? (await h.daemon.deps.users.create({ name: "ada", roles: ["admin"], introspect: false }, "test"), await h.daemon.deps.users.findByName("ada"))!;
    h.ctx = { actor: await h.daemon.deps.users.actorFor(user, "token"), requestId: randomUUID() };
  };
  h.restart = async () => {
    await h.daemon.close();
    await init();
  };
  await init();
  t.after(async () => {
    // Every QEMU this home started goes (the daemon leaves VMs running when it closes).
    for (const vm of await h.daemon.repo.list()) {
      if (vm.state === "incoming") await h.daemon.deps.vms.abortIncoming(vm.id).catch(() => undefined);
      else await h.daemon.deps.vms.destroy(h.ctx, vm.name, { force: true }).catch(() => undefined);
    }
    await h.daemon.close();
    try {
      execFileSync("ip", ["netns", "delete", netns], { stdio: "ignore" });
    } catch {
      // never created
    }
    rmSync(home, { recursive: true, force: true });
  });
  return h;
}

const taps = (netns: string): string[] => {
  try {
    return (JSON.parse(execFileSync("ip", ["-n", netns, "-j", "link", "show"], { encoding: "utf8" })) as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n.startsWith("vt-"));
  } catch {
    return [];
  }
};

const uidOf = (pid: number): number => Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

/** A VM on A with a bridged NIC on "lan" (a network row on A: it never starts there), received on B, disks made. */
async function received(a: Host, b: Host, name: string): Promise<string> {
  if (!(await a.deps.db.selectFrom("networks").select("id").where("name", "=", "lan").executeTakeFirst())) {
    await a.deps.db.insertInto("networks").values({ id: randomUUID(), name: "lan", cidr: "10.79.0.0/24", gateway: "10.79.0.1", bridge: "vb-lan", dhcp: 0, nat: 0, created_at: new Date().toISOString() }).execute();
  }
  if (!(await b.deps.db.selectFrom("networks").select("id").where("name", "=", "lan").executeTakeFirst())) {
    await b.daemon.deps.network.create(b.ctx, { name: "lan", cidr: "10.79.0.0/24", dhcp: false });
  }
  const view = await a.daemon.deps.vms.create(a.ctx, { name, memoryMiB: 128, nics: [{ network: "lan" }] });
  // Its policy on A (a port only this test uses), which must be in B's firewall before B's QEMU exists.
  await new FirewallRepository(a.deps.db).append(view.id, 1, { rules: [{ direction: "in", action: "accept", proto: "tcp", ports: "24680" }], defaults: { in: "drop", out: "accept" } }, "ada");
  const { vm, disks } = await importDossier(b.deps, await exportDossier(a.deps, a.ctx, name), b.ctx);
  await prepareIncomingDisks(b.deps, vm.id, disks);
  return view.id;
}

test("startIncoming: a jailed QEMU in inmigrate with its NIC plugged; commit is refused until it has received; abort removes QEMU, row, files and tap", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const id = await received(a, b, "wanderer");
  const vm = await b.daemon.deps.vms.startIncoming(b.ctx, id);
  assert.equal(vm.state, "incoming");
  const pid = vm.pid!;
  assert.equal(await b.daemon.deps.vms.runtimeOf(vm).status(), "inmigrate");
  const uid = (await b.deps.db.selectFrom("jail_uids").select("uid").where("vm_id", "=", id).executeTakeFirstOrThrow()).uid;
  assert.equal(uidOf(pid), uid, "QEMU runs as the VM's own uid on B");
  assert.ok(existsSync(join(b.deps.vmsDir, id, "jail.pid")));
  assert.equal((await b.daemon.deps.network.attached()).filter((n) => n.vmId === id).length, 1, "its NIC is plugged in before QEMU");
  assert.equal(taps(b.netns).length, 1);
  const ruleset = execFileSync("ip", ["netns", "exec", b.netns, "nft", "list", "table", "inet", "vigil_fw"], { encoding: "utf8" });
  assert.match(ruleset, /24680/, "the policy that came with the VM is installed on B");
  const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  assert.deepEqual(argv.slice(argv.indexOf("-incoming"), argv.indexOf("-incoming") + 2), ["-incoming", "defer"]);
  await assert.rejects(b.daemon.deps.vms.commitIncoming(id, b.ctx), { code: "VIGIL_INVALID_STATE", message: /"inmigrate", not done receiving it/ });
  assert.equal((await b.daemon.repo.getById(id)).state, "incoming");
  // A user's lifecycle actions do not apply to an incoming VM.
  await assert.rejects(b.daemon.deps.vms.destroy(b.ctx, "wanderer"), { code: "VIGIL_INVALID_STATE" });

  await b.daemon.deps.vms.abortIncoming(id, b.ctx, "test cancel");
  assert.equal(processAlive(pid), false, "QEMU is gone");
  await assert.rejects(b.daemon.repo.getById(id), { code: "VIGIL_VM_NOT_FOUND" });
  assert.equal(existsSync(join(b.deps.vmsDir, id)), false, "its directory is gone");
  assert.deepEqual(taps(b.netns), [], "its tap is gone");
  assert.equal((await b.deps.db.selectFrom("nic_addresses").selectAll().execute()).length, 0);
  const aborted = await b.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migration-aborted").execute();
  assert.deepEqual(aborted.map((r) => [r.actor, JSON.parse(r.details).reason]), [["ada", "test cancel"]]);
  // A is untouched: the VM is still there, stopped.
  assert.equal((await a.daemon.repo.getById(id)).state, "stopped");
});

test("a daemon restart that finds an incoming VM aborts it: its QEMU, row, files and tap go", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const id = await received(a, b, "orphan");
  const pid = (await b.daemon.deps.vms.startIncoming(b.ctx, id)).pid!;
  await b.restart(); // the QEMU outlives the daemon, as every VM does
  assert.equal(processAlive(pid), false, "the restarted daemon killed the incoming QEMU");
  await assert.rejects(b.daemon.repo.getById(id), { code: "VIGIL_VM_NOT_FOUND" });
  assert.equal(existsSync(join(b.deps.vmsDir, id)), false);
  assert.deepEqual(taps(b.netns), []);
  const aborted = await b.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migration-aborted").execute();
  assert.deepEqual(aborted.map((r) => [r.actor, JSON.parse(r.details).reason]), [["system", "the target's daemon restarted during the migration"]]);
});

test("cold move: B boots the moved VM with its disk content, A keeps no row and no file, both audit logs say it", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const vms = a.daemon.deps.vms;
  const view = await vms.create(a.ctx, { name: "coldvm", memoryMiB: 128, labels: { tier: "cold" } });
  await vms.start(a.ctx, "coldvm", { wait: true });
  const write = await vms.withAgent(a.ctx, "coldvm", { action: "vm.exec", permission: "vm.exec" }, (ag) => ag.exec(["data-write", "hello", "written-on-a"]));
  assert.equal(write.exitCode, 0, Buffer.from(write.stderr, "base64").toString());
  await vms.stop(a.ctx, "coldvm");
  const aDir = join(a.deps.vmsDir, view.id);
  assert.ok(existsSync(aDir));

  const r = await moveStopped(a.deps, b.deps, a.ctx, "coldvm");
  assert.deepEqual(r.disks, [{ name: "root", sync: "top" }], "the root disk moved as its top layer over the shared tiny base");
  // A: no row, no file; its records keep where the VM went.
  await assert.rejects(a.daemon.repo.getById(view.id), { code: "VIGIL_VM_NOT_FOUND" });
  assert.equal(existsSync(aDir), false);
  const out = await a.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migrated-out").where("target_id", "=", view.id).execute();
  assert.deepEqual(out.map((x) => [x.actor, JSON.parse(x.details).to]), [["ada", b.deps.hostName]]);
  const whereA = await a.deps.db.selectFrom("vm_locations").select(["path", "until"]).where("vm_id", "=", view.id).orderBy("id").execute();
  assert.equal(whereA.at(-1)!.path, `(migrated to ${b.deps.hostName})`);
  assert.ok((await a.deps.registry.list(view.id, { includeRemoved: true })).every((f) => f.removedHow === "migrated-out"), "A's registry says its files left with the VM");
  // B: the same VM, stopped; it boots and its disk holds what A wrote.
  const moved = await b.daemon.repo.getByName("coldvm");
  assert.equal(moved.id, view.id);
  assert.equal(moved.state, "stopped");
  assert.deepEqual(moved.labels, { tier: "cold" });
  const into = await b.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migrated-in").where("target_id", "=", view.id).execute();
  assert.deepEqual(into.map((x) => [x.actor, JSON.parse(x.details).how]), [["ada", "cold"]]);
  await b.daemon.deps.vms.start(b.ctx, "coldvm", { wait: true });
  const read = await b.daemon.deps.vms.withAgent(b.ctx, "coldvm", { action: "vm.exec", permission: "vm.exec" }, (ag) => ag.exec(["cat", "/data/hello"]));
  assert.equal(Buffer.from(read.stdout, "base64").toString().trim(), "written-on-a");
  const whereB = await b.deps.db.selectFrom("vm_locations").select(["path", "until"]).where("vm_id", "=", view.id).orderBy("id").execute();
  assert.deepEqual(whereB.at(-1), { path: join(b.deps.vmsDir, view.id), until: null }, "B records the VM as here now, after its history from A");
  assert.ok(whereB.length >= 2);
});

/** Relays one connection from a unix socket at `listenPath` (which the VM's uid may connect to) to `toPath`. */
function relay(listenPath: string, toPath: string, uid: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((inbound) => {
      const outbound = connect(toPath);
      inbound.pipe(outbound);
      outbound.pipe(inbound);
      const end = () => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on("error", end);
      outbound.on("error", end);
    });
    server.once("error", reject);
    server.listen(listenPath, () => {
      chownSync(listenPath, uid, uid);
      resolve(server);
    });
  });
}

async function until<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("live: a running VM's state migrates into B's incoming QEMU; commitIncoming resumes it there (counter in RAM intact), releaseOutgoing quits A's QEMU and leaves no row or file", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const vms = a.daemon.deps.vms;
  const view = await vms.create(a.ctx, { name: "livevm", memoryMiB: 128 });
  await vms.start(a.ctx, "livevm", { wait: true });
  const exec = (h: Host, ...argv: string[]) => h.daemon.deps.vms.withAgent(h.ctx, "livevm", { action: "vm.exec", permission: "vm.exec" }, async (ag) => Buffer.from((await ag.exec(argv)).stdout, "base64").toString().trim());
  assert.equal(await exec(a, "counter", "set", "41"), "41");
  const { vm, disks } = await importDossier(b.deps, await exportDossier(a.deps, a.ctx, "livevm"), b.ctx);
  assert.equal(vm.state, "incoming");
  await prepareIncomingDisks(b.deps, vm.id, disks);
  const incoming = await b.daemon.deps.vms.startIncoming(b.ctx, vm.id);
  const bRun = join(b.deps.vmsDir, vm.id, "run");
  const aRun = join(a.deps.vmsDir, vm.id, "run");
  const bq = b.daemon.deps.vms.runtimeOf(incoming).qmp;
  await bq.execute("migrate-incoming", { uri: `unix:${join(bRun, "mig.sock")}` });
  const aUid = (await a.deps.db.selectFrom("jail_uids").select("uid").where("vm_id", "=", vm.id).executeTakeFirstOrThrow()).uid;
  const server = await relay(join(aRun, "mig.sock"), join(bRun, "mig.sock"), aUid);
  t.after(() => server.close());
  const aq = vms.runtimeOf(await a.daemon.repo.getById(vm.id)).qmp;
  await aq.execute("migrate", { uri: `unix:${join(aRun, "mig.sock")}` });
  await until("A's migration to complete", () => aq.execute<{ status?: string }>("query-migrate"), (m) => m.status === "completed" || m.status === "failed");
  assert.equal((await aq.execute<{ status: string }>("query-migrate")).status, "completed");
  await until("B to have received", () => b.daemon.deps.vms.runtimeOf(incoming).status(), (s) => s !== "inmigrate");

  const running = await b.daemon.deps.vms.commitIncoming(vm.id, b.ctx, { downtimeMs: 0 });
  assert.equal(running.state, "running");
  assert.equal(await b.daemon.deps.vms.runtimeOf(running).status(), "running");
  assert.equal(await exec(b, "counter", "get"), "41", "the guest's RAM arrived: its counter goes on on B");
  // A late abort (a manager retrying after the switchover) cannot take the committed VM down.
  await assert.rejects(b.daemon.deps.vms.abortIncoming(vm.id, b.ctx, "late"), { code: "VIGIL_INVALID_STATE" });
  assert.equal((await b.daemon.repo.getById(vm.id)).state, "running");
  const into = await b.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migrated-in").execute();
  assert.deepEqual(into.map((x) => [x.actor, JSON.parse(x.details).how]), [["ada", "live"]]);
  const whereB = await b.deps.db.selectFrom("vm_locations").select(["path", "until"]).where("vm_id", "=", vm.id).orderBy("id").execute();
  assert.deepEqual(whereB.at(-1), { path: join(b.deps.vmsDir, vm.id), until: null });

  const aPid = (await a.daemon.repo.getById(vm.id)).pid!;
  await vms.releaseOutgoing(vm.id, b.deps.hostName, a.ctx);
  assert.equal(processAlive(aPid), false, "A's QEMU quit");
  await assert.rejects(a.daemon.repo.getById(view.id), { code: "VIGIL_VM_NOT_FOUND" });
  assert.equal(existsSync(join(a.deps.vmsDir, vm.id)), false);
  const out = await a.deps.db.selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "vm.migrated-out").execute();
  assert.deepEqual(out.map((x) => [x.actor, JSON.parse(x.details).to, JSON.parse(x.details).state]), [["ada", b.deps.hostName, "running"]]);
  // The VM keeps running on B after A let go.
  assert.equal(await exec(b, "counter", "incr"), "42");
});
