/**
 * Encapsulation with real QEMU: snapshots with memory and revert as a fork, the snapshot tree, templates and
 * linked clones, a VM as one signed file (export → import, with memory), and hostile bundles refused with
 * nothing left behind.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { requireTinyImage, startDaemon, type DaemonHandle } from "../harness.ts";

type Vm = { id: string; name: string; state: string; vmgenid: string; generation: number; spec: { nics: Array<{ mac: string }> }; paths: { disks: Record<string, string>; dir: string }; lineage: Record<string, unknown> };

async function exec(d: DaemonHandle, vm: string, ...argv: string[]): Promise<string> {
  const r = await d.api<{ exitCode: number; stdout: string; stderr: string }>("POST", `/v1/vms/${vm}/guest/exec`, { argv });
  assert.equal(r.exitCode, 0, `${argv.join(" ")}: ${Buffer.from(r.stderr, "base64").toString()}`);
  return Buffer.from(r.stdout, "base64").toString().trim();
}

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

test("a memory snapshot reverts as a fork: counter back, new vmgenid, the guest reseeds", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "snap", memoryMiB: 256 });
  const before = await d.api<Vm>("POST", "/v1/vms/snap/start", { wait: true });
  assert.equal(await exec(d, "snap", "counter", "set", "41"), "41");
  const snap = await d.api<{ kind: string; vmStateSize: number; stateSha256: string }>("POST", "/v1/vms/snap/snapshots", { name: "s1", memory: true, description: "counter at 41" });
  assert.equal(snap.kind, "memory");
  assert.ok(snap.vmStateSize > 1024 * 1024);
  assert.match(snap.stateSha256, /^[0-9a-f]{64}$/);
  assert.equal(await exec(d, "snap", "counter", "set", "99"), "99");

  const r = await d.api<{ vm: Vm; generation: number }>("POST", "/v1/vms/snap/snapshots/s1/revert", {});
  assert.equal(r.vm.state, "running");
  assert.notEqual(r.vm.vmgenid, before.vmgenid, "a revert is a fork: new vmgenid");
  assert.equal(r.generation, 2);
  assert.equal(await exec(d, "snap", "counter", "get"), "41", "guest RAM is back at the snapshot");
  assert.match(await exec(d, "snap", "dmesg-grep", "reseeded"), /crng reseeded due to virtual machine fork/);

  // A disk-only snapshot of the running VM becomes a child of s1; deleting s1 keeps the child.
  await d.api("POST", "/v1/vms/snap/snapshots", { name: "s2" });
  const tree = await d.api<{ snapshots: Array<{ name: string; parent: string | null; kind: string }> }>("GET", "/v1/vms/snap/snapshots");
  assert.deepEqual(tree.snapshots.map((s) => [s.name, s.parent, s.kind]), [["s1", null, "memory"], ["s2", "s1", "disk"]]);
  await d.api("DELETE", "/v1/vms/snap/snapshots/s1");
  const after = await d.api<{ snapshots: Array<{ name: string; parent: string | null }> }>("GET", "/v1/vms/snap/snapshots");
  assert.deepEqual(after.snapshots.map((s) => [s.name, s.parent]), [["s2", null]]);
  assert.equal(d.cli("snapshot", "list", "snap").status, 0);
});

test("a linked clone of a template boots with new identity and never writes the template's disk", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const tpl = await d.api<Vm>("POST", "/v1/vms", { name: "tpl", memoryMiB: 128 });
  await d.api("POST", "/v1/vms/tpl/template", {});
  const tplDisk = tpl.paths.disks.root!;
  const before = sha256(tplDisk);
  await assert.rejects(d.api("POST", "/v1/vms/tpl/start", {}), /it is a template/);

  const clone = await d.api<Vm>("POST", "/v1/vms/tpl/clone", { name: "cl1" });
  assert.deepEqual(clone.lineage, { kind: "clone", sourceVm: { id: tpl.id, name: "tpl" }, linked: true });
  assert.notEqual(clone.id, tpl.id);
  assert.notEqual(clone.vmgenid, tpl.vmgenid);
  assert.notEqual(clone.spec.nics[0]!.mac, tpl.spec.nics[0]!.mac);
  await d.api("POST", "/v1/vms/cl1/start", { wait: true });
  assert.equal(await exec(d, "cl1", "data-write", "hello", "from-the-clone"), "wrote /data/hello");
  assert.equal(sha256(tplDisk), before, "the template's disk bytes are unchanged");

  const images = await d.api<{ images: Array<{ name: string; kind: string; details: { linkedClones?: string[] } }> }>("GET", "/v1/images");
  assert.deepEqual(images.images.find((i) => i.name === "tpl")?.details.linkedClones, ["cl1"]);
  await assert.rejects(d.api("DELETE", "/v1/vms/tpl"), /linked clones depend on it \(cl1\)/);
  const history = await d.api<{ events: Array<{ action: string }> }>("GET", "/v1/vms/cl1/history");
  // The clone starts under a copy of its source's firewall policy (docs/network.md), recorded as its own fw.change.
  assert.deepEqual(history.events.slice(0, 3).map((e) => e.action), ["vm.create", "fw.change", "vm.start"]);
});

test("export → import under another name: boots; a --memory bundle resumes where it was", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "orig", memoryMiB: 256 });
  await d.api("POST", "/v1/vms/orig/start", { wait: true });
  assert.equal(await exec(d, "orig", "counter", "set", "1234"), "1234");
  const file = join(d.home, "orig.vigil");
  const exp = d.cli("vm", "export", "orig", "-o", file, "--memory");
  assert.equal(exp.status, 0, exp.stderr);

  const imp = d.cli("vm", "import", file, "--name", "copy", "--json");
  assert.equal(imp.status, 0, imp.stderr);
  const copy = JSON.parse(imp.stdout) as Vm;
  assert.equal((copy.lineage as { kind: string }).kind, "import");
  assert.match(JSON.stringify(copy.lineage), /this site/);
  const orig = await d.api<Vm>("GET", "/v1/vms/orig");
  assert.notEqual(copy.vmgenid, orig.vmgenid);
  assert.notEqual(copy.spec.nics[0]!.mac, orig.spec.nics[0]!.mac);
  await d.api("POST", "/v1/vms/orig/kill");
  await d.api("POST", "/v1/vms/copy/start", { wait: true });
  assert.equal(await exec(d, "copy", "counter", "get"), "1234", "the imported VM resumed the exported memory");

  const where = await d.api<{ live: Array<{ purpose: string; path: string }> }>("GET", "/v1/vms/orig/where");
  assert.ok(where.live.some((f) => f.purpose === "bundle" && f.path.startsWith("(reported by ") && f.path.endsWith(` ${file}`)), "where the client saved the bundle is listed, as reported");
  const purge = await d.api<{ destroyed: Array<{ path: string }>; unreachable: Array<{ path: string; why: string }>; derived: Array<{ name: string; kind: string; from: string }> }>("POST", "/v1/vms/orig/purge", {});
  assert.ok(existsSync(file) && purge.unreachable.some((f) => f.path.endsWith(` ${file}`) && /reported by a client/.test(f.why)), "purge never touches a path a client reported");
  assert.deepEqual(purge.derived, [{ name: "copy", kind: "import", from: "orig" }], "the purge says which VM still holds a copy of the data");
  assert.equal((await d.api<Vm>("GET", "/v1/vms/copy")).state, "running", "and leaves it alone");
});

test("a plain export of a stopped VM boots after import", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "cold", memoryMiB: 128 });
  const file = join(d.home, "cold.vigil");
  assert.equal(d.cli("vm", "export", "cold", "-o", file).status, 0);
  assert.equal(d.cli("vm", "import", file, "--name", "cold2").status, 0);
  const v = await d.api<Vm>("POST", "/v1/vms/cold2/start", { wait: true });
  assert.equal(v.state, "running");
  assert.equal(await exec(d, "cold2", "uname", "-n"), "cold2", "the import gets its own name in the guest too");
});
