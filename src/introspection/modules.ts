/**
 * Two views of the loaded kernel modules: the `modules` list (what /proc/modules and lsmod show, and what a
 * rootkit unlinks itself from) and the sysfs kset `module_kset` (one module_kobject per module, /sys/module),
 * which a module unlinked from `modules` usually stays in. Entries of the kset are accepted only when the
 * cross-pointers agree: kobject → module_kobject → mod → mod->mkobj.kobj is that same kobject. Built-in modules
 * with parameters also have a module_kobject (mod == NULL); they are counted, not listed.
 */
import { hex } from "./errors.ts";
import { cString, isKernelPointer, readU64, walkList, type ModuleMemoryOffsets, type ModuleOffsets } from "./kernel-layout.ts";
import type { PagingLevels } from "./page-walk.ts";
import type { AddressSpace } from "./physical-memory.ts";

export const MAX_MODULES = 4096;
/** Built-in module_kobjects are a few hundred on a distribution kernel. */
const MAX_KSET_ENTRIES = 16_384;

export interface VmiModuleEntry {
  /** Kernel virtual address of the struct module. */
  readonly address: bigint;
  readonly name: string;
  /** MODULE_STATE_LIVE 0, COMING 1, GOING 2, UNFORMED 3 */
  readonly state: number;
}

/** A module name is what the kernel accepts: printable, non-empty. */
export function readModule(space: AddressSpace, o: ModuleOffsets, address: bigint, levels: PagingLevels): VmiModuleEntry | undefined {
  if (!isKernelPointer(address, levels)) return undefined;
  const name = space.read(address + BigInt(o.name), o.nameLen);
  const state = space.read(address + BigInt(o.state), 4);
  if (!name || !state) return undefined;
  return { address, name: cString(name, 0, o.nameLen), state: state.readInt32LE(0) };
}

export interface ModuleWalk {
  readonly modules: VmiModuleEntry[];
  readonly complete: boolean;
  readonly problem: string | undefined;
  /** Kset walk only: module_kobjects of built-in modules (mod == NULL). */
  readonly builtin: number;
  /** Kset walk only: entries whose cross-pointers disagree (not modules, or tampered). */
  readonly rejected: number;
}

/** Walks the `modules` list (head: the address of the `modules` symbol). */
export function walkModuleList(space: AddressSpace, o: ModuleOffsets, head: bigint, levels: PagingLevels, limit = MAX_MODULES): ModuleWalk {
  const w = walkList(space, head, levels, limit);
  const modules: VmiModuleEntry[] = [];
  let problem = w.problem;
  for (const node of w.nodes) {
    const m = readModule(space, o, node - BigInt(o.list), levels);
    if (m) modules.push(m);
    else problem ??= `module at ${hex(node - BigInt(o.list))} cannot be read`;
  }
  return { modules, complete: w.complete && modules.length === w.nodes.length, problem, builtin: 0, rejected: 0 };
}

/**
 * Walks `module_kset` (the address of the `module_kset` pointer variable) and returns the modules whose
 * module_kobject cross-checks. `moduleKtype` (&module_ktype), when known, must be every entry's ktype.
 */
export function walkModuleKset(space: AddressSpace, o: ModuleOffsets, ksetVar: bigint, moduleKtype: bigint | undefined, levels: PagingLevels, limit = MAX_KSET_ENTRIES): ModuleWalk {
  const kset = readU64(space, ksetVar);
  if (kset === undefined || !isKernelPointer(kset, levels)) {
    return { modules: [], complete: false, problem: `module_kset (${hex(ksetVar)}) does not point at a kset`, builtin: 0, rejected: 0 };
  }
  const w = walkList(space, kset + BigInt(o.ksetList), levels, limit);
  const modules: VmiModuleEntry[] = [];
  let builtin = 0;
  let rejected = 0;
  for (const node of w.nodes) {
    const kobj = node - BigInt(o.kobjEntry);
    if (moduleKtype !== undefined && readU64(space, kobj + BigInt(o.kobjKtype)) !== moduleKtype) {
      rejected++;
      continue;
    }
    const mod = readU64(space, kobj - BigInt(o.mkKobj) + BigInt(o.mkMod));
    if (mod === 0n) {
      builtin++;
      continue;
    }
    // The module's own module_kobject must be this one.
    if (mod === undefined || !isKernelPointer(mod, levels) || mod + BigInt(o.mkobjKobj) !== kobj) {
      rejected++;
      continue;
    }
    const m = readModule(space, o, mod, levels);
    if (m) modules.push(m);
    else rejected++;
  }
  return { modules, complete: w.complete, problem: w.problem, builtin, rejected };
}

/** Linux taint flags (include/linux/panic.h TAINT_*), by bit: the letters /proc/sys/kernel/tainted decodes to. */
export const TAINT_FLAGS: readonly { readonly name: string; readonly letter: string }[] = [
  { name: "PROPRIETARY_MODULE", letter: "P" },
  { name: "FORCED_MODULE", letter: "F" },
  { name: "CPU_OUT_OF_SPEC", letter: "S" },
  { name: "FORCED_RMMOD", letter: "R" },
  { name: "MACHINE_CHECK", letter: "M" },
  { name: "BAD_PAGE", letter: "B" },
  { name: "USER", letter: "U" },
  { name: "DIE", letter: "D" },
  { name: "OVERRIDDEN_ACPI_TABLE", letter: "A" },
  { name: "WARN", letter: "W" },
  { name: "CRAP", letter: "C" },
  { name: "FIRMWARE_WORKAROUND", letter: "I" },
  { name: "OOT_MODULE", letter: "O" },
  { name: "UNSIGNED_MODULE", letter: "E" },
  { name: "SOFTLOCKUP", letter: "L" },
  { name: "LIVEPATCH", letter: "K" },
  { name: "AUX", letter: "X" },
  { name: "RANDSTRUCT", letter: "T" },
  { name: "TEST", letter: "N" },
];
export const TAINT_OOT_MODULE = 12;
export const TAINT_UNSIGNED_MODULE = 13;

/** The names of the bits set in `mask` (unknown bits as "bit N"), at most 64. */
export function taintNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let b = 0; b < 64; b++) if ((mask >> BigInt(b)) & 1n) out.push(TAINT_FLAGS[b]?.name ?? `bit ${b}`);
  return out;
}

/** What a module says about where it came from: its own taint flags and its signature verdict. */
export interface ModuleTrust {
  /** struct module.taints; undefined when this build has no such field or it cannot be read */
  readonly taints: bigint | undefined;
  /** struct module.sig_ok (CONFIG_MODULE_SIG); undefined when absent */
  readonly sigOk: boolean | undefined;
}

/** The load identity of a module: the kernfs id of its /sys/module directory (undefined when not readable). */
export function readModuleLoadId(space: AddressSpace, mm: ModuleMemoryOffsets | undefined, address: bigint, levels: PagingLevels): bigint | undefined {
  if (mm?.kobjSd === undefined || mm.kernfsId === undefined) return undefined;
  const sd = readU64(space, address + BigInt(mm.kobjSd));
  if (sd === undefined || !isKernelPointer(sd, levels)) return undefined;
  return readU64(space, sd + BigInt(mm.kernfsId));
}

export function readModuleTrust(space: AddressSpace, mm: ModuleMemoryOffsets | undefined, address: bigint): ModuleTrust {
  const taints = mm?.taints !== undefined ? readU64(space, address + BigInt(mm.taints)) : undefined;
  const sig = mm?.sigOk !== undefined ? space.read(address + BigInt(mm.sigOk), 1) : undefined;
  return { taints, sigOk: sig ? sig[0] !== 0 : undefined };
}
