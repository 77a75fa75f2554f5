/**
 * Two views of the loaded kernel modules: the `modules` list (what /proc/modules and lsmod show, and what a
 * rootkit unlinks itself from) and the sysfs kset `module_kset` (one module_kobject per module, /sys/module),
 * which a module unlinked from `modules` usually stays in. Entries of the kset are accepted only when the
 * cross-pointers agree: kobject → module_kobject → mod → mod->mkobj.kobj is that same kobject. Built-in modules
 * with parameters also have a module_kobject (mod == NULL); they are counted, not listed.
 */
import { hex } from "./errors.ts";
import { cString, isKernelPointer, readU64, walkList, type ModuleOffsets } from "./kernel-layout.ts";
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
