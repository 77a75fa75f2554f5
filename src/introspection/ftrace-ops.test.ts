import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { walkFtraceOps, MAX_FTRACE_OPS } from "./ftrace-ops.ts";
import type { FtraceOpsOffsets } from "./kernel-layout.ts";
import type { AddressSpace } from "./physical-memory.ts";

const O: FtraceOpsOffsets = { next: 8, trampoline: 144, trampolineSize: 152, directCall: 160 };
const MOD = { start: 0xffff_ffff_c000_0000n, end: 0xffff_ffff_ff00_0000n };
const BASE = 0xffff_8880_0100_0000n;
const VAR = BASE;
const END = BASE + 0x100n;

/** A little kernel heap: [BASE, BASE + size). */
function space(bytes: Buffer): AddressSpace {
  return {
    read(addr, length) {
      if (addr < BASE || addr + BigInt(length) > BASE + BigInt(bytes.length)) return undefined;
      const o = Number(addr - BASE);
      return bytes.subarray(o, o + length);
    },
  };
}
const put = (b: Buffer, va: bigint, v: bigint): void => void b.writeBigUInt64LE(v, Number(va - BASE));

function heap(ops: { tramp: bigint; size: bigint; direct?: bigint }[]): Buffer {
  const b = Buffer.alloc(0x10000);
  put(b, END + 8n, END);
  let head = END;
  ops.forEach((o, i) => {
    const at = BASE + 0x1000n + BigInt(i) * 0x200n;
    put(b, at + 144n, o.tramp);
    put(b, at + 152n, o.size);
    put(b, at + 160n, o.direct ?? 0n);
    put(b, at + 8n, head);
    head = at;
  });
  put(b, VAR, head);
  return b;
}

test("ftrace_ops_list: trampolines in the module area are collected; others, and zero-size ones, are not", () => {
  const b = heap([
    { tramp: 0xffff_ffff_c010_0000n, size: 0x140n },
    { tramp: 0n, size: 0n },
    { tramp: 0xffff_ffff_8100_0000n, size: 0x140n },
    { tramp: 0xffff_ffff_c020_0000n, size: 0n },
    { tramp: 0n, size: 0n, direct: 0xffff_ffff_c030_0000n },
    { tramp: 0n, size: 0n, direct: 0xffff_ffff_8100_1000n },
  ]);
  const w = walkFtraceOps(space(b), O, VAR, END, MOD, 4);
  assert.equal(w.complete, true);
  assert.equal(w.ops, 6);
  assert.deepEqual(w.trampolines.map((t) => [t.start, t.direct]).sort(), [[0xffff_ffff_c010_0000n, false], [0xffff_ffff_c030_0000n, true]]);
  assert.deepEqual(walkFtraceOps(space(heap([])), O, VAR, END, MOD, 4), { trampolines: [], ops: 0, complete: true, problem: undefined });
});

test("ftrace_ops_list: a loop, a NULL, an unreadable ops or too many ops yield nothing", () => {
  const b = heap([{ tramp: 0xffff_ffff_c010_0000n, size: 0x140n }, { tramp: 0xffff_ffff_c011_0000n, size: 0x140n }]);
  const first = b.readBigUInt64LE(0);
  put(b, BASE + 0x1000n + 8n, first); // the last ops points back at the first
  let w = walkFtraceOps(space(b), O, VAR, END, MOD, 4);
  assert.deepEqual([w.complete, w.trampolines.length], [false, 0]);
  assert.match(w.problem ?? "", /broken/);
  put(b, BASE + 0x1000n + 8n, 0n);
  assert.equal(walkFtraceOps(space(b), O, VAR, END, MOD, 4).complete, false);
  put(b, BASE + 0x1000n + 8n, BASE + 0xfff8n);
  assert.match(walkFtraceOps(space(b), O, VAR, END, MOD, 4).problem ?? "", /cannot be read/);
  const many = heap(Array.from({ length: 10 }, () => ({ tramp: 0xffff_ffff_c010_0000n, size: 0x10n })));
  w = walkFtraceOps(space(many), O, VAR, END, MOD, 4, 5);
  assert.deepEqual([w.complete, w.trampolines.length], [false, 0]);
});

test("fuzz: ftrace_ops_list over arbitrary memory ends bounded, never throws, accepts only module-area trampolines", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.oneof(fc.integer({ min: 0, max: 0xfff8 }), fc.constantFrom(0, 0x108, ...Array.from({ length: 8 }, (_, i) => 0x1008 + i * 0x200), ...Array.from({ length: 8 }, (_, i) => 0x1090 + i * 0x200))), fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.constantFrom(0n, END, VAR, BASE + 0x1000n, BASE + 0x1200n, 0xffff_ffff_c000_0000n, 0xffff_ffff_feff_ffffn))), { maxLength: 64 }), fc.integer({ min: 0, max: 8 }), (writes, n) => {
      const b = heap(Array.from({ length: n }, (_, i) => ({ tramp: 0xffff_ffff_c010_0000n + BigInt(i) * 0x1000n, size: 0x140n })));
      for (const [o, v] of writes) b.writeBigUInt64LE(v, o & ~7);
      const w = walkFtraceOps(space(b), O, VAR, END, MOD, 4);
      assert.ok(w.ops <= MAX_FTRACE_OPS);
      if (!w.complete) assert.equal(w.trampolines.length, 0);
      for (const t of w.trampolines) assert.ok(t.start >= MOD.start && t.start < MOD.end && t.size > 0n);
    }),
    { numRuns: 500 },
  );
});
