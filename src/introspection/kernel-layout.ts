/**
 * What the integrity and cross-view checks need to know about one kernel beyond its symbol table: where its text
 * and read-only data lie, how far a function extends, which names share an address, where the module area is,
 * and the offsets (from BTF) of every field the walkers follow. Derived from a `KernelModel` once and cached with
 * it, because a model is immutable and a 5 ms sweep cannot pay for BTF lookups.
 *
 * Also the small bounded readers every walker uses: guest memory is hostile, so each read answers `undefined`
 * instead of throwing, and strings are cut and sanitised before they reach a report.
 */
import type { Btf } from "./btf.ts";
import { hex } from "./errors.ts";
import type { SymbolTable } from "./kallsyms.ts";
import { START_KERNEL_MAP, type KernelModel } from "./kernel-model.ts";
import { isCanonical, type PagingLevels } from "./page-walk.ts";
import type { AddressSpace } from "./physical-memory.ts";

/** [start, end) in kernel virtual addresses. */
export interface AddressRange {
  readonly start: bigint;
  readonly end: bigint;
}

/** task_struct fields the process walkers read. */
export interface TaskOffsets {
  readonly size: number;
  readonly tasks: number;
  readonly pid: number;
  readonly tgid: number;
  readonly comm: number;
  readonly commLen: number;
  readonly realParent: number;
  readonly groupLeader: number;
  readonly exitState: number;
  readonly state: number;
  readonly startTime: number;
  readonly schedClass: number;
  readonly threadPid: number;
  /** pid_links[PIDTYPE_PID]: the hlist_node that struct pid's tasks[PIDTYPE_PID] points at. */
  readonly pidLinks: number;
  readonly mm: number;
  readonly flags: number;
}

/** struct pid and the PID namespace's IDR (an xarray), for the PID-table walk. */
export interface PidOffsets {
  /** struct pid.tasks[PIDTYPE_PID].first */
  readonly tasks: number;
  /** struct pid.numbers[0].nr: the number in the initial namespace */
  readonly nr: number;
  /** pid_namespace.idr.idr_rt.xa_head */
  readonly nsXaHead: number;
  readonly nodeShift: number;
  readonly nodeOffset: number;
  readonly nodeParent: number;
  readonly nodeSlots: number;
  /** XA_CHUNK_SIZE of this build (64 unless CONFIG_BASE_SMALL). */
  readonly nodeSlotCount: number;
}

/** struct module, module_kobject, kobject and kset, for the module list and sysfs kset walks. */
export interface ModuleOffsets {
  readonly list: number;
  readonly name: number;
  readonly nameLen: number;
  readonly state: number;
  /** offsetof(struct module, mkobj.kobj) */
  readonly mkobjKobj: number;
  /** offsetof(struct module_kobject, kobj) */
  readonly mkKobj: number;
  /** offsetof(struct module_kobject, mod) */
  readonly mkMod: number;
  readonly kobjEntry: number;
  readonly kobjKtype: number;
  readonly ksetList: number;
}

/** ftrace's runtime list of call-site records (struct ftrace_page → struct dyn_ftrace[]). */
export interface FtraceOffsets {
  readonly pageNext: number;
  readonly pageRecords: number;
  readonly pageIndex: number;
  readonly recIp: number;
  readonly recSize: number;
}

/** struct ftrace_ops: the registered tracers, for the trampolines the kernel allocated for them. */
export interface FtraceOpsOffsets {
  readonly next: number;
  readonly trampoline: number;
  readonly trampolineSize: number;
  /** ops->direct_call (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS): a BPF trampoline the sites of the ops call directly */
  readonly directCall: number | undefined;
}

/** struct module's memory regions (6.4+: `struct module_memory mem[MOD_MEM_NUM_TYPES]`) and its taint flags. */
export interface ModuleMemoryOffsets {
  /** offsetof(struct module, mem) */
  readonly mem: number;
  readonly memCount: number;
  readonly memSize: number;
  /** offsetof(struct module_memory, base / size) */
  readonly base: number;
  readonly size: number;
  /** offsetof(struct module, taints), unsigned long */
  readonly taints: number | undefined;
  /** offsetof(struct module, sig_ok), bool (CONFIG_MODULE_SIG) */
  readonly sigOk: number | undefined;
  /** offsetof(struct module, mkobj.kobj.sd) and offsetof(struct kernfs_node, id): /sys/module/NAME's inode id,
   * new for every load (kernfs allocates ids cyclically), so a module unloaded and loaded again at the same
   * address is still told apart */
  readonly kobjSd: number | undefined;
  readonly kernfsId: number | undefined;
}

export interface KernelLayout {
  /** _stext.._etext, page-aligned outward. */
  readonly text: AddressRange | undefined;
  /** __start_rodata..__end_rodata (includes ro_after_init, the jump table and the static-call sites). */
  readonly rodata: AddressRange | undefined;
  /** MODULES_VADDR..MODULES_END: modules, ftrace and BPF trampolines live here. */
  readonly moduleArea: AddressRange;
  readonly task: TaskOffsets | undefined;
  readonly pid: PidOffsets | undefined;
  readonly module: ModuleOffsets | undefined;
  readonly ftrace: FtraceOffsets | undefined;
  readonly ftraceOps: FtraceOpsOffsets | undefined;
  readonly moduleMemory: ModuleMemoryOffsets | undefined;
  /** Why some of the above are missing: no BTF, a struct this build does not have, a symbol not found. */
  readonly problems: readonly string[];
}

/** x86-64 MODULES_END. */
const MODULES_END = 0xffff_ffff_ff00_0000n;
const DEFAULT_KERNEL_IMAGE_SIZE = 0x4000_0000n;
const PAGE_MASK = ~0xfffn;

const cache = new WeakMap<KernelModel, KernelLayout>();

/** The layout of `model`'s kernel (computed on first use, then cached for the model's lifetime). */
export function kernelLayout(model: KernelModel): KernelLayout {
  let l = cache.get(model);
  if (!l) {
    l = computeLayout(model);
    cache.set(model, l);
  }
  return l;
}

function range(symbols: SymbolTable, startName: string, endName: string, problems: string[]): AddressRange | undefined {
  const start = symbols.address(startName);
  const end = symbols.address(endName);
  if (start === undefined || end === undefined) {
    problems.push(`kallsyms has no ${start === undefined ? startName : endName}`);
    return undefined;
  }
  const s = start & PAGE_MASK;
  const e = (end + 0xfffn) & PAGE_MASK;
  // Kernel text is tens of MiB; anything over 1 GiB or inverted is a lie, not a kernel.
  if (e <= s || e - s > 0x4000_0000n || s < START_KERNEL_MAP) {
    problems.push(`${startName}..${endName} (${hex(start)}..${hex(end)}) is not a plausible range`);
    return undefined;
  }
  return { start: s, end: e };
}

/** Runs `f`; a BTF lookup that fails (IntrospectionError) leaves the group undefined and says why. */
function group<T>(what: string, problems: string[], f: () => T): T | undefined {
  try {
    return f();
  } catch (err) {
    problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  }
}

function computeLayout(model: KernelModel): KernelLayout {
  const problems: string[] = [];
  const s = model.symbols;
  const text = range(s, "_stext", "_etext", problems);
  const rodata = range(s, "__start_rodata", "__end_rodata", problems);
  const imageSize = model.vmcoreinfo?.numbers.get("KERNEL_IMAGE_SIZE") ?? DEFAULT_KERNEL_IMAGE_SIZE;
  const modStart = START_KERNEL_MAP + (imageSize > 0n && imageSize <= 0x8000_0000n ? imageSize : DEFAULT_KERNEL_IMAGE_SIZE);
  const btf = model.btf;
  if (!btf) problems.push("the kernel model has no BTF: process and module walks are not possible");
  const off = (b: Btf, st: string, m: string): number => b.structMemberOffset(st, m);
  const task = btf
    ? group("task_struct", problems, (): TaskOffsets => ({
        size: btf.structSize("task_struct"),
        tasks: off(btf, "task_struct", "tasks"),
        pid: off(btf, "task_struct", "pid"),
        tgid: off(btf, "task_struct", "tgid"),
        comm: off(btf, "task_struct", "comm"),
        commLen: Math.min(64, btf.arrayLength(btf.member("task_struct", "comm").type) ?? 16),
        realParent: off(btf, "task_struct", "real_parent"),
        groupLeader: off(btf, "task_struct", "group_leader"),
        exitState: off(btf, "task_struct", "exit_state"),
        state: off(btf, "task_struct", "__state"),
        startTime: off(btf, "task_struct", "start_time"),
        schedClass: off(btf, "task_struct", "sched_class"),
        threadPid: off(btf, "task_struct", "thread_pid"),
        pidLinks: off(btf, "task_struct", "pid_links"),
        mm: off(btf, "task_struct", "mm"),
        flags: off(btf, "task_struct", "flags"),
      }))
    : undefined;
  const pid = btf
    ? group("struct pid / xarray", problems, (): PidOffsets => ({
        tasks: off(btf, "pid", "tasks"),
        nr: off(btf, "pid", "numbers") + off(btf, "upid", "nr"),
        nsXaHead: off(btf, "pid_namespace", "idr.idr_rt.xa_head"),
        nodeShift: off(btf, "xa_node", "shift"),
        nodeOffset: off(btf, "xa_node", "offset"),
        nodeParent: off(btf, "xa_node", "parent"),
        nodeSlots: off(btf, "xa_node", "slots"),
        nodeSlotCount: btf.arrayLength(btf.member("xa_node", "slots").type) ?? 64,
      }))
    : undefined;
  // The walk indexes slots by bits of the PID: the chunk size must be a power of two.
  const pidOk = pid !== undefined && pid.nodeSlotCount >= 2 && pid.nodeSlotCount <= 256 && (pid.nodeSlotCount & (pid.nodeSlotCount - 1)) === 0;
  if (pid && !pidOk) problems.push(`xa_node.slots has ${pid.nodeSlotCount} elements (a power of two up to 256 expected)`);
  const module = btf
    ? group("struct module / kobject", problems, (): ModuleOffsets => ({
        list: off(btf, "module", "list"),
        name: off(btf, "module", "name"),
        nameLen: Math.min(256, btf.arrayLength(btf.member("module", "name").type) ?? 56),
        state: off(btf, "module", "state"),
        mkobjKobj: off(btf, "module", "mkobj") + off(btf, "module_kobject", "kobj"),
        mkKobj: off(btf, "module_kobject", "kobj"),
        mkMod: off(btf, "module_kobject", "mod"),
        kobjEntry: off(btf, "kobject", "entry"),
        kobjKtype: off(btf, "kobject", "ktype"),
        ksetList: off(btf, "kset", "list"),
      }))
    : undefined;
  const ftrace = btf
    ? group("struct ftrace_page", problems, (): FtraceOffsets => ({
        pageNext: off(btf, "ftrace_page", "next"),
        pageRecords: off(btf, "ftrace_page", "records"),
        pageIndex: off(btf, "ftrace_page", "index"),
        recIp: off(btf, "dyn_ftrace", "ip"),
        recSize: btf.structSize("dyn_ftrace"),
      }))
    : undefined;
  const optional = (b: Btf, st: string, m: string): number | undefined => {
    try {
      return b.structMemberOffset(st, m);
    } catch {
      return undefined;
    }
  };
  const ftraceOps = btf
    ? group("struct ftrace_ops", problems, (): FtraceOpsOffsets => ({
        next: off(btf, "ftrace_ops", "next"),
        trampoline: off(btf, "ftrace_ops", "trampoline"),
        trampolineSize: off(btf, "ftrace_ops", "trampoline_size"),
        directCall: optional(btf, "ftrace_ops", "direct_call"),
      }))
    : undefined;
  const moduleMemory = btf
    ? group("struct module_memory", problems, (): ModuleMemoryOffsets => ({
        mem: off(btf, "module", "mem"),
        memCount: Math.min(16, btf.arrayLength(btf.member("module", "mem").type) ?? 0),
        memSize: btf.structSize("module_memory"),
        base: off(btf, "module_memory", "base"),
        size: off(btf, "module_memory", "size"),
        taints: optional(btf, "module", "taints"),
        sigOk: optional(btf, "module", "sig_ok"),
        kobjSd: ((sd) => (sd === undefined ? undefined : off(btf, "module", "mkobj") + off(btf, "module_kobject", "kobj") + sd))(optional(btf, "kobject", "sd")),
        kernfsId: optional(btf, "kernfs_node", "id"),
      }))
    : undefined;
  return {
    text,
    rodata,
    moduleArea: { start: modStart, end: MODULES_END },
    task,
    pid: pidOk ? pid : undefined,
    module,
    ftrace,
    ftraceOps,
    moduleMemory: moduleMemory && moduleMemory.memCount > 0 && moduleMemory.memSize > 0 ? moduleMemory : undefined,
    problems,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Symbols

/** True when `address` lies in `r`. */
export function inRange(r: AddressRange | undefined, address: bigint): boolean {
  return r !== undefined && address >= r.start && address < r.end;
}

/** Every symbol name at exactly `address` (aliases: `__x64_sys_getpid` and `__do_sys_getpid` share one). */
export function namesAt(symbols: SymbolTable, address: bigint, max = 32): string[] {
  const n = symbols.nearest(address);
  if (!n || n.offset !== 0n) return [];
  if (!symbols.inAddressOrder) return [n.symbol.name];
  const out: string[] = [];
  for (let i = n.symbol.index; i < symbols.count && out.length < max; i++) {
    const s = symbols.symbol(i);
    if (!s || s.address !== address) break;
    out.push(s.name);
  }
  return out;
}

/** "name+0x10" for an address inside (or 1 MiB past) a symbol, else the bare address. */
export function describeAddress(symbols: SymbolTable, address: bigint): string {
  const n = symbols.nearest(address);
  if (!n || n.offset > 0x10_0000n || n.symbol.address < START_KERNEL_MAP) return hex(address);
  return n.offset === 0n ? n.symbol.name : `${n.symbol.name}+${hex(n.offset)}`;
}

/**
 * How far the code or object called `name` extends: up to the next symbol at a higher address, skipping the
 * labels named in `through` (assembly functions such as entry_SYSCALL_64 carry internal labels that kallsyms
 * lists as symbols). Undefined when the name is unknown, the table is not in address order, or the extent is
 * not positive and at most `max` bytes.
 */
export function symbolExtent(symbols: SymbolTable, name: string, through: readonly string[] = [], max = 0x10_0000): AddressRange | undefined {
  const start = symbols.address(name);
  if (start === undefined || !symbols.inAddressOrder) return undefined;
  const n = symbols.nearest(start);
  if (!n) return undefined;
  const skip = new Set(through);
  // Aliases at `start` and the skipped labels are passed over; the walk is bounded by kallsyms' size and 4096.
  for (let i = n.symbol.index, steps = 0; i < symbols.count && steps < 4096; i++, steps++) {
    const s = symbols.symbol(i);
    if (!s) break;
    if (s.address <= start || skip.has(s.name)) continue;
    const len = s.address - start;
    return len > 0n && len <= BigInt(max) ? { start, end: s.address } : undefined;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Bounded readers

/** A kernel-half canonical address (bit 63 set): the only kind of pointer a kernel structure may hold. */
export function isKernelPointer(v: bigint, levels: PagingLevels): boolean {
  return v >= 0x8000_0000_0000_0000n && isCanonical(v, levels);
}

export function readU64(space: AddressSpace, va: bigint): bigint | undefined {
  const b = space.read(va, 8);
  return b && b.length === 8 ? b.readBigUInt64LE(0) : undefined;
}

export function readU32(space: AddressSpace, va: bigint): number | undefined {
  const b = space.read(va, 4);
  return b && b.length === 4 ? b.readUInt32LE(0) : undefined;
}

export function readI32(space: AddressSpace, va: bigint): number | undefined {
  const b = space.read(va, 4);
  return b && b.length === 4 ? b.readInt32LE(0) : undefined;
}

/**
 * A NUL-terminated string of at most `max` bytes from guest bytes, printable ASCII only: anything else shows as
 * "?", so a hostile name cannot forge report lines or terminal escapes.
 */
export function cString(buf: Buffer, offset = 0, max = buf.length - offset): string {
  const end = Math.min(buf.length, offset + Math.max(0, max));
  let out = "";
  for (let i = offset; i < end; i++) {
    const c = buf[i] as number;
    if (c === 0) break;
    out += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : "?";
  }
  return out;
}

/** True when `buf[offset..]` is a NUL-terminated run of printable ASCII, 1..max-1 characters long. */
export function isPrintableCString(buf: Buffer, offset: number, max: number): boolean {
  const end = Math.min(buf.length, offset + max);
  for (let i = offset; i < end; i++) {
    const c = buf[i] as number;
    if (c === 0) return i > offset;
    if (c < 0x20 || c >= 0x7f) return false;
  }
  return false;
}

/** The outcome of walking a circular list_head. */
export interface ListWalk {
  /** Addresses of the list_head members in the entries, in list order (the head itself excluded). */
  readonly nodes: bigint[];
  /** True when the walk came back to the head; false: it stopped at a bad pointer, a cycle or the limit. */
  readonly complete: boolean;
  readonly problem: string | undefined;
  /** Entries whose prev pointer does not point back (a list being changed under us, or tampering). */
  readonly badBackLinks: number;
}

/**
 * Walks a circular doubly linked list from `head` (a `struct list_head`) along `next`, at most `limit` entries.
 * A pointer outside the kernel half, an unreadable entry or an entry seen twice ends the walk as incomplete.
 */
export function walkList(space: AddressSpace, head: bigint, levels: PagingLevels, limit: number): ListWalk {
  const nodes: bigint[] = [];
  const seen = new Set<bigint>();
  let badBackLinks = 0;
  let prev = head;
  let node = readU64(space, head);
  for (let steps = 0; steps <= limit; steps++) {
    if (node === undefined) return { nodes, complete: false, problem: `${hex(prev)}: next pointer cannot be read`, badBackLinks };
    if (node === head) return { nodes, complete: true, problem: undefined, badBackLinks };
    if (!isKernelPointer(node, levels)) return { nodes, complete: false, problem: `${hex(prev)}: next pointer ${hex(node)} is not a kernel address`, badBackLinks };
    if (seen.has(node)) return { nodes, complete: false, problem: `${hex(node)} is reached twice (a cycle)`, badBackLinks };
    const pair = space.read(node, 16);
    if (!pair) return { nodes, complete: false, problem: `${hex(node)}: entry cannot be read`, badBackLinks };
    if (pair.readBigUInt64LE(8) !== prev) badBackLinks++;
    seen.add(node);
    nodes.push(node);
    prev = node;
    node = pair.readBigUInt64LE(0);
  }
  return { nodes, complete: false, problem: `more than ${limit} entries`, badBackLinks };
}
