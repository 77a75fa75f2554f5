/**
 * A carve of all guest-physical memory for task_structs and module_kobjects, independent of every list and
 * table a rootkit can unlink from. It looks for pointers the kernel itself must keep in those structures —
 * `task->sched_class` (one of the few *_sched_class objects) and `kobject->ktype == &module_ktype` — with native
 * substring search over large reads, then validates each candidate through cross-pointers (a task's struct pid
 * pointing back at it; a module's own mkobj being the kobject found). It costs a full read of RAM (~0.3-0.6 s for
 * 256 MiB), so the sweep runs it only on request or every N sweeps.
 */
import type { KernelModel } from "./kernel-model.ts";
import { isAttached, readTask, type VmiTask } from "./tasks.ts";
import type { KernelLayout } from "./kernel-layout.ts";
import { readModule, type VmiModuleEntry } from "./modules.ts";
import type { PhysicalMemory } from "./physical-memory.ts";

const CHUNK = 4 * 1024 * 1024;
/** task_struct objects are L1-cache aligned (fork.c: align = max(L1_CACHE_BYTES, ARCH_MIN_TASKALIGN)). */
const TASK_ALIGN = 64n;
/** Candidates examined per carve; beyond this the carve reports itself truncated. */
const MAX_CANDIDATES = 200_000;
const MAX_RESULTS = 65_536;
const U64 = (1n << 64n) - 1n;

export interface CarveTargets {
  /** Addresses of the scheduler classes (stop/dl/rt/fair/idle/ext_sched_class). */
  readonly schedClasses: readonly bigint[];
  /** &module_ktype */
  readonly moduleKtype: bigint | undefined;
  /** page_offset_base: the direct map, where task_structs live. */
  readonly directMapBase: bigint;
}

export interface CarveResult {
  /** Tasks whose struct pid points back at them (live, hashed). */
  readonly tasks: VmiTask[];
  /** Task-shaped candidates that are not attached: stale copies in freed memory, or unhashed tasks. */
  readonly unattached: number;
  readonly modules: VmiModuleEntry[];
  readonly bytesScanned: number;
  readonly candidates: number;
  readonly truncated: boolean;
  readonly ms: number;
}

/** The 8-byte little-endian patterns, grouped by their upper 6 bytes so that one search finds a whole group. */
function groups(values: readonly bigint[]): { suffix: Buffer; values: Set<bigint> }[] {
  const by = new Map<string, { suffix: Buffer; values: Set<bigint> }>();
  for (const v of values) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v & U64);
    const suffix = b.subarray(2);
    const key = suffix.toString("hex");
    const g = by.get(key) ?? { suffix, values: new Set<bigint>() };
    g.values.add(v & U64);
    by.set(key, g);
  }
  return [...by.values()];
}

/** Physical offsets (8-aligned) in `buf` of every 8-byte value in `values`, found via its 6-byte suffix. */
function find(buf: Buffer, length: number, g: { suffix: Buffer; values: Set<bigint> }, out: number[], max: number): void {
  let at = buf.indexOf(g.suffix, 2);
  while (at >= 0 && at + 6 <= length && out.length < max) {
    const start = at - 2;
    if ((start & 7) === 0 && g.values.has(buf.readBigUInt64LE(start))) out.push(start);
    at = buf.indexOf(g.suffix, at + 1);
  }
}

/** Carves `mem` for live tasks and loaded modules. */
export function carve(mem: PhysicalMemory, model: KernelModel, layout: KernelLayout, targets: CarveTargets): CarveResult {
  const t0 = performance.now();
  const k = model.kernel;
  const levels = model.pagingLevels;
  const to = layout.task;
  const po = layout.pid;
  const mo = layout.module;
  const taskGroups = to ? groups(targets.schedClasses) : [];
  const modGroups = mo && targets.moduleKtype !== undefined ? groups([targets.moduleKtype]) : [];
  const buf = Buffer.allocUnsafe(CHUNK);
  const tasks = new Map<bigint, VmiTask>();
  const modules = new Map<bigint, VmiModuleEntry>();
  let unattached = 0;
  let candidates = 0;
  let scanned = 0;
  let truncated = false;
  for (const region of mem.regions) {
    for (let pa = region.start; pa < region.end && !truncated; pa += BigInt(CHUNK)) {
      const len = Number(region.end - pa < BigInt(CHUNK) ? region.end - pa : BigInt(CHUNK));
      if (!mem.readInto(pa, buf, 0, len)) continue;
      scanned += len;
      const view = len === CHUNK ? buf : buf.subarray(0, len);
      const hits: number[] = [];
      for (const g of taskGroups) find(view, len, g, hits, MAX_CANDIDATES);
      for (const off of hits) {
        if (++candidates > MAX_CANDIDATES) {
          truncated = true;
          break;
        }
        const phys = pa + BigInt(off) - BigInt((to as NonNullable<typeof to>).schedClass);
        if (phys < 0n || phys % TASK_ALIGN !== 0n) continue;
        const va = (targets.directMapBase + phys) & U64;
        if (tasks.has(va)) continue;
        const t = readTask(k, to as NonNullable<typeof to>, va, levels);
        if (!t) continue;
        if (po && isAttached(k, t, to as NonNullable<typeof to>, po, levels)) {
          if (tasks.size < MAX_RESULTS) tasks.set(va, t);
        } else unattached++;
      }
      const mhits: number[] = [];
      for (const g of modGroups) find(view, len, g, mhits, MAX_CANDIDATES);
      for (const off of mhits) {
        if (++candidates > MAX_CANDIDATES) {
          truncated = true;
          break;
        }
        const o = mo as NonNullable<typeof mo>;
        const kobjPhys = pa + BigInt(off) - BigInt(o.kobjKtype);
        const mod = mem.read(kobjPhys - BigInt(o.mkKobj) + BigInt(o.mkMod), 8)?.readBigUInt64LE(0);
        if (mod === undefined || mod === 0n) continue; // a built-in module's kobject
        // Cross-pointer: the module's own mkobj.kobj must be the kobject we found, physically.
        const back = k.translate((mod + BigInt(o.mkobjKobj)) & U64);
        if (!back.mapped || back.paddr !== kobjPhys || modules.has(mod)) continue;
        const m = readModule(k, o, mod, levels);
        if (m && modules.size < MAX_RESULTS) modules.set(mod, m);
      }
    }
  }
  return {
    tasks: [...tasks.values()],
    unattached,
    modules: [...modules.values()],
    bytesScanned: scanned,
    candidates,
    truncated,
    ms: Math.round((performance.now() - t0) * 100) / 100,
  };
}
