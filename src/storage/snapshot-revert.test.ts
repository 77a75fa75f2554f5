/**
 * A revert checks what can fail before it kills QEMU, and a memory revert whose state does not load leaves the
 * VM with the identity and generation it had (review finding 22). The VM service is a stand-in (no QEMU here):
 * its `start` fails like a `snapshot-load` that QEMU refuses; the disks are real qcow2 files.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, openSync, closeSync, readSync, writeSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { silentLogger } from "../log.ts";
import { SnapshotService } from "./snapshots.ts";

/** Makes snapshot `name` (the first in the table) claim `bytes` of saved VM state, as a memory snapshot does. */
function claimVmState(file: string, bytes: number): void {
  const fd = openSync(file, "r+");
  try {
    const header = Buffer.alloc(72);
    readSync(fd, header, 0, 72, 0);
    const entry = Number(header.readBigUInt64BE(64));
    const fixed = Buffer.alloc(40);
    readSync(fd, fixed, 0, 40, entry);
    const extraSize = fixed.readUInt32BE(36);
    const b32 = Buffer.alloc(4);
    b32.writeUInt32BE(bytes);
    writeSync(fd, b32, 0, 4, entry + 32);
    if (extraSize >= 8) {
      const b64 = Buffer.alloc(8);
      b64.writeBigUInt64BE(BigInt(bytes));
      writeSync(fd, b64, 0, 8, entry + 40);
    }
  } finally {
    closeSync(fd);
  }
}

function setUp(t: TestContext, state: "running" | "stopped", options: { snapshotOnB: boolean }) {
  const dir = mkdtempSync(join(tmpdir(), "vigil-revert-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = join(dir, "a.qcow2");
  const b = join(dir, "b.qcow2");
  for (const f of [a, b]) execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", f, "4M"]);
  execFileSync("qemu-img", ["snapshot", "-c", "m", a]);
  if (options.snapshotOnB) execFileSync("qemu-img", ["snapshot", "-c", "m", b]);
  claimVmState(a, 512);
  let vm = { id: "vm-1", name: "web", state, isTemplate: false, vmgenid: "old-guid", generation: 3, currentSnapshotId: "snap-0", spec: { disks: [{ name: "a" }, { name: "b" }], agent: false } };
  const events: string[] = [];
  const h = {
    get vm() {
      return vm;
    },
    layout: { disksDir: dir, dir },
    reload: async () => vm,
    update: async (c: Partial<typeof vm>) => (vm = { ...vm, ...c }),
    kill: async () => {
      events.push("kill");
      vm = { ...vm, state: "stopped" };
    },
    start: async () => {
      events.push("start");
      throw new VigilError("VIGIL_QEMU", "snapshot-load failed: the state does not fit this machine");
    },
  };
  const vms = {
    operate: (_ctx: unknown, _name: string, _op: unknown, fn: (x: typeof h) => Promise<unknown>) => fn(h),
    checkNotExpired: () => undefined,
    describeVm: (v: unknown) => v,
  };
  const snap = { id: "snap-m", vmId: "vm-1", name: "m", kind: "memory", generation: 1, vmgenid: "snap-guid", guestFacts: {} };
  const generations: unknown[] = [];
  const service = new SnapshotService({
    vms: vms as never,
    snapshots: { get: async () => snap, markResumed: async () => events.push("resumed") } as never,
    generations: { list: async () => [], record: async (_id: string, g: unknown) => generations.push(g) } as never,
    audit: {} as never,
    progress: { emit: () => undefined } as never,
    log: silentLogger(),
    policy: async () => ({ forced: false }),
    reapply: async () => ({}),
    registry: {} as never,
  });
  const ctx = { actor: { name: "alice", roles: ["owner"] }, requestId: "r" } as never;
  return { service, ctx, events, generations, vm: () => vm };
}

test("a live revert to a snapshot one disk lacks is refused before QEMU is killed", async (t) => {
  const f = setUp(t, "running", { snapshotOnB: false });
  await assert.rejects(f.service.revert(f.ctx, "web", "m"), /disk "b" does not hold it; nothing was changed/);
  assert.deepEqual(f.events, [], "QEMU was not killed");
  assert.deepEqual([f.vm().state, f.vm().generation, f.vm().vmgenid], ["running", 3, "old-guid"]);
});

test("a memory revert whose state does not load keeps the VM's identity and generation", async (t) => {
  const f = setUp(t, "running", { snapshotOnB: true });
  await assert.rejects(f.service.revert(f.ctx, "web", "m"), /snapshot-load failed/);
  assert.deepEqual(f.events, ["kill", "start"]);
  assert.deepEqual([f.vm().generation, f.vm().vmgenid, f.vm().currentSnapshotId], [3, "old-guid", "snap-0"]);
  assert.deepEqual(f.generations, [], "no generation recorded for a fork that did not happen");
});
