/**
 * The sweep engine: Livewire-style integrity and cross-view checks of a running guest kernel from outside it,
 * against a baseline taken at a trusted moment (right after boot). "Pin hardware invariants and work your way
 * up": control registers → IDT → system call table and dispatch code → kernel text and read-only data → page
 * permissions → processes (task list vs PID table vs memory carve vs the guest's own `ps`) → modules (`modules`
 * list vs sysfs kset vs carve vs the guest's /proc/modules) → disagreements inside the kernel model.
 *
 * A pure library: the caller supplies guest memory, the kernel model, the registers (QMP `info registers`) and,
 * optionally, what the guest agent reports; it gets back a report of findings and the next incremental state.
 * Both the baseline and the state are plain JSON. Everything read from the guest is hostile: walks are bounded,
 * output is capped, and only IntrospectionError escapes.
 *
 * Races: the guest keeps running while it is read, so anything that two reads could see half-done is confirmed
 * before it alarms. A task or module missing from the kernel's list must still be missing after a fresh re-read
 * and in the next sweep ("hidden-process" / "hidden-module" fire on the second sweep); a process missing from the
 * guest's `ps` alarms only if the VMI view had the very same task (address, pid, start time) both in the previous
 * sweep and in this one, so it existed during the whole `ps` — provided the caller ran `ps` between the two sweeps.
 * A kernel list that cannot be walked twice in a row is itself a finding, so breaking a list cannot blind us.
 *
 * Legitimate self-patching (ftrace, jump labels, static calls, as patch-sites.ts recognises it) is not a finding:
 * it is summarised in `report.textPatches` (pages explained, sites by kind, call targets outside kernel text).
 * Every finding is an alarm except those of severity "info" (informational model notes, a truncation count).
 */
import { z } from "zod";
import { IntrospectionError, hex } from "./errors.ts";
import { currentAttributor, type Attributor } from "./attribution.ts";
import { carve, type CarveResult } from "./carve.ts";
import { EARLY_IDT_VECTORS, IDT_ALIAS, describeGate, deserializeGate, gateDifferences, readIdt, serializeGate, type IdtGate, type SerializedGate } from "./idt.ts";
import { describeAddress, inRange, kernelLayout, readU64, symbolExtent, type KernelLayout } from "./kernel-layout.ts";
import { START_KERNEL_MAP, type KernelModel } from "./kernel-model.ts";
import { TAINT_FLAGS, TAINT_OOT_MODULE, TAINT_UNSIGNED_MODULE, readModuleLoadId, readModuleTrust, taintNames, walkModuleKset, walkModuleList, readModule, type VmiModuleEntry } from "./modules.ts";
import { checkPagePermissions, type PermissionRule } from "./page-permissions.ts";
import { VirtualMemory, rootFromCr3, type ControlRegisters } from "./page-walk.ts";
import { MAX_PATCH_SITES, type PatchKind } from "./patch-sites.ts";
import type { PhysicalMemory } from "./physical-memory.ts";
import { readSyscallTable, resolveHandler, syscallTableExtent, trimPadding } from "./syscall-table.ts";
import { isAttached, readTask, walkPidTable, walkTaskList, type VmiTask } from "./tasks.ts";
import { MAX_HOT_PAGES, TextBaseline, describePage, planPages, takeTextBaseline, targetPolicy, type CriticalFunction, type PageVerdict, type TextBaselineData } from "./text-integrity.ts";

export type Severity = "critical" | "high" | "medium" | "info";

/** Stable finding identifiers, for alerting, policies and tests. */
export type CheckId =
  | "cr0-wp"
  | "cr4-smep"
  | "cr4-smap"
  | "idt-base"
  | "idt-gate"
  | "syscall-table"
  | "syscall-text"
  | "kernel-text"
  | "kernel-rodata"
  | "page-permissions"
  | "hidden-process"
  | "process-hidden-from-guest"
  | "hidden-module"
  | "module-hidden-from-guest"
  /** a module loaded after the baseline that is out-of-tree or unsigned (medium) */
  | "module-untrusted"
  /** a module loaded after the baseline while the VM is under a "no new modules" policy (high) */
  | "module-loaded"
  /** a kernel taint flag set after the baseline (tainted_mask) */
  | "kernel-taint"
  | "model-disagreement"
  | "baseline-mismatch"
  /** the service: a watched guest whose kernel could not be baselined, or whose agent never answered */
  | "baseline-failed"
  | "agent-silent"
  /** the service: a resumed memory state of a boot never baselined here was baselined as it was */
  | "baseline-untrusted"
  | "structure-unreadable"
  | "findings-truncated";

export interface Evidence {
  /** A guest address, "0x..." */
  address?: string;
  symbol?: string;
  expected?: string;
  found?: string;
  [k: string]: unknown;
}

export interface Finding {
  readonly check: CheckId;
  readonly severity: Severity;
  readonly message: string;
  readonly evidence: Evidence;
}

/** One process as the guest agent's `ps` reports it. */
export interface GuestProcess {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
}

export interface SweepInput {
  readonly model: KernelModel;
  /** The guest's RAM (read-only). */
  readonly phys: PhysicalMemory;
  /** Every vCPU's registers (parseControlRegisters), or just one. */
  readonly regs: ControlRegisters | readonly ControlRegisters[];
  /** The guest agent's `ps`, taken after the previous sweep ended and before this one started. */
  readonly guestProcesses?: readonly GuestProcess[];
  /** Module names from the guest's /proc/modules, taken like guestProcesses. */
  readonly guestModules?: readonly string[];
}

export interface BaselineOptions {
  /** Keep every text/rodata page's bytes (≈ 27 MiB) for byte-exact diffs of any changed page. Default false. */
  keepAllTextBytes?: boolean;
  /** More functions whose pages are hashed every sweep (default: the usual rootkit targets, see below). */
  criticalSymbols?: readonly string[];
}

export interface SweepOptions {
  /** Text/rodata pages hashed per sweep besides the critical and changed ones. Default 128 (≈ 0.7 ms). */
  textPagesPerSweep?: number;
  /** Carve physical memory for tasks and modules in this sweep (≈ 0.3-0.6 s per 256 MiB). */
  carve?: boolean;
  /** Carve automatically every N sweeps (0: only when `carve` is set). Default 0. */
  carveEverySweeps?: number;
  /** At most this many findings per report; the rest are counted in a "findings-truncated" finding. Default 200. */
  maxFindings?: number;
  /** "No new modules": every module on the list that was not there at the baseline is a high finding. */
  noNewModules?: boolean;
}

/** A JSON-serialisable record of the guest at a trusted moment. */
export interface Baseline {
  readonly format: 1;
  readonly takenAt: string;
  readonly kernel: { release: string; buildId: string | null; kaslrShift: string; physBase: string };
  readonly cr: { wp: boolean; smep: boolean; smap: boolean };
  readonly idt: { base: string; limit: number; gates: SerializedGate[]; tablePhys: string | null } | null;
  readonly syscalls: { table: string; entries: string[] } | null;
  readonly text: TextBaselineData | null;
  readonly directMapBase: string | null;
  /** What could not be baselined, and so will not be checked. */
  readonly notes: string[];
  /** tainted_mask at the baseline (absent in baselines of older versions: then taint is not compared). */
  readonly taintedMask?: string | null;
  /** The modules on the list at the baseline (absent in older baselines: then every module counts as there). */
  readonly modules?: { name: string; address: string; loadId?: string }[] | null;
}

export type ProcessSource = "tasks" | "pid-table" | "carve";
export type ModuleSource = "modules" | "kset" | "carve";

export interface VmiProcess {
  readonly pid: number;
  readonly tgid: number;
  readonly ppid: number;
  readonly comm: string;
  /** ps-style state letter: R S D T t I P Z X */
  readonly state: string;
  readonly exitState: number;
  readonly taskAddr: string;
  /** task->start_time (CLOCK_MONOTONIC ns), decimal */
  readonly startTime: string;
  readonly kernelThread: boolean;
  readonly sources: ProcessSource[];
  /** Whether the guest's `ps` listed it (thread-group leaders only; absent without a guest view). */
  inGuestView?: boolean;
}

export interface VmiModule {
  readonly name: string;
  readonly address: string;
  readonly state: number;
  readonly sources: ModuleSource[];
  inGuestView?: boolean;
}

export interface SweepCoverage {
  textBytesHashed: number;
  textBytesTotal: number;
  textPagesHashed: number;
  criticalPages: number;
  hotPages: number;
  /** Sweeps for the rotating window to cover all of text and rodata once. */
  fullPassEverySweeps: number;
  /** Where the rotating window will start next sweep (page index). */
  textCursor: number;
  taskListComplete: boolean;
  pidTableComplete: boolean;
  pidTableEntries: number;
  moduleListComplete: boolean;
  moduleKsetComplete: boolean;
  carved: boolean;
  carveEverySweeps: number;
  /** Hidden-process/-module candidates waiting for confirmation in the next sweep. */
  pendingConfirmation: number;
  /** Guest-view comparisons skipped because there was no previous VMI view to bracket the guest's answer. */
  guestViewDeferred: boolean;
  /** Checks that did not run, and why (no baseline for them, no BTF, ...). */
  skipped: string[];
}

export interface TextPatchSummary {
  /** Pages that differ from the baseline only at legitimate patch sites (as of each page's latest check). */
  explainedPages: number;
  /** Legitimately patched sites seen in the pages hashed this sweep, by kind. */
  patchedSites: Partial<Record<PatchKind, number>>;
  /** Distinct call/jmp targets outside kernel text (ftrace/BPF trampolines in the module area, or a hook). */
  foreignTargets: string[];
}

export interface SweepReport {
  readonly sweep: number;
  readonly findings: Finding[];
  readonly processes: VmiProcess[];
  readonly modules: VmiModule[];
  readonly kernel: { release: string; buildId: string | null; kaslrShift: string };
  readonly durationMs: number;
  readonly timings: Record<string, number>;
  readonly coverage: SweepCoverage;
  readonly textPatches: TextPatchSummary;
  readonly carve: { ms: number; bytesScanned: number; candidates: number; unattached: number; truncated: boolean } | undefined;
}

/** What one sweep hands the next. Plain JSON. */
export interface SweepState {
  readonly format: 1;
  readonly sweeps: number;
  readonly textCursor: number;
  readonly hotPages: number[];
  readonly explainedPages: number[];
  readonly pending: PendingHidden[];
  /** The previous sweep's VMI view, to bracket the guest's answers in time. */
  readonly previousView: { processes: { pid: number; address: string; startTime: string }[]; modules: { name: string; address: string }[] } | null;
  readonly lastCarveSweep: number | null;
  /** Kernel structures whose walk did not complete in the previous sweep (a second time is a finding). */
  readonly brokenWalks: WalkName[];
  /** ftrace trampolines seen on ftrace_ops_list, with the last sweep they were (accepted for a grace period). */
  readonly ftraceTrampolines?: { address: string; sweep: number }[];
}

/** The kernel structures the sweep walks. */
export type WalkName = "task-list" | "pid-table" | "module-list" | "module-kset";

export interface PendingHidden {
  readonly kind: "process" | "module";
  readonly address: string;
  readonly pid: number;
  readonly name: string;
  readonly startTime: string;
  readonly source: string;
}

/** Handlers of these are hashed every sweep: the syscall paths rootkits most often hook inline. */
export const DEFAULT_CRITICAL_SYMBOLS: readonly string[] = [
  "__x64_sys_getdents64",
  "__x64_sys_getdents",
  "__x64_sys_kill",
  "__x64_sys_openat",
  "__x64_sys_read",
  "__x64_sys_write",
  "__x64_sys_init_module",
  "__x64_sys_finit_module",
  "__x64_sys_delete_module",
  "__x64_sys_bpf",
];

/** The system call dispatch path, compared byte by byte every sweep ("syscall-text"). */
const DISPATCH: readonly { name: string; through: readonly string[] }[] = [
  { name: "x64_sys_call", through: [] },
  { name: "do_syscall_64", through: [] },
  { name: "entry_SYSCALL_64", through: ["entry_SYSCALL_64_safe_stack", "entry_SYSCALL_64_after_hwframe", "syscall_return_via_sysret", "entry_SYSRETQ_unsafe_stack", "entry_SYSRETQ_end"] },
];

const CR0_WP = 1n << 16n;
const CR4_SMEP = 1n << 20n;
const CR4_SMAP = 1n << 21n;
const U64 = (1n << 64n) - 1n;
const DEFAULT_PAGES_PER_SWEEP = 128;
const DEFAULT_MAX_FINDINGS = 200;
const MAX_PENDING = 256;
/** A trampoline whose ops left ftrace_ops_list stays acceptable this many sweeps (the sites are being NOPed). */
export const TRAMPOLINE_GRACE_SWEEPS = 30;
const MAX_RECENT_TRAMPOLINES = 256;
const SCHED_CLASSES = ["stop_sched_class", "dl_sched_class", "rt_sched_class", "fair_sched_class", "ext_sched_class", "idle_sched_class"];

const cpus = (regs: SweepInput["regs"]): readonly ControlRegisters[] => (Array.isArray(regs) ? (regs as readonly ControlRegisters[]) : [regs as ControlRegisters]);
const ms = (t0: number): number => Math.round((performance.now() - t0) * 1000) / 1000;
const paSymbol = (va: bigint, physBase: bigint): bigint => (va - START_KERNEL_MAP + physBase) & U64;
const HEX = /^0x[0-9a-f]{1,16}$/;

// ---------------------------------------------------------------------------------------------------------------
// Baseline

/** Records the guest as it is now, to be trusted: call right after boot, before any untrusted code ran. */
export function takeBaseline(input: SweepInput, options: BaselineOptions = {}): Baseline {
  const { model, phys } = input;
  phys.clearCache();
  model.kernel.clearCache();
  const layout = kernelLayout(model);
  const notes = [...layout.problems];
  const cpu0 = cpus(input.regs)[0];
  if (!cpu0) throw new IntrospectionError("host-input", "Cannot take a baseline: no vCPU registers were given");
  const k = model.kernel;
  const s = model.symbols;

  const idtBase = cpu0.idtBase ?? IDT_ALIAS;
  const idtLimit = cpu0.idtLimit ?? 0xfff;
  const gates = readIdt(k, idtBase, idtLimit);
  if (!gates) notes.push(`the IDT at ${hex(idtBase)} cannot be read: IDT checks are off`);
  const idtTable = s.address("idt_table");
  const idtTablePhys = idtTable !== undefined ? k.translate(idtTable) : undefined;

  const ext = syscallTableExtent(s);
  const entries = ext ? readSyscallTable(k, ext.address, ext.maxEntries) : undefined;
  if (!entries) notes.push("sys_call_table cannot be located or read: syscall-table checks are off");

  const functions: CriticalFunction[] = [];
  for (const d of DISPATCH) {
    const e = symbolExtent(s, d.name, d.through, 0x10_0000);
    if (e) functions.push({ name: d.name, start: e.start, end: e.end });
    else notes.push(`${d.name} cannot be located: its code is only checked by the rotating text hash`);
  }
  const criticalAddresses: bigint[] = [];
  for (const g of gates ?? []) if (inRange(layout.text, g.handler)) criticalAddresses.push(g.handler);
  if (ext && entries) for (let a = ext.address; a < ext.address + BigInt(entries.length * 8); a += 4096n) criticalAddresses.push(a);
  for (const name of options.criticalSymbols ?? DEFAULT_CRITICAL_SYMBOLS) {
    const e = symbolExtent(s, name, [], 0x10_0000);
    if (e) for (let a = e.start; a < e.end; a += 4096n) criticalAddresses.push(a);
  }
  let text: TextBaselineData | null = null;
  try {
    text = takeTextBaseline(model, layout, { criticalFunctions: functions, criticalAddresses, keepAllBytes: options.keepAllTextBytes ?? false });
    notes.push(...text.siteProblems);
  } catch (err) {
    if (!(err instanceof IntrospectionError)) throw err;
    notes.push(`kernel text cannot be baselined: ${err.message}`);
  }
  const taintVar = s.address("tainted_mask");
  const taint = taintVar !== undefined ? readU64(k, taintVar) : undefined;
  if (taint === undefined) notes.push("tainted_mask cannot be read: new kernel taint is not checked");
  const mo = layout.module;
  const modHead = s.address("modules");
  const walk = mo && modHead !== undefined ? walkModuleList(k, mo, modHead, model.pagingLevels) : undefined;
  const baseModules = walk?.complete
    ? walk.modules.map((m) => {
        const id = readModuleLoadId(k, layout.moduleMemory, m.address, model.pagingLevels);
        return { name: m.name, address: hex(m.address), ...(id !== undefined ? { loadId: hex(id) } : {}) };
      })
    : null;
  if (!baseModules) notes.push("the module list cannot be walked: modules loaded later are not told from those loaded at boot");
  const pob = s.address("page_offset_base");
  const directMapBase = pob !== undefined ? readU64(k, pob) : undefined;
  if (directMapBase === undefined) notes.push("page_offset_base cannot be read: no carve, no direct-map alias checks");

  return {
    format: 1,
    takenAt: new Date().toISOString(),
    kernel: { release: model.release, buildId: model.buildId ?? null, kaslrShift: hex(model.kaslrShift), physBase: hex(model.physBase) },
    cr: { wp: (cpu0.cr0 & CR0_WP) !== 0n, smep: (cpu0.cr4 & CR4_SMEP) !== 0n, smap: (cpu0.cr4 & CR4_SMAP) !== 0n },
    idt: gates ? { base: hex(idtBase), limit: idtLimit, gates: gates.map(serializeGate), tablePhys: idtTablePhys?.mapped ? hex(idtTablePhys.paddr) : null } : null,
    syscalls: ext && entries ? { table: hex(ext.address), entries: trimPadding(entries).map(hex) } : null,
    text,
    directMapBase: directMapBase !== undefined ? hex(directMapBase) : null,
    notes,
    taintedMask: taint !== undefined ? hex(taint) : null,
    modules: baseModules,
  };
}

/** A baseline, decoded and checked once (a baseline may come back from storage). */
interface DecodedBaseline {
  readonly kaslrShift: bigint;
  readonly physBase: bigint;
  readonly idt: { base: bigint; limit: number; gates: IdtGate[]; tablePhys: bigint | undefined } | undefined;
  readonly syscalls: { table: bigint; entries: bigint[] } | undefined;
  readonly text: TextBaseline | undefined;
  readonly directMapBase: bigint | undefined;
  readonly taintedMask: bigint | undefined;
  /** "address/name" of the baseline's modules; undefined: not known */
  readonly modules: ReadonlySet<string> | undefined;
}

const decoded = new WeakMap<Baseline, DecodedBaseline>();

// A baseline may come back from storage: its shape is checked strictly before anything in it is used.
const hexAddr = z.string().regex(HEX);
const int = (min: number, max: number) => z.number().int().min(min).max(max);
const baselineSchema = z.strictObject({
  format: z.literal(1),
  takenAt: z.string().max(64),
  kernel: z.strictObject({ release: z.string().max(256), buildId: z.string().max(128).nullable(), kaslrShift: hexAddr, physBase: hexAddr }),
  cr: z.strictObject({ wp: z.boolean(), smep: z.boolean(), smap: z.boolean() }),
  idt: z
    .strictObject({
      base: hexAddr,
      limit: int(0, 4095),
      gates: z.array(z.strictObject({ v: int(0, 255), handler: hexAddr, sel: int(0, 0xffff), ist: int(0, 7), type: int(0, 15), dpl: int(0, 3), p: z.boolean() })).max(256),
      tablePhys: hexAddr.nullable(),
    })
    .nullable(),
  syscalls: z.strictObject({ table: hexAddr, entries: z.array(hexAddr).max(1024) }).nullable(),
  text: z
    .strictObject({
      regions: z.array(z.strictObject({ name: z.enum(["text", "rodata"]), start: hexAddr, end: hexAddr })).min(1).max(4),
      pageHashes: z.string().max(16 * 1024 * 1024),
      blockCrcs: z.string().max(32 * 1024 * 1024),
      sites: z.strictObject({
        base: hexAddr,
        count: int(0, MAX_PATCH_SITES),
        offsets: z.string().max(8 * MAX_PATCH_SITES),
        kinds: z.string().max(2 * MAX_PATCH_SITES),
        original: z.string().max(8 * MAX_PATCH_SITES),
        targets: z.string().max(8 * MAX_PATCH_SITES),
      }),
      siteProblems: z.array(z.string().max(4096)).max(1000),
      criticalPages: z.array(int(0, 1 << 20)).max(1 << 16),
      functions: z.array(z.strictObject({ name: z.string().max(512), start: hexAddr, end: hexAddr })).max(64),
      keptPages: z.array(z.strictObject({ page: int(0, 1 << 20), data: z.string().max(8192) })).max(1 << 18),
    })
    .nullable(),
  directMapBase: hexAddr.nullable(),
  notes: z.array(z.string().max(4096)).max(10_000),
  taintedMask: hexAddr.nullable().optional(),
  modules: z.array(z.strictObject({ name: z.string().max(256), address: hexAddr, loadId: hexAddr.optional() })).max(4096).nullable().optional(),
});

function decodeBaseline(b: Baseline): DecodedBaseline {
  const have = decoded.get(b);
  if (have) return have;
  const bad = (why: string): IntrospectionError => new IntrospectionError("host-input", `Cannot use the baseline: ${why}`);
  const shape = baselineSchema.safeParse(b);
  if (!shape.success) {
    const issue = shape.error.issues[0];
    throw bad(`${issue?.path.join(".") || "it"}: ${issue?.message ?? "invalid"}`);
  }
  const addr = (v: unknown, what: string): bigint => {
    if (typeof v !== "string" || !HEX.test(v)) throw bad(`${what} is ${JSON.stringify(v)}`);
    return BigInt(v);
  };
  let idt: DecodedBaseline["idt"];
  if (b.idt) {
    idt = { base: addr(b.idt.base, "idt.base"), limit: b.idt.limit, gates: b.idt.gates.map(deserializeGate), tablePhys: b.idt.tablePhys === null ? undefined : addr(b.idt.tablePhys, "idt.tablePhys") };
  }
  let syscalls: DecodedBaseline["syscalls"];
  if (b.syscalls) {
    syscalls = { table: addr(b.syscalls.table, "syscalls.table"), entries: b.syscalls.entries.map((e, i) => addr(e, `syscalls.entries[${i}]`)) };
  }
  const d: DecodedBaseline = {
    kaslrShift: addr(b.kernel.kaslrShift, "kernel.kaslrShift"),
    physBase: addr(b.kernel.physBase, "kernel.physBase"),
    idt,
    syscalls,
    text: b.text ? TextBaseline.decode(b.text) : undefined,
    directMapBase: b.directMapBase === null ? undefined : addr(b.directMapBase, "directMapBase"),
    taintedMask: b.taintedMask ? addr(b.taintedMask, "taintedMask") : undefined,
    modules: b.modules ? new Set(b.modules.map((m) => `${m.address}/${m.name}/${m.loadId ?? ""}`)) : undefined,
  };
  decoded.set(b, d);
  return d;
}

// ---------------------------------------------------------------------------------------------------------------
// Sweep

/** The state before the first sweep. */
export function initialSweepState(): SweepState {
  return { format: 1, sweeps: 0, textCursor: 0, hotPages: [], explainedPages: [], pending: [], previousView: null, lastCarveSweep: null, brokenWalks: [] };
}

/** Findings with a cap: beyond it, only counted. */
class Findings {
  readonly list: Finding[] = [];
  private dropped = 0;
  constructor(private readonly max: number) {}
  add(check: CheckId, severity: Severity, message: string, evidence: Evidence = {}): void {
    if (this.list.length < this.max) this.list.push({ check, severity, message, evidence });
    else this.dropped++;
  }
  done(): Finding[] {
    if (this.dropped > 0) this.list.push({ check: "findings-truncated", severity: "info", message: `${this.dropped} more findings were left out of this report`, evidence: { omitted: this.dropped } });
    return this.list;
  }
}

/** ps-style state letter (fs/proc/array.c task_state_array order). */
export function stateLetter(state: number, exitState: number): string {
  if (exitState & 16) return "Z";
  if (exitState & 32) return "X";
  if ((state & 0x402) === 0x402) return "I";
  const s = state & 0x7f;
  if (s === 0) return "R";
  if (s & 1) return "S";
  if (s & 2) return "D";
  if (s & 4) return "T";
  if (s & 8) return "t";
  if (s & 0x40) return "P";
  return "?";
}

const stateSchema = z.strictObject({
  format: z.literal(1),
  sweeps: int(0, Number.MAX_SAFE_INTEGER),
  textCursor: int(0, 1 << 20),
  hotPages: z.array(int(0, 1 << 20)).max(MAX_HOT_PAGES),
  explainedPages: z.array(int(0, 1 << 20)).max(1 << 20),
  pending: z
    .array(z.strictObject({ kind: z.enum(["process", "module"]), address: hexAddr, pid: int(0, 1 << 23), name: z.string().max(256), startTime: z.string().max(32), source: z.string().max(64) }))
    .max(MAX_PENDING),
  previousView: z
    .strictObject({
      processes: z.array(z.strictObject({ pid: int(0, 1 << 23), address: hexAddr, startTime: z.string().max(32) })).max(65_536),
      modules: z.array(z.strictObject({ name: z.string().max(256), address: hexAddr })).max(8192),
    })
    .nullable(),
  lastCarveSweep: int(0, Number.MAX_SAFE_INTEGER).nullable(),
  brokenWalks: z.array(z.enum(["task-list", "pid-table", "module-list", "module-kset"])).max(4),
  ftraceTrampolines: z.array(z.strictObject({ address: hexAddr, sweep: int(0, Number.MAX_SAFE_INTEGER) })).max(MAX_RECENT_TRAMPOLINES).optional(),
});

/** States this module produced: not re-validated (a state from storage is). */
const ownStates = new WeakSet<SweepState>();

function checkState(s: SweepState | undefined): SweepState {
  if (s === undefined) return initialSweepState();
  if (ownStates.has(s)) return s;
  const r = stateSchema.safeParse(s);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new IntrospectionError("host-input", `Cannot continue from this sweep state: ${issue?.path.join(".") || "it"}: ${issue?.message ?? "invalid"}`);
  }
  return s;
}

/**
 * Runs one sweep against `baseline`. `state` is the previous sweep's (undefined for the first, and again after a
 * new baseline). Returns the report and the state for the next sweep. Throws only IntrospectionError (a bad
 * baseline or state, no registers); whatever guest memory holds becomes findings or coverage gaps, never errors.
 */
export function sweep(input: SweepInput, baseline: Baseline, stateIn?: SweepState, options: SweepOptions = {}): { report: SweepReport; state: SweepState } {
  const t0 = performance.now();
  const state = checkState(stateIn);
  const b = decodeBaseline(baseline);
  const { model, phys } = input;
  phys.clearCache();
  model.kernel.clearCache();
  const layout = kernelLayout(model);
  const regs = cpus(input.regs);
  if (regs.length === 0) throw new IntrospectionError("host-input", "Cannot sweep: no vCPU registers were given");
  const f = new Findings(Math.max(1, Math.min(10_000, options.maxFindings ?? DEFAULT_MAX_FINDINGS)));
  const timings: Record<string, number> = {};
  const skipped: string[] = [];
  const sweepNo = state.sweeps + 1;
  // Who owns an address (kernel symbol, listed or hidden module, ftrace trampoline, unknown): built on first use.
  let attributor: Attributor | undefined;
  const attr = (): Attributor => (attributor ??= currentAttributor(model, layout));

  const sameKernel = (baseline.kernel.buildId ?? undefined) === model.buildId && b.kaslrShift === model.kaslrShift && baseline.kernel.release === model.release;
  if (!sameKernel) {
    f.add("baseline-mismatch", "high", `The guest runs ${model.release} (build ${model.buildId ?? "unknown"}, KASLR shift ${hex(model.kaslrShift)}), not the kernel the baseline was taken of: the guest rebooted or was replaced; take a new baseline`, {
      expected: `${baseline.kernel.release} ${baseline.kernel.buildId ?? "?"} ${baseline.kernel.kaslrShift}`,
      found: `${model.release} ${model.buildId ?? "?"} ${hex(model.kaslrShift)}`,
    });
    skipped.push("baseline comparisons (the kernel differs from the baseline's)");
  }
  for (const d of model.disagreements) {
    f.add("model-disagreement", d.severity === "alert" ? "high" : d.severity === "warning" ? "medium" : "info", d.message, { disagreement: d.check });
  }

  // 1. Control registers.
  let t = performance.now();
  for (const c of regs) {
    if ((c.cr0 & CR0_WP) === 0n) f.add("cr0-wp", "critical", `CR0.WP is clear on vCPU ${c.cpu}: the kernel can write to read-only pages (its own text included)`, { cpu: c.cpu, found: hex(c.cr0) });
    if (baseline.cr.smep && (c.cr4 & CR4_SMEP) === 0n) f.add("cr4-smep", "critical", `CR4.SMEP is clear on vCPU ${c.cpu} but was set at baseline: the kernel may execute user pages`, { cpu: c.cpu, found: hex(c.cr4) });
    if (baseline.cr.smap && (c.cr4 & CR4_SMAP) === 0n) f.add("cr4-smap", "critical", `CR4.SMAP is clear on vCPU ${c.cpu} but was set at baseline: the kernel may access user pages freely`, { cpu: c.cpu, found: hex(c.cr4) });
  }
  timings.registers = ms(t);

  // 2. IDT.
  t = performance.now();
  if (sameKernel && b.idt) checkIdt(input, model, layout, b.idt, regs, f, attr);
  else if (sameKernel) skipped.push("idt (not baselined)");
  timings.idt = ms(t);

  // 3. System call table.
  t = performance.now();
  if (sameKernel && b.syscalls) checkSyscalls(model, layout, b.syscalls, f, attr);
  else if (sameKernel) skipped.push("syscall-table (not baselined)");
  timings.syscalls = ms(t);

  // 4. Kernel text and rodata (incremental), with the dispatch code.
  t = performance.now();
  let textCov = { hashed: 0, total: 0, critical: 0, next: state.textCursor, window: 0 };
  let hot = state.hotPages;
  let explained = new Set(state.explainedPages);
  const patchedSites: Partial<Record<PatchKind, number>> = {};
  const foreign = new Set<string>();
  let trampolines = state.ftraceTrampolines ?? [];
  if (sameKernel && b.text) {
    const tb = b.text;
    const plan = planPages(tb.totalPages, state.textCursor, options.textPagesPerSweep ?? DEFAULT_PAGES_PER_SWEEP, tb.criticalPages, state.hotPages);
    const recent = (state.ftraceTrampolines ?? []).filter((x) => sweepNo - x.sweep <= TRAMPOLINE_GRACE_SWEEPS);
    const policy = targetPolicy(model, layout, recent.map((x) => BigInt(x.address)));
    const seenNow = new Set(policy.trampolines.map(hex));
    trampolines = [...policy.trampolines.map((a) => ({ address: hex(a), sweep: sweepNo })), ...recent.filter((x) => !seenNow.has(x.address))].slice(0, MAX_RECENT_TRAMPOLINES);
    if (policy.ftraceProblem) skipped.push(`ftrace trampolines (${policy.ftraceProblem})`);
    const verdicts = tb.check(model, plan.pages, policy);
    textFindings(model, tb, verdicts, f, attr, b.syscalls?.entries ?? []);
    const hotSet = new Set(state.hotPages.filter((p) => !plan.pages.includes(p)));
    for (const v of verdicts) {
      if (v.status === "changed" || v.status === "unreadable") hotSet.add(v.page);
      if (v.status === "explained") explained.add(v.page);
      else explained.delete(v.page);
      if (v.status === "explained") {
        for (const [kind, n] of Object.entries(v.patched)) patchedSites[kind as PatchKind] = (patchedSites[kind as PatchKind] ?? 0) + (n ?? 0);
        for (const x of v.foreign) if (foreign.size < 64) foreign.add(hex(x.target));
      }
    }
    hot = [...hotSet].sort((x, y) => x - y).slice(0, MAX_HOT_PAGES);
    textCov = { hashed: plan.pages.length, total: tb.totalPages, critical: tb.criticalPages.length, next: plan.next, window: plan.window };
  } else if (sameKernel) skipped.push("kernel-text (not baselined)");
  else explained = new Set();
  timings.text = ms(t);

  // 5. Page permissions.
  t = performance.now();
  if (sameKernel) checkPermissions(model, b, f);
  timings.permissions = ms(t);

  // 6-7. Processes and modules, with the optional carve.
  const carveEvery = Math.max(0, Math.floor(options.carveEverySweeps ?? 0));
  const doCarve = options.carve === true || (carveEvery > 0 && (state.lastCarveSweep === null || sweepNo - state.lastCarveSweep >= carveEvery));
  let carved: CarveResult | undefined;
  if (doCarve) {
    t = performance.now();
    carved = runCarve(input, model, layout, b, skipped);
    timings.carve = ms(t);
  }
  t = performance.now();
  const procs = checkProcesses(input, model, layout, state, carved, f, skipped);
  timings.processes = ms(t);
  t = performance.now();
  const mods = checkModules(input, model, layout, state, carved, f, skipped);
  if (sameKernel) checkProvenance(model, layout, b, mods, options, f, skipped);
  timings.modules = ms(t);

  const pending = [...procs.pending, ...mods.pending].slice(0, MAX_PENDING);
  // A walk can break once when it races the guest changing a list; broken twice in a row, the structure itself
  // is damaged — and a rootkit must not be able to switch off the cross-view checks by breaking a list.
  const broken: WalkName[] = [];
  const walks: [WalkName, boolean, boolean][] = [
    ["task-list", procs.ran, procs.taskListComplete],
    ["pid-table", procs.ran && procs.pidTableRan, procs.pidTableComplete],
    ["module-list", mods.ran, mods.listComplete],
    ["module-kset", mods.ran && mods.ksetRan, mods.ksetComplete],
  ];
  for (const [name, ran, complete] of walks) {
    if (!ran || complete) continue;
    broken.push(name);
    if (state.brokenWalks.includes(name)) f.add("structure-unreadable", "high", `The kernel's ${name.replace("-", " ")} could not be walked completely in two consecutive sweeps: it is damaged or was tampered with, and the checks built on it are blind`, { structure: name });
  }
  const previousView = {
    processes: procs.view.filter((p) => p.exitState === 0 && p.pid !== 0).map((p) => ({ pid: p.pid, address: p.taskAddr, startTime: p.startTime })),
    modules: mods.view.filter((m) => m.sources.includes("modules")).map((m) => ({ name: m.name, address: m.address })),
  };
  const report: SweepReport = {
    sweep: sweepNo,
    findings: f.done(),
    processes: procs.view,
    modules: mods.view,
    kernel: { release: model.release, buildId: model.buildId ?? null, kaslrShift: hex(model.kaslrShift) },
    durationMs: ms(t0),
    timings,
    coverage: {
      textBytesHashed: textCov.hashed * 4096,
      textBytesTotal: textCov.total * 4096,
      textPagesHashed: textCov.hashed,
      criticalPages: textCov.critical,
      hotPages: hot.length,
      fullPassEverySweeps: textCov.window > 0 ? Math.ceil(textCov.total / textCov.window) : 0,
      textCursor: textCov.next,
      taskListComplete: procs.taskListComplete,
      pidTableComplete: procs.pidTableComplete,
      pidTableEntries: procs.pidEntries,
      moduleListComplete: mods.listComplete,
      moduleKsetComplete: mods.ksetComplete,
      carved: carved !== undefined,
      carveEverySweeps: carveEvery,
      pendingConfirmation: pending.length,
      guestViewDeferred: procs.guestViewDeferred || mods.guestViewDeferred,
      skipped,
    },
    textPatches: { explainedPages: explained.size, patchedSites, foreignTargets: [...foreign] },
    carve: carved ? { ms: carved.ms, bytesScanned: carved.bytesScanned, candidates: carved.candidates, unattached: carved.unattached, truncated: carved.truncated } : undefined,
  };
  const next: SweepState = {
    format: 1,
    sweeps: sweepNo,
    textCursor: textCov.next,
    hotPages: hot,
    explainedPages: [...explained].sort((x, y) => x - y),
    pending,
    previousView,
    lastCarveSweep: carved ? sweepNo : state.lastCarveSweep,
    brokenWalks: broken,
    ftraceTrampolines: trampolines,
  };
  ownStates.add(next);
  return { report, state: next };
}

function checkIdt(input: SweepInput, model: KernelModel, layout: KernelLayout, idt: NonNullable<DecodedBaseline["idt"]>, regs: readonly ControlRegisters[], f: Findings, attr: () => Attributor): void {
  const k = model.kernel;
  const s = model.symbols;
  const bases = new Set<bigint>();
  for (const c of regs) {
    const base = c.idtBase ?? idt.base;
    bases.add(base);
    if (base !== idt.base || (c.idtLimit !== undefined && c.idtLimit !== idt.limit)) {
      f.add("idt-base", "critical", `IDTR on vCPU ${c.cpu} is ${hex(base)}/${hex(c.idtLimit ?? idt.limit)}, not ${hex(idt.base)}/${hex(idt.limit)} as at baseline: the CPU uses another IDT`, {
        cpu: c.cpu,
        expected: hex(idt.base),
        found: hex(base),
      });
    }
    // The IDT the CPU sees goes through its live page tables: they must map the alias onto idt_table.
    if (idt.tablePhys !== undefined) {
      const live = new VirtualMemory(input.phys, rootFromCr3(c.cr3, model.pagingLevels)).translate(base);
      const kern = k.translate(base);
      for (const [what, tr] of [["the kernel page tables", kern], [`vCPU ${c.cpu}'s CR3`, live]] as const) {
        if (!tr.mapped || tr.paddr !== idt.tablePhys) {
          f.add("idt-base", "critical", `The IDT at ${hex(base)} maps to ${tr.mapped ? hex(tr.paddr) : "nothing"} through ${what}, not to idt_table (${hex(idt.tablePhys)})`, {
            address: hex(base),
            expected: hex(idt.tablePhys),
            found: tr.mapped ? hex(tr.paddr) : "unmapped",
          });
        }
      }
    }
  }
  // Vectors 22-28, 30, 31 legitimately keep early boot handlers (init text, freed after boot).
  const earlyRange = symbolExtent(s, "early_idt_handler_array", [], 0x1000);
  for (const base of bases) {
    const gates = readIdt(k, base, idt.limit);
    if (!gates) {
      f.add("structure-unreadable", "high", `The IDT at ${hex(base)} cannot be read`, { address: hex(base), structure: "idt" });
      continue;
    }
    for (const g of gates) {
      const want = idt.gates[g.vector];
      if (!want) continue;
      const diff = gateDifferences(want, g);
      if (diff.length === 0) continue;
      const where = describeAddress(s, g.handler);
      const inText = inRange(layout.text, g.handler);
      const early = EARLY_IDT_VECTORS.has(g.vector) && inRange(earlyRange, g.handler);
      const owner = attr().attribute(g.handler);
      f.add("idt-gate", "critical", `IDT vector ${g.vector} changed (${diff.join(", ")}): now ${describeGate(g, where)}; at baseline ${describeGate(want, describeAddress(s, want.handler))}${inText || early ? "" : ` — the new handler is outside kernel text, in ${owner.description}`}`, {
        vector: g.vector,
        address: hex(base + BigInt(g.vector * 16)),
        symbol: where,
        expected: hex(want.handler),
        found: hex(g.handler),
        changed: diff,
        handlerInKernelText: inText,
        attribution: owner,
      });
    }
  }
}

/** "kill" for a handler that is __x64_sys_kill (or an alias of it); undefined when it is none. */
function syscallName(model: KernelModel, layout: KernelLayout, handler: bigint): string | undefined {
  return resolveHandler(model.symbols, layout, handler).name?.slice("__x64_sys_".length);
}

function checkSyscalls(model: KernelModel, layout: KernelLayout, sc: NonNullable<DecodedBaseline["syscalls"]>, f: Findings, attr: () => Attributor): void {
  const now = readSyscallTable(model.kernel, sc.table, sc.entries.length);
  if (!now) {
    f.add("structure-unreadable", "high", `sys_call_table at ${hex(sc.table)} cannot be read`, { address: hex(sc.table), structure: "sys_call_table" });
    return;
  }
  for (let i = 0; i < now.length; i++) {
    const found = now[i] as bigint;
    const want = sc.entries[i] as bigint;
    if (found === want) continue;
    const r = resolveHandler(model.symbols, layout, found);
    const name = syscallName(model, layout, want);
    const owner = attr().attribute(found);
    f.add("syscall-table", "critical", `System call ${i}${name ? ` (${name})` : ""}: sys_call_table[${i}] points at ${describeAddress(model.symbols, found)} instead of ${describeAddress(model.symbols, want)}${r.name ? "" : r.inText ? " (not a __x64_sys_* handler)" : ` (outside kernel text: ${owner.description})`}`, {
      index: i,
      syscall: { number: i, name: name ?? null },
      address: hex(sc.table + BigInt(i * 8)),
      symbol: describeAddress(model.symbols, want),
      expected: hex(want),
      found: hex(found),
      foundSymbol: describeAddress(model.symbols, found),
      attribution: owner,
    });
  }
}

function textFindings(model: KernelModel, tb: TextBaseline, verdicts: readonly PageVerdict[], f: Findings, attr: () => Attributor, syscallEntries: readonly bigint[]): void {
  const layout = kernelLayout(model);
  /** The system calls (number, name) whose handler is `handler` in the baseline's table. */
  const syscallsOf = (handler: bigint | undefined): { number: number; name: string | null }[] => {
    const out: { number: number; name: string | null }[] = [];
    if (handler === undefined) return out;
    syscallEntries.forEach((e, i) => {
      if (e === handler && out.length < 8) out.push({ number: i, name: syscallName(model, layout, e) ?? null });
    });
    return out;
  };
  for (const v of verdicts) {
    if (v.status === "same" || v.status === "explained") continue;
    const va = tb.pageAddress(v.page);
    const region = tb.regionOf(v.page)?.name ?? "text";
    const check: CheckId = region === "rodata" ? "kernel-rodata" : "kernel-text";
    if (v.status === "unreadable") {
      const fn = tb.functions.find((x) => x.start < va + 4096n && x.end > va);
      f.add(fn ? "syscall-text" : check, "high", `Kernel ${region} page ${hex(va)} (${describePage(model, va)}) cannot be read`, { address: hex(va), symbol: describeAddress(model.symbols, va) });
      continue;
    }
    // Diffs inside the dispatch functions are "syscall-text"; the rest of the page is "kernel-text".
    let rest = v.diffs;
    if (v.diffs) {
      for (const fn of tb.functions) {
        const inside = v.diffs.filter((d) => d.address >= fn.start && d.address < fn.end);
        if (inside.length === 0) continue;
        const first = inside[0] as (typeof inside)[number];
        // The dispatch code's rewired calls: which system calls' handlers they were, and where they go now.
        const rewired = v.branches
          .filter((x) => x.address >= fn.start && x.address < fn.end)
          .map((x) => ({ address: hex(x.address), opcode: x.opcode, was: x.was !== undefined ? describeAddress(model.symbols, x.was) : null, syscalls: syscallsOf(x.was), now: x.now !== undefined ? attr().attribute(x.now) : null }));
        const named = rewired.flatMap((x) => x.syscalls.map((c) => `${c.number} (${c.name ?? "?"}) now goes to ${x.now?.description ?? "no call"}`));
        f.add("syscall-text", "critical", `The code of ${fn.name} differs from the baseline at ${describeAddress(model.symbols, first.address)} (${inside.length} change${inside.length === 1 ? "" : "s"} on page ${hex(va)})${named.length > 0 ? `: system call ${named.join("; ")}` : ""}`, {
          address: hex(first.address),
          symbol: describeAddress(model.symbols, first.address),
          expected: first.expected,
          found: first.found,
          diffs: inside.map((d) => ({ address: hex(d.address), expected: d.expected, found: d.found })),
          function: fn.name,
          ...(rewired.length > 0 ? { rewired, syscalls: rewired.flatMap((x) => x.syscalls) } : {}),
        });
        rest = (rest ?? []).filter((d) => !(d.address >= fn.start && d.address < fn.end));
      }
      if (rest && rest.length === 0) continue;
    }
    const first = rest?.[0];
    // Without kept bytes the change is located by its 256-byte blocks (or the illegitimate site).
    const block = v.blocks[0];
    const at = first?.address ?? v.illegitimate[0]?.site ?? block ?? va;
    const where = first ? ` at ${describeAddress(model.symbols, first.address)}` : block !== undefined ? ` within ${describeAddress(model.symbols, block)} .. ${describeAddress(model.symbols, block + 255n)}` : "";
    const hooked = v.illegitimate.find((x) => x.target !== undefined);
    const branch = hooked?.target !== undefined ? `; the ${hooked.kind} site at ${describeAddress(model.symbols, hooked.site)} now branches to ${attr().describe(hooked.target)}` : "";
    f.add(check, "critical", `Kernel ${region} page ${hex(va)} (${describePage(model, va)}) differs from the baseline outside any legitimate patch site${where}${branch}`, {
      address: hex(at),
      page: hex(va),
      symbol: describeAddress(model.symbols, at),
      ...(first ? { expected: first.expected, found: first.found } : {}),
      diffs: rest?.map((d) => ({ address: hex(d.address), expected: d.expected, found: d.found })),
      changedBlocks: v.blocks.map((b) => ({ address: hex(b), symbol: describeAddress(model.symbols, b), bytes: 256 })),
      illegitimateSites: v.illegitimate.map((x) => ({ address: hex(x.site), kind: x.kind, found: x.found, why: x.why, ...(x.target !== undefined ? { target: hex(x.target), owner: attr().describe(x.target), attribution: attr().attribute(x.target) } : {}) })),
      exactDiff: v.diffs !== undefined,
    });
  }
}

function checkPermissions(model: KernelModel, b: DecodedBaseline, f: Findings): void {
  const rules: PermissionRule[] = [];
  const pa = (va: bigint): bigint => paSymbol(va, b.physBase);
  if (b.text) {
    for (const r of b.text.regions) {
      rules.push({ name: r.name, start: r.start, end: r.end, executable: r.name === "text", expectPhys: pa });
      if (b.directMapBase !== undefined) {
        const dm = b.directMapBase;
        const start = (dm + pa(r.start)) & U64;
        rules.push({ name: `${r.name} (direct-map alias)`, start, end: start + (r.end - r.start), executable: false, expectPhys: (va) => (va - dm) & U64 });
      }
    }
  }
  if (b.idt) {
    const idt = b.idt;
    rules.push({ name: "idt", start: idt.base, end: idt.base + 4096n, executable: false, expectPhys: idt.tablePhys !== undefined ? (va) => (idt.tablePhys as bigint) + (va - idt.base) : undefined });
  }
  const r = checkPagePermissions(model.kernel.physical, model.kernelRoot, rules);
  for (const p of r.problems) {
    f.add("page-permissions", p.kind === "executable" || p.kind === "user" ? "high" : "critical", `${p.rule} ${hex(p.start)}..${hex(p.end)} (${describeAddress(model.symbols, p.start)}) is ${p.detail}`, {
      address: hex(p.start),
      end: hex(p.end),
      symbol: describeAddress(model.symbols, p.start),
      region: p.rule,
      problem: p.kind,
    });
  }
  if (r.omitted > 0) f.add("page-permissions", "critical", `${r.omitted} more page-permission problems`, { omitted: r.omitted });
}

function runCarve(input: SweepInput, model: KernelModel, layout: KernelLayout, b: DecodedBaseline, skipped: string[]): CarveResult | undefined {
  if (b.directMapBase === undefined || !layout.task) {
    skipped.push("carve (no direct-map base or no task_struct layout)");
    return undefined;
  }
  const classes = SCHED_CLASSES.map((n) => model.symbols.address(n)).filter((a): a is bigint => a !== undefined);
  if (classes.length === 0) {
    skipped.push("carve (no *_sched_class symbols)");
    return undefined;
  }
  return carve(input.phys, model, layout, { schedClasses: classes, moduleKtype: model.symbols.address("module_ktype"), directMapBase: b.directMapBase });
}

interface ProcessOutcome {
  ran: boolean;
  pidTableRan: boolean;
  view: VmiProcess[];
  pending: PendingHidden[];
  taskListComplete: boolean;
  pidTableComplete: boolean;
  pidEntries: number;
  guestViewDeferred: boolean;
}

function checkProcesses(input: SweepInput, model: KernelModel, layout: KernelLayout, state: SweepState, carved: CarveResult | undefined, f: Findings, skipped: string[]): ProcessOutcome {
  const k = model.kernel;
  const levels = model.pagingLevels;
  const to = layout.task;
  const po = layout.pid;
  const initTask = model.symbols.address("init_task");
  const initPidNs = model.symbols.address("init_pid_ns");
  const out: ProcessOutcome = { ran: false, pidTableRan: false, view: [], pending: [], taskListComplete: false, pidTableComplete: false, pidEntries: 0, guestViewDeferred: false };
  if (!to || initTask === undefined) {
    skipped.push("processes (no task_struct layout or no init_task)");
    return out;
  }
  const list = walkTaskList(k, to, initTask, levels);
  out.ran = true;
  out.taskListComplete = list.complete;
  const byAddr = new Map<bigint, { t: VmiTask; sources: Set<ProcessSource> }>();
  const see = (t: VmiTask, src: ProcessSource): void => {
    const e = byAddr.get(t.address);
    if (e) e.sources.add(src);
    else if (byAddr.size < 65_536) byAddr.set(t.address, { t, sources: new Set([src]) });
  };
  for (const t of list.tasks) see(t, "tasks");
  if (po && initPidNs !== undefined) {
    const table = walkPidTable(k, to, po, initPidNs, levels);
    out.pidTableRan = true;
    out.pidTableComplete = table.complete;
    out.pidEntries = table.entries.length;
    for (const e of table.entries) {
      if (e.task === undefined) continue;
      const t = byAddr.get(e.task)?.t ?? readTask(k, to, e.task, levels);
      // Only a task whose struct pid points back (and is this entry) is this PID's task; anything else is a
      // task being created or torn down between our reads.
      if (t && t.threadPid === e.pid && isAttached(k, t, to, po, levels)) see(t, "pid-table");
    }
  } else skipped.push("pid-table (no struct pid/xarray layout or no init_pid_ns)");
  for (const t of carved?.tasks ?? []) if (t.pid !== 0) see(t, "carve");

  // Hidden: live, in the PID table or the carve, but neither it nor (for a thread) its leader is in the list.
  const inList = new Set(list.tasks.map((t) => t.address));
  const key = (address: string, pid: number, start: string): string => `${address}/${pid}/${start}`;
  const wasPending = new Set(state.pending.filter((p) => p.kind === "process").map((p) => key(p.address, p.pid, p.startTime)));
  const candidates: { t: VmiTask; source: string }[] = [];
  if (list.complete) {
    for (const { t, sources } of byAddr.values()) {
      if (sources.has("tasks") || t.exitState !== 0 || t.pid === 0) continue;
      const leader = t.pid === t.tgid ? t.address : t.groupLeader;
      if (inList.has(leader)) continue;
      candidates.push({ t, source: [...sources].join("+") });
    }
    // Still pending from last sweep but not seen by this sweep's walks (e.g. found by a carve): re-read directly.
    for (const p of state.pending) {
      if (p.kind !== "process" || !HEX.test(p.address)) continue;
      const a = BigInt(p.address);
      if (byAddr.has(a) || inList.has(a)) continue;
      const t = readTask(k, to, a, levels);
      if (t && t.pid === p.pid && String(t.startTime) === p.startTime && t.exitState === 0 && po && isAttached(k, t, to, po, levels)) {
        candidates.push({ t, source: p.source });
        see(t, "carve");
      }
    }
  } else {
    skipped.push(`hidden-process (the task list walk did not complete: ${list.problem ?? "?"})`);
  }
  if (candidates.length > 0) {
    // A fresh walk, past the page cache: a task created or reaped between our two walks is not hidden.
    input.phys.clearCache();
    k.clearCache();
    const again = walkTaskList(k, to, initTask, levels);
    const inAgain = new Set(again.tasks.map((t) => t.address));
    for (const { t, source } of candidates) {
      const leader = t.pid === t.tgid ? t.address : t.groupLeader;
      if (!again.complete || inAgain.has(leader)) continue;
      const id = { address: hex(t.address), pid: t.pid, startTime: String(t.startTime) };
      if (wasPending.has(key(id.address, id.pid, id.startTime))) {
        f.add("hidden-process", "critical", `Process ${t.pid} (${JSON.stringify(t.comm)}) is live in the ${source.replace("+", " and the ")} but not in the kernel's task list: it was unlinked to hide it`, {
          address: id.address,
          pid: t.pid,
          tgid: t.tgid,
          comm: t.comm,
          sources: source,
        });
      }
      out.pending.push({ kind: "process", ...id, name: t.comm, source });
    }
  }

  // The guest's own view, bracketed by the previous sweep and this one.
  const guest = input.guestProcesses ? new Set(input.guestProcesses.map((p) => p.pid)) : undefined;
  const prev = state.previousView ? new Set(state.previousView.processes.map((p) => key(p.address, p.pid, p.startTime))) : undefined;
  if (guest && !prev) out.guestViewDeferred = true;
  for (const { t, sources } of byAddr.values()) {
    if (t.pid === 0) continue;
    const p: VmiProcess = {
      pid: t.pid,
      tgid: t.tgid,
      ppid: t.ppid,
      comm: t.comm,
      state: stateLetter(t.state, t.exitState),
      exitState: t.exitState,
      taskAddr: hex(t.address),
      startTime: String(t.startTime),
      kernelThread: t.kernelThread,
      sources: [...sources],
    };
    if (guest && t.pid === t.tgid) {
      p.inGuestView = guest.has(t.pid);
      if (!p.inGuestView && prev && t.exitState === 0 && prev.has(key(p.taskAddr, t.pid, p.startTime))) {
        f.add("process-hidden-from-guest", "high", `Process ${t.pid} (${JSON.stringify(t.comm)}) runs, but the guest's own ps does not list it: the guest's tools were made to lie`, {
          address: p.taskAddr,
          pid: t.pid,
          comm: t.comm,
          sources: p.sources,
        });
      }
    }
    out.view.push(p);
  }
  out.view.sort((a, b) => a.pid - b.pid || (a.taskAddr < b.taskAddr ? -1 : 1));
  return out;
}

interface ModuleOutcome {
  ran: boolean;
  ksetRan: boolean;
  view: VmiModule[];
  pending: PendingHidden[];
  listComplete: boolean;
  ksetComplete: boolean;
  guestViewDeferred: boolean;
}

function checkModules(input: SweepInput, model: KernelModel, layout: KernelLayout, state: SweepState, carved: CarveResult | undefined, f: Findings, skipped: string[]): ModuleOutcome {
  const k = model.kernel;
  const levels = model.pagingLevels;
  const mo = layout.module;
  const head = model.symbols.address("modules");
  const ksetVar = model.symbols.address("module_kset");
  const out: ModuleOutcome = { ran: false, ksetRan: false, view: [], pending: [], listComplete: false, ksetComplete: false, guestViewDeferred: false };
  if (!mo || head === undefined) {
    skipped.push("modules (no struct module layout or no modules list)");
    return out;
  }
  const list = walkModuleList(k, mo, head, levels);
  out.ran = true;
  out.listComplete = list.complete;
  const byAddr = new Map<bigint, { m: VmiModuleEntry; sources: Set<ModuleSource> }>();
  const see = (m: VmiModuleEntry, src: ModuleSource): void => {
    const e = byAddr.get(m.address);
    if (e) e.sources.add(src);
    else if (byAddr.size < 8192) byAddr.set(m.address, { m, sources: new Set([src]) });
  };
  for (const m of list.modules) see(m, "modules");
  if (ksetVar !== undefined) {
    const kset = walkModuleKset(k, mo, ksetVar, model.symbols.address("module_ktype"), levels);
    out.ksetRan = true;
    out.ksetComplete = kset.complete;
    for (const m of kset.modules) see(m, "kset");
  } else skipped.push("module kset (no module_kset symbol)");
  for (const m of carved?.modules ?? []) see(m, "carve");

  const key = (address: string, name: string): string => `${address}/${name}`;
  const wasPending = new Set(state.pending.filter((p) => p.kind === "module").map((p) => key(p.address, p.name)));
  const candidates: { m: VmiModuleEntry; source: string }[] = [];
  if (list.complete) {
    for (const { m, sources } of byAddr.values()) if (!sources.has("modules")) candidates.push({ m, source: [...sources].join("+") });
    for (const p of state.pending) {
      if (p.kind !== "module" || !HEX.test(p.address)) continue;
      const a = BigInt(p.address);
      if (byAddr.has(a)) continue;
      const m = readModule(k, mo, a, levels);
      if (m && m.name === p.name) {
        candidates.push({ m, source: p.source });
        see(m, "carve");
      }
    }
  } else skipped.push(`hidden-module (the module list walk did not complete: ${list.problem ?? "?"})`);
  if (candidates.length > 0) {
    input.phys.clearCache();
    k.clearCache();
    const again = walkModuleList(k, mo, head, levels);
    const inAgain = new Set(again.modules.map((m) => m.address));
    for (const { m, source } of candidates) {
      if (!again.complete || inAgain.has(m.address)) continue;
      const id = { address: hex(m.address), name: m.name };
      if (wasPending.has(key(id.address, id.name))) {
        f.add("hidden-module", "critical", `Module ${JSON.stringify(m.name)} is loaded (found in the ${source.replace("+", " and the ")}) but not in the kernel's module list: it was unlinked to hide it`, {
          address: id.address,
          module: m.name,
          sources: source,
        });
      }
      out.pending.push({ kind: "module", ...id, pid: 0, startTime: "", source });
    }
  }

  const guest = input.guestModules ? new Set(input.guestModules) : undefined;
  const prev = state.previousView ? new Set(state.previousView.modules.map((m) => key(m.address, m.name))) : undefined;
  if (guest && !prev) out.guestViewDeferred = true;
  for (const { m, sources } of byAddr.values()) {
    const v: VmiModule = { name: m.name, address: hex(m.address), state: m.state, sources: [...sources] };
    if (guest) {
      v.inGuestView = guest.has(m.name);
      // /proc/modules lists everything on the list except modules still being formed (state UNFORMED, 3).
      if (!v.inGuestView && sources.has("modules") && m.state !== 3 && prev?.has(key(v.address, m.name))) {
        f.add("module-hidden-from-guest", "high", `Module ${JSON.stringify(m.name)} is on the kernel's module list, but the guest's /proc/modules does not show it: the guest's tools were made to lie`, {
          address: v.address,
          module: m.name,
        });
      }
    }
    out.view.push(v);
  }
  out.view.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return out;
}

/**
 * What was added to the kernel since the baseline: taint flags newly set in tainted_mask (medium), modules on the
 * list that were not there at the baseline and are out-of-tree or unsigned (medium), and — under a "no new
 * modules" policy — any such module at all (high). A module is "the same" by address, name and the kernfs id of
 * its /sys/module directory: unloaded and loaded again (even at the same address) is a new load.
 */
function checkProvenance(model: KernelModel, layout: KernelLayout, b: DecodedBaseline, mods: ModuleOutcome, options: SweepOptions, f: Findings, skipped: string[]): void {
  const k = model.kernel;
  const taintVar = model.symbols.address("tainted_mask");
  if (b.taintedMask === undefined || taintVar === undefined) skipped.push("kernel-taint (no tainted_mask at the baseline)");
  else {
    const now = readU64(k, taintVar);
    if (now === undefined) f.add("structure-unreadable", "high", `tainted_mask at ${hex(taintVar)} cannot be read`, { address: hex(taintVar), structure: "tainted_mask" });
    else {
      const added = now & ~b.taintedMask;
      for (let bit = 0; bit < 64; bit++) {
        if (((added >> BigInt(bit)) & 1n) === 0n) continue;
        const flag = TAINT_FLAGS[bit];
        const name = flag?.name ?? `bit ${bit}`;
        f.add("kernel-taint", "medium", `The kernel became tainted after the baseline: TAINT_${name}${flag ? ` ('${flag.letter}')` : ""} is now set (tainted_mask ${hex(b.taintedMask)} → ${hex(now)})`, {
          address: hex(taintVar),
          flag: name,
          bit,
          expected: hex(b.taintedMask),
          found: hex(now),
        });
      }
    }
  }
  if (!mods.ran || !mods.listComplete) return;
  if (!b.modules) {
    skipped.push("new modules (the baseline does not list its modules)");
    return;
  }
  for (const m of mods.view) {
    if (!m.sources.includes("modules")) continue;
    const id = readModuleLoadId(k, layout.moduleMemory, BigInt(m.address), model.pagingLevels);
    if (b.modules.has(`${m.address}/${m.name}/${id !== undefined ? hex(id) : ""}`)) continue;
    const trust = readModuleTrust(k, layout.moduleMemory, BigInt(m.address));
    const flags = trust.taints !== undefined ? taintNames(trust.taints) : [];
    const oot = trust.taints !== undefined && ((trust.taints >> BigInt(TAINT_OOT_MODULE)) & 1n) === 1n;
    const unsigned = trust.sigOk === false || (trust.taints !== undefined && ((trust.taints >> BigInt(TAINT_UNSIGNED_MODULE)) & 1n) === 1n);
    const evidence = { address: m.address, module: m.name, taints: flags, signatureOk: trust.sigOk ?? null, outOfTree: oot, unsigned };
    if (oot || unsigned) {
      const what = [oot ? "out-of-tree" : "", unsigned ? "unsigned (or its signature did not verify)" : ""].filter(Boolean).join(" and ");
      f.add("module-untrusted", "medium", `Module ${JSON.stringify(m.name)} was loaded after the baseline and is ${what}`, evidence);
    }
    if (options.noNewModules) {
      f.add("module-loaded", "high", `Module ${JSON.stringify(m.name)} was loaded after the baseline while the VM is under a "no new modules" policy`, { ...evidence, policy: "no-new-modules" });
    }
  }
}
