import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { MAX_SYSCALLS, readSyscallTable, resolveHandler, syscallTableExtent, trimPadding } from "./syscall-table.ts";
import { buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel();
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });

test("the table's extent comes from the next symbol; its padding is trimmed; entries resolve to __x64_sys_*", () => {
  const ext = syscallTableExtent(model.symbols);
  assert.deepEqual(ext, { address: g.symbols.get("sys_call_table"), maxEntries: 41 });
  const raw = readSyscallTable(model.kernel, ext?.address ?? 0n, ext?.maxEntries ?? 0);
  assert.equal(raw?.length, 41);
  assert.equal(raw?.[40], 0n, "alignment padding");
  const entries = trimPadding(raw ?? []);
  assert.equal(entries.length, 40);
  const layout = kernelLayout(model);
  assert.deepEqual(resolveHandler(model.symbols, layout, entries[0] as bigint), { name: "__x64_sys_read", inText: true });
  // getpid's handler shares its address with __do_sys_getpid: the __x64_sys_ alias is found.
  assert.deepEqual(resolveHandler(model.symbols, layout, entries[14] as bigint), { name: "__x64_sys_getpid", inText: true });
  assert.deepEqual(resolveHandler(model.symbols, layout, entries[39] as bigint), { name: "__x64_sys_ni_syscall", inText: true });
  assert.deepEqual(resolveHandler(model.symbols, layout, (entries[0] as bigint) + 4n), { name: undefined, inText: true });
  assert.deepEqual(resolveHandler(model.symbols, layout, 0xffff_ffff_c000_0000n), { name: undefined, inText: false });
});

test("reads are bounded and fail softly", () => {
  const ext = syscallTableExtent(model.symbols);
  assert.equal(readSyscallTable(model.kernel, ext?.address ?? 0n, MAX_SYSCALLS + 1), undefined);
  assert.equal(readSyscallTable(model.kernel, ext?.address ?? 0n, -1), undefined);
  assert.equal(readSyscallTable(model.kernel, 0xffff_ffff_0000_0000n, 4), undefined);
  fc.assert(fc.property(fc.array(fc.bigInt({ min: 0n, max: 3n })), (xs) => assert.ok(trimPadding(xs).length <= xs.length && (trimPadding(xs).at(-1) ?? 1n) !== 0n)));
});
