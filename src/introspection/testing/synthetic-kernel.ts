/**
 * Test support: a whole synthetic x86-64 Linux 6.12-like guest for the sweep engine — kernel image with text
 * (functions with ftrace NOPs, jump-label sites, static-call sites and trampolines), rodata (sys_call_table, the
 * jump table, the static-call site table, scheduler classes), data (init_task, init_pid_ns, the modules list,
 * idt_table), kallsyms, BTF and VMCOREINFO; a direct map holding task_structs, struct pids, the PID xarray, the
 * module kset and ftrace's records; modules in the module area; the IDT alias; and the registers a vCPU would
 * show. Built with the core's own builders (page tables, kallsyms, BTF) so that buildKernelModel reads it like a
 * real guest. It also offers the legitimate self-patching a kernel does (ftrace, jump labels, static calls), so
 * tests can check that those are explained. Nothing here reads guest data.
 */
import { BufferPhysicalMemory } from "../physical-memory.ts";
import type { ControlRegisters } from "../page-walk.ts";
import { BtfBuilder, PageTableBuilder, buildKallsyms, kallsymsVmcoreinfo, type SymbolSpec } from "./synthetic-guest.ts";
import { BufferWriter } from "./attacker.ts";

const U64 = (1n << 64n) - 1n;
const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
const LINK_TEXT = 0xffff_ffff_8100_0000n;
export const IDT_ALIAS = 0xffff_fe00_0000_0000n;
const MODULE_BASE = 0xffff_ffff_c000_0000n;
const MiB = 0x10_0000n;

/** Struct layouts of the synthetic kernel (the real 6.12 cloud kernel's where the engine reads them). */
export const LAYOUT = {
  task: { size: 9792, state: 24, stack: 32, flags: 44, schedClass: 680, tasks: 2224, mm: 2304, exitState: 2328, pid: 2432, tgid: 2436, realParent: 2448, parent: 2456, groupLeader: 2496, threadPid: 2536, pidLinks: 2544, startTime: 2776, comm: 2976 },
  pid: { size: 128, count: 0, level: 4, tasks: 32, numbers: 112 },
  xaNode: { size: 576, shift: 0, offset: 1, count: 2, parent: 8, array: 16, slots: 40 },
  module: { size: 1280, state: 0, list: 8, name: 24, mkobj: 80, mem: 256, taints: 600, sigOk: 608 },
  moduleMemory: { size: 64, base: 0, size_: 8, count: 7 },
  ftraceOps: { size: 256, func: 0, next: 8, flags: 16, trampoline: 144, trampolineSize: 152, directCall: 200 },
  mkobj: { size: 96, kobj: 0, mod: 64 },
  kobject: { size: 64, name: 0, entry: 8, parent: 24, kset: 32, ktype: 40, sd: 48 },
  kernfsNode: { size: 128, id: 96 },
  kset: { size: 96, list: 0, kobj: 24 },
  ftracePage: { size: 24, next: 0, records: 8, index: 16, order: 20 },
  dynFtrace: { size: 16, ip: 0, flags: 8 },
} as const;

const PF_KTHREAD = 0x0020_0000;

/** The BTF of the synthetic kernel: every struct and member kernel-layout.ts resolves. */
export function sweepKernelBtf(): Buffer {
  const b = new BtfBuilder();
  const int = b.int("int", 4, true);
  const uint = b.int("unsigned int", 4);
  const u8 = b.int("unsigned char", 1);
  const ulong = b.int("long unsigned int", 8);
  const llu = b.int("long long unsigned int", 8);
  const char = b.int("char", 1, true);
  const voidp = b.ptr(0);
  const lhPtr = b.nextId();
  b.ptr(lhPtr + 1);
  const lh = b.struct("list_head", 16, [
    { name: "next", type: lhPtr, bitOffset: 0 },
    { name: "prev", type: lhPtr, bitOffset: 64 },
  ]);
  const hnPtr = b.nextId();
  b.ptr(hnPtr + 1);
  const hn = b.struct("hlist_node", 16, [
    { name: "next", type: hnPtr, bitOffset: 0 },
    { name: "pprev", type: voidp, bitOffset: 64 },
  ]);
  const hh = b.struct("hlist_head", 8, [{ name: "first", type: hnPtr, bitOffset: 0 }]);
  const T = LAYOUT.task;
  b.struct("task_struct", T.size, [
    { name: "__state", type: uint, bitOffset: T.state * 8 },
    { name: "stack", type: voidp, bitOffset: T.stack * 8 },
    { name: "flags", type: uint, bitOffset: T.flags * 8 },
    { name: "sched_class", type: voidp, bitOffset: T.schedClass * 8 },
    { name: "tasks", type: lh, bitOffset: T.tasks * 8 },
    { name: "mm", type: voidp, bitOffset: T.mm * 8 },
    { name: "exit_state", type: int, bitOffset: T.exitState * 8 },
    { name: "pid", type: int, bitOffset: T.pid * 8 },
    { name: "tgid", type: int, bitOffset: T.tgid * 8 },
    { name: "real_parent", type: voidp, bitOffset: T.realParent * 8 },
    { name: "parent", type: voidp, bitOffset: T.parent * 8 },
    { name: "group_leader", type: voidp, bitOffset: T.groupLeader * 8 },
    { name: "thread_pid", type: voidp, bitOffset: T.threadPid * 8 },
    { name: "pid_links", type: b.array(hn, int, 4), bitOffset: T.pidLinks * 8 },
    { name: "start_time", type: llu, bitOffset: T.startTime * 8 },
    { name: "comm", type: b.array(char, int, 16), bitOffset: T.comm * 8 },
  ]);
  const upid = b.struct("upid", 16, [
    { name: "nr", type: int, bitOffset: 0 },
    { name: "ns", type: voidp, bitOffset: 64 },
  ]);
  b.struct("pid", 112, [
    { name: "count", type: int, bitOffset: 0 },
    { name: "level", type: uint, bitOffset: 32 },
    { name: "tasks", type: b.array(hh, int, 4), bitOffset: LAYOUT.pid.tasks * 8 },
    { name: "numbers", type: b.array(upid, int, 0), bitOffset: LAYOUT.pid.numbers * 8 },
  ]);
  const xarray = b.struct("xarray", 16, [
    { name: "xa_lock", type: uint, bitOffset: 0 },
    { name: "xa_flags", type: uint, bitOffset: 32 },
    { name: "xa_head", type: voidp, bitOffset: 64 },
  ]);
  const idr = b.struct("idr", 24, [
    { name: "idr_rt", type: xarray, bitOffset: 0 },
    { name: "idr_base", type: uint, bitOffset: 128 },
    { name: "idr_next", type: uint, bitOffset: 160 },
  ]);
  b.struct("pid_namespace", 144, [{ name: "idr", type: idr, bitOffset: 0 }]);
  const X = LAYOUT.xaNode;
  b.struct("xa_node", X.size, [
    { name: "shift", type: u8, bitOffset: X.shift * 8 },
    { name: "offset", type: u8, bitOffset: X.offset * 8 },
    { name: "count", type: u8, bitOffset: X.count * 8 },
    { name: "parent", type: voidp, bitOffset: X.parent * 8 },
    { name: "array", type: voidp, bitOffset: X.array * 8 },
    { name: "slots", type: b.array(voidp, int, 64), bitOffset: X.slots * 8 },
  ]);
  const K = LAYOUT.kobject;
  const kobject = b.struct("kobject", K.size, [
    { name: "name", type: voidp, bitOffset: K.name * 8 },
    { name: "entry", type: lh, bitOffset: K.entry * 8 },
    { name: "parent", type: voidp, bitOffset: K.parent * 8 },
    { name: "kset", type: voidp, bitOffset: K.kset * 8 },
    { name: "ktype", type: voidp, bitOffset: K.ktype * 8 },
    { name: "sd", type: voidp, bitOffset: K.sd * 8 },
  ]);
  b.struct("kernfs_node", LAYOUT.kernfsNode.size, [{ name: "id", type: ulong, bitOffset: LAYOUT.kernfsNode.id * 8 }]);
  const mk = b.struct("module_kobject", LAYOUT.mkobj.size, [
    { name: "kobj", type: kobject, bitOffset: LAYOUT.mkobj.kobj * 8 },
    { name: "mod", type: voidp, bitOffset: LAYOUT.mkobj.mod * 8 },
  ]);
  const M = LAYOUT.module;
  b.struct("module", M.size, [
    { name: "state", type: int, bitOffset: M.state * 8 },
    { name: "list", type: lh, bitOffset: M.list * 8 },
    { name: "name", type: b.array(char, int, 56), bitOffset: M.name * 8 },
    { name: "mkobj", type: mk, bitOffset: M.mkobj * 8 },
    { name: "mem", type: b.array(b.struct("module_memory", LAYOUT.moduleMemory.size, [
      { name: "base", type: voidp, bitOffset: LAYOUT.moduleMemory.base * 8 },
      { name: "size", type: uint, bitOffset: LAYOUT.moduleMemory.size_ * 8 },
    ]), int, LAYOUT.moduleMemory.count), bitOffset: M.mem * 8 },
    { name: "taints", type: ulong, bitOffset: M.taints * 8 },
    { name: "sig_ok", type: u8, bitOffset: M.sigOk * 8 },
  ]);
  const FO = LAYOUT.ftraceOps;
  b.struct("ftrace_ops", FO.size, [
    { name: "func", type: voidp, bitOffset: FO.func * 8 },
    { name: "next", type: voidp, bitOffset: FO.next * 8 },
    { name: "flags", type: ulong, bitOffset: FO.flags * 8 },
    { name: "trampoline", type: ulong, bitOffset: FO.trampoline * 8 },
    { name: "trampoline_size", type: ulong, bitOffset: FO.trampolineSize * 8 },
    { name: "direct_call", type: ulong, bitOffset: FO.directCall * 8 },
  ]);
  b.struct("kset", LAYOUT.kset.size, [
    { name: "list", type: lh, bitOffset: LAYOUT.kset.list * 8 },
    { name: "kobj", type: kobject, bitOffset: LAYOUT.kset.kobj * 8 },
  ]);
  const F = LAYOUT.ftracePage;
  b.struct("ftrace_page", F.size, [
    { name: "next", type: voidp, bitOffset: F.next * 8 },
    { name: "records", type: voidp, bitOffset: F.records * 8 },
    { name: "index", type: int, bitOffset: F.index * 8 },
    { name: "order", type: int, bitOffset: F.order * 8 },
  ]);
  b.struct("dyn_ftrace", LAYOUT.dynFtrace.size, [
    { name: "ip", type: ulong, bitOffset: 0 },
    { name: "flags", type: ulong, bitOffset: 64 },
  ]);
  return b.build();
}

export interface SyntheticKernelOptions {
  levels?: 4 | 5;
  /** KASLR shift (multiple of 2 MiB). */
  shift?: bigint;
  /** Processes besides init_task, init and kthreadd. Default 12. */
  processes?: number;
  /** Module names. Default four. */
  modules?: readonly string[];
  ramMiB?: number;
}

/** A 5-byte patchable site of the synthetic kernel, for tests that patch it legitimately or not. */
export interface SyntheticSite {
  readonly kind: "ftrace" | "jump-label" | "static-call" | "static-call-tramp" | "ftrace-op";
  readonly address: bigint;
  readonly length: 2 | 5;
  /** jump labels: where the jmp goes; static calls: the trampoline called */
  readonly target: bigint | undefined;
}

export interface SyntheticTask {
  readonly pid: number;
  readonly tgid: number;
  readonly address: bigint;
  readonly comm: string;
}

export interface SyntheticKernel {
  readonly ram: Buffer;
  readonly mem: BufferPhysicalMemory;
  readonly writer: BufferWriter;
  readonly levels: 4 | 5;
  readonly regs: ControlRegisters[];
  readonly symbols: ReadonlyMap<string, bigint>;
  readonly text: { start: bigint; end: bigint };
  readonly rodata: { start: bigint; end: bigint };
  readonly directMapBase: bigint;
  readonly tasks: readonly SyntheticTask[];
  modules: readonly { name: string; address: bigint }[];
  readonly sites: readonly SyntheticSite[];
  /** Physical ranges worth mutating in fuzz tests, by what they hold. */
  readonly hotspots: readonly { what: string; start: number; length: number }[];
  /** Physical addresses of the pointer and number fields the walkers follow (list links, pid links, slots). */
  readonly fields: readonly number[];
  /** Guest-physical address of kernel virtual `va` (image, direct map or module area). */
  phys(va: bigint): bigint;
  /** Writes bytes at a kernel virtual address. */
  writeVa(va: bigint, data: Buffer | readonly number[]): void;
  readVa(va: bigint, length: number): Buffer;
  /** Legitimate patching, as the kernel would do it. */
  ftraceOn(site: SyntheticSite): void;
  jumpLabelOn(site: SyntheticSite): void;
  staticCallTo(site: SyntheticSite, target: bigint): void;
  /** register_ftrace_function() of an ops with its own trampoline (in the module area): returns the ops. */
  addFtraceOps(trampoline: bigint, size?: number, directCall?: bigint): bigint;
  /** A module loaded now (list, kset), with its taint flags and signature verdict. */
  loadModule(name: string, flags?: { taints?: bigint; sigOk?: boolean }, at?: number): { name: string; address: bigint };
  /** add_taint(): sets bits in tainted_mask. */
  taint(bits: bigint): void;
  /** A new process linked into the task list and the PID table (like fork). */
  spawn(pid: number, comm: string): SyntheticTask;
  /** Unhashes and unlinks a task (like exit + reap). */
  reap(task: SyntheticTask): void;
}

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v & U64);
  return b;
};

/** Deterministic filler for function bodies: no 0xcc/0xe8/0xe9 so tests can reason about sites. */
function body(seed: number, n: number): number[] {
  const out: number[] = [];
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    let v = (x >>> 16) & 0xff;
    if (v === 0xcc || v === 0xe8 || v === 0xe9 || v === 0xeb || v === 0xc3) v = 0x90;
    out.push(v);
  }
  return out;
}

/** Builds the synthetic kernel. */
export function buildSyntheticKernel(o: SyntheticKernelOptions = {}): SyntheticKernel {
  const levels = o.levels ?? 5;
  const shift = o.shift ?? 0x2c20_0000n;
  const ramBytes = (o.ramMiB ?? 40) * 0x10_0000;
  const ram = Buffer.alloc(ramBytes);
  const physText = 16n * MiB;
  const text = LINK_TEXT + shift;
  const physBase = (physText - (text - START_KERNEL_MAP)) & U64;
  const directMapBase = levels === 5 ? 0xff11_0000_0000_0000n : 0xffff_8880_0000_0000n;
  const imgVa = (off: bigint): bigint => text + off;
  const textEnd = imgVa(2n * MiB);
  const rodataStart = textEnd;
  const rodataEnd = imgVa(2n * MiB + 0x8_0000n);
  const dataStart = imgVa(4n * MiB);
  const modules: { name: string; address: bigint; phys: bigint }[] = [];

  const phys = (va: bigint): bigint => {
    if (va >= text && va < text + 8n * MiB) return physText + (va - text);
    if (va >= directMapBase && va < directMapBase + BigInt(ramBytes)) return va - directMapBase;
    if (va >= MODULE_BASE && va < MODULE_BASE + 0x40_0000n) return 32n * MiB + (va - MODULE_BASE);
    if (va >= IDT_ALIAS && va < IDT_ALIAS + 0x1000n) return physText + 5n * MiB + (va - IDT_ALIAS);
    throw new Error(`synthetic kernel: ${va.toString(16)} is not mapped`);
  };
  const writeVa = (va: bigint, data: Buffer | readonly number[]): void => {
    const b = Buffer.isBuffer(data) ? data : Buffer.from(data);
    b.copy(ram, Number(phys(va)));
  };
  const readVa = (va: bigint, n: number): Buffer => Buffer.from(ram.subarray(Number(phys(va)), Number(phys(va)) + n));
  const put64 = (va: bigint, v: bigint): void => writeVa(va, u64(v));
  const put32 = (va: bigint, v: number): void => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    writeVa(va, b);
  };

  // ---- page tables (pool inside the image's data, like init_top_pgt)
  const tables = new PageTableBuilder(ram, levels, { start: physText + 7n * MiB, end: physText + 8n * MiB });
  tables.map(text, physText, 0x200000, { writable: false, nx: false });
  for (let off = 2n * MiB; off < 2n * MiB + 0x8_0000n; off += 0x1000n) tables.map(imgVa(off), physText + off, 4096, { writable: false, nx: true });
  for (let off = 4n * MiB; off < 8n * MiB; off += 0x1000n) {
    const ro = off === 5n * MiB; // idt_table
    tables.map(imgVa(off), physText + off, 4096, { writable: !ro, nx: true });
  }
  for (let pa = 0n; pa < BigInt(ramBytes); pa += 0x200000n) {
    // The direct-map alias of kernel text and rodata is read-only, as on a real kernel.
    const ro = pa >= physText && pa < physText + 4n * MiB;
    tables.map(directMapBase + pa, pa, 0x200000, { writable: !ro, nx: true });
  }
  tables.map(IDT_ALIAS, physText + 5n * MiB, 4096, { writable: false, nx: true });
  for (let off = 0n; off < 0x40_0000n; off += 0x1000n) tables.map(MODULE_BASE + off, 32n * MiB + off, 4096, { writable: true, nx: true });

  // ---- text
  const syms: SymbolSpec[] = [
    { name: "_text", type: "T", address: text },
    { name: "_stext", type: "T", address: text },
  ];
  const sites: SyntheticSite[] = [];
  const ftraceIps: bigint[] = [];
  const jumpEntries: { code: bigint; target: bigint }[] = [];
  const staticSites: { addr: bigint; tramp: bigint }[] = [];
  let cursor = text + 0x1000n;
  let seed = 1;
  /** A function: endbr64, the ftrace NOP at +4, a body, ret. */
  const fn = (name: string, size = 96, opts: { jumpLabel?: 2 | 5; staticCall?: bigint; type?: string; aliases?: string[] } = {}): bigint => {
    cursor = (cursor + 15n) & ~15n;
    const at = cursor;
    const bytes = [0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0x00, 0x00, ...body(seed++, size - 10), 0xc3];
    writeVa(at, bytes);
    ftraceIps.push(at + 4n);
    sites.push({ kind: "ftrace", address: at + 4n, length: 5, target: undefined });
    if (opts.jumpLabel) {
      const site = at + 16n;
      const target = at + 48n;
      writeVa(site, opts.jumpLabel === 2 ? [0x66, 0x90] : [0x0f, 0x1f, 0x44, 0x00, 0x00]);
      jumpEntries.push({ code: site, target });
      sites.push({ kind: "jump-label", address: site, length: opts.jumpLabel, target });
    }
    if (opts.staticCall !== undefined) {
      const site = at + 32n;
      const rel = Number(opts.staticCall - (site + 5n));
      const b = Buffer.alloc(5);
      b[0] = 0xe8;
      b.writeInt32LE(rel, 1);
      writeVa(site, b);
      staticSites.push({ addr: site, tramp: opts.staticCall });
      sites.push({ kind: "static-call", address: site, length: 5, target: opts.staticCall });
    }
    syms.push({ name, type: opts.type ?? "T", address: at });
    for (const a of opts.aliases ?? []) syms.push({ name: a, type: "T", address: at });
    cursor = at + BigInt(size);
    return at;
  };

  // Static-call trampolines first, so functions can call them.
  const sctStart = imgVa(0x8000n);
  syms.push({ name: "__static_call_text_start", type: "T", address: sctStart });
  const tramps: bigint[] = [];
  for (let i = 0; i < 4; i++) {
    const t = sctStart + BigInt(8 * i);
    // "ret; int3 x4" (no target yet) followed by the "SCT" ud1 signature.
    writeVa(t, [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9, 0xcc]);
    syms.push({ name: `__SCT__tp_func_event${i}`, type: "T", address: t });
    sites.push({ kind: "static-call-tramp", address: t, length: 5, target: undefined });
    tramps.push(t);
  }
  syms.push({ name: "__static_call_text_end", type: "T", address: sctStart + 32n });
  cursor = imgVa(0x1_0000n);

  const ftraceStub = fn("ftrace_stub", 32);
  const ftraceCaller = fn("ftrace_caller", 128);
  // ftrace_call: the patchable `call ftrace_stub` inside ftrace_caller.
  const ftraceCall = ftraceCaller + 64n;
  const fc = Buffer.alloc(5);
  fc[0] = 0xe8;
  fc.writeInt32LE(Number(ftraceStub - (ftraceCall + 5n)), 1);
  writeVa(ftraceCall, fc);
  syms.push({ name: "ftrace_call", type: "T", address: ftraceCall });
  sites.push({ kind: "ftrace-op", address: ftraceCall, length: 5, target: undefined });
  fn("ftrace_regs_caller", 128);
  fn("function_trace_call", 64);

  const syscallNames = ["read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "mmap", "mprotect", "munmap", "brk", "rt_sigaction", "getpid", "kill", "getdents64", "swapon", "delete_module", "init_module", "finit_module", "bpf", "openat", "getdents"];
  const handlers = new Map<string, bigint>();
  syscallNames.forEach((n, i) => {
    const opts: { jumpLabel?: 2 | 5; staticCall?: bigint; aliases?: string[] } = {};
    if (i % 5 === 1) opts.jumpLabel = 2;
    if (i % 5 === 2) opts.jumpLabel = 5;
    if (i % 7 === 3) opts.staticCall = tramps[i % tramps.length] as bigint;
    if (n === "getpid") opts.aliases = ["__do_sys_getpid"];
    handlers.set(n, fn(`__x64_sys_${n}`, 80 + ((i * 37) % 200), opts));
  });
  const ni = fn("__x64_sys_ni_syscall", 32, { aliases: ["__do_sys_ni_syscall"] });
  for (let i = 0; i < 40; i++) fn(`filler_function_${i}`, 64 + ((i * 53) % 400), i % 3 === 0 ? { jumpLabel: 2 } : i % 3 === 1 ? { staticCall: tramps[i % 4] as bigint } : {});
  // x64_sys_call: a switch whose cases call the handlers (`call __x64_sys_<name>`), one every 8 bytes from +32.
  const x64SysCall = fn("x64_sys_call", 1400);
  syscallNames.forEach((n, i) => {
    const at = x64SysCall + 32n + BigInt(i * 8);
    const b = Buffer.alloc(5);
    b[0] = 0xe8;
    b.writeInt32LE(Number((handlers.get(n) as bigint) - (at + 5n)), 1);
    writeVa(at, b);
  });
  fn("do_syscall_64", 300, { jumpLabel: 5 });
  // entry_SYSCALL_64 with its internal labels, as kallsyms lists them.
  cursor = (cursor + 0xfffn) & ~0xfffn;
  const entry = cursor;
  writeVa(entry, body(999, 0x150));
  syms.push({ name: "entry_SYSCALL_64", type: "T", address: entry });
  syms.push({ name: "entry_SYSCALL_64_safe_stack", type: "T", address: entry + 0x2bn });
  syms.push({ name: "entry_SYSCALL_64_after_hwframe", type: "T", address: entry + 0x39n });
  syms.push({ name: "syscall_return_via_sysret", type: "T", address: entry + 0xb7n });
  syms.push({ name: "entry_SYSRETQ_unsafe_stack", type: "T", address: entry + 0x13en });
  syms.push({ name: "entry_SYSRETQ_end", type: "T", address: entry + 0x14bn });
  cursor = entry + 0x150n;
  fn("xen_error_entry", 64);
  // IDT handlers: 32 exceptions, the irq entry stubs, int80.
  cursor = (cursor + 0xfffn) & ~0xfffn;
  const exc: bigint[] = [];
  for (let v = 0; v < 32; v++) exc.push(fn(`asm_exc_vector${v}`, 32));
  cursor = (cursor + 0xfffn) & ~0xfffn;
  const irq = cursor;
  writeVa(irq, body(4242, 224 * 16));
  syms.push({ name: "irq_entries_start", type: "T", address: irq });
  cursor = irq + 224n * 16n;
  const int80 = fn("asm_int80_emulation", 32);
  fn("late_text_function", 256);
  syms.push({ name: "_etext", type: "T", address: textEnd });
  // Freed init text: the early IDT handlers (outside _stext.._etext).
  const early = imgVa(3n * MiB);
  syms.push({ name: "early_idt_handler_array", type: "T", address: early });
  syms.push({ name: "early_idt_handler_common", type: "T", address: early + 0x1a0n });

  // ---- rodata
  syms.push({ name: "__start_rodata", type: "R", address: rodataStart });
  const sct = rodataStart + 0x1000n + 0x3c0n;
  const nsys = 40;
  syms.push({ name: "sys_call_table", type: "D", address: sct });
  for (let nr = 0; nr < nsys; nr++) put64(sct + BigInt(nr * 8), nr < syscallNames.length ? (handlers.get(syscallNames[nr] as string) as bigint) : ni);
  // One padding entry, then the next symbol (as the real table is followed by vdso_mapping).
  syms.push({ name: "vdso_mapping", type: "D", address: sct + BigInt((nsys + 1) * 8) });
  const classes = ["stop_sched_class", "dl_sched_class", "rt_sched_class", "fair_sched_class", "idle_sched_class"];
  const classAddr = new Map<string, bigint>();
  classes.forEach((c, i) => {
    const a = rodataStart + 0x3000n + BigInt(i * 0xe0);
    classAddr.set(c, a);
    syms.push({ name: c, type: "D", address: a });
  });
  const moduleKtype = rodataStart + 0x3800n;
  syms.push({ name: "module_ktype", type: "D", address: moduleKtype });
  const pob = rodataStart + 0x3900n;
  syms.push({ name: "page_offset_base", type: "D", address: pob });
  put64(pob, directMapBase);
  const staticKey = dataStart + 0x20_0000n;
  const jt = rodataStart + 0x4000n;
  syms.push({ name: "__start___jump_table", type: "D", address: jt });
  jumpEntries.forEach((e, i) => {
    const at = jt + BigInt(i * 16);
    put32(at, Number(e.code - at));
    put32(at + 4n, Number(e.target - (at + 4n)));
    put64(at + 8n, staticKey - (at + 8n));
  });
  const jtEnd = jt + BigInt(jumpEntries.length * 16);
  syms.push({ name: "__stop___jump_table", type: "D", address: jtEnd });
  const scs = (jtEnd + 15n) & ~15n;
  syms.push({ name: "__start_static_call_sites", type: "D", address: scs });
  staticSites.forEach((s, i) => {
    const at = scs + BigInt(i * 8);
    put32(at, Number(s.addr - at));
    put32(at + 4n, Number(staticKey - (at + 4n)));
  });
  syms.push({ name: "__stop_static_call_sites", type: "D", address: scs + BigInt(staticSites.length * 8) });
  syms.push({ name: "__end_rodata", type: "D", address: rodataEnd });

  // ---- data
  const T = LAYOUT.task;
  const initTask = dataStart;
  const initPidNs = dataStart + 0x3000n;
  const modulesHead = dataStart + 0x3100n;
  const ksetVar = dataStart + 0x3200n;
  const ftraceVar = dataStart + 0x3300n;
  const ftraceOpsList = dataStart + 0x3400n;
  const ftraceListEnd = dataStart + 0x3500n;
  const taintedMask = dataStart + 0x3700n;
  const idtTable = imgVa(5n * MiB);
  syms.push({ name: "init_task", type: "D", address: initTask });
  syms.push({ name: "init_pid_ns", type: "D", address: initPidNs });
  syms.push({ name: "modules", type: "D", address: modulesHead });
  syms.push({ name: "module_kset", type: "B", address: ksetVar });
  syms.push({ name: "ftrace_pages_start", type: "b", address: ftraceVar });
  syms.push({ name: "ftrace_ops_list", type: "d", address: ftraceOpsList });
  syms.push({ name: "ftrace_list_end", type: "d", address: ftraceListEnd });
  syms.push({ name: "tainted_mask", type: "b", address: taintedMask });
  syms.push({ name: "idt_table", type: "b", address: idtTable });
  syms.push({ name: "init_top_pgt", type: "D", address: imgVa(7n * MiB) });

  // ---- heap in the direct map (phys 24..32 MiB)
  let heap = 24n * MiB;
  const alloc = (size: number, align = 64n): bigint => {
    heap = (heap + align - 1n) & ~(align - 1n);
    const pa = heap;
    heap += BigInt(size);
    if (heap > 32n * MiB) throw new Error("synthetic kernel heap exhausted");
    return directMapBase + pa;
  };

  // IDT
  const gate = (v: number, handler: bigint, dpl = 0, ist = 0): void => {
    const g = Buffer.alloc(16);
    g.writeUInt16LE(Number(handler & 0xffffn), 0);
    g.writeUInt16LE(0x10, 2);
    g[4] = ist;
    g[5] = 0x80 | (dpl << 5) | 0xe;
    g.writeUInt16LE(Number((handler >> 16n) & 0xffffn), 6);
    g.writeUInt32LE(Number((handler >> 32n) & 0xffff_ffffn), 8);
    writeVa(idtTable + BigInt(v * 16), g);
  };
  for (let v = 0; v < 256; v++) {
    if ([22, 23, 24, 25, 26, 27, 28, 30, 31].includes(v)) gate(v, early + BigInt(v * 13));
    else if (v < 32) gate(v, exc[v] as bigint, v === 3 || v === 4 ? 3 : 0, v === 2 ? 2 : v === 8 ? 1 : 0);
    else if (v === 0x80) gate(v, int80, 3);
    else gate(v, irq + BigInt((v - 32) * 16));
  }

  // Tasks, struct pids, the PID xarray.
  const tasks: SyntheticTask[] = [];
  const pidOf = new Map<bigint, bigint>();
  const listAdd = (head: bigint, node: bigint): void => {
    // list_add_tail(node, head)
    const prev = readVa(head + 8n, 8).readBigUInt64LE(0);
    put64(node, head);
    put64(node + 8n, prev);
    put64(prev, node);
    put64(head + 8n, node);
  };
  const listInit = (head: bigint): void => {
    put64(head, head);
    put64(head + 8n, head);
  };
  const X = LAYOUT.xaNode;
  const xaHeadVa = initPidNs + 8n; // pid_namespace.idr.idr_rt.xa_head
  /** Stores `entry` at `index` in the PID xarray, growing the tree as needed (6 bits per level). */
  const xaStore = (index: number, entry: bigint): void => {
    let head = readVa(xaHeadVa, 8).readBigUInt64LE(0);
    const newNode = (shift: number, parent: bigint, offset: number): bigint => {
      const n = alloc(X.size);
      writeVa(n + BigInt(X.shift), [shift, offset]);
      put64(n + BigInt(X.parent), parent);
      put64(n + BigInt(X.array), initPidNs);
      return n;
    };
    if (head === 0n) {
      head = newNode(0, 0n, 0) | 2n;
      put64(xaHeadVa, head);
    }
    // Grow the root until it covers the index.
    for (;;) {
      const root = head - 2n;
      const rs = readVa(root + BigInt(X.shift), 1)[0] as number;
      if (index < 64 ** (rs / 6 + 1)) break;
      const up = newNode(rs + 6, 0n, 0);
      put64(up + BigInt(X.slots), head);
      put64(root + BigInt(X.parent), up);
      writeVa(root + BigInt(X.offset), [0]);
      head = up | 2n;
      put64(xaHeadVa, head);
    }
    let node = head - 2n;
    for (;;) {
      const s = readVa(node + BigInt(X.shift), 1)[0] as number;
      const slot = Math.floor(index / 2 ** s) % 64;
      const at = node + BigInt(X.slots) + BigInt(slot * 8);
      if (s === 0) {
        put64(at, entry);
        return;
      }
      let child = readVa(at, 8).readBigUInt64LE(0);
      if (child === 0n) {
        child = newNode(s - 6, node, slot) | 2n;
        put64(at, child);
      }
      node = child - 2n;
    }
  };
  const xaErase = (index: number): void => {
    let node = readVa(xaHeadVa, 8).readBigUInt64LE(0) - 2n;
    for (let depth = 0; depth < 8; depth++) {
      const s = readVa(node + BigInt(X.shift), 1)[0] as number;
      const at = node + BigInt(X.slots) + BigInt((Math.floor(index / 2 ** s) % 64) * 8);
      if (s === 0) {
        put64(at, 0n);
        return;
      }
      node = readVa(at, 8).readBigUInt64LE(0) - 2n;
    }
  };

  const setComm = (t: bigint, comm: string): void => {
    const c = Buffer.alloc(16);
    c.write(comm.slice(0, 15), "latin1");
    writeVa(t + BigInt(T.comm), c);
  };
  const makeTask = (address: bigint, pid: number, tgid: number, comm: string, parent: bigint, opts: { kthread?: boolean; leader?: bigint; cls?: string } = {}): SyntheticTask => {
    put32(address + BigInt(T.pid), pid);
    put32(address + BigInt(T.tgid), tgid);
    put32(address + BigInt(T.state), 1);
    put32(address + BigInt(T.flags), opts.kthread ? PF_KTHREAD : 0x400000);
    put64(address + BigInt(T.schedClass), classAddr.get(opts.cls ?? "fair_sched_class") as bigint);
    put64(address + BigInt(T.realParent), parent);
    put64(address + BigInt(T.parent), parent);
    put64(address + BigInt(T.groupLeader), opts.leader ?? address);
    put64(address + BigInt(T.startTime), BigInt(pid) * 1_000_000n + 5_000_000n);
    setComm(address, comm);
    if (pid !== 0) {
      const p = alloc(LAYOUT.pid.size);
      put32(p, 1);
      put32(p + BigInt(LAYOUT.pid.numbers), pid);
      put64(p + BigInt(LAYOUT.pid.numbers) + 8n, initPidNs);
      put64(p + BigInt(LAYOUT.pid.tasks), address + BigInt(T.pidLinks));
      put64(address + BigInt(T.pidLinks) + 8n, p + BigInt(LAYOUT.pid.tasks));
      put64(address + BigInt(T.threadPid), p);
      pidOf.set(address, p);
      xaStore(pid, p);
    }
    const t = { pid, tgid, address, comm };
    tasks.push(t);
    return t;
  };
  listInit(initTask + BigInt(T.tasks));
  makeTask(initTask, 0, 0, "swapper/0", initTask, { kthread: true, cls: "idle_sched_class" });
  const taskSlot = (): bigint => alloc(T.size + 448, 64n);
  const init = makeTask(taskSlot(), 1, 1, "init", initTask);
  listAdd(initTask + BigInt(T.tasks), init.address + BigInt(T.tasks));
  const kthreadd = makeTask(taskSlot(), 2, 2, "kthreadd", initTask, { kthread: true });
  listAdd(initTask + BigInt(T.tasks), kthreadd.address + BigInt(T.tasks));
  const n = o.processes ?? 12;
  for (let i = 0; i < n; i++) {
    // Some PIDs above 64 and one above 4096, so the xarray has two and three levels.
    const pid = i < n - 2 ? 10 + i : i === n - 2 ? 300 : 5000;
    const kt = i % 4 === 0;
    const t = makeTask(taskSlot(), pid, pid, kt ? `kworker/${i}` : `proc${i}`, kt ? kthreadd.address : init.address, { kthread: kt });
    listAdd(initTask + BigInt(T.tasks), t.address + BigInt(T.tasks));
  }
  // A thread of init's child proc1: in the PID table, not in the task list (only leaders are).
  const leader = tasks.find((t) => t.pid === 11);
  if (leader) makeTask(taskSlot(), 6000, leader.pid, leader.comm, init.address, { leader: leader.address });
  // Another CPU's idle task: pid 0, in neither list, found by a carve.
  makeTask(taskSlot(), 0, 0, "swapper/1", initTask, { kthread: true, cls: "idle_sched_class" });

  // Modules and the kset.
  listInit(modulesHead);
  const kset = alloc(LAYOUT.kset.size);
  listInit(kset + BigInt(LAYOUT.kset.list));
  put64(ksetVar, kset);
  const M = LAYOUT.module;
  const K = LAYOUT.kobject;
  const addKobj = (kobj: bigint): void => {
    put64(kobj + BigInt(K.ktype), moduleKtype);
    put64(kobj + BigInt(K.kset), kset);
    listAdd(kset + BigInt(LAYOUT.kset.list), kobj + BigInt(K.entry));
  };
  // A built-in module's kobject (mod == NULL), as for built-in parameters.
  addKobj(alloc(LAYOUT.mkobj.size));
  let kernfsIds = 0x1000;
  const addModule = (name: string, i: number, flags: { taints?: bigint; sigOk?: boolean } = {}): { name: string; address: bigint } => {
    const m = MODULE_BASE + BigInt(i) * 0x2000n;
    put32(m + BigInt(M.state), 0);
    // mem[MOD_TEXT]: the module's code, in the upper half of its 8 KiB.
    put64(m + BigInt(M.mem) + BigInt(LAYOUT.moduleMemory.base), m + 0x1000n);
    put32(m + BigInt(M.mem) + BigInt(LAYOUT.moduleMemory.size_), 0x1000);
    put64(m + BigInt(M.taints), flags.taints ?? 0n);
    writeVa(m + BigInt(M.sigOk), [flags.sigOk === false ? 0 : 1]);
    const nb = Buffer.alloc(56);
    nb.write(name.slice(0, 55), "latin1");
    writeVa(m + BigInt(M.name), nb);
    listAdd(modulesHead, m + BigInt(M.list));
    const kobj = m + BigInt(M.mkobj) + BigInt(LAYOUT.mkobj.kobj);
    put64(m + BigInt(M.mkobj) + BigInt(LAYOUT.mkobj.mod), m);
    // /sys/module/NAME: a kernfs node with a new id per load.
    const sd = alloc(LAYOUT.kernfsNode.size);
    put64(sd + BigInt(LAYOUT.kernfsNode.id), BigInt(++kernfsIds));
    put64(kobj + BigInt(K.sd), sd);
    addKobj(kobj);
    modules.push({ name, address: m, phys: phys(m) });
    return { name, address: m };
  };
  (o.modules ?? ["virtio_blk", "failover", "net_failover", "button"]).forEach((name, i) => addModule(name, i));
  // ftrace_ops_list: empty (just &ftrace_list_end, whose next is itself).
  put64(ftraceOpsList, ftraceListEnd);
  put64(ftraceListEnd + BigInt(LAYOUT.ftraceOps.next), ftraceListEnd);

  // ftrace's records.
  const F = LAYOUT.ftracePage;
  const page = alloc(F.size);
  const recs = alloc(ftraceIps.length * LAYOUT.dynFtrace.size, 16n);
  ftraceIps.forEach((ip, i) => put64(recs + BigInt(i * LAYOUT.dynFtrace.size), ip));
  put64(page + BigInt(F.records), recs);
  put32(page + BigInt(F.index), ftraceIps.length);
  put64(ftraceVar, page);

  // ---- BTF, banner, kallsyms (in data), VMCOREINFO
  const release = "6.12.117+deb12-cloud-amd64";
  const buildId = "5e1f7e57c0ffee0ddba11ba5eba11f00dcafe001";
  const btf = sweepKernelBtf();
  const btfAt = dataStart + 0x4_0000n;
  writeVa(btfAt, btf);
  syms.push({ name: "__start_BTF", type: "R", address: btfAt });
  syms.push({ name: "__stop_BTF", type: "R", address: btfAt + BigInt(btf.length) });
  const banner = dataStart + 0xf_0000n;
  writeVa(banner, Buffer.from(`Linux version ${release} (synthetic) #1 SMP PREEMPT_DYNAMIC\n\0`, "latin1"));
  syms.push({ name: "linux_banner", type: "D", address: banner });
  const ksAt = dataStart + 0x18_0000n;
  const ks = buildKallsyms(syms, { virtBase: ksAt, relativeBase: text, absolutePercpu: true });
  writeVa(ksAt, ks.bytes);
  const symbols = new Map<string, bigint>();
  for (const s of ks.symbols) if (!symbols.has(s.name)) symbols.set(s.name, s.address);
  const sym = (name: string): bigint => symbols.get(name) as bigint;
  const vmcoreinfo = [
    ["OSRELEASE", release],
    ["BUILD-ID", buildId],
    ["PAGESIZE", "4096"],
    ["SYMBOL(swapper_pg_dir)", sym("init_top_pgt").toString(16)],
    ["SYMBOL(_stext)", sym("_stext").toString(16)],
    ["OFFSET(list_head.next)", "0"],
    ["OFFSET(list_head.prev)", "8"],
    ...kallsymsVmcoreinfo(sym),
    ["NUMBER(phys_base)", BigInt.asIntN(64, physBase).toString()],
    ["NUMBER(pgtable_l5_enabled)", levels === 5 ? "1" : "0"],
    ["KERNELOFFSET", shift.toString(16)],
    ["NUMBER(KERNEL_IMAGE_SIZE)", "1073741824"],
  ]
    .map(([k, v]) => `${k}=${v}\n`)
    .join("");
  ram.write(vmcoreinfo, 0x60_0000, "latin1");

  const cr4 = levels === 5 ? 0x751ef0n : 0x750ef0n;
  const regs: ControlRegisters[] = [{ cpu: 0, cr0: 0x8005_0033n, cr3: tables.root, cr4, efer: 0xd01n, idtBase: IDT_ALIAS, idtLimit: 0xfff }];
  const mem = new BufferPhysicalMemory(ram);
  const writer = new BufferWriter(ram);

  const rel32At = (site: bigint, opcode: number, target: bigint): Buffer => {
    const b = Buffer.alloc(5);
    b[0] = opcode;
    b.writeInt32LE(Number(target - (site + 5n)), 1);
    return b;
  };
  const T2 = T;
  const fields: number[] = [];
  const field = (va: bigint): void => void fields.push(Number(phys(va)));
  for (const t of tasks) for (const off of [T.tasks, T.tasks + 8, T.pid, T.threadPid, T.realParent, T.groupLeader, T.pidLinks, T.exitState, T.comm]) field(t.address + BigInt(off));
  for (const p of pidOf.values()) for (const off of [LAYOUT.pid.tasks, LAYOUT.pid.numbers]) field(p + BigInt(off));
  for (const m of modules) for (const off of [M.list, M.list + 8, M.name, M.mkobj + LAYOUT.mkobj.mod, M.mkobj + K.entry, M.mkobj + K.entry + 8, M.mkobj + K.ktype]) field(m.address + BigInt(off));
  for (const va of [kset, kset + 8n, ksetVar, modulesHead, modulesHead + 8n, ftraceVar, page + BigInt(F.records), page + BigInt(F.index), page + BigInt(F.next), xaHeadVa, initPidNs]) field(va);
  // Every non-empty slot of every xarray node, and the nodes' shift/offset/parent words.
  for (let pa = Number(24n * MiB); pa < Number(heap); pa += 8) {
    const v = ram.readBigUInt64LE(pa);
    if ((v & 3n) === 2n && v - 2n >= directMapBase && v - 2n < directMapBase + BigInt(ramBytes)) {
      fields.push(pa);
      const node = Number(phys(v - 2n));
      fields.push(node, node + X.parent);
    }
  }
  const k: SyntheticKernel = {
    ram,
    mem,
    writer,
    levels,
    regs,
    symbols,
    text: { start: text, end: textEnd },
    rodata: { start: rodataStart, end: rodataEnd },
    directMapBase,
    tasks,
    modules: modules.map((m) => ({ name: m.name, address: m.address })),
    sites,
    fields,
    hotspots: [
      { what: "text", start: Number(physText), length: Number(cursor - text) },
      { what: "sys_call_table", start: Number(phys(sct)), length: (nsys + 1) * 8 },
      { what: "jump table", start: Number(phys(jt)), length: Number(scs - jt) + staticSites.length * 8 },
      { what: "idt_table", start: Number(phys(idtTable)), length: 4096 },
      { what: "init data", start: Number(phys(initTask)), length: 0x4000 },
      { what: "heap (tasks, pids, xarray, kset, ftrace)", start: Number(24n * MiB), length: Number(heap - 24n * MiB) },
      { what: "modules", start: Number(32n * MiB), length: 0x2000 * modules.length },
      { what: "page tables", start: Number(physText + 7n * MiB), length: 0x2_0000 },
      { what: "rodata", start: Number(phys(rodataStart)), length: 0x8_0000 },
    ],
    phys,
    writeVa,
    readVa,
    ftraceOn(site) {
      writeVa(site.address, rel32At(site.address, 0xe8, ftraceCaller));
    },
    jumpLabelOn(site) {
      const t = site.target as bigint;
      if (site.length === 2) writeVa(site.address, [0xeb, Number(t - (site.address + 2n)) & 0xff]);
      else writeVa(site.address, rel32At(site.address, 0xe9, t));
    },
    staticCallTo(site, target) {
      writeVa(site.address, rel32At(site.address, site.kind === "static-call-tramp" ? 0xe9 : 0xe8, target));
    },
    addFtraceOps(trampoline, size = 0x140, directCall = 0n) {
      const ops = alloc(LAYOUT.ftraceOps.size);
      put64(ops + BigInt(LAYOUT.ftraceOps.directCall), directCall);
      put64(ops + BigInt(LAYOUT.ftraceOps.trampoline), trampoline);
      put64(ops + BigInt(LAYOUT.ftraceOps.trampolineSize), BigInt(size));
      put64(ops + BigInt(LAYOUT.ftraceOps.next), readVa(ftraceOpsList, 8).readBigUInt64LE(0));
      put64(ftraceOpsList, ops);
      return ops;
    },
    loadModule(name, flags = {}, at) {
      const m = addModule(name, at ?? modules.length, flags);
      k.modules = modules.map((x) => ({ name: x.name, address: x.address }));
      return m;
    },
    taint(bits) {
      put64(taintedMask, readVa(taintedMask, 8).readBigUInt64LE(0) | bits);
    },
    spawn(pid, comm) {
      const t = makeTask(taskSlot(), pid, pid, comm, init.address);
      listAdd(initTask + BigInt(T2.tasks), t.address + BigInt(T2.tasks));
      return t;
    },
    reap(task) {
      const node = task.address + BigInt(T2.tasks);
      const next = readVa(node, 8).readBigUInt64LE(0);
      const prev = readVa(node + 8n, 8).readBigUInt64LE(0);
      put64(prev, next);
      put64(next + 8n, prev);
      const p = pidOf.get(task.address);
      if (p !== undefined) put64(p + BigInt(LAYOUT.pid.tasks), 0n);
      xaErase(task.pid);
      put32(task.address + BigInt(T2.exitState), 32);
    },
  };
  return k;
}
