import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { errors } from "../errors.ts";
import { openSqlite } from "../inventory/db.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import { parsePcap, summarize } from "./pcap.ts";
import { VisFixture, echoServer, inVm } from "./vis-fixture.ts";
import { VisService, type VisVm } from "./vis-service.ts";

const actor = (name: string, roles: Array<"admin" | "operator" | "auditor">): RequestContext => ({ actor: { userId: name, name, roles, introspect: false, groups: [], via: "unix" }, requestId: `r-${name}` });
const admin = actor("root", ["admin"]);
const operator = actor("op", ["operator"]);

async function setUp(t: TestContext, vmCount: number) {
  const dir = mkdtempSync(join(tmpdir(), "vt-vis-svc-"));
  const f = await VisFixture.create(vmCount);
  const db = await openSqlite(join(dir, "vigil.db"));
  const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), "h", join(dir, "keys", "head.json"));
  const vmsDir = join(dir, "vms");
  const runDir = join(dir, "run");
  mkdirSync(runDir, { mode: 0o700 });
  const vms = new Map<string, VisVm>(f.vms.map((v) => [v.name, { id: v.nic.vmId, name: v.name, owner: "user:root" }]));
  const svc = new VisService({
    switch: f,
    guard: new Guard(audit),
    audit,
    registry: new DataRegistry(db, "h", vmsDir),
    db,
    captureDir: (id) => join(vmsDir, id, "captures"),
    runDir,
    lookupVm: async (_ctx, name) => vms.get(name) ?? Promise.reject(errors.vmNotFound(name)),
    vmById: async (id) => [...vms.values()].find((v) => v.id === id),
  });
  t.after(async () => {
    await svc.close();
    await f.close();
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return { f, db, audit, svc, dir };
}

test("counters, mirror and forwards through the service: permissions, audit records, registry, persistence", async (t) => {
  const { f, db, audit, svc } = await setUp(t, 2);
  const [a, b] = [f.vm("vm0"), f.vm("vm1")];
  const server = await echoServer(b, 5007);
  t.after(() => server.kill("SIGKILL"));

  const c = await svc.counters(operator, "vm0");
  assert.deepEqual(c.map((x) => [x.nic, x.tap]), [["net0", a.nic.tap]]);
  await assert.rejects(svc.counters(admin, "nope"), /does not exist/);

  // A mirror needs network.manage: the operator (network.read only) is refused and that is audited.
  await assert.rejects(svc.mirror(operator, "vm0", { durationMs: 1000 }), /needs network.manage/);
  assert.equal((await audit.list({ tail: true, limit: 1 }))[0]?.result, "denied");
  const mirror = svc.mirror(admin, "vm0", { durationMs: 2500 });
  await new Promise((r) => setTimeout(r, 800));
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5007"], `svc-marker-${f.id}\n`);
  const cap = await mirror;
  assert.ok(cap.packets > 0 && cap.bytes > 24);
  const path = await svc.captureFile(admin, cap.id);
  assert.equal(statSync(path).mode & 0o777, 0o600);
  const pcap = parsePcap(readFileSync(path));
  assert.ok(pcap.packets.some((p) => Buffer.from(summarize(p.data)?.payload ?? []).toString().includes(`svc-marker-${f.id}`)));
  await assert.rejects(svc.captureFile(operator, cap.id), /needs network.manage/);
  assert.deepEqual((await svc.captures(operator)).map((x) => [x.id, x.vm, x.packets]), [[cap.id, "vm0", cap.packets]]);
  const registered = await db.selectFrom("data_files").select(["path", "purpose", "vm_id"]).execute();
  assert.deepEqual(registered, [{ path, purpose: "capture", vm_id: a.nic.vmId }]);
  const records = await audit.list({ tail: true, limit: 20 });
  const stop = records.find((r) => r.action === "net.mirror.stop");
  assert.ok(records.some((r) => r.action === "net.mirror.start" && r.result === "ok"));
  assert.deepEqual([stop?.details?.bytes, stop?.details?.packets], [cap.bytes, cap.packets]);

  // The IDS variant: network.manage, refused into a vigil tap, audited start/stop with the target.
  await f.ip(f.sw, "link", "add", "ids0", "type", "veth", "peer", "name", "ids1");
  await assert.rejects(svc.mirrorIds(operator, "vm0", { durationMs: 200, toIds: "ids0" }), /needs network.manage/);
  await assert.rejects(svc.mirrorIds(admin, "vm0", { durationMs: 200, toIds: b.nic.tap }), /vigil tap or bridge/);
  const ids = await svc.mirrorIds(admin, "vm0", { durationMs: 200, toIds: "ids0" });
  assert.deepEqual([ids.nic, ids.target, ids.tap], ["net0", "ids0", a.nic.tap]);
  const idsStops = (await audit.list({ tail: true, limit: 5 })).filter((r) => r.action === "net.mirror.stop").map((r) => [r.result, r.details?.toIds]);
  assert.deepEqual(idsStops.slice(-2), [["error", b.nic.tap], ["ok", "ids0"]]);

  // Forwards: loopback only (field named), network.manage, persisted, re-opened by a new service instance.
  await assert.rejects(svc.addForward(admin, "vm1", { guestPort: 5007, listen: "0.0.0.0:9999" }), (e: { field?: string }) => e.field === "listen");
  await assert.rejects(svc.addForward(operator, "vm1", { guestPort: 5007, listen: "127.0.0.1:0" }), (e: { field?: string }) => e.field === "listen");
  const port = 20_000 + (parseInt(f.id.slice(0, 4), 16) % 20_000);
  await assert.rejects(svc.addForward(operator, "vm1", { guestPort: 5007, listen: `127.0.0.1:${port}` }), /needs network.manage/);
  const fw = await svc.addForward(admin, "vm1", { guestPort: 5007, listen: `127.0.0.1:${port}` });
  assert.equal(fw.guestIp, b.nic.ip);
  const echo = (text: string) =>
    new Promise<string>((resolve, reject) => {
      const s = connect(port, "127.0.0.1");
      let got = "";
      s.on("data", (d) => ((got += d.toString()), got.length >= text.length && (s.end(), resolve(got))));
      s.on("error", reject);
      s.write(text);
    });
  assert.equal(await echo("through-forward\n"), "through-forward\n");
  assert.deepEqual((await svc.listForwards(operator)).map((x) => [x.id, x.vm, x.listen, x.open]), [[fw.id, "vm1", `127.0.0.1:${port}`, true]]);
  await assert.rejects(svc.addForward(admin, "vm0", { guestPort: 5007, listen: `127.0.0.1:${port}` }), /is used by forward/);
  // "Daemon restart": the live forward closes, the row stays; restoreForwards opens it again.
  await svc.forwards.closeAll();
  await assert.rejects(echo("x\n"), /ECONNREFUSED/);
  assert.deepEqual(await svc.restoreForwards(), { opened: [fw.id], failed: [] });
  assert.equal(await echo("after-restart\n"), "after-restart\n");
  await svc.removeForward(admin, fw.id);
  await assert.rejects(echo("x\n"), /ECONNREFUSED/);
  assert.deepEqual(await svc.listForwards(admin), []);
  await assert.rejects(svc.removeForward(admin, fw.id), /does not exist/);
  const acts = (await audit.list({ tail: true, limit: 50 })).map((r) => `${r.action}:${r.result}`);
  for (const want of ["net.forward.add:ok", "net.forward.add:denied", "net.forward.remove:ok", "net.forward.remove:error"]) assert.ok(acts.includes(want), want);

  // A VM's deletion (its vm.destroy record) removes its forwards and its capture rows; other records do not.
  const unfollow = svc.followVmRemovals();
  t.after(unfollow);
  await svc.addForward(admin, "vm1", { guestPort: 5007, listen: `127.0.0.1:${port}` });
  await svc.addForward(admin, "vm0", { guestPort: 5007, listen: `127.0.0.1:${port + 1}` });
  const destroyed = (id: string, result: "ok" | "error") => audit.append({ actor: "root", action: "vm.destroy", target: { kind: "vm", id, name: "x" }, result, requestId: "r" });
  await destroyed(b.nic.vmId, "error");
  await svc.settled();
  assert.equal(svc.forwards.list().length, 2, "a failed destroy removes nothing");
  await destroyed(b.nic.vmId, "ok");
  await svc.settled();
  assert.deepEqual(svc.forwards.list().map((x) => x.vmName), ["vm0"]);
  assert.deepEqual((await svc.listForwards(admin)).map((x) => x.vm), ["vm0"]);
  await destroyed(a.nic.vmId, "ok");
  await svc.settled();
  assert.deepEqual(await svc.listForwards(admin), []);
  assert.deepEqual(await db.selectFrom("net_captures").selectAll().execute(), [], "vm0's capture rows went with it");
  // A VM that left for another host (vm.migrated-out) takes no forward along: its host-loopback ports close here.
  await svc.addForward(admin, "vm0", { guestPort: 5007, listen: `127.0.0.1:${port + 1}` });
  await audit.append({ actor: "root", action: "vm.migrated-out", target: { kind: "vm", id: a.nic.vmId, name: "vm0" }, result: "ok", requestId: "r" });
  await svc.settled();
  assert.deepEqual(await svc.listForwards(admin), []);
  assert.deepEqual(svc.forwards.list(), []);
});
