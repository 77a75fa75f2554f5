/**
 * Purge destroys only what vigil made (review finding 1, repros F1, F1b, F1c): a client-chosen export path is
 * never erased, neither is a file swapped in place of a registered one.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import { diskFile } from "../vm/vm-view.ts";

async function fixture(t: TestContext) {
  const home = mkdtempSync(join(tmpdir(), "vigil-purge-"));
  const start = () => startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  let daemon = await start();
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  await daemon.deps.users.create({ name: "bob", roles: ["owner"], introspect: false }, "test");
  const tok = (await daemon.deps.users.issueToken("bob", "t")).token;
  // A stopped VM owned by bob with one blank qcow2 disk (as in the review's appendix).
  const addVm = async (name: string, owner = "user:bob") => {
    const spec = resolveSpec(createVmRequestSchema.parse({ name, disks: [{ name: "data", sizeMiB: 16 }] }), { name: "blank", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
    const id = crypto.randomUUID();
    await daemon.repo.insert({ id, name, spec, state: "stopped", host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: "bob", createdAt: new Date().toISOString() });
    mkdirSync(join(home, "vms", id, "disks"), { recursive: true });
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(home, "vms", id, "disks", "data.qcow2"), "16M"]);
    return id;
  };
  const mineId = await addVm("mine");
  const call = (method: string, path: string, headers: Record<string, string> = {}, body: unknown = {}) =>
    daemon.app.request(path, { method, headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", ...headers }, ...(body === null ? {} : { body: JSON.stringify(body) }) }, { transport: "tcp" });
  const exportThenPurge = async (output: string) => {
    const res = await call("POST", "/v1/vms/mine/export", { "x-vigil-output": output });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const purge = await call("POST", "/v1/vms/mine/purge");
    assert.equal(purge.status, 200);
    return (await purge.json()) as { destroyed: Array<{ path: string }>; unreachable: Array<{ path: string; why: string }> };
  };
  const restart = async () => {
    await daemon.close();
    daemon = await start();
    return daemon;
  };
  return { home, mineId, call, addVm, exportThenPurge, restart, daemon: () => daemon };
}

test("F1: an export's x-vigil-output naming a file outside VIGIL_HOME is never purged", async (t) => {
  const f = await fixture(t);
  const outside = mkdtempSync(join(tmpdir(), "vigil-victim-"));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  const victim = join(outside, "victim.txt");
  writeFileSync(victim, "not vigil's");
  const r = await f.exportThenPurge(victim);
  assert.equal(readFileSync(victim, "utf8"), "not vigil's");
  assert.ok(!r.destroyed.some((d) => d.path.includes(victim)));
  const reported = r.unreachable.find((u) => u.path.includes(victim));
  assert.match(reported?.why ?? "", /reported by a client/);
  assert.equal(existsSync(join(f.home, "vms", f.mineId)), false, "the VM's own directory is erased");
});

test("F1b: x-vigil-output = the site key: the key survives and the audit log still verifies after a restart", async (t) => {
  const f = await fixture(t);
  const key = join(f.home, "keys", "site-ed25519.pem");
  const before = readFileSync(key, "utf8");
  await f.exportThenPurge(key);
  assert.equal(readFileSync(key, "utf8"), before);
  const d = await f.restart();
  const v = await d.deps.audit.verify();
  assert.equal(v.ok, true, JSON.stringify(v));
});

test("F1c: x-vigil-output = vigil.db: the inventory survives a restart (users, records)", async (t) => {
  const f = await fixture(t);
  await f.exportThenPurge(join(f.home, "vigil.db"));
  const before = (await f.daemon().deps.audit.verify()).records;
  const d = await f.restart();
  const v = await d.deps.audit.verify();
  assert.equal(v.ok, true, JSON.stringify(v));
  assert.ok(before >= 3 && v.records > before, `records before the restart ${before}, after ${v.records}`);
  assert.ok(await d.deps.users.findByName("bob"), "bob is still a user");
});

test("x-vigil-output = another VM's disk neither closes that VM's registration nor lets purge erase the disk", async (t) => {
  const f = await fixture(t);
  // The victim's disks are registered by vigil (a clone is made through materialize).
  assert.equal((await f.call("POST", "/v1/vms/mine/clone", {}, { name: "victim", mode: "full" })).status, 201);
  const victim = await f.daemon().repo.getByName("victim");
  const disk = diskFile(join(f.home, "vms", victim.id, "disks"), "data");
  const r = await f.exportThenPurge(disk);
  assert.ok(existsSync(disk), "the other VM's disk is intact");
  assert.ok(!r.destroyed.some((d) => d.path === disk));
  const where = (await (await f.call("GET", "/v1/vms/victim/where", {}, null)).json()) as { live: Array<{ path: string }> };
  assert.ok(where.live.some((l) => l.path === disk), "the victim's registration is still live");
});

test("a symbolic link swapped in place of a registered disk is not followed by purge", async (t) => {
  const f = await fixture(t);
  assert.equal((await f.call("POST", "/v1/vms/mine/clone", {}, { name: "c", mode: "full" })).status, 201);
  const c = await f.daemon().repo.getByName("c");
  const disk = diskFile(join(f.home, "vms", c.id, "disks"), "data");
  const outside = mkdtempSync(join(tmpdir(), "vigil-victim-"));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  const victim = join(outside, "victim.txt");
  writeFileSync(victim, "not vigil's");
  rmSync(disk);
  symlinkSync(victim, disk);
  const res = await f.call("POST", "/v1/vms/c/purge");
  assert.equal(res.status, 200);
  const r = (await res.json()) as { unreachable: Array<{ path: string; why: string }> };
  assert.equal(readFileSync(victim, "utf8"), "not vigil's");
  assert.match(r.unreachable.find((u) => u.path === disk)?.why ?? "", /refused: a symbolic link/);
  assert.equal(existsSync(join(f.home, "vms", c.id)), false, "the VM's directory is gone");
});

test("an x-vigil-output that is not an absolute path is refused naming the header (review Q1), not silently dropped", async (t) => {
  const f = await fixture(t);
  for (const bad of ["relative/out.vigil", "/" + "a".repeat(1024)]) {
    const res = await f.call("POST", "/v1/vms/mine/export", { "x-vigil-output": bad });
    assert.equal(res.status, 400, bad.slice(0, 40));
    const err = ((await res.json()) as { error: { code: string; field: string; message: string } }).error;
    assert.equal(err.code, "VIGIL_BAD_REQUEST");
    assert.equal(err.field, "x-vigil-output");
    assert.match(err.message, /absolute path/);
  }
  const exported = await f.daemon().deps.audit.list({ limit: 1000 });
  assert.equal(exported.some((r) => r.action === "vm.export"), false, "a refused request exports nothing");
  const ok = await f.call("POST", "/v1/vms/mine/export", { "x-vigil-output": "/tmp/out.vigil" });
  assert.equal(ok.status, 200);
  await ok.arrayBuffer();
});
