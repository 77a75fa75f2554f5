import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { BufferPhysicalMemory } from "./physical-memory.ts";
import { IntrospectionError } from "./errors.ts";
import { VirtualMemory, describeNotMapped, isCanonical, la57FromCr4, parseControlRegisters, rootFromCr3, translate, type PagingLevels } from "./page-walk.ts";
import { PageTableBuilder } from "./testing/synthetic-guest.ts";

const MiB = 1024 * 1024;

function setup(levels: PagingLevels, ramBytes = 8 * MiB) {
  const ram = Buffer.alloc(ramBytes);
  const pt = new PageTableBuilder(ram, levels, { start: 0x10_0000n, end: 0x20_0000n });
  const mem = new BufferPhysicalMemory(ram);
  return { ram, pt, mem, root: { base: pt.root, levels } };
}

for (const levels of [4, 5] as const) {
  test(`${levels}-level paging: 4 KiB, 2 MiB and 1 GiB pages translate with their offsets`, () => {
    const { pt, mem, root } = setup(levels);
    const kva = levels === 5 ? 0xff11_0000_0000_0000n : 0xffff_8880_0000_0000n;
    pt.map(kva + 0x1000n, 0x30_0000n, 4096, { writable: true });
    pt.map(kva + 0x20_0000n, 0x40_0000n, 0x200000);
    pt.map(kva + 0x4000_0000n, 0x4000_0000n, 0x40000000);
    const a = translate(mem, root, kva + 0x1234n);
    assert.ok(a.mapped);
    assert.equal(a.paddr, 0x30_0234n);
    assert.equal(a.pageSize, 4096);
    const b = translate(mem, root, kva + 0x20_0000n + 0x1_2345n);
    assert.ok(b.mapped);
    assert.equal(b.paddr, 0x41_2345n);
    assert.equal(b.pageSize, 0x200000);
    const c = translate(mem, root, kva + 0x4000_0000n + 0x123_4567n);
    assert.ok(c.mapped);
    assert.equal(c.paddr, 0x4123_4567n, "1 GiB pages may point past RAM: the translation is still reported");
    assert.equal(c.pageSize, 0x40000000);
    const miss = translate(mem, root, kva + 0x3000n);
    assert.deepEqual(miss, { mapped: false, reason: "not-present", level: 1 });
  });
}

test("permissions accumulate: RW and US must hold at every level, NX at any level disables execution", () => {
  const { pt, mem, root } = setup(4);
  pt.map(0x1000n, 0x30_0000n, 4096, { writable: true, user: true }, { writable: false, user: true });
  pt.map(0x80_0000_0000n, 0x31_0000n, 4096, { writable: true, user: true }, { writable: true, user: false, nx: true });
  const a = translate(mem, root, 0x1000n);
  assert.ok(a.mapped);
  assert.equal(a.writable, false, "read-only upper level wins");
  assert.equal(a.user, true);
  assert.equal(a.nx, false);
  const b = translate(mem, root, 0x80_0000_0000n);
  assert.ok(b.mapped);
  assert.deepEqual([b.writable, b.user, b.nx], [true, false, true]);
});

test("not-mapped results are typed: non-canonical, table outside RAM, reserved bits", () => {
  const { pt, mem, root } = setup(4);
  assert.deepEqual(translate(mem, root, 0x0000_8000_0000_0000n), { mapped: false, reason: "non-canonical", level: 0 });
  assert.equal(isCanonical(0xffff_8000_0000_0000n, 4), true);
  assert.equal(isCanonical(0xff00_0000_0000_0000n, 4), false);
  assert.equal(isCanonical(0xff00_0000_0000_0000n, 5), true);
  assert.equal(isCanonical(1n << 64n, 5), false);
  // A PML4 entry (slot 1) pointing at a table beyond RAM.
  pt.setRaw(0x80_0000_0000n, 4, 0x7fff_f000_0000n | 3n);
  assert.deepEqual(translate(mem, root, 0x80_0000_0000n), { mapped: false, reason: "table-outside-ram", level: 3 });
  // PS set in a PML4 entry (slot 2) is reserved.
  pt.setRaw(0x100_0000_0000n, 4, 0x30_0000n | 0x83n);
  assert.deepEqual(translate(mem, root, 0x100_0000_0000n), { mapped: false, reason: "reserved-bits", level: 4 });
  // A 2 MiB entry with bits 13..20 set is reserved; bit 12 (PAT) is fine.
  pt.map(0x4000_0000n, 0x60_0000n, 0x200000);
  pt.setRaw(0x4000_0000n, 2, 0x60_0000n | 0x2000n | 0x81n);
  assert.equal(translate(mem, root, 0x4000_0000n).mapped, false);
  pt.setRaw(0x4000_0000n, 2, 0x60_0000n | 0x1000n | 0x81n);
  assert.equal(translate(mem, root, 0x4000_0000n).mapped, true);
  assert.equal(translate(mem, { base: 0x7fff_0000_0000n, levels: 4 }, 0x1000n).mapped, false, "root outside RAM");
  assert.match(describeNotMapped(0x10n, { mapped: false, reason: "not-present", level: 2 }), /not present|not-present/);
});

test("rootFromCr3 drops the PCID and the KPTI user bit; la57FromCr4 reads bit 12", () => {
  assert.deepEqual(rootFromCr3(0x2382000n, 5), { base: 0x2382000n, levels: 5 });
  assert.equal(rootFromCr3(0x2383005n, 4).base, 0x2382000n);
  assert.equal(rootFromCr3((1n << 63n) | 0x2383fffn, 4).base, 0x2382000n);
  assert.equal(la57FromCr4(0x751ef0n), true);
  assert.equal(la57FromCr4(0x750ef0n), false);
});

test("VirtualMemory reads across page boundaries into scattered physical pages and says where a read fails", () => {
  const { ram, pt, mem, root } = setup(5);
  const va = 0xffff_ffff_c000_0000n;
  pt.map(va, 0x50_0000n, 4096);
  pt.map(va + 0x1000n, 0x30_0000n, 4096);
  ram.fill(0xaa, 0x50_0000, 0x50_1000);
  ram.fill(0xbb, 0x30_0000, 0x30_1000);
  const vm = new VirtualMemory(mem, root);
  const data = vm.read(va + 0xff0n, 32);
  assert.ok(data);
  assert.deepEqual([...data.subarray(14, 18)], [0xaa, 0xaa, 0xbb, 0xbb]);
  const r = vm.readDetailed(va + 0x1ff0n, 32);
  assert.equal(r.ok, false);
  if (!r.ok) {
    assert.equal(r.vaddr, va + 0x2000n);
    assert.equal(r.translation?.reason, "not-present");
  }
  assert.equal(vm.read(va, -1), undefined);
  assert.equal(vm.read((1n << 64n) - 8n, 16), undefined, "no wrap-around past 2^64");
  assert.equal(vm.readU64(va), 0xaaaaaaaaaaaaaaaan);
  // The software TLB is per sweep: a remap is only seen after clearCache().
  pt.map(va, 0x30_0000n, 4096);
  assert.equal(vm.read(va, 1)?.[0], 0xaa);
  vm.clearCache();
  assert.equal(vm.read(va, 1)?.[0], 0xbb);
});

test("large pages are cached per 2 MiB / 1 GiB frame and dropped by clearCache", () => {
  const { pt, mem, root } = setup(4, 16 * MiB);
  const va = 0xffff_ffff_8120_0000n;
  pt.map(va, 0x40_0000n, 0x200000);
  const vm = new VirtualMemory(mem, root);
  for (const off of [0n, 0x1234n, 0x1f_f000n, 0x1f_ffffn]) {
    const t = vm.translate(va + off);
    assert.deepEqual(t, translate(mem, root, va + off), `offset ${off}`);
    assert.ok(t.mapped && t.paddr === 0x40_0000n + off && t.pageSize === 0x200000);
  }
  // Remapped underneath: the cached frame answers until the sweep ends.
  pt.map(va, 0x60_0000n, 0x200000);
  const stale = vm.translate(va + 0x10n);
  assert.ok(stale.mapped && stale.paddr === 0x40_0010n);
  vm.clearCache();
  const fresh = vm.translate(va + 0x10n);
  assert.ok(fresh.mapped && fresh.paddr === 0x60_0010n);
  // A 1 GiB page.
  const g = 0xffff_8880_0000_0000n;
  pt.map(g, 0n, 0x40000000, { writable: true });
  const a = vm.translate(g + 0x12_3456n);
  const b2 = vm.translate(g + 0x3fff_fff0n);
  assert.ok(a.mapped && a.paddr === 0x12_3456n && a.pageSize === 0x40000000);
  assert.ok(b2.mapped && b2.paddr === 0x3fff_fff0n);
});

test("property: translate agrees with a model of the mappings that were built", () => {
  fc.assert(
    fc.property(
      fc.constantFrom<PagingLevels>(4, 5),
      fc.uniqueArray(fc.record({ slot: fc.integer({ min: 0, max: 63 }), frame: fc.integer({ min: 0x60, max: 0x7f }), size: fc.constantFrom<4096 | 0x200000>(4096, 0x200000) }), {
        selector: (m) => m.slot,
        maxLength: 12,
      }),
      fc.array(fc.integer({ min: 0, max: 64 * 0x20_0000 - 1 }), { maxLength: 20 }),
      (levels, maps, probes) => {
        const { pt, mem, root } = setup(levels, 16 * MiB);
        const base = 0xffff_ffff_8000_0000n;
        // Each slot is its own 2 MiB window: either one 2 MiB page or one 4 KiB page at its start.
        for (const m of maps) {
          const pa = m.size === 4096 ? BigInt(m.frame) * 0x1000n + 0x60_0000n : 0x80_0000n;
          pt.map(base + BigInt(m.slot) * 0x20_0000n, pa, m.size);
        }
        for (const p of probes) {
          const va = base + BigInt(p);
          const slot = Math.floor(p / 0x20_0000);
          const off = BigInt(p % 0x20_0000);
          const m = maps.find((x) => x.slot === slot);
          const t = translate(mem, root, va);
          if (!m || (m.size === 4096 && off >= 4096n)) assert.equal(t.mapped, false);
          else {
            assert.ok(t.mapped);
            assert.equal(t.paddr, (m.size === 4096 ? BigInt(m.frame) * 0x1000n + 0x60_0000n : 0x80_0000n) + off);
          }
        }
      },
    ),
    { numRuns: 150 },
  );
});

test("fuzz: walks over random memory never throw, never loop, and only read within RAM", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 4096, maxLength: 3 * 4096 }),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      fc.constantFrom<PagingLevels>(4, 5),
      fc.integer({ min: 0, max: 9000 }),
      (bytes, cr3, va, levels, len) => {
        const ram = Buffer.from(bytes);
        // Point some entries back into RAM so walks go several levels deep (including self-references).
        for (let i = 0; i + 8 <= ram.length; i += 64) ram.writeBigUInt64LE((BigInt(i) & ~0xfffn) | 0x7n, i);
        let reads = 0;
        const inner = new BufferPhysicalMemory(ram);
        const counting = {
          ...inner,
          regions: inner.regions,
          size: inner.size,
          read: (a: bigint, l: number) => {
            reads++;
            return inner.read(a, l);
          },
          readInto: inner.readInto.bind(inner),
          clearCache: () => {},
          close: () => {},
        };
        const root = rootFromCr3(cr3 & 0x1fffn, levels);
        const t = translate(counting, root, va);
        assert.ok(reads <= levels);
        if (t.mapped) assert.ok(t.paddr === t.pageBase + (va & BigInt(t.pageSize - 1)));
        const vm = new VirtualMemory(counting, root);
        const r = vm.readDetailed(va, len);
        if (r.ok) assert.equal(r.data.length, len);
      },
    ),
    { numRuns: 400 },
  );
});

test("parseControlRegisters reads CR0/CR3/CR4/EFER/IDTR from QEMU 7.2's info registers", () => {
  const text = `
CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000020 RDX=0000000000000000
GDT=     fffffe12365ab000 0000007f
IDT=     fffffe0000000000 00000fff
CR0=80050033 CR2=000000002253d7f0 CR3=0000000002382000 CR4=00751ef0
DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000
EFER=0000000000000d01
CPU#1
CR0=80050033 CR2=0000000000000000 CR3=0000000004c0a006 CR4=00751ef0
`;
  const regs = parseControlRegisters(text);
  assert.deepEqual(regs, [
    { cpu: 0, cr0: 0x80050033n, cr3: 0x2382000n, cr4: 0x751ef0n, efer: 0xd01n, idtBase: 0xfffffe0000000000n, idtLimit: 0xfff },
    { cpu: 1, cr0: 0x80050033n, cr3: 0x4c0a006n, cr4: 0x751ef0n, efer: undefined, idtBase: undefined, idtLimit: undefined },
  ]);
  assert.equal(parseControlRegisters("CR0=1 CR3=2 CR4=3").length, 1, "a single CPU without a CPU# header");
  assert.throws(() => parseControlRegisters("CPU#0\nRAX=0\n"), IntrospectionError);
});
