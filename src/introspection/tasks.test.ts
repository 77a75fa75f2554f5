import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { isAttached, readTask, walkPidTable, walkTaskList } from "./tasks.ts";
import { LAYOUT, buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel({ processes: 12 });
const pristine = Buffer.from(g.ram);
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
const layout = kernelLayout(model);
const to = layout.task as NonNullable<typeof layout.task>;
const po = layout.pid as NonNullable<typeof layout.pid>;
const initTask = g.symbols.get("init_task") as bigint;
const ns = g.symbols.get("init_pid_ns") as bigint;
const k = model.kernel;

test("the task list holds the thread-group leaders, with their fields", () => {
  const w = walkTaskList(k, to, initTask, model.pagingLevels);
  assert.equal(w.complete, true);
  assert.equal(w.badBackLinks, 0);
  const leaders = g.tasks.filter((t) => t.pid !== 0 && t.pid === t.tgid).map((t) => t.pid);
  assert.deepEqual(w.tasks.map((t) => t.pid), leaders);
  const init = w.tasks[0];
  assert.deepEqual([init?.pid, init?.tgid, init?.ppid, init?.comm, init?.kernelThread, init?.exitState], [1, 1, 0, "init", false, 0]);
  const kw = w.tasks.find((t) => t.comm === "kworker/0");
  assert.deepEqual([kw?.ppid, kw?.kernelThread], [2, true]);
});

test("the PID table maps every PID (threads too) to its task, through a three-level xarray", () => {
  const w = walkPidTable(k, to, po, ns, model.pagingLevels);
  assert.equal(w.complete, true, w.problems.join("; "));
  assert.ok(w.nodes >= 3);
  assert.deepEqual(w.entries.map((e) => e.nr), g.tasks.filter((t) => t.pid !== 0).map((t) => t.pid).sort((a, b) => a - b));
  for (const e of w.entries) {
    const t = readTask(k, to, e.task as bigint, model.pagingLevels);
    assert.equal(t?.pid, e.nr);
    assert.ok(t && isAttached(k, t, to, po, model.pagingLevels));
  }
  // A stale copy of a task elsewhere in memory is not attached.
  const t1 = g.tasks.find((t) => t.pid === 1);
  const copyAt = g.directMapBase + 0x1f0_0000n;
  g.writeVa(copyAt, g.readVa(t1?.address as bigint, LAYOUT.task.size));
  const copy = readTask(k, to, copyAt, model.pagingLevels);
  assert.equal(copy?.pid, 1);
  assert.equal(isAttached(k, copy as NonNullable<typeof copy>, to, po, model.pagingLevels), false);
  pristine.copy(g.ram);
});

test("xarray damage ends the walk as incomplete with a reason: loops, wrong shifts, foreign parents", () => {
  const head = g.readVa(ns + 8n, 8).readBigUInt64LE(0);
  const root = head - 2n;
  const slot0 = root + BigInt(LAYOUT.xaNode.slots);
  const child = g.readVa(slot0, 8).readBigUInt64LE(0);
  // A child pointing back at its parent: a loop.
  g.writeVa(slot0 + 8n, Buffer.from(new BigUint64Array([head]).buffer));
  let w = walkPidTable(k, to, po, ns, model.pagingLevels);
  assert.equal(w.complete, false);
  assert.ok(w.problems.some((p) => /reached twice/.test(p)));
  pristine.copy(g.ram);
  // A child whose shift does not fit.
  g.writeVa(child - 2n, [18]);
  w = walkPidTable(k, to, po, ns, model.pagingLevels);
  assert.equal(w.complete, false);
  assert.ok(w.problems.some((p) => /does not fit/.test(p)));
  pristine.copy(g.ram);
  // An empty table and a single-entry head.
  g.writeVa(ns + 8n, Buffer.alloc(8));
  assert.deepEqual(walkPidTable(k, to, po, ns, model.pagingLevels).entries, []);
  pristine.copy(g.ram);
});

test("fuzz: corrupted tasks, pids and xarray nodes never make a walk throw or run away", () => {
  const heap = g.hotspots.find((h) => h.what.startsWith("heap")) as (typeof g.hotspots)[number];
  fc.assert(
    fc.property(fc.array(fc.record({ f: fc.nat(), v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), anywhere: fc.boolean(), at: fc.nat() }), { minLength: 1, maxLength: 30 }), (edits) => {
      pristine.copy(g.ram);
      for (const e of edits) {
        const at = e.anywhere ? heap.start + ((e.at % heap.length) & ~7) : (g.fields[e.f % g.fields.length] as number);
        g.ram.writeBigUInt64LE(e.v, at);
      }
      const list = walkTaskList(k, to, initTask, model.pagingLevels, 1000);
      const table = walkPidTable(k, to, po, ns, model.pagingLevels, 1000);
      assert.ok(list.tasks.length <= 1001 && table.entries.length <= 1000 && table.problems.length <= 32);
    }),
    { numRuns: 300 },
  );
  pristine.copy(g.ram);
});
