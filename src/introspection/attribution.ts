/**
 * Who owns a code pointer: the one answer every check gives when a finding involves an address (a syscall
 * table entry, an IDT handler, the target of a rewritten call). In order:
 *
 * - "kernel": inside the kernel image's text (or another kallsyms-named part of the image): symbol + offset;
 * - "module": inside a module's memory (struct module's mem[] regions: text, data, rodata, ...), with the
 *   module's name; `hidden` when that module is found (sysfs kset, a carve) but not on the `modules` list;
 * - "ftrace-trampoline": a trampoline of a registered ftrace_ops (see ftrace-ops.ts);
 * - "unknown": anything else, saying where (module area, kernel image, direct map / elsewhere): memory no
 *   loaded module owns is what a module that unlinked itself everywhere, or injected code, leaves behind.
 *
 * Module regions are read from guest memory: each one is bounded (at most 1 GiB, inside the module area) and
 * the number of modules and regions is capped, so a hostile guest can only make attribution say "unknown".
 */
import { hex } from "./errors.ts";
import { describeAddress, inRange, readU32, readU64, type KernelLayout } from "./kernel-layout.ts";
import { START_KERNEL_MAP, type KernelModel } from "./kernel-model.ts";
import { readFtraceOps, type FtraceTrampoline } from "./ftrace-ops.ts";
import { walkModuleKset, walkModuleList, type VmiModuleEntry } from "./modules.ts";

export type Attribution =
  | { readonly kind: "kernel"; readonly symbol: string; readonly inText: boolean; readonly description: string }
  | { readonly kind: "module"; readonly module: string; readonly hidden: boolean; readonly offset: string; readonly description: string }
  | { readonly kind: "ftrace-trampoline"; readonly ops: string; readonly description: string }
  | { readonly kind: "unknown"; readonly area: "module-area" | "kernel-image" | "other"; readonly description: string };

export interface ModuleRegion {
  readonly module: string;
  readonly hidden: boolean;
  readonly start: bigint;
  readonly end: bigint;
}

const MAX_REGION = 0x4000_0000n;
const MAX_REGIONS = 4096 * 8;

/** The memory regions of modules (`listed` from the modules list, `unlisted` found only elsewhere). */
export function moduleRegions(model: KernelModel, layout: KernelLayout, listed: readonly VmiModuleEntry[], unlisted: readonly VmiModuleEntry[]): ModuleRegion[] {
  const mm = layout.moduleMemory;
  const out: ModuleRegion[] = [];
  if (!mm) return out;
  const add = (m: VmiModuleEntry, hidden: boolean): void => {
    for (let i = 0; i < mm.memCount && out.length < MAX_REGIONS; i++) {
      const at = m.address + BigInt(mm.mem + i * mm.memSize);
      const base = readU64(model.kernel, at + BigInt(mm.base));
      const size = readU32(model.kernel, at + BigInt(mm.size));
      if (base === undefined || size === undefined || base === 0n || size === 0) continue;
      const end = base + BigInt(size);
      if (BigInt(size) > MAX_REGION || !inRange(layout.moduleArea, base) || end > layout.moduleArea.end) continue;
      out.push({ module: m.name, hidden, start: base, end });
    }
  };
  for (const m of listed) add(m, false);
  for (const m of unlisted) add(m, true);
  return out;
}

export class Attributor {
  constructor(
    private readonly model: KernelModel,
    private readonly layout: KernelLayout,
    private readonly regions: readonly ModuleRegion[],
    private readonly trampolines: readonly FtraceTrampoline[] = [],
  ) {}

  attribute(address: bigint): Attribution {
    const a = address & 0xffff_ffff_ffff_ffffn;
    const L = this.layout;
    if (inRange(L.text, a)) {
      const symbol = describeAddress(this.model.symbols, a);
      return { kind: "kernel", symbol, inText: true, description: `kernel text ${symbol}` };
    }
    // Modules before the image: module memory never overlaps the image, and a listed module wins over a
    // hidden one at the same place (the list is what the kernel itself uses).
    let hit: ModuleRegion | undefined;
    for (const r of this.regions) if (a >= r.start && a < r.end && (!hit || (hit.hidden && !r.hidden))) hit = r;
    if (hit) {
      const offset = hex(a - hit.start);
      return { kind: "module", module: hit.module, hidden: hit.hidden, offset, description: `${hit.hidden ? "hidden " : ""}module ${JSON.stringify(hit.module)}${hit.hidden ? " (not on the module list)" : ""} +${offset}` };
    }
    for (const t of this.trampolines) {
      if (a >= t.start && a < t.start + t.size) return { kind: "ftrace-trampoline", ops: hex(t.ops), description: `the ${t.direct ? "direct-call (BPF) " : "ftrace "}trampoline of ftrace_ops ${hex(t.ops)}` };
    }
    if (inRange(L.moduleArea, a)) return { kind: "unknown", area: "module-area", description: `unknown memory in the module area (${hex(a)}): no loaded module owns it` };
    if (a >= START_KERNEL_MAP && a < L.moduleArea.start) {
      const n = this.model.symbols.nearest(a);
      if (n && n.offset <= 0x10_0000n && n.symbol.address >= START_KERNEL_MAP) {
        const symbol = describeAddress(this.model.symbols, a);
        return { kind: "kernel", symbol, inText: false, description: `the kernel image outside text, ${symbol}` };
      }
      return { kind: "unknown", area: "kernel-image", description: `unknown memory in the kernel image's range (${hex(a)})` };
    }
    return { kind: "unknown", area: "other", description: `unknown memory (${hex(a)}), outside kernel text and the module area` };
  }

  /** The short form for messages. */
  describe(address: bigint): string {
    return this.attribute(address).description;
  }
}

/** An Attributor for the guest as it is now: the module list and kset walked, ftrace's trampolines read. */
export function currentAttributor(model: KernelModel, layout: KernelLayout): Attributor {
  const mo = layout.module;
  const head = model.symbols.address("modules");
  let listed: VmiModuleEntry[] = [];
  let unlisted: VmiModuleEntry[] = [];
  if (mo && head !== undefined) {
    listed = walkModuleList(model.kernel, mo, head, model.pagingLevels).modules;
    const ksetVar = model.symbols.address("module_kset");
    if (ksetVar !== undefined) {
      const onList = new Set(listed.map((m) => m.address));
      unlisted = walkModuleKset(model.kernel, mo, ksetVar, model.symbols.address("module_ktype"), model.pagingLevels).modules.filter((m) => !onList.has(m.address));
    }
  }
  const trampolines = readFtraceOps(model, layout)?.trampolines ?? [];
  return new Attributor(model, layout, moduleRegions(model, layout, listed, unlisted), trampolines);
}

/** A direct call/jmp in `b` at `i`: its target, or undefined. */
function branchAt(va: bigint, b: Buffer, i: number): bigint | undefined {
  if (i < 0 || i + 5 > b.length || (b[i] !== 0xe8 && b[i] !== 0xe9)) return undefined;
  return (va + BigInt(i) + 5n + BigInt(b.readInt32LE(i + 1))) & 0xffff_ffff_ffff_ffffn;
}

/** A call/jmp rel32 whose target changed between two versions of the same bytes at `va`. */
export interface RetargetedBranch {
  readonly address: bigint;
  readonly opcode: "call" | "jmp";
  /** undefined when the baseline held no branch there (one was written) */
  readonly was: bigint | undefined;
  readonly now: bigint | undefined;
}

/**
 * The direct calls/jmps that a change between `expected` and `found` (both starting at `va`) rewired: every
 * 5-byte call/jmp, in either version, that covers a changed byte. Without a disassembler this can also pick up
 * an 0xe8/0xe9 that is an operand byte: callers use it to NAME what a change hit, never to decide a finding.
 */
export function retargetedBranches(va: bigint, expected: Buffer, found: Buffer, max = 16): RetargetedBranch[] {
  const out: RetargetedBranch[] = [];
  const seen = new Set<number>();
  const n = Math.min(expected.length, found.length);
  for (let i = 0; i < n && out.length < max; i++) {
    if (expected[i] === found[i]) continue;
    for (let s = Math.max(0, i - 4); s <= i && out.length < max; s++) {
      if (seen.has(s)) continue;
      const was = branchAt(va, expected, s);
      const now = branchAt(va, found, s);
      if ((was === undefined && now === undefined) || was === now) continue;
      seen.add(s);
      out.push({ address: va + BigInt(s), opcode: (found[s] ?? expected[s]) === 0xe9 ? "jmp" : "call", was, now });
    }
  }
  return out;
}
