/**
 * The trampolines ftrace allocated for its registered tracers. Every `register_ftrace_function()` links a struct
 * ftrace_ops into `ftrace_ops_list` (a singly linked list ending at `&ftrace_list_end`); on x86-64 an ops that
 * traces few functions gets its own trampoline (arch_ftrace_update_trampoline: `ops->trampoline`,
 * `ops->trampoline_size`, allocated in the module area), and ftrace then makes the call sites of that ops's
 * functions call the trampoline instead of ftrace_caller/ftrace_regs_caller.
 *
 * With direct calls (BPF fentry/fexit programs: register_ftrace_direct()), the sites of an ops call the ops's
 * `direct_call` — a BPF trampoline, also in the module area — without going through ftrace_caller; those
 * targets are collected too (as trampolines of unknown size).
 *
 * Read at every sweep (the set changes whenever tracing is switched on or off), bounded, and only trampolines in
 * the module area are accepted. A list that cannot be walked to its end yields no trampolines at all: calls to
 * them then alarm, so breaking the list cannot widen what is accepted.
 */
import { hex } from "./errors.ts";
import { inRange, isKernelPointer, readU64, type AddressRange, type FtraceOpsOffsets, type KernelLayout } from "./kernel-layout.ts";
import type { KernelModel } from "./kernel-model.ts";
import type { PagingLevels } from "./page-walk.ts";
import type { AddressSpace } from "./physical-memory.ts";

/** A tracing kernel has a handful of ops (function tracer, function graph, kprobes, BPF, livepatch). */
export const MAX_FTRACE_OPS = 256;
/** x86-64 trampolines are a few hundred bytes (ftrace_regs_caller's size plus a jmp and the ops pointer). */
const MAX_TRAMPOLINE_SIZE = 0x10_0000n;

export interface FtraceTrampoline {
  /** The struct ftrace_ops it belongs to. */
  readonly ops: bigint;
  readonly start: bigint;
  /** 1 for a direct-call target (its size is not recorded in the ops) */
  readonly size: bigint;
  readonly direct: boolean;
}

export interface FtraceOpsWalk {
  readonly trampolines: FtraceTrampoline[];
  readonly ops: number;
  readonly complete: boolean;
  readonly problem: string | undefined;
}

/**
 * Walks ftrace_ops_list from the `ftrace_ops_list` variable (`listVar`) to `listEnd` (&ftrace_list_end). On any
 * inconsistency (not a kernel pointer, a loop, an unreadable ops, more than `limit` ops) the walk is incomplete
 * and returns no trampolines.
 */
export function walkFtraceOps(space: AddressSpace, o: FtraceOpsOffsets, listVar: bigint, listEnd: bigint, moduleArea: AddressRange, levels: PagingLevels, limit = MAX_FTRACE_OPS): FtraceOpsWalk {
  const fail = (problem: string, ops: number): FtraceOpsWalk => ({ trampolines: [], ops, complete: false, problem });
  let ops = readU64(space, listVar);
  const seen = new Set<bigint>();
  const out: FtraceTrampoline[] = [];
  for (let n = 0; ; n++) {
    if (ops === undefined) return fail(`ftrace_ops_list (${hex(listVar)}) cannot be read`, n);
    if (ops === listEnd) return { trampolines: out, ops: n, complete: true, problem: undefined };
    if (n >= limit) return fail(`ftrace_ops_list holds more than ${limit} ops`, n);
    if (!isKernelPointer(ops, levels) || seen.has(ops)) return fail(`ftrace_ops_list is broken at ${hex(ops)}`, n);
    seen.add(ops);
    const tramp = readU64(space, ops + BigInt(o.trampoline));
    const size = readU64(space, ops + BigInt(o.trampolineSize));
    const next = readU64(space, ops + BigInt(o.next));
    const direct = o.directCall !== undefined ? readU64(space, ops + BigInt(o.directCall)) : 0n;
    if (tramp === undefined || size === undefined || next === undefined || direct === undefined) return fail(`ftrace_ops at ${hex(ops)} cannot be read`, n);
    if (tramp !== 0n && size > 0n && size <= MAX_TRAMPOLINE_SIZE && inRange(moduleArea, tramp)) out.push({ ops, start: tramp, size, direct: false });
    if (direct !== 0n && inRange(moduleArea, direct)) out.push({ ops, start: direct, size: 1n, direct: true });
    ops = next;
  }
}

/** walkFtraceOps on `model`'s kernel from its ftrace_ops_list and ftrace_list_end; undefined when this kernel has no struct ftrace_ops layout or either symbol. */
export function readFtraceOps(model: KernelModel, layout: KernelLayout): FtraceOpsWalk | undefined {
  const listVar = model.symbols.address("ftrace_ops_list");
  const listEnd = model.symbols.address("ftrace_list_end");
  if (!layout.ftraceOps || listVar === undefined || listEnd === undefined) return undefined;
  return walkFtraceOps(model.kernel, layout.ftraceOps, listVar, listEnd, layout.moduleArea, model.pagingLevels);
}
