import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { MAX_HOT_PAGES, TextBaseline, diffRuns, planPages, takeTextBaseline, targetPolicy, textRegions, type TextBaselineData } from "./text-integrity.ts";
import { buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

function setup(keepAllBytes = false) {
  const g = buildSyntheticKernel();
  const cpu = g.regs[0] as (typeof g.regs)[number];
  const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
  const layout = kernelLayout(model);
  const xs = g.symbols.get("x64_sys_call") as bigint;
  const data = takeTextBaseline(model, layout, { criticalFunctions: [{ name: "x64_sys_call", start: xs, end: xs + 1400n }], keepAllBytes });
  const tb = TextBaseline.decode(JSON.parse(JSON.stringify(data)) as TextBaselineData);
  const all = Array.from({ length: tb.totalPages }, (_, i) => i);
  return { g, model, layout, data, tb, all, policy: targetPolicy(model, layout) };
}

test("regions, baseline and a clean check of every page", () => {
  const { layout, tb, data, all, model, policy } = setup();
  const regions = textRegions(layout);
  assert.deepEqual(
    regions.map((r) => [r.name, r.pages, r.firstPage]),
    [
      ["text", 512, 0],
      ["rodata", 128, 512],
    ],
  );
  assert.equal(tb.totalPages, 640);
  assert.ok(data.criticalPages.length >= 1 && data.keptPages.length === data.criticalPages.length, "critical pages keep their bytes");
  assert.ok(tb.hasBytes(data.criticalPages[0] as number));
  const v = tb.check(model, all, policy);
  assert.equal(v.length, 640);
  assert.ok(v.every((x) => x.status === "same"));
});

test("a change at a legitimate site is explained; one elsewhere is changed, with exact diffs where bytes were kept", () => {
  const { g, tb, model, policy } = setup();
  const xs = g.symbols.get("x64_sys_call") as bigint;
  const page = tb.pagesOf(xs, xs + 1n)[0] as number;
  const ftrace = g.sites.find((s) => s.kind === "ftrace" && s.address === xs + 4n);
  assert.ok(ftrace);
  g.ftraceOn(ftrace);
  let [v] = tb.check(model, [page], policy);
  assert.equal(v?.status, "explained");
  if (v?.status === "explained") assert.deepEqual(v.patched, { ftrace: 1 });
  g.writeVa(xs + 100n, [0xcc, 0xcc]);
  [v] = tb.check(model, [page], policy);
  assert.equal(v?.status, "changed");
  if (v?.status === "changed") {
    assert.equal(v.diffs?.length, 1);
    assert.equal(v.diffs?.[0]?.address, xs + 100n);
    assert.equal(v.diffs?.[0]?.found, "cccc");
  }
  // A page whose bytes were not kept is located to the page only.
  const other = tb.pagesOf(g.symbols.get("late_text_function") as bigint, (g.symbols.get("late_text_function") as bigint) + 1n)[0] as number;
  assert.equal(tb.hasBytes(other), false);
  g.writeVa((g.symbols.get("late_text_function") as bigint) + 20n, [0xcc]);
  [v] = tb.check(model, [other], policy);
  assert.equal(v?.status, "changed");
  if (v?.status === "changed") {
    assert.equal(v.diffs, undefined);
    const f = g.symbols.get("late_text_function") as bigint;
    assert.deepEqual(v.blocks, [(f + 20n) & ~255n], "located to its 256-byte block");
  }
});

test("keepAllBytes gives exact diffs for every page", () => {
  const { g, tb, model, policy } = setup(true);
  const f = g.symbols.get("late_text_function") as bigint;
  g.writeVa(f + 20n, [0xcc]);
  const [v] = tb.check(model, tb.pagesOf(f, f + 1n), policy);
  assert.equal(v?.status, "changed");
  if (v?.status === "changed") assert.equal(v.diffs?.[0]?.address, f + 20n);
});

test("an unmapped page is unreadable, not an exception", () => {
  const { g, tb, model, policy } = setup();
  // Clear the rodata page-table entry of rodata's first page (4 KiB mapped).
  const va = g.rodata.start;
  let table = model.kernelRoot.base;
  for (let level = model.kernelRoot.levels; level > 1; level--) {
    const idx = (va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn;
    table = g.ram.readBigUInt64LE(Number(table + idx * 8n)) & 0x000f_ffff_ffff_f000n;
  }
  g.ram.writeBigUInt64LE(0n, Number(table + ((va >> 12n) & 0x1ffn) * 8n));
  model.kernel.clearCache();
  const [v] = tb.check(model, [512], policy);
  assert.deepEqual(v, { page: 512, status: "unreadable", address: va });
});

test("planPages: the window, critical and hot pages, sorted and unique, wrapping around", () => {
  assert.deepEqual(planPages(10, 8, 4, [5], [3, 9]), { pages: [0, 1, 3, 5, 8, 9], next: 2, window: 4 });
  assert.deepEqual(planPages(0, 0, 4, [], []), { pages: [], next: 0, window: 0 });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 5000 }), fc.nat(), fc.nat({ max: 400 }), fc.array(fc.integer({ min: -5, max: 6000 })), fc.array(fc.integer({ min: -5, max: 6000 }), { maxLength: 400 }), (total, cursor, per, crit, hot) => {
      const p = planPages(total, cursor, per, crit, hot);
      assert.ok(p.pages.every((x, i) => Number.isInteger(x) && x >= 0 && x < total && (i === 0 || x > (p.pages[i - 1] as number))));
      assert.ok(p.pages.length <= Math.min(total, per) + crit.length + Math.min(hot.length, MAX_HOT_PAGES));
      assert.ok(p.next >= 0 && p.next < total);
      // A full pass: ceil(total / window) consecutive plans cover every page.
      if (p.window > 0 && total / p.window <= 50) {
        const seen = new Set<number>();
        let c = cursor;
        for (let i = 0; i < Math.ceil(total / p.window); i++) {
          const q = planPages(total, c, per, [], []);
          q.pages.forEach((x) => seen.add(x));
          c = q.next;
        }
        assert.equal(seen.size, total);
      }
    }),
  );
});

test("diffRuns merges nearby changes, caps runs and their count", () => {
  const a = Buffer.alloc(256, 0);
  const b = Buffer.from(a);
  b[10] = 1;
  b[12] = 1;
  b[100] = 2;
  assert.deepEqual(diffRuns(0x1000n, a, b), [
    { address: 0x100an, expected: "000000", found: "010001" },
    { address: 0x1064n, expected: "00", found: "02" },
  ]);
  const c = Buffer.alloc(4096, 0xff);
  assert.ok(diffRuns(0n, Buffer.alloc(4096), c).length <= 16);
  assert.ok(diffRuns(0n, Buffer.alloc(4096), c).every((d) => d.found.length <= 64));
});

test("a malformed text baseline is refused with the reason", () => {
  const { data } = setup();
  const bad = (d: unknown, re: RegExp): void => assert.throws(() => TextBaseline.decode(d as TextBaselineData), (e: unknown) => e instanceof IntrospectionError && re.test(e.message));
  bad({ ...data, regions: [] }, /no regions/);
  bad({ ...data, regions: [{ name: "text", start: "0x1001", end: "0x3000" }] }, /page-aligned/);
  bad({ ...data, pageHashes: "AAAA" }, /hash bytes/);
  bad({ ...data, blockCrcs: "AAAA" }, /CRC bytes/);
  bad({ ...data, criticalPages: [1_000_000] }, /critical/);
  bad({ ...data, keptPages: [{ page: 0, data: "AAAA" }] }, /kept page/);
  bad({ ...data, functions: [{ name: "x", start: "0x10", end: "0x10" }] }, /function/);
});
