// The VM-state reader against a real saved VM: QEMU (TCG, no guest OS; the BIOS runs for a second) saves an
// internal snapshot with VM state into a qcow2 disk through QMP `snapshot-save`. 40 MiB of random bytes are
// loaded into guest RAM first, so the state is large and its contents are known: every page of them must
// appear, in order, in the migration stream the reader returns. Boots QEMU for ~2 s; it needs
// qemu-system-x86_64 (installed by set-up) and fails rather than skips without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { QmpClient } from "../../src/qemu/qmp-client.ts";
import { Qcow2Error, Qcow2Image } from "../../src/storage/qcow2.ts";
import { tool } from "../../src/storage/testing/qcow2-fixtures.ts";

const BLOB_BYTES = 40 * 1024 * 1024;
const BLOB_GPA = 0x100_0000; // 16 MiB into a 64 MiB guest: clear of the BIOS and its tables
const PAGE = 4096;

type After = { after: (fn: () => Promise<void> | void) => void };

/** Runs QEMU (paused, TCG, no guest OS) on `image` with `extra` arguments, calls `drive` over QMP, then quits. */
async function withQemu(dir: string, image: string, extra: readonly string[], t: After, drive: (qmp: QmpClient) => Promise<void>): Promise<void> {
  const sock = join(dir, "qmp.sock");
  rmSync(sock, { force: true });
  const qemu = spawn(
    "qemu-system-x86_64",
    [
      "-nodefaults", "-no-user-config", "-machine", "pc-i440fx-7.2,accel=tcg", "-m", "64", "-display", "none", "-S",
      "-qmp", `unix:${sock},server=on,wait=off`,
      "-blockdev", `driver=file,filename=${image},node-name=f0`,
      "-blockdev", "driver=qcow2,file=f0,node-name=d0",
      "-device", "virtio-blk-pci,drive=d0",
      ...extra,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  qemu.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => qemu.once("exit", () => resolve()));
  t.after(async () => {
    if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
    await exited;
  });
  let qmp: QmpClient | undefined;
  for (let i = 0; i < 200 && !qmp; i++) {
    try {
      qmp = await QmpClient.connect(sock, { timeoutMs: 2_000 });
    } catch {
      if (qemu.exitCode !== null) throw new Error(`QEMU exited: ${stderr}`);
      await sleep(50);
    }
  }
  if (!qmp) throw new Error(`No QMP socket from QEMU: ${stderr}`);
  try {
    await drive(qmp);
    await qmp.execute("quit").catch(() => undefined);
  } finally {
    await qmp.close();
  }
  await exited;
}

/** Lets the BIOS run for a second, then saves snapshot "snap1" with VM state into d0 (QMP snapshot-save job). */
async function saveSnapshot(qmp: QmpClient): Promise<void> {
  await qmp.execute("cont");
  await sleep(1_000);
  await qmp.execute("snapshot-save", { "job-id": "s1", tag: "snap1", vmstate: "d0", devices: ["d0"] });
  for (let i = 0; ; i++) {
    const jobs = await qmp.execute<Array<{ id: string; status: string; error?: string }>>("query-jobs");
    const job = jobs.find((j) => j.id === "s1");
    if (job?.status === "concluded") {
      assert.equal(job.error, undefined, `snapshot-save failed: ${job.error}`);
      break;
    }
    assert.ok(i < 600, "snapshot-save did not conclude within 60 s");
    await sleep(100);
  }
  await qmp.execute("job-dismiss", { id: "s1" });
}

/** Finds `pages` in `state` in order, each after the previous one at the stream's stride; returns how many. */
function pagesInOrder(state: Buffer, pages: Buffer): number {
  let at = state.indexOf(pages.subarray(0, PAGE));
  assert.ok(at > 0, "the first page is in the VM state");
  let lastPage = 0;
  let found = 1;
  for (let p = 1; p < pages.length / PAGE; p++) {
    const page = pages.subarray(p * PAGE, (p + 1) * PAGE);
    // Each page follows an 8-byte header; a new section adds a few bytes more.
    const expected = at + (p - lastPage) * (PAGE + 8);
    const hit = state.subarray(at + 1, Math.min(state.length, expected + PAGE + 256)).indexOf(page);
    if (hit < 0) continue;
    const pos = at + 1 + hit;
    assert.ok(pos >= expected && pos <= expected + 256, `page ${p} is at ${pos}, expected ${expected}`);
    at = pos;
    lastPage = p;
    found++;
  }
  return found;
}

test("the saved VM state of a real QEMU snapshot: size, QEVM magic, guest RAM contents, stable hash", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-qcow2-vm-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, "vm.qcow2");
  tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"]);
  const blob = randomBytes(BLOB_BYTES);
  writeFileSync(join(dir, "blob.bin"), blob);
  await withQemu(dir, image, ["-device", `loader,file=${join(dir, "blob.bin")},addr=${BLOB_GPA},force-raw=on`], t, saveSnapshot);

  const info = JSON.parse(tool("qemu-img", ["info", "--output=json", image])) as { snapshots: Array<{ name: string; "vm-state-size": number }> };
  const img = Qcow2Image.open(image);
  t.after(() => img.close());
  const sn = img.snapshots().find((s) => s.name === "snap1");
  assert.ok(sn);
  assert.equal(sn.vmStateSize, BigInt(info.snapshots.find((s) => s.name === "snap1")?.["vm-state-size"] ?? -1));
  assert.ok(sn.vmStateSize > BigInt(BLOB_BYTES), `VM state of ${sn.vmStateSize} bytes holds the 40 MiB of RAM`);
  // 64 MiB disk, 64 KiB clusters: one L2 table maps 512 MiB, so the state starts at 512 MiB.
  assert.equal(sn.vmStateOffset, 512n << 20n);

  const head = img.readVmState("snap1", 0n, 8);
  assert.equal(head.readUInt32BE(0), 0x5145564d, "QEMU_VM_FILE_MAGIC");
  assert.equal(head.readUInt32BE(4), 3, "QEMU_VM_FILE_VERSION");

  // The blob's pages must be in the stream, in order. The BIOS ran for a second and rewrote a few dozen of them
  // (below 48 MiB), so this asks for 99%; the exact check is against what QEMU itself restores, below.
  const state = img.readVmState("snap1", 0n, Number(sn.vmStateSize));
  const pages = BLOB_BYTES / PAGE;
  const found = pagesInOrder(state, blob);
  t.diagnostic(`${found} of ${pages} pages of the blob found verbatim in the VM state`);
  assert.ok(found >= pages * 0.99, `only ${found} of ${pages} pages found`);

  // QEMU restores the snapshot (-loadvm) and dumps that RAM: every page of it is in the state we read.
  const dump = join(dir, "ram.bin");
  await withQemu(dir, image, ["-loadvm", "snap1"], t, async (qmp) => {
    await qmp.execute("pmemsave", { val: BLOB_GPA, size: BLOB_BYTES, filename: dump });
  });
  assert.equal(pagesInOrder(state, readFileSync(dump)), pages, "every restored page is in the VM state as read");

  const started = performance.now();
  const sha = img.sha256VmState("snap1");
  const ms = performance.now() - started;
  t.diagnostic(`sha256 of ${sn.vmStateSize} bytes of VM state in ${ms.toFixed(0)} ms`);
  assert.equal(sha, createHash("sha256").update(state).digest("hex"));
  const again = Qcow2Image.open(image);
  try {
    assert.equal(again.sha256VmState({ id: sn.id }), sha, "stable across opens");
  } finally {
    again.close();
  }
  // Odd-sized pieces read the same bytes as one read.
  const piece = 1_000_003;
  const parts: Buffer[] = [];
  for (let off = 0n; off < sn.vmStateSize; off += BigInt(piece)) {
    parts.push(img.readVmState("snap1", off, Number(sn.vmStateSize - off < BigInt(piece) ? sn.vmStateSize - off : BigInt(piece))));
  }
  assert.ok(Buffer.concat(parts).equals(state));
  assert.throws(() => img.readVmState("snap1", sn.vmStateSize - 1n, 2), (e: unknown) => e instanceof Qcow2Error && e.reason === "out-of-range");

  // The guest never wrote its disk; the VM state is not part of the disk in any view.
  assert.deepEqual([...img.extents({ snapshot: "snap1" })].map((e) => e.kind), ["unallocated"]);
  assert.deepEqual([...img.extents()].map((e) => e.kind), ["unallocated"]);

  // A snapshot entry claiming more VM state than the file holds is refused before any hashing starts.
  const bytes = readFileSync(image);
  bytes.writeBigUInt64BE(1n << 50n, Number(sn.entryOffset) + 40);
  const lying = Qcow2Image.fromBytes("lying", bytes);
  assert.throws(() => lying.sha256VmState("snap1"), (e: unknown) => e instanceof Qcow2Error && e.reason === "malformed" && /claims 1125899906842624 bytes of VM state/.test(e.message));
});
