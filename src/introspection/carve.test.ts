import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { carve } from "./carve.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { locateModule, locateTask, unlinkModule, unlinkTask } from "./testing/attacker.ts";
import { LAYOUT, buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel();
const pristine = Buffer.from(g.ram);
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
const layout = kernelLayout(model);
const targets = {
  schedClasses: ["stop_sched_class", "dl_sched_class", "rt_sched_class", "fair_sched_class", "idle_sched_class"].map((n) => g.symbols.get(n) as bigint),
  moduleKtype: g.symbols.get("module_ktype"),
  directMapBase: g.directMapBase,
};

test("the carve finds every live task and module, wherever the lists say they are not", () => {
  const victim = locateTask(model, 12);
  const mod = locateModule(model, g.modules[0]?.name ?? "");
  assert.ok(victim && mod);
  unlinkTask(model, g.writer, victim);
  unlinkModule(model, g.writer, mod);
  const r = carve(g.mem, model, layout, targets);
  const pids = r.tasks.map((t) => t.pid).sort((a, b) => a - b);
  // Live tasks: everything with a PID (init_task and the second idle task have none and are not attached).
  assert.deepEqual(pids, g.tasks.filter((t) => t.pid !== 0).map((t) => t.pid).sort((a, b) => a - b));
  assert.equal(r.unattached, 2);
  assert.deepEqual(r.modules.map((m) => m.name).sort(), [...g.modules.map((m) => m.name)].sort());
  assert.equal(r.bytesScanned, g.ram.length);
  assert.equal(r.truncated, false);
  pristine.copy(g.ram);
});

test("a stale copy of a task (freed memory) is not a live task", () => {
  const t1 = g.tasks.find((t) => t.pid === 13);
  g.writeVa(g.directMapBase + 0x1f0_0000n, g.readVa(t1?.address as bigint, LAYOUT.task.size));
  const r = carve(g.mem, model, layout, targets);
  assert.equal(r.tasks.filter((t) => t.pid === 13).length, 1);
  assert.equal(r.unattached, 3);
  pristine.copy(g.ram);
});

test("fuzz: the carve over hostile memory is bounded and never throws", () => {
  fc.assert(
    fc.property(fc.array(fc.record({ f: fc.nat(), v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), spray: fc.boolean() }), { minLength: 1, maxLength: 40 }), (edits) => {
      pristine.copy(g.ram);
      for (const e of edits) {
        const at = g.fields[e.f % g.fields.length] as number;
        // Spray sched_class / module_ktype values to make many candidates.
        g.ram.writeBigUInt64LE(e.spray ? (targets.schedClasses[e.f % 5] as bigint) : e.v, at & ~7);
      }
      const r = carve(g.mem, model, layout, targets);
      assert.ok(r.tasks.length <= 65_536 && r.modules.length <= 65_536);
    }),
    { numRuns: 40 },
  );
  pristine.copy(g.ram);
});
