// Fuzzing the qcow2 reader with mutations of real images: header fields, header extensions, L1 and L2 entries,
// the snapshot table and snapshot L1 tables are overwritten with random and boundary values (and the file is
// truncated). Whatever the mutation, every operation must either return a well-formed answer or throw a
// Qcow2Error, and each case must finish within a time bound.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { Qcow2Error, Qcow2Image, type Qcow2View } from "./qcow2.ts";
import { io, makeImage, snapshot, tool } from "./testing/qcow2-fixtures.ts";

/** A real image and the byte ranges of its structures, where mutations are aimed. */
interface Seed {
  name: string;
  bytes: Buffer;
  regions: Array<{ what: string; start: number; length: number }>;
}

const seeds: Seed[] = [];
let dir = "";
const CASE_BUDGET_MS = 2_000;
const RUNS = Number(process.env.VIGIL_FUZZ_RUNS ?? 150);

function regionsOf(bytes: Buffer): Seed["regions"] {
  const img = Qcow2Image.fromBytes("seed", bytes);
  const h = img.header;
  const cs = h.clusterSize;
  const regions: Seed["regions"] = [
    { what: "header", start: 0, length: h.headerLength },
    { what: "header extensions", start: h.headerLength, length: Math.min(cs, bytes.length) - h.headerLength },
  ];
  const tables = [{ what: "active L1", offset: Number(h.l1TableOffset), entries: h.l1Size }];
  for (const s of img.snapshots()) tables.push({ what: `L1 of ${s.name}`, offset: Number(s.l1TableOffset), entries: s.l1Size });
  for (const t of tables) {
    regions.push({ what: t.what, start: t.offset, length: t.entries * 8 });
    for (let i = 0; i < t.entries; i++) {
      const l2 = Number(bytes.readBigUInt64BE(t.offset + i * 8) & 0x00ff_ffff_ffff_fe00n);
      if (l2 !== 0) regions.push({ what: `L2 of ${t.what}[${i}]`, start: l2, length: cs });
    }
  }
  if (h.nbSnapshots > 0) {
    const last = img.snapshots().at(-1);
    const end = last ? Number(last.entryOffset) + 40 + last.extraData.length + 64 : Number(h.snapshotsOffset) + 64;
    regions.push({ what: "snapshot table", start: Number(h.snapshotsOffset), length: Math.min(end, bytes.length) - Number(h.snapshotsOffset) });
  }
  img.close();
  return regions.filter((r) => r.length > 0);
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vigil-qcow2-fuzz-"));
  const add = (name: string, path: string) => {
    const bytes = readFileSync(path);
    seeds.push({ name, bytes, regions: regionsOf(bytes) });
  };
  const v3 = makeImage(join(dir, "v3.qcow2"), "4M", { io: ["write -P 0xab 1M 64k", "write -z 2M 64k", "write -P 0x11 3M 100k"] });
  snapshot(v3, "one");
  io(v3, "write -P 0xcd 1M 4k");
  snapshot(v3, "two");
  add("v3", v3);
  const v2 = makeImage(join(dir, "v2.qcow2"), "2M", { o: ["compat=0.10", "cluster_size=1024"], io: ["write -P 0x01 0 3k", "write -P 0x02 1M 10k"] });
  snapshot(v2, "old");
  add("v2-1k", v2);
  const src = makeImage(join(dir, "src.qcow2"), "1M", { io: ["write -P 0x5a 0 40k", "write -P 0x33 512k 8k"] });
  const comp = join(dir, "comp.qcow2");
  tool("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", src, comp]);
  add("compressed-4k", comp);
  const ext = makeImage(join(dir, "ext.qcow2"), "2M", { o: ["extended_l2=on", "cluster_size=16k"], io: ["write -P 0xab 0 5k", "write -z 8k 1k", "write -P 1 1M 1k"] });
  snapshot(ext, "e");
  add("extended-l2", ext);
  makeImage(join(dir, "base.qcow2"), "1M");
  add("overlay", makeImage(join(dir, "top.qcow2"), "1M", { backing: "base.qcow2", io: ["write -P 0x42 0 4k"] }));
  add("c512", makeImage(join(dir, "c512.qcow2"), "1M", { o: ["cluster_size=512"], io: ["write -P 0x61 0 70k", "write -P 0x62 600k 2k"] }));
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const U32_EDGES = [0, 1, 8, 9, 14, 21, 22, 0x7fffffff, 0x80000000, 0xffffffff, 104, 112, 65536, 10_000, 10_001];
const u64Edges = (size: number): bigint[] => [
  0n,
  1n,
  512n,
  0x10000n,
  BigInt(size),
  BigInt(size - 8),
  BigInt(size) & ~0xffffn,
  1n << 62n,
  1n << 63n,
  (1n << 63n) | 0x10000n,
  (1n << 62n) | 0x10200n,
  (1n << 64n) - 1n,
  (1n << 56n) - 512n,
  0xffffffffn,
];

type Mutation =
  | { op: "byte"; region: number; pos: number; value: number }
  | { op: "flip"; region: number; pos: number; bit: number }
  | { op: "u32"; region: number; pos: number; pick: number; random: number; useEdge: boolean }
  | { op: "u64"; region: number; pos: number; pick: number; random: bigint; useEdge: boolean }
  | { op: "truncate"; keep: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant("byte" as const), region: fc.nat(), pos: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant("flip" as const), region: fc.nat(), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant("u32" as const), region: fc.nat(), pos: fc.nat(), pick: fc.nat(), random: fc.integer({ min: 0, max: 0xffffffff }), useEdge: fc.boolean() }),
  fc.record({ op: fc.constant("u64" as const), region: fc.nat(), pos: fc.nat(), pick: fc.nat(), random: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), useEdge: fc.boolean() }),
  fc.record({ op: fc.constant("truncate" as const), keep: fc.integer({ min: 0, max: 1000 }) }),
);

function mutate(seed: Seed, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(seed.bytes);
  for (const m of mutations) {
    if (m.op === "truncate") {
      b = b.subarray(0, Math.floor((b.length * m.keep) / 1000));
      continue;
    }
    const r = seed.regions[m.region % seed.regions.length];
    if (!r) continue;
    // Aligned positions hit whole fields; the region may extend past a truncated buffer.
    const width = m.op === "u64" ? 8 : m.op === "u32" ? 4 : 1;
    const slots = Math.floor(r.length / width);
    if (slots === 0) continue;
    const pos = r.start + (m.pos % slots) * width;
    if (pos + width > b.length) continue;
    if (m.op === "byte") b[pos] = m.value;
    else if (m.op === "flip") b[pos] = (b[pos] ?? 0) ^ (1 << m.bit);
    else if (m.op === "u32") b.writeUInt32BE(m.useEdge ? (U32_EDGES[m.pick % U32_EDGES.length] ?? 0) : m.random, pos);
    else {
      const edges = u64Edges(seed.bytes.length);
      b.writeBigUInt64BE(m.useEdge ? (edges[m.pick % edges.length] ?? 0n) : m.random, pos);
    }
  }
  return b;
}

/** Everything a caller can do with an image; answers must be well-formed. */
function exercise(img: Qcow2Image, probe: { at: number; len: number }, strict = false): void {
  const views: Array<Qcow2View | undefined> = [undefined];
  const snaps = img.snapshots();
  assert.ok(snaps.length <= 10_000);
  for (const s of snaps.slice(0, 3)) views.push({ snapshotId: s.id });
  for (const view of views) {
    let size: bigint;
    try {
      size = view && "snapshotId" in view ? (snaps.find((s) => s.id === view.snapshotId)?.diskSize ?? 0n) : img.virtualSize;
      // Duplicate ids from a mutation make the id ambiguous: that is a Qcow2Error, checked below.
      let pos = 0n;
      let n = 0;
      for (const e of img.extents(view)) {
        assert.equal(e.offset, pos, "extents are contiguous");
        assert.ok(e.length > 0n, "extents are non-empty");
        pos += e.length;
        if (++n >= 300) break;
      }
      if (n < 300) assert.equal(pos, size, "extents cover the view");
      if (size > 0n) {
        const at = (BigInt(probe.at) * size) / 1_000_000n;
        const m = img.map(at, view);
        assert.equal(m.offset, at);
        assert.ok(m.length > 0n && m.offset + m.length <= size);
        const len = Number(size - at < BigInt(probe.len) ? size - at : BigInt(probe.len));
        assert.equal(img.read(at, len, view).length, len);
      }
    } catch (err) {
      if (strict || !(err instanceof Qcow2Error)) throw err;
    }
  }
  for (const s of snaps.slice(0, 2)) {
    try {
      if (s.vmStateSize > 0n) {
        assert.equal(img.readVmState({ id: s.id }, 0n, Number(s.vmStateSize < 4096n ? s.vmStateSize : 4096n)).length, Number(s.vmStateSize < 4096n ? s.vmStateSize : 4096n));
      }
      assert.match(img.sha256VmState({ id: s.id }), /^[0-9a-f]{64}$/);
    } catch (err) {
      if (strict || !(err instanceof Qcow2Error)) throw err;
    }
  }
}

test("mutated real images yield a Qcow2Error or well-formed answers, quickly", (t) => {
  assert.ok(seeds.length >= 6);
  let refused = 0;
  let opened = 0;
  let slowest = 0;
  fc.assert(
    fc.property(
      fc.nat({ max: seeds.length - 1 }),
      fc.array(mutationArb, { minLength: 1, maxLength: 6 }),
      fc.record({ at: fc.integer({ min: 0, max: 999_999 }), len: fc.integer({ min: 0, max: 300_000 }) }),
      (seedIndex, mutations, probe) => {
        const seed = seeds[seedIndex] as Seed;
        const bytes = mutate(seed, mutations);
        const started = performance.now();
        let img: Qcow2Image | undefined;
        try {
          img = Qcow2Image.fromBytes(seed.name, bytes, { limits: { maxReadBytes: 1 << 20 } });
          opened++;
          exercise(img, probe);
        } catch (err) {
          if (!(err instanceof Qcow2Error)) throw err;
          assert.match(err.message, /^(Invalid qcow2 image|Cannot read qcow2 image|Cannot (read|map)|Qcow2 image) /);
          refused++;
        } finally {
          img?.close();
        }
        const ms = performance.now() - started;
        slowest = Math.max(slowest, ms);
        assert.ok(ms < CASE_BUDGET_MS, `case took ${ms.toFixed(0)} ms on seed ${seed.name}`);
      },
    ),
    { numRuns: RUNS * seeds.length },
  );
  t.diagnostic(`${opened} opened, ${refused} refused, slowest case ${slowest.toFixed(1)} ms`);
  // Both outcomes must occur, or the mutations are not reaching the structures.
  assert.ok(refused > 0 && opened > 0, `refused ${refused}, opened ${opened}`);
  assert.ok(slowest < CASE_BUDGET_MS);
});

test("the unmutated seeds read without error", () => {
  for (const seed of seeds) {
    const img = Qcow2Image.fromBytes(seed.name, seed.bytes);
    try {
      exercise(img, { at: 0, len: 65536 }, true);
      for (const e of img.extents()) assert.notEqual(e.kind === "data" && e.hostOffset >= BigInt(seed.bytes.length), true);
    } finally {
      img.close();
    }
  }
});
