// The ext2/3/4 reader against real file systems made by mke2fs -d (never mounted) from a tree built here, in
// seven variants (ext4 4 KiB/1 KiB, inline_data, 32-bit with meta_bg, ext4 without extents, ext3, ext2). Every
// path, type, size, file hash, link target and directory listing is compared with the source tree, and some
// with debugfs; the deleted file must be invisible.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RawImage } from "../../storage/block-reader.ts";
import { VigilError } from "../../errors.ts";
import { Ext4, Ext4Error, type WalkEntry } from "./index.ts";
import { FLAG } from "./inode.ts";
import { BIG_DIR_ENTRIES, LONG_TARGET, MemoryDisk, VARIANTS, e2, e2raw, makeImage, makeTree, sha256 } from "./testing/fixtures.ts";

let dir = "";
let src = "";

interface Expected {
  type: WalkEntry["type"];
  size?: number;
  sha?: string;
  target?: string;
}

/** What the source tree says, path → expectation (the deleted file excluded). */
function expectedTree(): Map<string, Expected> {
  const out = new Map<string, Expected>();
  const visit = (rel: string): void => {
    for (const name of readdirSync(join(src, rel))) {
      const p = `${rel}/${name}`;
      if (p === "/doomed.txt") continue;
      const st = lstatSync(join(src, p));
      if (st.isDirectory()) {
        out.set(p, { type: "dir" });
        visit(p);
      } else if (st.isSymbolicLink()) {
        out.set(p, { type: "symlink", target: readlinkSync(join(src, p)) });
      } else {
        out.set(p, { type: "file", size: st.size, sha: sha256(readFileSync(join(src, p))) });
      }
    }
  };
  visit("");
  return out;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vigil-ext4-"));
  src = join(dir, "src");
  makeTree(src);
});
after(() => rmSync(dir, { recursive: true, force: true }));

for (const v of VARIANTS) {
  describe(v.name, () => {
    let img: RawImage;
    let fs: Ext4;
    const path = (): string => join(dir, `${v.name}.img`);
    before(() => {
      makeImage(path(), src, v);
      img = RawImage.open(path());
      fs = Ext4.open(img);
    });
    after(() => img.close());

    test("every path, type, size, file hash and link target matches the source tree", () => {
      const want = expectedTree();
      const seen = new Map<string, WalkEntry>();
      const summary = fs.walk("/", (e) => {
        seen.set(e.path, e);
      });
      assert.equal(summary.truncated, false);
      assert.deepEqual(summary.skipped, []);
      seen.delete("/lost+found");
      assert.deepEqual([...seen.keys()].sort(), [...want.keys()].sort());
      for (const [p, w] of want) {
        const e = seen.get(p)!;
        assert.equal(e.type, w.type, p);
        if (w.type === "file") {
          assert.equal(e.size, w.size, p);
          assert.equal(sha256(fs.readFile(e.ino, { maxBytes: 128 * 1024 * 1024 })), w.sha, p);
        }
        if (w.type === "symlink") assert.equal(fs.readlink(p), w.target, p);
        if (w.type === "dir") assert.deepEqual(fs.readdir(p).map((d) => d.name).sort(), readdirSync(join(src, p)).filter((n) => p !== "" || n !== "doomed.txt").sort(), p);
      }
      assert.equal(fs.readdir("/big").length, BIG_DIR_ENTRIES);
    });

    test("the file system's layout is the one the variant asks for", () => {
      const sb = fs.superblock;
      assert.equal(sb.blockSize, v.blockSize);
      assert.equal(sb.volumeName, v.name);
      const big = fs.inode(fs.stat("/big").ino);
      const sparse = fs.inode(fs.stat("/sparse.bin").ino);
      const usesExtents = v.type === "ext4" && !v.features?.includes("^extent");
      assert.equal((sparse.flags & FLAG.extents) !== 0, usesExtents);
      // (At 64 KiB blocks the islands fill consecutive blocks: one extent.)
      if (usesExtents && v.blockSize < 65536) assert.ok(fs.inode(fs.stat("/islands.bin").ino).iBlock.readUInt16LE(6) > 0, "islands.bin has an extent tree of depth > 0");
      if (!usesExtents && v.blockSize === 1024) assert.notEqual(sparse.iBlock.readUInt32LE(56), 0, "triple indirect block in use");
      // (At 64 KiB blocks the 1200 entries fit one block: e2fsck leaves it linear.)
      if (v.blockSize < 65536) assert.notEqual(big.flags & FLAG.index, 0, "the 1200-entry directory is an htree");
      if (v.features?.includes("inline_data")) {
        assert.notEqual(fs.inode(fs.stat("/tiny.txt").ino).flags & FLAG.inlineData, 0, "tiny.txt is inline");
        assert.notEqual(fs.inode(fs.stat("/日本語").ino).flags & FLAG.inlineData, 0, "a small directory is inline");
      }
      if (v.features?.includes("meta_bg")) assert.ok(sb.incompatNames.includes("meta_bg") && !sb.incompatNames.includes("64bit"));
      if (v.sizeMiB === 264) {
        assert.equal(sb.groupCount, 33);
        assert.deepEqual(sb.backupGroups, v.features?.includes("sparse_super2") ? [1, 32] : undefined);
      }
      // Every group's inode table where debugfs says (for 264 MiB images, group 32 is in the second meta group).
      const stats = e2("debugfs", ["-R", "stats", path()]);
      const tables = [...stats.matchAll(/^ Group +(\d+):.*inode table at (\d+)/gm)].map((m) => [Number(m[1]), Number(m[2])]);
      assert.equal(tables.length, sb.groupCount);
      for (const [g, t] of tables) assert.equal(fs.inodeTableBlock(g!), t, `group ${g}`);
      assert.equal(fs.needsRecovery, false);
    });

    test("file bytes and listings agree with debugfs", () => {
      for (const p of ["/medium.bin", "/日本語/ファイル", "/tiny.txt"]) {
        const ours = fs.readFile(p);
        const theirs = e2raw("debugfs", ["-R", `cat "${p}"`, path()]);
        // debugfs 1.47 pads an inline file to its 60-byte i_block: compare the file's bytes, then the padding.
        assert.equal(sha256(ours), sha256(theirs.subarray(0, ours.length)), p);
        assert.ok(theirs.subarray(ours.length).every((c) => c === 0) && theirs.length <= Math.max(ours.length, 60), p);
      }
      const ls = e2("debugfs", ["-R", "ls -p /", path()]);
      const names = ls.split("\n").filter((l) => l.startsWith("/")).map((l) => l.split("/")[5]!).filter((n) => n !== "." && n !== "..");
      assert.deepEqual(fs.readdir("/").map((d) => d.name).sort(), names.sort());
    });

    test("the deleted file is not found by lookup, readdir or walk", () => {
      assert.throws(() => fs.stat("/doomed.txt"), (err: unknown) => err instanceof Ext4Error && err.reason === "not-found");
      assert.ok(!fs.readdir("/").some((d) => d.name === "doomed.txt"));
      let found = false;
      fs.walk("/", (e) => void (found ||= e.path.endsWith("doomed.txt")));
      assert.equal(found, false);
    });

    test("symlinks resolve inside the image: fast, slow, absolute, escaping, looping, dangling", () => {
      const deep = fs.stat("/a/b/c/deep.txt").ino;
      assert.equal(fs.stat("/fast-link").ino, deep);
      assert.equal(fs.stat("/slow-link").ino, deep);
      assert.equal(fs.readlink("/slow-link"), LONG_TARGET);
      assert.equal(fs.stat("/abs-link").ino, deep);
      assert.equal(fs.readFile("/abs-link").toString(), "deep file\n");
      assert.equal(fs.stat("/a/b/escape-link").ino, fs.stat("/tiny.txt").ino, "../ past the root stays at the root");
      assert.equal(fs.stat("/abs-escape").ino, fs.stat("/medium.bin").ino);
      assert.equal(fs.stat("/../../../a/../tiny.txt").ino, fs.stat("/tiny.txt").ino);
      assert.equal(fs.lstat("/fast-link").type, "symlink");
      assert.equal(fs.lookup("/fast-link", { followLast: false }).type, "symlink");
      assert.throws(() => fs.stat("/loop1"), (err: unknown) => err instanceof Ext4Error && err.reason === "limit" && /40 symbolic links/.test(err.message));
      assert.throws(() => fs.stat("/dangling"), (err: unknown) => err instanceof Ext4Error && err.reason === "not-found");
      assert.throws(() => fs.stat("/tiny.txt/x"), (err: unknown) => err instanceof Ext4Error && err.reason === "wrong-type");
      assert.throws(() => fs.readFile("/a"), (err: unknown) => err instanceof Ext4Error && err.reason === "wrong-type");
    });

    test("hard links share an inode", () => {
      const a = fs.stat("/medium.bin");
      const b = fs.stat("/a/hard-link.bin");
      assert.equal(a.ino, b.ino);
      assert.equal(a.links, 2);
    });

    test("big files stream in bounded chunks, holes read as zeros, maxBytes is enforced", () => {
      const want = sha256(readFileSync(join(src, "sparse.bin")));
      let largest = 0;
      let total = 0;
      const sha = createHash("sha256");
      for (const c of fs.chunks("/sparse.bin", { chunkBytes: 64 * 1024, maxBytes: 128 * 1024 * 1024 })) {
        largest = Math.max(largest, c.length);
        total += c.length;
        sha.update(c);
      }
      assert.ok(largest <= 64 * 1024, `largest chunk ${largest}`);
      assert.equal(total, 80 * 1024 * 1024);
      assert.equal(sha.digest("hex"), want);
      assert.throws(() => fs.readFile("/sparse.bin", { maxBytes: 1024 * 1024 }), (err: unknown) => err instanceof Ext4Error && err.reason === "limit");
      const head = fs.readFile("/sparse.bin", { maxBytes: 1024 * 1024, truncate: true });
      assert.deepEqual(head, readFileSync(join(src, "sparse.bin")).subarray(0, 1024 * 1024));
    });

    test("walk stops at maxEntries and does not descend past maxDepth", () => {
      const few: string[] = [];
      const s = fs.walk("/", (e) => void few.push(e.path), { maxEntries: 10 });
      assert.equal(s.truncated, true);
      assert.equal(few.length, 10);
      const shallow: WalkEntry[] = [];
      const d = fs.walk("/", (e) => void shallow.push(e), { maxDepth: 1 });
      assert.ok(shallow.every((e) => e.depth === 1));
      assert.ok(d.skipped.some((x) => x.path === "/big"));
      const sub: string[] = [];
      fs.walk("/a/b", (e) => void sub.push(e.path));
      assert.deepEqual(sub.sort(), ["/a/b/c", "/a/b/c/deep.txt", `/a/b/c/${"x".repeat(70)}`, "/a/b/escape-link"].sort());
    });
  });
}

describe("superblock flags", () => {
  let bytes: Buffer;
  before(() => {
    const p = join(dir, "flags.img");
    const small = join(dir, "small-src");
    makeTree(small, { bigEntries: 20, sparseMiB: 1 });
    makeImage(p, small, { name: "flags", type: "ext4", blockSize: 4096 }, 8);
    bytes = readFileSync(p);
  });
  const withIncompat = (bits: number): MemoryDisk => {
    const b = Buffer.from(bytes);
    b.writeUInt32LE((b.readUInt32LE(1024 + 96) | bits) >>> 0, 1024 + 96);
    return new MemoryDisk(b);
  };

  test("needs_recovery: the journal is not replayed, the file system is read and the flag reported", () => {
    const fs = Ext4.open(withIncompat(0x4));
    assert.equal(fs.needsRecovery, true);
    assert.equal(fs.readFile("/tiny.txt").toString(), "tiny\n");
  });

  test("unsupported incompatible features are refused by name", () => {
    for (const [bit, name] of [[0x1, "compression"], [0x1000, "dirdata"], [0x8, "journal_dev"], [0x80000000, "bit 31"]] as const) {
      assert.throws(() => Ext4.open(withIncompat(bit)), (err: unknown) => err instanceof Ext4Error && err.reason === "unsupported" && err.message.includes(name), name);
    }
  });

  test("a file system larger than its disk, or not ext at all, is refused with the field and offset", () => {
    assert.throws(() => Ext4.open(new MemoryDisk(bytes.subarray(0, bytes.length / 2))), (err: unknown) => err instanceof VigilError && /more than the \d+-byte disk/.test(err.message));
    assert.throws(() => Ext4.open(new MemoryDisk(Buffer.alloc(8192))), (err: unknown) => err instanceof VigilError && /magic at byte 1080/.test(err.message));
    assert.throws(() => Ext4.open(new MemoryDisk(Buffer.alloc(100))), (err: unknown) => err instanceof VigilError);
  });
});
