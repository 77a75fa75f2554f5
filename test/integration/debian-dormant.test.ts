// The dormant Debian test disk that set-up builds (scripts/build-debian-dormant.sh) is what the offline scanner is
// tested on, so its shape is checked here through vigil's own readers: a backing chain of depth 2 (the overlay
// holds only the changed clusters), a GPT with one Linux partition, ext4 at the partition start; and the whole
// disk reads through openChain exactly as `qemu-img convert` gives it. Boots nothing; fails (never skips) when
// set-up did not build the fixture.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readPartitions } from "../../src/guestfs/partitions.ts";
import { openChain } from "../../src/storage/chain.ts";
import { Qcow2Image } from "../../src/storage/qcow2.ts";
import { dormantFixture } from "../../src/storage/testing/debian-dormant.ts";
import { runsOfChain, runsOfQemuMap } from "../../src/storage/testing/chain-fixtures.ts";
import type { QemuMapEntry } from "../../src/storage/testing/qcow2-fixtures.ts";

const LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4";

test("the dormant Debian disk: chain depth 2, GPT with one Linux partition, ext4 at its start", (t) => {
  const fx = dormantFixture();
  const chain = openChain(fx.overlay, { roots: [fx.dir] });
  t.after(() => chain.close());
  assert.equal(chain.layers.length, 2);
  assert.deepEqual(chain.layers.map((l) => l.format), ["qcow2", "qcow2"]);
  assert.equal(chain.layers[0]?.backingFile, "base.qcow2", "a relative backing name, resolved beside the overlay");
  assert.equal(chain.layers[1]?.path, join(fx.dir, "base.qcow2"));
  assert.equal(chain.virtualSize, BigInt(fx.manifest.disk.bytes));

  // The overlay genuinely depends on its backing file: it holds a few clusters, the base holds the system.
  const overlay = Qcow2Image.open(fx.overlay);
  t.after(() => overlay.close());
  let own = 0n;
  for (const e of overlay.extents()) if (e.kind === "data") own += e.length;
  assert.ok(own > 0n && own <= 1n << 20n, `the overlay holds ${own} bytes of its own`);

  // Which layer holds what, as qemu-img map says: the overlay's own runs are the changed clusters.
  const qemuMap = JSON.parse(execFileSync("qemu-img", ["map", "--output=json", fx.overlay], { encoding: "utf8" })) as QemuMapEntry[];
  assert.deepEqual(runsOfChain(chain), runsOfQemuMap(qemuMap));
  assert.equal(runsOfChain(chain).filter((r) => r.depth === 0 && r.kind === "data").reduce((n, r) => n + BigInt(r.length), 0n), own);

  const table = readPartitions(chain);
  assert.equal(table.scheme, "gpt");
  assert.equal(table.usedBackup, false);
  assert.equal(table.partitions.length, 1);
  const p = table.partitions[0]!;
  assert.equal(p.type, LINUX_FS);
  assert.equal(p.uuid, fx.manifest.disk.partitionUuid);
  assert.equal(p.name, "debian-root");
  assert.equal(p.start, BigInt(fx.manifest.disk.partitionStartBytes));
  assert.equal(p.size, BigInt(fx.manifest.disk.partitionBytes));

  // ext4 superblock at byte 1024 of the partition: magic 0xef53 at 0x38, UUID at 0x68, volume name at 0x78,
  // the extents feature (incompat 0x40) that makes it ext4 rather than ext2/3.
  const sb = p.reader.read(1024n, 1024);
  assert.equal(sb.readUInt16LE(0x38), 0xef53);
  const uuid = sb.subarray(0x68, 0x78).toString("hex").replace(/^(.{8})(.{4})(.{4})(.{4})/, "$1-$2-$3-$4-");
  assert.equal(uuid, fx.manifest.disk.fsUuid);
  assert.equal(sb.toString("latin1", 0x78, 0x88).replace(/\0+$/, ""), "debian-root");
  assert.ok((sb.readUInt32LE(0x60) & 0x40) !== 0, "extents feature");

  // The package database the fixture was built from is real and main-suite only.
  const status = readFileSync(fx.dpkgStatus, "utf8");
  assert.equal((status.match(/^Package: /gm) ?? []).length, fx.manifest.packages);
  assert.ok(fx.manifest.packages > 50);
  assert.match(readFileSync(fx.osRelease, "utf8"), /VERSION_CODENAME=bookworm/);
});

test("the dormant Debian disk reads through openChain exactly as qemu-img convert gives it", (t) => {
  const fx = dormantFixture();
  const dir = mkdtempSync(join(tmpdir(), "vigil-dormant-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const raw = join(dir, "disk.raw");
  execFileSync("qemu-img", ["convert", "-O", "raw", fx.overlay, raw]);
  const chain = openChain(fx.overlay, { roots: [fx.dir] });
  t.after(() => chain.close());
  const fd = openSync(raw, "r");
  t.after(() => closeSync(fd));
  const chunk = 8 << 20;
  const want = Buffer.alloc(chunk);
  for (let pos = 0n; pos < chain.virtualSize; pos += BigInt(chunk)) {
    const n = Number(chain.virtualSize - pos < BigInt(chunk) ? chain.virtualSize - pos : BigInt(chunk));
    assert.equal(readSync(fd, want, 0, n, Number(pos)), n);
    assert.ok(chain.read(pos, n).equals(want.subarray(0, n)), `bytes at ${pos}`);
  }
  // The deleted file's marker is still in the disk's free blocks (from the base), which is why a scanner must read
  // files, not sectors; the planted copy is there too.
  const bytes = readFileSync(raw);
  let hits = 0;
  for (let at = bytes.indexOf(fx.marker); at >= 0; at = bytes.indexOf(fx.marker, at + 1)) hits++;
  assert.ok(hits >= 2, `marker found ${hits} times in the raw disk`);
});
