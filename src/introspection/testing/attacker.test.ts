import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IntrospectionError } from "../errors.ts";
import { buildKernelModel } from "../kernel-model.ts";
import { RamFileWriter, locateModule, locateTask, overwriteSyscall, patchKernel, redirectIdtGate, relinkListNode, syscallEntryAddress, unlinkModule, unlinkTask } from "./attacker.ts";
import { buildSyntheticKernel } from "./synthetic-kernel.ts";

test("the attacker's helpers change exactly what they say, and can put it back", () => {
  const g = buildSyntheticKernel();
  const pristine = Buffer.from(g.ram);
  const cpu = g.regs[0] as (typeof g.regs)[number];
  const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
  const t = locateTask(model, 13);
  assert.equal(t?.comm, "proc3");
  const u = unlinkTask(model, g.writer, t as NonNullable<typeof t>);
  assert.ok(!g.ram.equals(pristine));
  assert.ok(relinkListNode(model, g.writer, u));
  assert.ok(g.ram.equals(pristine), "relinking restores every byte");
  const m = locateModule(model, "failover");
  assert.ok(m);
  const um = unlinkModule(model, g.writer, m);
  assert.equal(locateModule(model, "failover"), undefined);
  assert.ok(relinkListNode(model, g.writer, um));
  assert.ok(g.ram.equals(pristine));
  assert.equal(syscallEntryAddress(model, 2), (g.symbols.get("sys_call_table") as bigint) + 16n);
  const old = overwriteSyscall(model, g.writer, 2, 0x1234n);
  assert.equal(old, g.symbols.get("__x64_sys_open"));
  overwriteSyscall(model, g.writer, 2, old);
  const gate = redirectIdtGate(model, g.writer, 0x80, 0xffff_ffff_8100_1234n);
  assert.equal(gate.length, 16);
  patchKernel(model, g.writer, (g.symbols.get("idt_table") as bigint) + 0x800n, gate);
  assert.ok(g.ram.equals(pristine));
  assert.throws(() => patchKernel(model, g.writer, 0x10n, Buffer.from([1])), IntrospectionError);
  assert.equal(locateTask(model, 4242), undefined);
});

test("RamFileWriter writes guest-physical addresses at their file offsets", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-attacker-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "ram");
  writeFileSync(path, Buffer.alloc(0x3000));
  const w = RamFileWriter.open(path, [
    { name: "mem", start: 0n, end: 0x1000n, fileOffset: 0n, readOnly: false },
    { name: "mem", start: 0x1_0000_0000n, end: 0x1_0000_2000n, fileOffset: 0x1000n, readOnly: false },
  ]);
  w.write(0x1_0000_0010n, Buffer.from([7, 8]));
  assert.throws(() => w.write(0x2000n, Buffer.from([1])), IntrospectionError);
  assert.throws(() => w.write(0xfffn, Buffer.from([1, 2])), IntrospectionError, "crossing a region's end");
  w.close();
  assert.throws(() => w.write(0n, Buffer.from([1])), IntrospectionError);
  const f = readFileSync(path);
  assert.deepEqual([f[0x1010], f[0x1011]], [7, 8]);
});
