/**
 * Test support for the ext4 reader: file systems made WITHOUT mounting, by `mke2fs -d` from a source tree built
 * here, with a file deleted afterwards by `debugfs -w`; and the reference answers (`debugfs cat` / `ls`).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, linkSync, mkdirSync, openSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { BlockReader } from "../../../storage/block-reader.ts";

/** Runs an e2fsprogs tool and returns its raw stdout. */
export function e2raw(cmd: "debugfs", args: readonly string[]): Buffer {
  return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], maxBuffer: 256 * 1024 * 1024 });
}

/** Runs an e2fsprogs tool and returns its stdout; a failure throws with the tool's stderr. */
export function e2(cmd: "mke2fs" | "debugfs" | "e2fsck", args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 256 * 1024 * 1024 });
}

/** Deterministic pseudo-random bytes (so a failure reproduces). */
export function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export const BIG_DIR_ENTRIES = 1200;
export const LONG_TARGET = `a/b/c/${"x".repeat(70)}/../deep.txt`;

/**
 * The source tree: nested dirs, a directory of 1200 entries (htree), a sparse file with data at the start,
 * middle and end (80 MiB, past the triple-indirect boundary at 1 KiB blocks), a 300 KiB file (double indirect at
 * 1 KiB), symlinks fast/slow/absolute/escaping/looping, a hard link, unicode names, tiny files and an empty
 * one, and "doomed.txt", which the image builder deletes after mke2fs.
 */
export function makeTree(root: string, options: { bigEntries?: number; sparseMiB?: number } = {}): void {
  const entries = options.bigEntries ?? BIG_DIR_ENTRIES;
  const sparseEnd = (options.sparseMiB ?? 80) * 1024 * 1024;
  mkdirSync(join(root, "a/b/c", "x".repeat(70)), { recursive: true });
  writeFileSync(join(root, "a/b/c/deep.txt"), "deep file\n");
  mkdirSync(join(root, "big"));
  for (let i = 0; i < entries; i++) writeFileSync(join(root, "big", `entry-${String(i).padStart(5, "0")}-with-a-longer-name`), `${i}\n`);
  const fd = openSync(join(root, "sparse.bin"), "w");
  writeSync(fd, bytes(5000, 1), 0, 5000, 0);
  writeSync(fd, bytes(70_000, 2), 0, 70_000, Math.floor(sparseEnd / 8) + 123);
  writeSync(fd, bytes(3000, 3), 0, 3000, sparseEnd - 3000);
  closeSync(fd);
  writeFileSync(join(root, "medium.bin"), bytes(300 * 1024 + 17, 4));
  // Ten data islands between holes: more extents than i_block holds, so the extent tree gets a leaf block.
  const isl = openSync(join(root, "islands.bin"), "w");
  for (let i = 0; i < 10; i++) writeSync(isl, bytes(4096, 10 + i), 0, 4096, i * 65536);
  closeSync(isl);
  linkSync(join(root, "medium.bin"), join(root, "a/hard-link.bin"));
  writeFileSync(join(root, "tiny.txt"), "tiny\n");
  writeFileSync(join(root, "empty"), "");
  writeFileSync(join(root, "héllo wörld ✓.txt"), "unicode\n");
  mkdirSync(join(root, "日本語"));
  writeFileSync(join(root, "日本語/ファイル"), bytes(9000, 5));
  writeFileSync(join(root, "doomed.txt"), "I will be deleted\n");
  symlinkSync("a/b/c/deep.txt", join(root, "fast-link"));
  symlinkSync(LONG_TARGET, join(root, "slow-link"));
  symlinkSync("/a/b/c/deep.txt", join(root, "abs-link"));
  symlinkSync("../../../../../tiny.txt", join(root, "a/b/escape-link"));
  symlinkSync("/../../../a/../medium.bin", join(root, "abs-escape"));
  symlinkSync("loop2", join(root, "loop1"));
  symlinkSync("loop1", join(root, "loop2"));
  symlinkSync("/nonexistent", join(root, "dangling"));
}

export interface Variant {
  readonly name: string;
  readonly type: "ext2" | "ext3" | "ext4";
  readonly blockSize: 1024 | 4096 | 65536;
  readonly features?: string;
  /** Image size (default 96 MiB). */
  readonly sizeMiB?: number;
}

export const VARIANTS: readonly Variant[] = [
  { name: "ext4-4k", type: "ext4", blockSize: 4096 },
  { name: "ext4-1k", type: "ext4", blockSize: 1024 },
  { name: "ext4-inline", type: "ext4", blockSize: 4096, features: "inline_data" },
  { name: "ext4-32b-metabg", type: "ext4", blockSize: 1024, features: "^64bit,meta_bg,^resize_inode" },
  // 33 groups of 8 MiB: a second meta group starting at group 32, after a superblock backup with sparse_super2
  // (its backups are in groups 1 and the last) and without one with sparse_super.
  { name: "ext4-metabg-2", type: "ext4", blockSize: 1024, features: "^64bit,meta_bg,^resize_inode", sizeMiB: 264 },
  { name: "ext4-metabg-ss2", type: "ext4", blockSize: 1024, features: "^64bit,meta_bg,^resize_inode,sparse_super2", sizeMiB: 264 },
  { name: "ext4-64k", type: "ext4", blockSize: 65536 },
  { name: "ext4-casefold", type: "ext4", blockSize: 4096, features: "casefold" },
  { name: "ext4-noextent", type: "ext4", blockSize: 4096, features: "^extent,^64bit" },
  { name: "ext3-1k", type: "ext3", blockSize: 1024 },
  { name: "ext2-4k", type: "ext2", blockSize: 4096 },
];

/** Makes an image of `v` from `src` (without mounting), deletes /doomed.txt with debugfs and indexes directories. */
export function makeImage(path: string, src: string, v: Variant, sizeMiB = v.sizeMiB ?? 96): void {
  const args = ["-q", "-F", "-t", v.type, "-b", String(v.blockSize), "-d", src, "-L", v.name];
  if (v.features) args.push("-O", v.features);
  e2("mke2fs", [...args, path, `${sizeMiB}M`]);
  e2("debugfs", ["-w", "-R", "rm /doomed.txt", path]);
  // mke2fs -d writes linear directories; e2fsck -D re-packs them, indexing the large one as an htree.
  try {
    e2("e2fsck", ["-fyD", path]);
  } catch (err) {
    // Exit status 1 means "file system modified", which -D always does.
    if ((err as { status?: number }).status !== 1) throw err;
  }
}

export function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

/**
 * A BlockReader over bytes in memory with byte overrides (fuzz mutations without copying the image), which
 * records any request outside the disk instead of serving it: the reader must never make one.
 */
export class MemoryDisk implements BlockReader {
  readonly virtualSize: bigint;
  readonly overrides = new Map<number, number>();
  outOfRange = 0;
  reads = 0;

  constructor(readonly bytes: Buffer) {
    this.virtualSize = BigInt(bytes.length);
  }

  read(offset: bigint, length: number): Buffer {
    this.reads++;
    if (offset < 0n || length < 0 || offset + BigInt(length) > this.virtualSize) {
      this.outOfRange++;
      throw new Error(`read of ${length} bytes at ${offset} past the end of a ${this.virtualSize}-byte disk`);
    }
    const start = Number(offset);
    const out = Buffer.from(this.bytes.subarray(start, start + length));
    for (const [at, v] of this.overrides) if (at >= start && at < start + length) out[at - start] = v;
    return out;
  }
}
