// Hand-made hostile structures, each aimed at one check: an extent node naming itself, a directory entry naming
// the deleted file's freed inode, an absurd file size, a directory record overrunning its block, an inode
// number past the last, a group descriptor placing the inode table outside the file system. Each must be a
// VigilError naming the structure, quickly.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ext4, Ext4Error } from "./index.ts";
import { MemoryDisk, e2, makeTree } from "./testing/fixtures.ts";

let dir = "";
let img = "";
let bytes: Buffer;
let deletedIno = 0;
const BS = 4096;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vigil-ext4-hostile-"));
  const src = join(dir, "src");
  makeTree(src, { bigEntries: 30, sparseMiB: 1 });
  img = join(dir, "h.img");
  // Make the image, note the inode doomed.txt had, then delete it.
  e2("mke2fs", ["-q", "-F", "-t", "ext4", "-b", String(BS), "-d", src, img, "8M"]);
  deletedIno = Number(/Inode: (\d+)/.exec(e2("debugfs", ["-R", "stat /doomed.txt", img]))![1]);
  e2("debugfs", ["-w", "-R", "rm /doomed.txt", img]);
  bytes = readFileSync(img);
});
after(() => rmSync(dir, { recursive: true, force: true }));

function inodeOffset(ino: number): number {
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(e2("debugfs", ["-R", `imap <${ino}>`, img]))!;
  return Number(m[1]) * BS + parseInt(m[2]!, 16);
}

function mutated(edit: (b: Buffer) => void): Ext4 {
  const b = Buffer.from(bytes);
  edit(b);
  return Ext4.open(new MemoryDisk(b));
}

function rejects(f: () => unknown, pattern: RegExp): void {
  const t0 = performance.now();
  assert.throws(f, (err: unknown) => err instanceof Ext4Error && pattern.test(err.message));
  assert.ok(performance.now() - t0 < 1000);
}

test("an extent node that names itself is refused by the depth check", () => {
  const fs = Ext4.open(new MemoryDisk(bytes));
  const ino = fs.stat("/islands.bin").ino;
  const leaf = fs.inode(ino).iBlock.readUInt32LE(16);
  const f = mutated((b) => {
    const at = leaf * BS;
    b.writeUInt16LE(1, at + 6); // the leaf now claims to be an index node...
    b.writeUInt32LE(leaf, at + 12 + 4); // ...whose first child is itself
  });
  rejects(() => f.readFile("/islands.bin"), new RegExp(`extent node at block ${leaf} has depth 1, expected 0`));
});

test("a directory entry naming the deleted file's freed inode does not resurrect it", () => {
  const fs = Ext4.open(new MemoryDisk(bytes));
  const tinyIno = fs.stat("/tiny.txt").ino;
  const root = Number(e2("debugfs", ["-R", "blocks /", img]).trim().split(/\s+/)[0]);
  const f = mutated((b) => {
    const blk = b.subarray(root * BS, (root + 1) * BS);
    // Point the entry "tiny.txt" at the deleted inode.
    const at = blk.indexOf("tiny.txt") - 8;
    assert.equal(blk.readUInt32LE(at), tinyIno);
    blk.writeUInt32LE(deletedIno, at);
  });
  rejects(() => f.readFile("/tiny.txt"), new RegExp(`inode ${deletedIno}: it is not in use`));
});

test("a file size past what ext4 can hold is refused; a large claimed size is bounded by maxBytes", () => {
  const fs = Ext4.open(new MemoryDisk(bytes));
  const at = inodeOffset(fs.stat("/medium.bin").ino);
  rejects(() => mutated((b) => b.writeUInt32LE(0xffffffff, at + 108)).stat("/medium.bin"), /i_size_high \(inode byte 108\)/);
  const big = mutated((b) => b.writeUInt32LE(0x1000, at + 108)); // 16 TiB
  rejects(() => big.readFile("/medium.bin"), /more than the \d+ allowed/);
  const head = big.readFile("/medium.bin", { maxBytes: 1 << 20, truncate: true });
  assert.equal(head.length, 1 << 20);
});

test("a directory record overrunning its block, or naming an inode past the last, is refused", () => {
  const root = Number(e2("debugfs", ["-R", "blocks /", img]).trim().split(/\s+/)[0]);
  rejects(() => mutated((b) => b.writeUInt16LE(BS + 4, root * BS + 4)).readdir("/"), /record length 4100/);
  rejects(() => mutated((b) => b.writeUInt16LE(6, root * BS + 4)).readdir("/"), /record length 6/);
  rejects(() => mutated((b) => b.writeUInt32LE(0x7fffffff, root * BS + 24)).readdir("/"), /past the last inode/);
});

test("an inode flagged encrypted is refused, and walk lists its directory as skipped", () => {
  const fs = Ext4.open(new MemoryDisk(bytes));
  const fileAt = inodeOffset(fs.stat("/medium.bin").ino);
  const dirAt = inodeOffset(fs.stat("/a/b").ino);
  const f = mutated((b) => {
    b.writeUInt32LE(b.readUInt32LE(fileAt + 32) | 0x800, fileAt + 32);
    b.writeUInt32LE(b.readUInt32LE(dirAt + 32) | 0x800, dirAt + 32);
  });
  rejects(() => f.readFile("/medium.bin"), /encrypted \(fscrypt\)/);
  rejects(() => f.readdir("/a/b"), /encrypted/);
  const paths: string[] = [];
  const s = f.walk("/", (e) => void paths.push(e.path));
  assert.ok(paths.includes("/a/b") && !paths.includes("/a/b/c"));
  assert.deepEqual(s.skipped, [{ path: "/a/b", reason: "encrypted directory" }]);
});

test("an inode table outside the file system is refused with the descriptor named", () => {
  rejects(() => mutated((b) => b.writeUInt32LE(0xfffffff0, BS + 8)), /group descriptor 0 .*inode table at block/);
});
