// Fuzzing the ext4 reader with mutations of real file systems: random and boundary values written into the
// superblock, the group descriptors, the inode table, extent tree blocks and directory blocks. Whatever the
// mutation, opening the file system, walking it, reading every file and resolving symlinks must either give an
// answer or throw a VigilError; never another exception, never a read outside the disk, and each case must
// finish within a time bound. The share of cases giving the unmutated answer, another answer or an error is
// reported as a diagnostic.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { VigilError } from "../../errors.ts";
import { Ext4 } from "./index.ts";
import { MemoryDisk, type Variant, e2, makeImage, makeTree } from "./testing/fixtures.ts";

interface Seed {
  name: string;
  bytes: Buffer;
  answer: string;
  regions: Array<{ what: string; start: number; length: number }>;
}

const CASE_BUDGET_MS = 2_000;
const RUNS = Number(process.env.VIGIL_FUZZ_RUNS ?? 100);
const SEED_VARIANTS: Variant[] = [
  { name: "fz-ext4-4k", type: "ext4", blockSize: 4096 },
  { name: "fz-ext4-1k", type: "ext4", blockSize: 1024 },
  { name: "fz-inline", type: "ext4", blockSize: 4096, features: "inline_data" },
  { name: "fz-ext3-1k", type: "ext3", blockSize: 1024 },
];
const seeds: Seed[] = [];
let dir = "";

/** Everything the reader says about the file system, as one digest. */
function answer(disk: MemoryDisk): string {
  const fs = Ext4.open(disk);
  const h = createHash("sha256");
  fs.walk("/", (e) => {
    h.update(`${e.path}\0${e.ino}\0${e.type}\0${e.size}\n`);
    if (e.type === "file") for (const c of fs.chunks(e.ino, { maxBytes: 4 * 1024 * 1024, truncate: true })) h.update(c);
    if (e.type === "symlink") h.update(fs.readlink(e.ino));
  }, { maxEntries: 5000 });
  for (const p of ["/fast-link", "/slow-link", "/a/b/escape-link", "/abs-escape"]) {
    try {
      h.update(String(fs.stat(p).ino));
    } catch (err) {
      if (!(err instanceof VigilError)) throw err;
      h.update(`${err.code}`);
    }
  }
  return h.digest("hex");
}

/** debugfs's `imap`: where inode `ino` lives, as a byte offset. */
function inodeOffset(img: string, ino: number, blockSize: number): number {
  const out = e2("debugfs", ["-R", `imap <${ino}>`, img]);
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  assert.ok(m, out);
  return Number(m[1]) * blockSize + parseInt(m[2]!, 16);
}

function blocksOf(img: string, path: string): number[] {
  return e2("debugfs", ["-R", `blocks ${path}`, img]).trim().split(/\s+/).filter(Boolean).map(Number);
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vigil-ext4-fuzz-"));
  const src = join(dir, "src");
  makeTree(src, { bigEntries: 300, sparseMiB: 2 });
  for (const v of SEED_VARIANTS) {
    const img = join(dir, `${v.name}.img`);
    makeImage(img, src, v, 8);
    const bytes = readFileSync(img);
    const bs = v.blockSize;
    const regions: Seed["regions"] = [
      { what: "superblock", start: 1024, length: 1024 },
      { what: "group descriptors", start: (bs === 1024 ? 2 : 1) * bs, length: Math.min(bs, 256) },
    ];
    const fs = Ext4.open(new MemoryDisk(bytes));
    const isize = fs.superblock.inodeSize;
    for (const p of ["/", "/big", "/a", "/a/b/c/deep.txt", "/medium.bin", "/sparse.bin", "/islands.bin", "/slow-link", "/fast-link", "/日本語", "/tiny.txt"]) {
      const ino = fs.lstat(p).ino;
      regions.push({ what: `inode ${ino} (${p})`, start: inodeOffset(img, ino, bs), length: isize });
    }
    for (const p of ["/", "/big", "/日本語"]) {
      for (const b of blocksOf(img, p).slice(0, 4)) regions.push({ what: `directory block ${b} of ${p}`, start: b * bs, length: bs });
    }
    const islands = fs.inode(fs.stat("/islands.bin").ino);
    if (islands.iBlock.readUInt16LE(0) === 0xf30a && islands.iBlock.readUInt16LE(6) > 0) {
      const leaf = islands.iBlock.readUInt32LE(16);
      regions.push({ what: `extent leaf block ${leaf}`, start: leaf * bs, length: Math.min(bs, 12 + 12 * 12) });
    }
    const sparse = fs.inode(fs.stat("/sparse.bin").ino);
    if (!(sparse.flags & 0x80000)) {
      const ind = sparse.iBlock.readUInt32LE(48);
      if (ind !== 0) regions.push({ what: `indirect block ${ind}`, start: ind * bs, length: bs });
    }
    seeds.push({ name: v.name, bytes, answer: answer(new MemoryDisk(bytes)), regions });
  }
});
after(() => rmSync(dir, { recursive: true, force: true }));

const BOUNDARY = [0, 1, 0x7f, 0x80, 0xfe, 0xff];

for (const seedIndex of SEED_VARIANTS.keys()) {
  test(`mutated ${SEED_VARIANTS[seedIndex]!.name}: an answer or a VigilError, in bounded time, never reading past the disk`, { timeout: RUNS * CASE_BUDGET_MS + 60_000 }, (t) => {
    const seed = seeds[seedIndex]!;
    const tally = { same: 0, different: 0, error: 0 };
    const mutation = fc.record({
      region: fc.nat({ max: seed.regions.length - 1 }),
      at: fc.nat({ max: 1 << 20 }),
      width: fc.constantFrom(1, 1, 2, 4),
      value: fc.oneof(fc.constantFrom(...BOUNDARY), fc.nat({ max: 255 })),
    });
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 6 }), (ms) => {
        const disk = new MemoryDisk(seed.bytes);
        for (const m of ms) {
          const r = seed.regions[m.region]!;
          const start = r.start + (m.at % r.length);
          for (let i = 0; i < m.width && start + i < seed.bytes.length; i++) disk.overrides.set(start + i, m.value);
        }
        const t0 = performance.now();
        try {
          const a = answer(disk);
          if (a === seed.answer) tally.same++;
          else tally.different++;
        } catch (err) {
          if (!(err instanceof VigilError)) throw new Error(`non-VigilError after mutating ${ms.map((m) => seed.regions[m.region]!.what).join(", ")}: ${String(err)}`, { cause: err });
          tally.error++;
        }
        const ms_ = performance.now() - t0;
        assert.equal(disk.outOfRange, 0, "a read outside the disk");
        assert.ok(ms_ < CASE_BUDGET_MS, `case took ${ms_.toFixed(0)} ms`);
      }),
      { numRuns: RUNS, seed: 13 + seedIndex },
    );
    t.diagnostic(`${seed.name}: ${JSON.stringify(tally)} over ${RUNS} cases, ${seed.regions.length} regions`);
    assert.ok(tally.error > 0 && tally.same > 0, "the mutations reach both harmless and fatal places");
  });
}
