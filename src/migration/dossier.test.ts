/**
 * The dossier between two in-process daemons (two homes, two image caches, no QEMU): what makes a VM *this* VM
 * arrives whole on the target in state `incoming` with the same uuid; every refusal names its field and leaves
 * the target exactly as it was; hostile dossiers are refused by the schema.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { fakeTiny } from "../image/testing/fake-tiny.ts";
import { silentLogger } from "../log.ts";
import type { RequestContext } from "../auth/guard.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import { FirewallRepository } from "../network/firewall/firewall-repository.ts";
import { MonotonicStore } from "../vtime/store.ts";
import { LocationHistory } from "../provenance/locations.ts";
import { PostureRepository } from "../posture/posture-repository.ts";
import { applyStore, exportDossier, exportStore, importDossier, dossierSchema, type Dossier, type DossierDeps } from "./dossier.ts";
import { prepareIncomingDisks } from "./disks.ts";
import { moveStopped } from "./cold.ts";
import { imageInfo } from "../qemu/qemu-img.ts";

/** A fake `tiny` image in `cache`: a kernel and initrd (bytes only: nothing boots here) and a 64 MiB base disk. */
interface Host {
  home: string;
  cache: string;
  daemon: Daemon;
  deps: DossierDeps;
  ctx: RequestContext;
  /** A context for `name` (created with `roles` on first use). */
  as(name: string, roles: Array<"admin" | "owner" | "operator">, introspect?: boolean): Promise<RequestContext>;
}

async function host(t: TestContext, name: string, tiny: "same" | "none" = "same"): Promise<Host> {
  const home = mkdtempSync(join(tmpdir(), `vigil-dossier-${name}-`));
  const cache = join(home, "cache");
  if (tiny === "same") fakeTiny(cache);
  const daemon = await startDaemon({ home, cache, listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const db = daemon.repo.db;
  const d = daemon.deps;
  const deps: DossierDeps = { vms: d.vms, db, guard: d.guard, audit: d.audit, catalog: d.catalog, hostName: d.host.name, vmsDir: join(home, "vms"), registry: new DataRegistry(db, d.host.name, join(home, "vms")), log: d.log, watches: d.introspection };
  const as = async (user: string, roles: Array<"admin" | "owner" | "operator">, introspect = false): Promise<RequestContext> => {
    if (!(await d.users.findByName(user))) await d.users.create({ name: user, roles, introspect }, "test");
    return { actor: await d.users.actorFor((await d.users.findByName(user))!, "token"), requestId: randomUUID() };
  };
  const h: Host = { home, cache, daemon, deps, ctx: await as("ada", ["admin"], true), as };
  // The same network on both hosts (rows only: nothing is plugged in these tests).
  await db.insertInto("networks").values({ id: randomUUID(), name: "lan", cidr: "10.77.0.0/24", gateway: "10.77.0.1", bridge: "vb-lan", dhcp: 0, nat: 0, created_at: new Date().toISOString() }).execute();
  return h;
}

/** What a refusal must leave untouched: every row of every table, and the VMs' directory. */
async function snapshotOf(h: Host): Promise<string> {
  const tables = ["vms", "generations", "fw_policies", "quarantine", "vtime_counters", "vtime_records", "vm_locations", "kv", "nic_addresses", "jail_uids", "data_files"] as const;
  const out: Record<string, unknown> = {};
  for (const t of tables) out[t] = await h.deps.db.selectFrom(t).selectAll().execute();
  out.dir = existsSync(h.deps.vmsDir) ? readdirSync(h.deps.vmsDir).sort() : [];
  return JSON.stringify(out);
}

/** A stopped VM on `a` with a history: policy versions, quarantine, store, watch, locations, an address. */
async function richVm(a: Host, name = "mover"): Promise<string> {
  const bob = await a.as("bob", ["owner"]);
  const view = await a.daemon.deps.vms.create(bob, { name, disks: [{ name: "data", sizeMiB: 16 }], labels: { team: "blue" }, nics: [{ network: "lan" }], purpose: "moving test" });
  const db = a.deps.db;
  const fw = new FirewallRepository(db);
  await fw.append(view.id, 1, { rules: [{ direction: "in", action: "accept", proto: "tcp", ports: "22" }], defaults: { in: "drop", out: "accept" } }, "bob");
  await fw.append(view.id, 2, { rules: [], defaults: { in: "drop", out: "drop" } }, "ada");
  await fw.quarantine({ vmId: view.id, since: new Date().toISOString(), reason: "stale patches", actor: "ada" });
  const vm = await a.daemon.repo.getById(view.id);
  const store = new MonotonicStore(db);
  await store.incr(vm.vtimeNs, "boots", 7, "r1");
  await store.append(vm.vtimeNs, "log", "first entry", "r2");
  await a.daemon.deps.introspection.setWatch(a.ctx, name, { intervalMs: 2000, policy: "alert" });
  await new LocationHistory(db).moveTo(view.id, "earlier-host", "/srv/old");
  await new LocationHistory(db).moveTo(view.id, a.deps.hostName, join(a.deps.vmsDir, view.id));
  const net = await db.selectFrom("networks").select("id").where("name", "=", "lan").executeTakeFirstOrThrow();
  await db.insertInto("nic_addresses").values({ vm_id: view.id, nic: "net0", network_id: net.id, ip: "10.77.0.42", mac: vm.spec.nics[0]!.mac }).execute();
  // Its posture: a scan that found malware, a gate policy of its own.
  const posture = new PostureRepository(db);
  await posture.recordScan(view.id, { scannedAt: new Date().toISOString(), how: "offline", advisoriesSha256: "a".repeat(64), rulesSha256: "b".repeat(64), complete: true, os: { id: "debian", versionId: "12" }, packages: [{ name: "bash", version: "5.2.15-2", arch: "amd64" }], pending: [], findings: [{ path: "/usr/bin/evil", rule: "eicar", pattern: "$a", offset: 0, excerptHex: "58354f" }], notes: [], elapsedMs: 12 });
  await posture.setPolicy(`vm:${name}`, { gate: true, maxScanAgeDays: 7, vulnerableAt: "high" }, "ada");
  return view.id;
}

test("export on A, import on B: the same VM (uuid, owner, labels, lineage, generation, policy, quarantine, store, watch, locations, address), incoming, its own jail uid", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const id = await richVm(a);
  const dossier = await exportDossier(a.deps, a.ctx, "mover");
  // It survives the wire as JSON and passes the schema again.
  const wire = JSON.parse(JSON.stringify(dossier)) as unknown;
  const { vm, disks } = await importDossier(b.deps, wire, b.ctx);
  const src = await a.daemon.repo.getById(id);
  assert.equal(vm.id, id);
  assert.equal(vm.state, "incoming");
  for (const k of ["name", "owner", "vmgenid", "generation", "purpose", "vtimeNs", "createdBy", "createdAt"] as const) assert.equal(vm[k], src[k], k);
  assert.deepEqual(vm.labels, { team: "blue" });
  assert.deepEqual(vm.lineage, src.lineage);
  assert.deepEqual(vm.securityFloor, src.securityFloor);
  // B's own image paths (same digests), and B's copy of the root disk will be an overlay over B's base.
  assert.equal(vm.spec.boot.kind === "kernel" && vm.spec.boot.kernel, join(b.cache, "images", "tiny", "k1", "vmlinuz"));
  assert.deepEqual(disks.map((d) => [d.name, d.base]), [["root", join(b.cache, "images", "tiny", "k1", "disk.qcow2")], ["data", undefined]]);
  const rows = async (h: Host, table: "generations" | "fw_policies", cols: string[]) => (await h.deps.db.selectFrom(table).selectAll().where("vm_id", "=", id).execute()).map((r) => Object.fromEntries(cols.map((c) => [c, (r as Record<string, unknown>)[c]])));
  assert.deepEqual(await rows(b, "generations", ["generation", "vmgenid", "reason", "created_at"]), await rows(a, "generations", ["generation", "vmgenid", "reason", "created_at"]));
  assert.deepEqual(await new FirewallRepository(b.deps.db).history(id), await new FirewallRepository(a.deps.db).history(id));
  assert.deepEqual([...(await new FirewallRepository(b.deps.db).quarantined()).values()], [...(await new FirewallRepository(a.deps.db).quarantined()).values()]);
  assert.deepEqual(await new MonotonicStore(b.deps.db).dump(vm.vtimeNs), await new MonotonicStore(a.deps.db).dump(vm.vtimeNs));
  assert.equal(await new MonotonicStore(b.deps.db).read(vm.vtimeNs, "boots"), 7);
  assert.deepEqual(await new LocationHistory(b.deps.db).list(id), await new LocationHistory(a.deps.db).list(id));
  // Its posture came along: the same last scan and the same state on B as on A, under its own policy.
  const shownA = await a.daemon.deps.posture.show(a.ctx, "mover");
  const shownB = await b.daemon.deps.posture.show(b.ctx, "mover");
  assert.equal(shownA.state, "infected");
  assert.deepEqual([shownB.state, shownB.reasons, shownB.policy, shownB.lastScan], [shownA.state, shownA.reasons, shownA.policy, shownA.lastScan]);
  assert.equal(shownB.policy.scope, "vm:mover");
  const addr = await b.deps.db.selectFrom("nic_addresses").select(["nic", "ip"]).where("vm_id", "=", id).execute();
  assert.deepEqual(addr, [{ nic: "net0", ip: "10.77.0.42" }], "the NIC keeps its address on B's segment");
  // B's IDS knows the watch at once (armed: the VM is not running here yet).
  const watches = await b.daemon.deps.introspection.listWatches(b.ctx);
  assert.deepEqual(watches.watches.map((w) => [w.vm, w.intervalMs, w.policy]), [["mover", 2000, "alert"]]);
  // B's own jail uid (B's counter), recorded; the audit logs say who did what.
  const uidB = await b.deps.db.selectFrom("jail_uids").select("uid").where("vm_id", "=", id).executeTakeFirst();
  assert.ok(uidB, "B allocated a jail uid for the VM");
  const audited = async (h: Host, action: string) => (await h.deps.db.selectFrom("audit_log").select(["actor", "result"]).where("action", "=", action).where("target_id", "=", id).execute());
  assert.deepEqual(await audited(a, "vm.dossier"), [{ actor: "ada", result: "ok" }]);
  assert.deepEqual(await audited(b, "vm.incoming"), [{ actor: "ada", result: "ok" }]);

  // Its disks: root an overlay over B's base ("top"), data an empty image of the same virtual size ("full").
  const prepared = await prepareIncomingDisks(b.deps, id, disks);
  assert.deepEqual(prepared.map((d) => [d.node, d.exportName, d.sync]), [["root", "root", "top"], ["data", "data", "full"]]);
  for (const d of prepared) {
    const info = await imageInfo(d.path, { format: "qcow2" });
    assert.equal(info["virtual-size"], dossier.disks.find((x) => x.name === d.node)!.virtualSize, d.node);
    assert.equal(info["full-backing-filename"], d.sync === "top" ? join(b.cache, "images", "tiny", "k1", "disk.qcow2") : undefined);
  }
  assert.deepEqual((await b.deps.registry.list(id)).map((f) => f.purpose), ["disk", "disk"]);

  // Abort: nothing of the VM stays on B (row, identity rows, files); the abort is on B's record.
  await b.daemon.deps.vms.abortIncoming(id, b.ctx, "test");
  assert.equal(existsSync(join(b.deps.vmsDir, id)), false);
  assert.equal((await b.deps.db.selectFrom("vms").select("id").execute()).length, 0);
  for (const table of ["generations", "vm_locations", "fw_policies", "nic_addresses"] as const) assert.equal((await b.deps.db.selectFrom(table).selectAll().where("vm_id", "=", id).execute()).length, 0, table);
  assert.deepEqual((await new MonotonicStore(b.deps.db).dump(vm.vtimeNs)).counters, []);
  assert.equal((await b.deps.db.selectFrom("kv").selectAll().where("key", "like", `%${id}%`).execute()).length, 0);
  assert.equal((await b.deps.db.selectFrom("vm_postures").selectAll().where("vm_id", "=", id).execute()).length, 0, "no posture left");
  assert.equal((await b.deps.db.selectFrom("posture_policies").selectAll().where("scope", "=", "vm:mover").execute()).length, 0, "no policy left");
  assert.deepEqual(await audited(b, "vm.migration-aborted"), [{ actor: "ada", result: "ok" }]);
  // …so the same dossier can be received again.
  await importDossier(b.deps, wire, b.ctx);
});

test("refusals name their field and leave the target unchanged", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  await richVm(a);
  const good = await exportDossier(a.deps, a.ctx, "mover");
  const refused = async (dossier: unknown, code: string, field: string | RegExp, message?: RegExp) => {
    const before = await snapshotOf(b);
    await assert.rejects(importDossier(b.deps, dossier, b.ctx), (err: Error & { code?: string; field?: string }) => {
      assert.equal(err.code, code, err.message);
      if (typeof field === "string") assert.equal(err.field, field, err.message);
      else assert.match(err.field ?? "", field, err.message);
      if (message) assert.match(err.message, message);
      return true;
    });
    assert.equal(await snapshotOf(b), before, `B is unchanged after the refusal on ${String(field)}`);
  };
  const variant = (change: (d: Dossier) => void): Dossier => {
    const d = structuredClone(good);
    change(d);
    return d;
  };
  // A uuid or a name that exists on B.
  const other = await b.daemon.deps.vms.create(b.ctx, { name: "mover", nics: [] });
  await refused(good, "VIGIL_CONFLICT", "vm.name", /a VM with that name exists on this host/);
  await refused(variant((d) => (d.vm.id = other.id)), "VIGIL_CONFLICT", "vm.id", /its uuid/);
  await b.daemon.deps.vms.destroy(b.ctx, "mover");
  // A network B lacks, or has with another range.
  await b.deps.db.deleteFrom("networks").execute();
  await refused(good, "VIGIL_CONFLICT", "vm.spec.nics.0.network", /network "lan", which this host does not have/);
  await b.deps.db.insertInto("networks").values({ id: randomUUID(), name: "lan", cidr: "10.78.0.0/24", gateway: "10.78.0.1", bridge: "vb-lan", dhcp: 0, nat: 0, created_at: new Date().toISOString() }).execute();
  await refused(good, "VIGIL_CONFLICT", "vm.spec.nics.0.network", /10\.78\.0\.0\/24 here and 10\.77\.0\.0\/24 on the source/);
  await b.deps.db.updateTable("networks").set({ cidr: "10.77.0.0/24", gateway: "10.77.0.1" }).execute();
  // The kernel image differs (digest) or the base disk of the same-named image differs.
  const tinyB = join(b.cache, "images", "tiny", "k1");
  writeFileSync(join(tinyB, "vmlinuz"), "kernel-2");
  await refused(good, "VIGIL_CONFLICT", "vm.spec.boot", /another kernel or initrd/);
  writeFileSync(join(tinyB, "vmlinuz"), "kernel-1");
  cpSync(join(tinyB, "disk.qcow2"), join(tinyB, "disk.orig"));
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(tinyB, "disk.qcow2"), "32M"]);
  await refused(good, "VIGIL_CONFLICT", "vm.spec.disks.0.backing", /another digest/);
  cpSync(join(tinyB, "disk.orig"), join(tinyB, "disk.qcow2"));
  // The monotonic store's namespace exists on B.
  await new MonotonicStore(b.deps.db).incr(good.vm.vtimeNs, "x", 1, "r");
  await refused(good, "VIGIL_CONFLICT", "vm.vtimeNs", /namespace/);
  await b.deps.db.deleteFrom("vtime_counters").execute();
  // The address is taken on B's segment.
  const squatter = await b.daemon.deps.vms.create(b.ctx, { name: "squatter", nics: [] });
  const net = await b.deps.db.selectFrom("networks").select("id").executeTakeFirstOrThrow();
  await b.deps.db.insertInto("nic_addresses").values({ vm_id: squatter.id, nic: "net0", network_id: net.id, ip: "10.77.0.42", mac: "52:54:00:00:00:01" }).execute();
  await refused(good, "VIGIL_CONFLICT", "nics.0.ip", /10\.77\.0\.42 .* is taken here/);
  await b.daemon.deps.vms.destroy(b.ctx, "squatter");
  // Hostile shapes: unknown fields, oversized lists, a spec path QEMU would parse, a wrong version, inconsistency.
  await refused({ ...good, extra: 1 }, "VIGIL_BAD_REQUEST", "extra");
  await refused(variant((d) => (d.version = 2 as never)), "VIGIL_BAD_REQUEST", "version");
  await refused(variant((d) => (d.generations = Array.from({ length: 10_001 }, () => d.generations[0]!))), "VIGIL_BAD_REQUEST", "generations");
  await refused(variant((d) => d.vm.spec.boot.kind === "kernel" && (d.vm.spec.boot.kernel = "/x,file=/etc/shadow")), "VIGIL_BAD_REQUEST", "vm.spec.boot.kernel");
  await refused(variant((d) => (d.vtime.records = [{ stream: "s", seq: 1, data: "x".repeat(2000), rid: null, time: d.source.exportedAt }])), "VIGIL_BAD_REQUEST", "vtime.records.0.data");
  await refused(variant((d) => (d.firewall.versions[0]!.policy = { inbound: "maybe" } as never)), "VIGIL_BAD_REQUEST", /^firewall\.versions\.0\.policy/);
  await refused(variant((d) => (d.vm.name = "someone-else")), "VIGIL_BAD_REQUEST", "vm.spec.name");
  await refused(variant((d) => (d.generations = [])), "VIGIL_BAD_REQUEST", "generations");
  await refused(variant((d) => (d.vm.owner = "root")), "VIGIL_BAD_REQUEST", "vm.owner");
  // Someone without vm.migrate (the VM's own owner) may not receive it, nor export it on A.
  const bob = await b.as("bob", ["owner"]);
  const before = await snapshotOf(b);
  await assert.rejects(importDossier(b.deps, good, bob), { code: "VIGIL_FORBIDDEN" });
  assert.equal(await snapshotOf(b), before, "nothing but the refusal's audit record");
  await assert.rejects(exportDossier(a.deps, await a.as("bob", ["owner"]), "mover"), { code: "VIGIL_FORBIDDEN" });
  // After all that, the good dossier is received.
  assert.equal((await importDossier(b.deps, good, b.ctx)).vm.state, "incoming");
  assert.ok(dossierSchema.safeParse(good).success);
});

test("export refuses what cannot move: snapshots, a template, a store shared by vtime link", async (t) => {
  const a = await host(t, "a");
  const id = await richVm(a);
  await a.deps.db.insertInto("snapshots").values({ id: randomUUID(), vm_id: id, name: "before", parent_id: null, description: "", kind: "disk", spec: "{}", generation: 1, vmgenid: randomUUID(), vm_state_size: 0, state_sha256: null, disk_bytes: 0, floor: "{}", guest_facts: "{}", single_use: 0, resumed_count: 0, created_by: "ada", created_at: new Date().toISOString() }).execute();
  await assert.rejects(exportDossier(a.deps, a.ctx, "mover"), { code: "VIGIL_CONFLICT", field: "snapshots", message: /they live inside its qcow2 disks and a block mirror does not carry them/ });
  await a.deps.db.deleteFrom("snapshots").execute();
  await a.daemon.repo.update(id, { isTemplate: true });
  await assert.rejects(exportDossier(a.deps, a.ctx, "mover"), { code: "VIGIL_CONFLICT", field: "isTemplate" });
  await a.daemon.repo.update(id, { isTemplate: false });
  const other = await a.daemon.deps.vms.create(a.ctx, { name: "linked", nics: [] });
  await a.daemon.repo.update(other.id, { vtimeNs: (await a.daemon.repo.getById(id)).vtimeNs });
  await assert.rejects(exportDossier(a.deps, a.ctx, "mover"), { code: "VIGIL_CONFLICT", field: "vtimeNs", message: /shared with VM "linked"/ });
  const audits = await a.deps.db.selectFrom("audit_log").select("result").where("action", "=", "vm.dossier").execute();
  assert.deepEqual(audits.map((r) => r.result), ["error", "error", "error"], "each refusal is on the record");
});

test("a cold move that fails half-way leaves the VM where it was: the target's incoming copy is aborted, the source untouched", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const id = await richVm(a);
  const before = await snapshotOf(a);
  const beforeB = await snapshotOf(b);
  // Something in the way of the second disk on B: its copy fails after the first disk was copied in.
  mkdirSync(join(b.deps.vmsDir, id, "disks"), { recursive: true });
  writeFileSync(join(b.deps.vmsDir, id, "disks", "data.qcow2"), "in the way");
  await assert.rejects(moveStopped(a.deps, b.deps, a.ctx, "mover"), { code: "VIGIL_CONFLICT", message: /disk "data" of VM "mover": it exists already/ });
  assert.equal((await a.daemon.repo.getById(id)).state, "stopped");
  assert.equal(JSON.stringify(JSON.parse(await snapshotOf(a)).vms), JSON.stringify(JSON.parse(before).vms), "A's row is as it was");
  assert.ok(existsSync(join(a.deps.vmsDir, id, "disks", "root.qcow2")) && existsSync(join(a.deps.vmsDir, id, "disks", "data.qcow2")));
  assert.equal(existsSync(join(b.deps.vmsDir, id)), false, "B erased what it had made (and what was in the way)");
  const after = JSON.parse(await snapshotOf(b)) as Record<string, unknown[]>;
  const was = JSON.parse(beforeB) as Record<string, unknown[]>;
  for (const table of ["vms", "generations", "fw_policies", "quarantine", "vtime_counters", "vtime_records", "vm_locations", "kv", "nic_addresses"]) assert.deepEqual(after[table], was[table], table);
  const aborted = await b.deps.db.selectFrom("audit_log").select(["result", "details"]).where("action", "=", "vm.migration-aborted").execute();
  assert.equal(aborted.length, 1);
  assert.match(JSON.parse(aborted[0]!.details).reason, /cold move failed/);
  assert.equal((await a.deps.db.selectFrom("audit_log").select("id").where("action", "=", "vm.migrated-out").execute()).length, 0);
});

test("switchover store sync: what the guest wrote on A during the copy reaches B; going back is refused and changes nothing", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const id = await richVm(a);
  const { vm } = await importDossier(b.deps, await exportDossier(a.deps, a.ctx, "mover"), b.ctx);
  const stale = await exportStore(a.deps, id);
  // The guest still runs on A while its RAM is copied: its store moves on there.
  const storeA = new MonotonicStore(a.deps.db);
  await storeA.incr(vm.vtimeNs, "boots", 1, "r3");
  await storeA.append(vm.vtimeNs, "log", "during the copy", "r4");
  await applyStore(b.deps, id, await exportStore(a.deps, id));
  assert.deepEqual(await new MonotonicStore(b.deps.db).dump(vm.vtimeNs), await storeA.dump(vm.vtimeNs));
  assert.equal(await new MonotonicStore(b.deps.db).read(vm.vtimeNs, "boots"), 8);
  // A retry of r3 on B (its answer was lost in the switchover) is not applied twice: the request ids came along.
  assert.equal(await new MonotonicStore(b.deps.db).incr(vm.vtimeNs, "boots", 1, "r3"), 8);
  const before = await snapshotOf(b);
  await assert.rejects(applyStore(b.deps, id, stale), { code: "VIGIL_CONFLICT", field: "counters.boots", message: /would go back from 8 to 7/ });
  assert.equal(await snapshotOf(b), before);
  await assert.rejects(applyStore(b.deps, id, { ...stale, extra: 1 }), { code: "VIGIL_BAD_REQUEST", field: "extra" });
});
