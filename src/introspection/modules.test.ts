import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { readModule, walkModuleKset, walkModuleList } from "./modules.ts";
import { LAYOUT, buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel({ modules: ["alpha", "beta", "gamma"] });
const pristine = Buffer.from(g.ram);
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
const mo = kernelLayout(model).module as NonNullable<ReturnType<typeof kernelLayout>["module"]>;
const head = g.symbols.get("modules") as bigint;
const kset = g.symbols.get("module_kset") as bigint;
const ktype = g.symbols.get("module_ktype") as bigint;

test("the modules list and the sysfs kset agree on a clean guest; built-ins are counted", () => {
  const list = walkModuleList(model.kernel, mo, head, model.pagingLevels);
  assert.equal(list.complete, true);
  assert.deepEqual(list.modules.map((m) => m.name), ["alpha", "beta", "gamma"]);
  assert.deepEqual(list.modules.map((m) => m.address), g.modules.map((m) => m.address));
  const ks = walkModuleKset(model.kernel, mo, kset, ktype, model.pagingLevels);
  assert.deepEqual([ks.complete, ks.builtin, ks.rejected], [true, 1, 0]);
  assert.deepEqual(ks.modules.map((m) => m.name), ["alpha", "beta", "gamma"]);
});

test("kset entries whose cross-pointers disagree, or with another ktype, are rejected", () => {
  const m = g.modules[1]?.address as bigint;
  // mod->mkobj.mod pointing at another module: the kobject no longer belongs to what it claims.
  g.writeVa(m + BigInt(LAYOUT.module.mkobj + LAYOUT.mkobj.mod), Buffer.from(new BigUint64Array([g.modules[0]?.address as bigint]).buffer));
  let ks = walkModuleKset(model.kernel, mo, kset, ktype, model.pagingLevels);
  assert.deepEqual([ks.modules.map((x) => x.name), ks.rejected], [["alpha", "gamma"], 1]);
  pristine.copy(g.ram);
  g.writeVa(m + BigInt(LAYOUT.module.mkobj + LAYOUT.kobject.ktype), Buffer.alloc(8));
  ks = walkModuleKset(model.kernel, mo, kset, ktype, model.pagingLevels);
  assert.equal(ks.rejected, 1);
  pristine.copy(g.ram);
  // module_kset pointing nowhere.
  assert.equal(walkModuleKset(model.kernel, mo, head + 0x10_0000n, ktype, model.pagingLevels).complete, false);
  // Names are sanitised.
  g.writeVa(m + BigInt(LAYOUT.module.name), Buffer.from("evil\x1b[2Jname\0"));
  assert.equal(readModule(model.kernel, mo, m, model.pagingLevels)?.name, "evil?[2Jname");
  pristine.copy(g.ram);
});

test("fuzz: corrupted module structures never make a walk throw", () => {
  fc.assert(
    fc.property(fc.array(fc.record({ f: fc.nat(), v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }), { minLength: 1, maxLength: 20 }), (edits) => {
      pristine.copy(g.ram);
      for (const e of edits) g.ram.writeBigUInt64LE(e.v, g.fields[e.f % g.fields.length] as number);
      assert.ok(walkModuleList(model.kernel, mo, head, model.pagingLevels, 100).modules.length <= 101);
      assert.ok(walkModuleKset(model.kernel, mo, kset, ktype, model.pagingLevels, 100).modules.length <= 101);
    }),
    { numRuns: 300 },
  );
  pristine.copy(g.ram);
});
