/**
 * Test support, the ATTACKER's side: what a kernel rootkit does to guest memory, done from the host through a
 * writable view of guest RAM (the RAM file opened read-write with the VM paused, or a Buffer), so the sweep
 * engine's detections can be proven on real and synthetic guests. Nothing in the engine imports this file; it is
 * kept apart so that the engine itself never holds a writable handle to guest memory.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { IntrospectionError, hex } from "../errors.ts";
import { kernelLayout, readU64 } from "../kernel-layout.ts";
import type { KernelModel } from "../kernel-model.ts";
import { walkModuleList, type VmiModuleEntry } from "../modules.ts";
import { validateRegions, type RamRegion } from "../physical-memory.ts";
import { readTask, walkPidTable, walkTaskList, type VmiTask } from "../tasks.ts";

/** Writes guest-physical memory. */
export interface GuestMemoryWriter {
  write(paddr: bigint, data: Buffer): void;
}

function fileOffset(regions: readonly RamRegion[], paddr: bigint, length: number): bigint {
  const r = regions.find((x) => paddr >= x.start && paddr + BigInt(length) <= x.end);
  if (!r) throw new IntrospectionError("host-input", `Cannot write ${length} bytes at guest-physical ${hex(paddr)}: not inside one RAM region`);
  return r.fileOffset + (paddr - r.start);
}

/** The RAM file opened read-write. Pause the VM (QMP stop) around writes. */
export class RamFileWriter implements GuestMemoryWriter {
  private constructor(
    private fd: number | undefined,
    private readonly regions: readonly RamRegion[],
  ) {}

  static open(path: string, regions: readonly RamRegion[]): RamFileWriter {
    return new RamFileWriter(openSync(path, "r+"), validateRegions(regions));
  }

  write(paddr: bigint, data: Buffer): void {
    if (this.fd === undefined) throw new IntrospectionError("host-input", "Cannot write guest memory: the writer is closed");
    const off = fileOffset(this.regions, paddr, data.length);
    if (writeSync(this.fd, data, 0, data.length, Number(off)) !== data.length) throw new IntrospectionError("host-input", `Short write at guest-physical ${hex(paddr)}`);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** A Buffer holding guest RAM (synthetic guests), with the same region mapping. */
export class BufferWriter implements GuestMemoryWriter {
  private readonly regions: readonly RamRegion[];
  constructor(
    private readonly ram: Buffer,
    regions?: readonly RamRegion[],
  ) {
    this.regions = regions ?? [{ name: "mem", start: 0n, end: BigInt(ram.length), fileOffset: 0n, readOnly: false }];
  }
  write(paddr: bigint, data: Buffer): void {
    data.copy(this.ram, Number(fileOffset(this.regions, paddr, data.length)));
  }
}

/** Writes `data` at kernel virtual `va` (through the kernel page tables, page by page). */
export function writeVirtual(model: KernelModel, w: GuestMemoryWriter, va: bigint, data: Buffer): void {
  model.kernel.clearCache();
  let done = 0;
  while (done < data.length) {
    const at = va + BigInt(done);
    const t = model.kernel.translate(at);
    if (!t.mapped) throw new IntrospectionError("unreadable", `Cannot write at ${hex(at)}: not mapped`);
    const n = Math.min(data.length - done, 4096 - Number(at & 0xfffn));
    w.write(t.paddr, data.subarray(done, done + n));
    done += n;
  }
}

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v & ((1n << 64n) - 1n));
  return b;
};

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new IntrospectionError("not-found", `Cannot attack: ${what}`);
  return v;
}

/** The task of `pid`, from the PID table (which a task-list unlink does not touch). */
export function locateTask(model: KernelModel, pid: number): VmiTask | undefined {
  const l = kernelLayout(model);
  const to = need(l.task, "no task_struct layout");
  const po = need(l.pid, "no struct pid layout");
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const table = walkPidTable(model.kernel, to, po, need(model.symbols.address("init_pid_ns"), "no init_pid_ns"), model.pagingLevels);
  const e = table.entries.find((x) => x.nr === pid);
  if (e?.task !== undefined) return readTask(model.kernel, to, e.task, model.pagingLevels);
  return walkTaskList(model.kernel, to, need(model.symbols.address("init_task"), "no init_task"), model.pagingLevels).tasks.find((t) => t.pid === pid);
}

/** Where a list_head's neighbours were, to put an entry back. */
export interface Unlinked {
  readonly node: bigint;
  readonly prev: bigint;
  readonly next: bigint;
}

/** list_del without poisoning: the neighbours skip `node`; `node`'s own pointers stay (as simple DKOM does). */
export function unlinkListNode(model: KernelModel, w: GuestMemoryWriter, node: bigint): Unlinked {
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const next = need(readU64(model.kernel, node), `${hex(node)} cannot be read`);
  const prev = need(readU64(model.kernel, node + 8n), `${hex(node + 8n)} cannot be read`);
  writeVirtual(model, w, prev, u64(next)); // prev->next = next
  writeVirtual(model, w, next + 8n, u64(prev)); // next->prev = prev
  return { node, prev, next };
}

/** Puts an unlinked node back between its old neighbours (only if they are still adjacent). */
export function relinkListNode(model: KernelModel, w: GuestMemoryWriter, u: Unlinked): boolean {
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  if (readU64(model.kernel, u.prev) !== u.next || readU64(model.kernel, u.next + 8n) !== u.prev) return false;
  writeVirtual(model, w, u.node, u64(u.next));
  writeVirtual(model, w, u.node + 8n, u64(u.prev));
  writeVirtual(model, w, u.prev, u64(u.node));
  writeVirtual(model, w, u.next + 8n, u64(u.node));
  return true;
}

/**
 * Puts an unlinked node back: between its old neighbours if they are still adjacent, otherwise at the tail of
 * the list headed at `head` (list_add_tail) — on a running guest the neighbours may have exited meanwhile.
 */
export function restoreListNode(model: KernelModel, w: GuestMemoryWriter, u: Unlinked, head: bigint): void {
  if (relinkListNode(model, w, u)) return;
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const tail = need(readU64(model.kernel, head + 8n), `${hex(head + 8n)} cannot be read`);
  writeVirtual(model, w, u.node, u64(head));
  writeVirtual(model, w, u.node + 8n, u64(tail));
  writeVirtual(model, w, tail, u64(u.node));
  writeVirtual(model, w, head + 8n, u64(u.node));
}

/** The head of the kernel's task list (`init_task.tasks`). */
export function taskListHead(model: KernelModel): bigint {
  const to = need(kernelLayout(model).task, "no task_struct layout");
  return need(model.symbols.address("init_task"), "no init_task") + BigInt(to.tasks);
}

/** The head of the kernel's module list (`modules`). */
export function moduleListHead(model: KernelModel): bigint {
  return need(model.symbols.address("modules"), "no modules list");
}

/** DKOM: unlinks a task from `init_task.tasks`. */
export function unlinkTask(model: KernelModel, w: GuestMemoryWriter, task: VmiTask): Unlinked {
  const to = need(kernelLayout(model).task, "no task_struct layout");
  return unlinkListNode(model, w, task.address + BigInt(to.tasks));
}

export function locateModule(model: KernelModel, name: string): VmiModuleEntry | undefined {
  const mo = need(kernelLayout(model).module, "no struct module layout");
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  return walkModuleList(model.kernel, mo, need(model.symbols.address("modules"), "no modules list"), model.pagingLevels).modules.find((m) => m.name === name);
}

/** Unlinks a module from `modules` (it stays in the sysfs kset). */
export function unlinkModule(model: KernelModel, w: GuestMemoryWriter, mod: VmiModuleEntry): Unlinked {
  const mo = need(kernelLayout(model).module, "no struct module layout");
  return unlinkListNode(model, w, mod.address + BigInt(mo.list));
}

/** Kernel virtual address of sys_call_table[nr]. */
export function syscallEntryAddress(model: KernelModel, nr: number): bigint {
  return need(model.symbols.address("sys_call_table"), "no sys_call_table") + BigInt(nr * 8);
}

/** Overwrites sys_call_table[nr]; returns the old handler. */
export function overwriteSyscall(model: KernelModel, w: GuestMemoryWriter, nr: number, handler: bigint): bigint {
  const at = syscallEntryAddress(model, nr);
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const old = need(readU64(model.kernel, at), `sys_call_table[${nr}] cannot be read`);
  writeVirtual(model, w, at, u64(handler));
  return old;
}

/** Rewrites IDT gate `vector`'s handler (in idt_table, which the read-only alias maps); returns the old 16 bytes. */
export function redirectIdtGate(model: KernelModel, w: GuestMemoryWriter, vector: number, handler: bigint): Buffer {
  const table = need(model.symbols.address("idt_table"), "no idt_table");
  const at = table + BigInt(vector * 16);
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const old = Buffer.from(need(model.kernel.read(at, 16), `IDT gate ${vector} cannot be read`));
  const gate = Buffer.from(old);
  gate.writeUInt16LE(Number(handler & 0xffffn), 0);
  gate.writeUInt16LE(Number((handler >> 16n) & 0xffffn), 6);
  gate.writeUInt32LE(Number((handler >> 32n) & 0xffff_ffffn), 8);
  writeVirtual(model, w, at, gate);
  return old;
}

/** Writes bytes into kernel text (or anywhere); returns what was there. */
export function patchKernel(model: KernelModel, w: GuestMemoryWriter, va: bigint, bytes: Buffer): Buffer {
  model.kernel.clearCache();
  model.kernel.physical.clearCache();
  const old = Buffer.from(need(model.kernel.read(va, bytes.length), `${hex(va)} cannot be read`));
  writeVirtual(model, w, va, bytes);
  return old;
}
