import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { checkPagePermissions, walkRange, type RangePiece } from "./page-permissions.ts";
import { translate, type PagingLevels } from "./page-walk.ts";
import { BufferPhysicalMemory } from "./physical-memory.ts";
import { PageTableBuilder } from "./testing/synthetic-guest.ts";

const MiB = 0x10_0000;
const KTEXT = 0xffff_ffff_8100_0000n;

function setup(levels: PagingLevels) {
  const ram = Buffer.alloc(16 * MiB);
  const pt = new PageTableBuilder(ram, levels, { start: 0x10_0000n, end: 0x30_0000n });
  return { ram, pt, mem: new BufferPhysicalMemory(ram), root: { base: pt.root, levels } };
}

const sign = (va: bigint, levels: PagingLevels): bigint => {
  const bits = BigInt(12 + 9 * levels);
  return (va & (1n << (bits - 1n))) !== 0n ? va | (((1n << 64n) - 1n) ^ ((1n << bits) - 1n)) : va;
};

for (const levels of [4, 5] as const) {
  test(`property (${levels}-level): walkRange agrees with translate on every page of the range`, () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.record({ slot: fc.integer({ min: 0, max: 15 }), frame: fc.integer({ min: 0x20, max: 0x3f }), size: fc.constantFrom<4096 | 0x200000>(4096, 0x200000), w: fc.boolean(), nx: fc.boolean() }), { selector: (m) => m.slot, maxLength: 10 }),
        (maps) => {
          const { pt, mem, root } = setup(levels);
          for (const m of maps) pt.map(KTEXT + BigInt(m.slot) * 0x20_0000n, BigInt(m.frame) * 0x20_0000n - (m.size === 4096 ? 0x1000n : 0n), m.size, { writable: m.w, nx: m.nx });
          const start = KTEXT;
          const end = KTEXT + 16n * 0x20_0000n;
          const pieces: RangePiece[] = [];
          walkRange(mem, root, start, end, (p) => pieces.push(p));
          // Pieces tile the range.
          let at = start & ((1n << BigInt(12 + 9 * levels)) - 1n);
          for (const p of pieces) {
            assert.equal(p.start, at);
            at = p.end;
          }
          for (let va = start; va < end; va += 0x1_0000n) {
            const t = translate(mem, root, va);
            const z = va & ((1n << BigInt(12 + 9 * levels)) - 1n);
            const p = pieces.find((x) => z >= x.start && z < x.end) as RangePiece;
            assert.equal(p.mapped, t.mapped, sign(z, levels).toString(16));
            if (p.mapped && t.mapped) {
              assert.equal(p.paddr + (z - p.start), t.paddr);
              assert.deepEqual([p.writable, p.user, p.nx, p.pageSize], [t.writable, t.user, t.nx, t.pageSize]);
            }
          }
        },
      ),
      { numRuns: 60 },
    );
  });
}

test("checkPagePermissions: writable, no-execute, executable, remapped and unmapped ranges, merged and capped", () => {
  const { pt, mem, root } = setup(4);
  pt.map(KTEXT, 0x40_0000n, 0x200000, { writable: false, nx: false });
  pt.map(KTEXT + 0x20_0000n, 0xa0_0000n, 0x200000, { writable: true, nx: false });
  for (let i = 0n; i < 4n; i++) pt.map(KTEXT + 0x40_0000n + i * 0x1000n, 0x80_0000n + i * 0x1000n, 4096, { writable: false, nx: i !== 2n });
  const pa = (va: bigint): bigint => va - KTEXT + 0x40_0000n;
  const r = checkPagePermissions(mem, root, [
    { name: "text", start: KTEXT, end: KTEXT + 0x40_0000n, executable: true, expectPhys: pa },
    { name: "rodata", start: KTEXT + 0x40_0000n, end: KTEXT + 0x40_5000n, executable: false, expectPhys: (va) => va - KTEXT - 0x40_0000n + 0x80_0000n },
  ]);
  const got = r.problems.map((p) => `${p.rule}:${p.kind}:${(p.start - KTEXT).toString(16)}-${(p.end - KTEXT).toString(16)}`);
  assert.deepEqual(got, ["text:writable:200000-400000", "text:remapped:200000-400000", "rodata:executable:402000-403000", "rodata:unmapped:404000-405000"]);
  const capped = checkPagePermissions(mem, root, [{ name: "all", start: KTEXT, end: KTEXT + 0x80_0000n, executable: false, expectPhys: () => 0n }], 2);
  assert.equal(capped.problems.length, 2);
  assert.ok(capped.omitted > 0);
  // Not a canonical range: a problem, not an exception.
  assert.equal(checkPagePermissions(mem, root, [{ name: "x", start: 0x0000_8000_0000_0000n, end: 0x0000_8000_0000_1000n, executable: undefined, expectPhys: undefined }]).problems[0]?.kind, "unmapped");
});

test("fuzz: page tables full of garbage give problems, never exceptions or unbounded work", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 4096, maxLength: 4096 }), fc.uint8Array({ minLength: 4096, maxLength: 4096 }), (a, b) => {
      const { ram, mem, root } = setup(4);
      Buffer.from(a).copy(ram, Number(root.base));
      Buffer.from(b).copy(ram, Number(root.base) + 4096);
      const r = checkPagePermissions(mem, root, [{ name: "text", start: KTEXT, end: KTEXT + 0x100_0000n, executable: true, expectPhys: (va) => va }]);
      assert.ok(r.problems.length <= 16 && r.translations <= 300_000);
    }),
    { numRuns: 100 },
  );
});
