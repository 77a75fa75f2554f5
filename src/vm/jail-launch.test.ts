import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { backingChain } from "./jail-launch.ts";
import { MAX_CHAIN, recordedPlaces, type RecordedPlaces } from "./recorded-layers.ts";
import type { VmRecord } from "./vm-repository.ts";

function img(...args: string[]) {
  const r = spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

/** Places for the tests: everything below `dir` counts as recorded. */
const below = (dir: string): RecordedPlaces => ({ has: (f) => realpathSync(f).startsWith(realpathSync(dir) + "/") });

test("backing chains: read from the read-only layers, nearest first, bounded", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-chain-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  img(join(dir, "base.qcow2"), "1M");
  img("-F", "qcow2", "-b", join(dir, "base.qcow2"), join(dir, "mid.qcow2"));
  img("-F", "qcow2", "-b", join(dir, "mid.qcow2"), join(dir, "tpl.qcow2"));
  assert.deepEqual(await backingChain(join(dir, "tpl.qcow2"), below(dir)), [
    { file: join(dir, "tpl.qcow2"), format: "qcow2" },
    { file: join(dir, "mid.qcow2"), format: "qcow2" },
    { file: join(dir, "base.qcow2"), format: "qcow2" },
  ]);
  // The recorded layer itself may be raw (an image vigil made); it is only the headers below it that are suspect.
  writeFileSync(join(dir, "image.raw"), Buffer.alloc(1 << 20));
  assert.deepEqual(await backingChain(join(dir, "image.raw"), below(dir)), [{ file: join(dir, "image.raw"), format: "raw" }]);

  // too deep
  img(join(dir, "l0.qcow2"), "16M");
  for (let i = 1; i <= MAX_CHAIN; i++) img("-F", "qcow2", "-b", join(dir, `l${i - 1}.qcow2`), join(dir, `l${i}.qcow2`));
  await assert.rejects(backingChain(join(dir, `l${MAX_CHAIN}.qcow2`), below(dir)), /deeper than 16 layers/);
  // a relative path is refused, not resolved against the daemon's cwd
  await assert.rejects(backingChain("disk.qcow2", below(dir)), /not a regular file with an absolute path/);
});

test("a header below the recorded layer cannot send the jail to a file vigil did not put there", async (t) => {
  // A template's disk was a running VM's: its QEMU could have rewritten the header before the VM became a template.
  const dir = mkdtempSync(join(tmpdir(), "vigil-chain-"));
  const outside = mkdtempSync(join(tmpdir(), "vigil-outside-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  writeFileSync(join(outside, "shadow"), Buffer.alloc(1 << 20, 0x41));
  img(join(outside, "secret.qcow2"), "1M");
  // named as raw (the format would be probed, and any file is "raw"): refused
  img("-F", "raw", "-b", join(outside, "shadow"), join(dir, "tpl-raw.qcow2"));
  await assert.rejects(backingChain(join(dir, "tpl-raw.qcow2"), below(dir)), /format "raw", not qcow2/);
  // named as qcow2 but outside what vigil recorded: refused
  img("-F", "qcow2", "-b", join(outside, "secret.qcow2"), join(dir, "tpl-out.qcow2"));
  await assert.rejects(backingChain(join(dir, "tpl-out.qcow2"), below(dir)), /not one of this VM's recorded disks/);
  // an external data file: refused
  spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${join(outside, "data.raw")}`, join(dir, "ext.qcow2"), "1M"]);
  await assert.rejects(backingChain(join(dir, "ext.qcow2"), below(dir)), /external file/);
});

test("recorded places: the VM's own disks, its templates' disks and snapshot bases, the images in their specs", async (t) => {
  const vms = mkdtempSync(join(tmpdir(), "vigil-places-"));
  t.after(() => rmSync(vms, { recursive: true, force: true }));
  for (const p of ["child/disks", "tpl/disks", "tpl/snapbases", "other/disks"]) mkdirSync(join(vms, p), { recursive: true });
  for (const p of ["child/disks/root.qcow2", "tpl/disks/root.qcow2", "tpl/snapbases/s1.qcow2", "other/disks/root.qcow2", "image.qcow2"]) writeFileSync(join(vms, p), "");
  const rec = (id: string, backing: string | undefined, baseVmId?: string) => ({ id, name: id, baseVmId, spec: { disks: [{ name: "root", backing }] } }) as unknown as VmRecord;
  const tpl = rec("tpl", join(vms, "image.qcow2"));
  const child = rec("child", join(vms, "tpl", "disks", "root.qcow2"), "tpl");
  const places = await recordedPlaces(child, vms, async (id) => (id === "tpl" ? tpl : undefined));
  for (const ok of ["child/disks/root.qcow2", "tpl/disks/root.qcow2", "tpl/snapbases/s1.qcow2", "image.qcow2"]) assert.ok(places.has(join(vms, ok)), ok);
  assert.equal(places.has(join(vms, "other", "disks", "root.qcow2")), false, "another VM's disk");
  assert.equal(places.has("/etc/shadow"), false);
});
