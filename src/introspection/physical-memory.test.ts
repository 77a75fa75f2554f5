import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readlinkSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import {
  BufferPhysicalMemory,
  FilePhysicalMemory,
  MAX_READ_BYTES,
  parseMtreeFlat,
  pcRamRegions,
  ramRegionsFromMtree,
  validateRegions,
  type RamRegion,
} from "./physical-memory.ts";

/** `info mtree -f` as QEMU 7.2 printed it for `-machine pc-i440fx-7.2,memory-backend=mem -m 256` (trimmed I/O view). */
const MTREE_PC_256M = `FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000010-000000000000001f (prio 0, i/o): io @0000000000000010

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): mem
  00000000000c3000-00000000000e7fff (prio 0, rom): mem @00000000000c3000
  00000000000e8000-00000000000effff (prio 0, ram): mem @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): mem @00000000000f0000
  0000000000100000-000000000fffffff (prio 0, ram): mem @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #2
 AS "i440FX", root: bus master container
 Root memory region: (none)
  No rendered FlatView

FlatView #3
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000c2fff (prio 0, ram): smram-shadow
`;

/** The same machine with 4 GiB: RAM above 4 GiB comes from file offset 0xc0000000 (a KVM-style suffix too). */
const MTREE_PC_4G = `FlatView #1
 AS "memory", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000bfffffff (prio 0, ram): pc.ram @00000000000c0000 KVM
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios KVM
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @00000000c0000000 KVM
`;

test("parseMtreeFlat reads the system address space of QEMU 7.2's flat view", () => {
  const ranges = parseMtreeFlat(MTREE_PC_256M);
  assert.equal(ranges.length, 9);
  assert.deepEqual(ranges[4], { start: 0x100000n, end: 0x10000000n, priority: 0, kind: "ram", name: "mem", offsetInRegion: 0x100000n });
  assert.deepEqual(ranges[8], { start: 0xfffc0000n, end: 0x100000000n, priority: 0, kind: "rom", name: "pc.bios", offsetInRegion: 0n });
  // CPU 0's view is the same flat view; an unknown address space is a clear error.
  assert.equal(parseMtreeFlat(MTREE_PC_256M, "cpu-memory-0").length, 9);
  assert.throws(() => parseMtreeFlat(MTREE_PC_256M, "nope"), (e: unknown) => e instanceof IntrospectionError && /no flat view/.test(e.message));
});

test("ramRegionsFromMtree keeps the backend's RAM and its read-only BIOS-shadow windows, not pc.bios", () => {
  const regions = ramRegionsFromMtree(parseMtreeFlat(MTREE_PC_256M));
  assert.deepEqual(
    regions.map((r) => [r.start, r.end, r.fileOffset, r.readOnly]),
    [
      [0n, 0xc3000n, 0n, false],
      [0xc3000n, 0xe8000n, 0xc3000n, true],
      [0xe8000n, 0xf0000n, 0xe8000n, false],
      [0xf0000n, 0x100000n, 0xf0000n, true],
      [0x100000n, 0x10000000n, 0x100000n, false],
    ],
  );
  const high = ramRegionsFromMtree(parseMtreeFlat(MTREE_PC_4G), "pc.ram");
  assert.deepEqual(
    high.map((r) => [r.start, r.end, r.fileOffset]),
    [
      [0n, 0xa0000n, 0n],
      [0xc0000n, 0xc0000000n, 0xc0000n],
      [0x100000000n, 0x140000000n, 0xc0000000n],
    ],
  );
});

test("pcRamRegions follows i440fx: all RAM low below 3.5 GiB, else 3 GiB low and the rest at 4 GiB", () => {
  assert.deepEqual(pcRamRegions(256n << 20n), [{ name: "mem", start: 0n, end: 256n << 20n, fileOffset: 0n, readOnly: false }]);
  assert.equal(pcRamRegions(0xd000_0000n).length, 1);
  const four = pcRamRegions(4n << 30n);
  assert.deepEqual(
    four.map((r) => [r.start, r.end, r.fileOffset]),
    [
      [0n, 0xc000_0000n, 0n],
      [0x1_0000_0000n, 0x1_4000_0000n, 0xc000_0000n],
    ],
  );
});

test("validateRegions refuses overlapping or empty regions", () => {
  const r = (start: bigint, end: bigint): RamRegion => ({ name: "m", start, end, fileOffset: 0n, readOnly: false });
  assert.throws(() => validateRegions([r(0n, 0x2000n), r(0x1000n, 0x3000n)]), IntrospectionError);
  assert.throws(() => validateRegions([r(0x1000n, 0x1000n)]), IntrospectionError);
  assert.deepEqual(validateRegions([r(0x2000n, 0x3000n), r(0n, 0x1000n)]).map((x) => x.start), [0n, 0x2000n]);
});

function tempDir(t: import("node:test").TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-pm-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("FilePhysicalMemory maps guest-physical addresses through the regions, high RAM included", (t) => {
  const dir = tempDir(t);
  const file = Buffer.alloc(0x6000);
  for (let i = 0; i < file.length; i += 8) file.writeBigUInt64LE(BigInt(i), i);
  const path = join(dir, "ram");
  writeFileSync(path, file, { mode: 0o600 });
  // Low RAM [0, 0x4000) at offset 0; "high" RAM at 4 GiB from file offset 0x4000.
  const mem = FilePhysicalMemory.open(path, [
    { name: "mem", start: 0n, end: 0x4000n, fileOffset: 0n, readOnly: false },
    { name: "mem", start: 0x1_0000_0000n, end: 0x1_0000_2000n, fileOffset: 0x4000n, readOnly: false },
  ]);
  t.after(() => mem.close());
  assert.equal(mem.size, 0x6000n);
  assert.equal(mem.read(0x1008n, 8)?.readBigUInt64LE(0), 0x1008n);
  assert.equal(mem.read(0x1_0000_0010n, 8)?.readBigUInt64LE(0), 0x4010n);
  // Spanning pages (cache path is per page; spanning reads go direct).
  assert.equal(mem.read(0xff8n, 16)?.readBigUInt64LE(8), 0x1000n);
  assert.equal(mem.read(0x3ff8n, 16), undefined, "reads into the hole are outside RAM");
  assert.equal(mem.read(0x5000n, 8), undefined);
  assert.equal(mem.read(0n, -1), undefined);
  assert.equal(mem.read(0n, MAX_READ_BYTES + 1), undefined);
  assert.equal(mem.read(0n, 1.5), undefined);
  const dst = Buffer.alloc(16);
  assert.equal(mem.readInto(0x1_0000_0000n, dst, 0, 16), true);
  assert.equal(dst.readBigUInt64LE(8), 0x4008n);
  assert.equal(mem.readInto(0x3ff0n, dst, 0, 32), false);
});

test("FilePhysicalMemory opens the RAM file read-only and caches pages until cleared", (t) => {
  const dir = tempDir(t);
  const path = join(dir, "ram");
  writeFileSync(path, Buffer.alloc(0x3000, 0x11));
  const mem = FilePhysicalMemory.open(path, pcRamRegions(0x3000n));
  t.after(() => mem.close());
  // The descriptor the engine holds on the RAM file has O_ACCMODE == O_RDONLY.
  const fds = readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
  assert.equal(fds.length, 1);
  const flags = Number.parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fds[0]}`, "latin1"))?.[1] ?? "-1", 8);
  assert.equal(flags & 3, 0, "O_RDONLY");

  assert.equal(mem.read(0x1000n, 1)?.[0], 0x11);
  writeFileSync(path, Buffer.alloc(0x3000, 0x22));
  assert.equal(mem.read(0x1000n, 1)?.[0], 0x11, "served from the sweep's cache");
  assert.ok(mem.stats().hits >= 1);
  mem.clearCache();
  assert.equal(mem.read(0x1000n, 1)?.[0], 0x22, "a new sweep sees new guest memory");
  mem.close();
  assert.equal(mem.read(0n, 1), undefined, "closed");
});

test("FilePhysicalMemory refuses regions past the end of the file", (t) => {
  const dir = tempDir(t);
  const path = join(dir, "ram");
  writeFileSync(path, Buffer.alloc(0x1000));
  assert.throws(() => FilePhysicalMemory.open(path, pcRamRegions(0x2000n)), (e: unknown) => e instanceof IntrospectionError && e.reason === "host-input");
  assert.throws(() => FilePhysicalMemory.open(join(dir, "missing"), pcRamRegions(0x1000n)), IntrospectionError);
});

test("property: region-mapped reads return exactly the mapped bytes or undefined, and never throw", () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 3 }) }), { minLength: 1, maxLength: 4 }),
      fc.array(fc.record({ addr: fc.integer({ min: 0, max: 40 * 4096 }), len: fc.integer({ min: -2, max: 3 * 4096 }) }), { maxLength: 20 }),
      (layout, reads) => {
        const regions: RamRegion[] = [];
        let addr = 0n;
        let fileOff = 0n;
        for (const l of layout) {
          addr += BigInt(l.gap * 4096);
          const size = BigInt(l.pages * 4096);
          regions.push({ name: "m", start: addr, end: addr + size, fileOffset: fileOff, readOnly: false });
          addr += size;
          fileOff += size;
        }
        const backing = Buffer.alloc(Number(fileOff));
        for (let i = 0; i < backing.length; i++) backing[i] = (i * 7 + 3) & 0xff;
        const mem = new BufferPhysicalMemory(backing, regions);
        const byteAt = (a: bigint): number | undefined => {
          const r = regions.find((x) => x.start <= a && a < x.end);
          return r ? backing[Number(r.fileOffset + (a - r.start))] : undefined;
        };
        for (const { addr: a, len } of reads) {
          const got = mem.read(BigInt(a), len);
          if (len < 0) {
            assert.equal(got, undefined);
            continue;
          }
          const expected: number[] = [];
          let inside = true;
          for (let i = 0; i < len; i++) {
            const b = byteAt(BigInt(a + i));
            if (b === undefined) inside = false;
            else expected.push(b);
          }
          if (len === 0) inside = byteAt(BigInt(a)) !== undefined;
          if (!inside) assert.equal(got, undefined);
          else assert.deepEqual([...(got as Buffer)], expected);
        }
      },
    ),
    { numRuns: 300 },
  );
});

test("fuzz: parseMtreeFlat on mutated text throws nothing but IntrospectionError", () => {
  fc.assert(
    fc.property(fc.array(fc.record({ at: fc.nat(), text: fc.string({ maxLength: 12 }) }), { maxLength: 8 }), (edits) => {
      let text = MTREE_PC_4G + MTREE_PC_256M;
      for (const e of edits) {
        const at = e.at % (text.length + 1);
        text = text.slice(0, at) + e.text + text.slice(at + e.text.length);
      }
      try {
        const ranges = parseMtreeFlat(text);
        for (const r of ranges) assert.ok(r.end > r.start);
        try {
          ramRegionsFromMtree(ranges);
        } catch (err) {
          assert.ok(err instanceof IntrospectionError, String(err));
        }
      } catch (err) {
        assert.ok(err instanceof IntrospectionError, String(err));
      }
    }),
    { numRuns: 500 },
  );
});
