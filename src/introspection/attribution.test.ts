import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Attributor, currentAttributor, moduleRegions, retargetedBranches } from "./attribution.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { walkModuleList } from "./modules.ts";
import { LAYOUT, buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel({ modules: ["alpha", "beta"] });
const pristine = Buffer.from(g.ram);
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
const layout = kernelLayout(model);

test("addresses are attributed to a symbol, a module (by its mem[] regions), a trampoline, or unknown memory", () => {
  const a = currentAttributor(model, layout);
  const alpha = g.modules[0]?.address as bigint;
  assert.equal(a.attribute(g.symbols.get("late_text_function") as bigint).description, "kernel text late_text_function");
  assert.deepEqual(a.attribute(alpha + 0x1010n), { kind: "module", module: "alpha", hidden: false, offset: "0x10", description: 'module "alpha" +0x10' });
  // The module's struct itself (lower half here) is not one of its regions.
  assert.equal(a.attribute(alpha + 0x10n).kind, "unknown");
  assert.equal(a.attribute(0xffff_ffff_c030_0000n).description, "unknown memory in the module area (0xffffffffc0300000): no loaded module owns it");
  assert.equal(a.attribute(0xffff_8880_0000_1000n).kind, "unknown");
  g.addFtraceOps(0xffff_ffff_c010_0000n, 0x100);
  assert.equal(currentAttributor(model, layout).attribute(0xffff_ffff_c010_0080n).kind, "ftrace-trampoline");
  assert.equal(new Attributor(model, layout, [], []).attribute(alpha + 0x1010n).kind, "unknown");
  pristine.copy(g.ram);
});

test("fuzz: module regions read from hostile struct modules stay inside the module area and bounded", () => {
  const mods = walkModuleList(model.kernel, layout.module as NonNullable<typeof layout.module>, g.symbols.get("modules") as bigint, model.pagingLevels).modules;
  const area = layout.moduleArea;
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: 0, max: 6 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.integer({ min: 0, max: 0xffff_ffff })), { maxLength: 16 }), (writes) => {
      for (const [m, i, base, size] of writes) {
        const at = (g.modules[m]?.address as bigint) + BigInt(LAYOUT.module.mem + i * LAYOUT.moduleMemory.size);
        const b = Buffer.alloc(12);
        b.writeBigUInt64LE(base, 0);
        b.writeUInt32LE(size, 8);
        g.writeVa(at, b);
      }
      model.kernel.clearCache();
      g.mem.clearCache();
      const regions = moduleRegions(model, layout, mods, []);
      assert.ok(regions.length <= mods.length * 7);
      for (const r of regions) assert.ok(r.start >= area.start && r.end <= area.end && r.end > r.start);
      const a = new Attributor(model, layout, regions);
      for (const [, , base] of writes) assert.equal(typeof a.attribute(base).description, "string");
      pristine.copy(g.ram);
    }),
    { numRuns: 300 },
  );
  model.kernel.clearCache();
  g.mem.clearCache();
});

test("retargeted branches: a rewired call is found with both targets; arbitrary bytes stay bounded", () => {
  const va = 0xffff_ffff_8100_0000n;
  const old = Buffer.alloc(64, 0x90);
  const now = Buffer.from(old);
  old[8] = 0xe8;
  old.writeInt32LE(0x100, 9);
  now[8] = 0xe8;
  now.writeInt32LE(0x200, 9);
  assert.deepEqual(retargetedBranches(va, old, now), [{ address: va + 8n, opcode: "call", was: va + 13n + 0x100n, now: va + 13n + 0x200n }]);
  assert.deepEqual(retargetedBranches(va, old, old), []);
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 256 }), fc.uint8Array({ minLength: 0, maxLength: 256 }), (x, y) => {
      const r = retargetedBranches(va, Buffer.from(x), Buffer.from(y));
      assert.ok(r.length <= 16);
      for (const b of r) assert.ok(b.address >= va && b.address < va + 256n);
    }),
    { numRuns: 500 },
  );
});
