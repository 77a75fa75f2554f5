/**
 * Two independent views of the guest's tasks, read from memory with BTF offsets:
 *
 * - the task list: `init_task.tasks`, the circular list of thread-group leaders that the scheduler's iterators
 *   (for_each_process) follow and that a DKOM rootkit unlinks a process from;
 * - the PID table: `init_pid_ns.idr`, an xarray from PID number to `struct pid`, whose `tasks[PIDTYPE_PID]`
 *   points back at the task (`task->pid_links[0]`). /proc (and so the guest's `ps`) is built from it.
 *
 * A task is "attached" when its thread_pid points at a struct pid whose tasks[PIDTYPE_PID] points back at it and
 * whose number is the task's pid: that cross-pointer pair is what separates a live task from a stale copy in
 * freed memory. Every walk is bounded (entries, xarray nodes, depth) and cycle-safe; a damaged structure ends a
 * walk as incomplete, which the sweep treats as "cannot conclude", never as "hidden".
 */
import { hex } from "./errors.ts";
import { cString, isKernelPointer, readU64, type PidOffsets, type TaskOffsets } from "./kernel-layout.ts";
import type { PagingLevels } from "./page-walk.ts";
import type { AddressSpace } from "./physical-memory.ts";

/** PID_MAX_LIMIT on 64-bit. */
export const PID_MAX = 4 * 1024 * 1024;
/** Tasks/PID-table entries one walk accepts. */
export const MAX_TASKS = 65_536;
const MAX_XA_NODES = 65_536;
/** PF_KTHREAD */
const PF_KTHREAD = 0x0020_0000;

export interface VmiTask {
  /** Kernel virtual address of the task_struct. */
  readonly address: bigint;
  readonly pid: number;
  readonly tgid: number;
  /** real_parent's tgid (0 when unreadable or for the idle task). */
  readonly ppid: number;
  readonly comm: string;
  /** task->__state */
  readonly state: number;
  /** task->exit_state: 0 live, 16 zombie, 32 dead. */
  readonly exitState: number;
  /** task->start_time: CLOCK_MONOTONIC ns at fork; with the address it identifies a task across sweeps. */
  readonly startTime: bigint;
  readonly kernelThread: boolean;
  readonly groupLeader: bigint;
  readonly threadPid: bigint;
}

/** One read covers every field the walkers use. */
function span(o: TaskOffsets): { lo: number; len: number } {
  const fields: [number, number][] = [
    [o.tasks, 16], [o.pid, 4], [o.tgid, 4], [o.comm, o.commLen], [o.realParent, 8], [o.groupLeader, 8], [o.exitState, 4],
    [o.state, 4], [o.startTime, 8], [o.schedClass, 8], [o.threadPid, 8], [o.pidLinks, 16], [o.mm, 8], [o.flags, 4],
  ];
  const lo = Math.min(...fields.map(([f]) => f));
  const hi = Math.max(...fields.map(([f, n]) => f + n));
  return { lo, len: hi - lo };
}

const spans = new WeakMap<TaskOffsets, { lo: number; len: number }>();

/** A task as read, before its parent's tgid is known; also its own list links. */
interface RawTask {
  readonly task: Omit<VmiTask, "ppid">;
  readonly realParent: bigint;
  readonly next: bigint;
  readonly prev: bigint;
}

/** One read of the task_struct's fields (~3 KiB); undefined when unreadable or implausible. */
function readRaw(space: AddressSpace, o: TaskOffsets, address: bigint, levels: PagingLevels): RawTask | undefined {
  if (!isKernelPointer(address, levels)) return undefined;
  let s = spans.get(o);
  if (!s) {
    s = span(o);
    spans.set(o, s);
  }
  if (s.len <= 0 || s.len > 64 * 1024) return undefined;
  const b = space.read(address + BigInt(s.lo), s.len);
  if (!b) return undefined;
  const at = (f: number): number => f - (s as { lo: number }).lo;
  const pid = b.readInt32LE(at(o.pid));
  const tgid = b.readInt32LE(at(o.tgid));
  if (pid < 0 || pid > PID_MAX || tgid < 0 || tgid > PID_MAX) return undefined;
  return {
    task: {
      address,
      pid,
      tgid,
      comm: cString(b, at(o.comm), o.commLen),
      state: b.readUInt32LE(at(o.state)),
      exitState: b.readInt32LE(at(o.exitState)),
      startTime: b.readBigUInt64LE(at(o.startTime)),
      kernelThread: (b.readUInt32LE(at(o.flags)) & PF_KTHREAD) !== 0,
      groupLeader: b.readBigUInt64LE(at(o.groupLeader)),
      threadPid: b.readBigUInt64LE(at(o.threadPid)),
    },
    realParent: b.readBigUInt64LE(at(o.realParent)),
    next: b.readBigUInt64LE(at(o.tasks)),
    prev: b.readBigUInt64LE(at(o.tasks) + 8),
  };
}

/** The parent's tgid: from `known` when the parent was read already, else one 4-byte read (0 if unreadable). */
function parentTgid(space: AddressSpace, o: TaskOffsets, raw: RawTask, levels: PagingLevels, known?: ReadonlyMap<bigint, number>): number {
  const parent = raw.realParent;
  if (parent === raw.task.address || !isKernelPointer(parent, levels)) return 0;
  const k = known?.get(parent);
  if (k !== undefined) return k;
  const p = space.read(parent + BigInt(o.tgid), 4)?.readInt32LE(0);
  return p !== undefined && p >= 0 && p <= PID_MAX ? p : 0;
}

/**
 * Reads the task_struct at `address`; undefined when it cannot be read or is implausible (pid or tgid out of
 * range). Reads ~3 KiB once, plus 4 bytes of the parent.
 */
export function readTask(space: AddressSpace, o: TaskOffsets, address: bigint, levels: PagingLevels): VmiTask | undefined {
  const raw = readRaw(space, o, address, levels);
  return raw ? { ...raw.task, ppid: parentTgid(space, o, raw, levels) } : undefined;
}

/** True when the task's struct pid points back at it and carries its number (a live, hashed task). */
export function isAttached(space: AddressSpace, t: VmiTask, o: TaskOffsets, p: PidOffsets, levels: PagingLevels): boolean {
  if (!isKernelPointer(t.threadPid, levels)) return false;
  // One read over both fields (struct pid is ~128 bytes).
  const lo = Math.min(p.tasks, p.nr);
  const b = space.read(t.threadPid + BigInt(lo), Math.max(p.tasks + 8, p.nr + 4) - lo);
  if (!b) return false;
  return b.readBigUInt64LE(p.tasks - lo) === t.address + BigInt(o.pidLinks) && b.readInt32LE(p.nr - lo) === t.pid;
}

export interface TaskListWalk {
  readonly tasks: VmiTask[];
  readonly complete: boolean;
  readonly problem: string | undefined;
  readonly badBackLinks: number;
}

/**
 * Walks `init_task.tasks` (thread-group leaders; init_task itself, pid 0, is the head and not included). Each
 * entry costs one read: the task's own fields carry its list links, and parents are mostly tasks of the list.
 */
export function walkTaskList(space: AddressSpace, o: TaskOffsets, initTask: bigint, levels: PagingLevels, limit = MAX_TASKS): TaskListWalk {
  const head = initTask + BigInt(o.tasks);
  const raws: RawTask[] = [];
  const seen = new Set<bigint>();
  let badBackLinks = 0;
  let complete = false;
  let problem: string | undefined;
  let prev = head;
  let node = readU64(space, head);
  for (let steps = 0; ; steps++) {
    if (node === undefined) {
      problem = `${hex(prev)}: next pointer cannot be read`;
      break;
    }
    if (node === head) {
      complete = true;
      break;
    }
    if (steps >= limit) {
      problem = `more than ${limit} tasks`;
      break;
    }
    if (!isKernelPointer(node, levels) || seen.has(node)) {
      problem = seen.has(node) ? `${hex(node)} is reached twice (a cycle)` : `${hex(prev)}: next pointer ${hex(node)} is not a kernel address`;
      break;
    }
    seen.add(node);
    const raw = readRaw(space, o, node - BigInt(o.tasks), levels);
    if (!raw) {
      problem = `task at ${hex(node - BigInt(o.tasks))} cannot be read or is implausible`;
      break;
    }
    if (raw.prev !== prev) badBackLinks++;
    raws.push(raw);
    prev = node;
    node = raw.next;
  }
  const known = new Map<bigint, number>([[initTask, 0]]);
  for (const r of raws) known.set(r.task.address, r.task.tgid);
  const tasks = raws.map((r) => ({ ...r.task, ppid: parentTgid(space, o, r, levels, known) }));
  return { tasks, complete, problem, badBackLinks };
}

/** One entry of the PID table. */
export interface PidEntry {
  /** The xarray index: the PID number in the initial namespace. */
  readonly nr: number;
  /** struct pid */
  readonly pid: bigint;
  /** The task it points at (pid_links[0] container), if any. */
  readonly task: bigint | undefined;
}

export interface PidTableWalk {
  readonly entries: PidEntry[];
  readonly complete: boolean;
  readonly problems: string[];
  readonly nodes: number;
}

const XA_INTERNAL = 2n;

/**
 * Walks the xarray of `init_pid_ns.idr`. Node pointers are internal entries (low bits 10, above 4096); leaf
 * entries are struct pid pointers (low bits 00); retry/zero/sibling entries are skipped. Each node's shift,
 * parent and offset must agree with the path that reached it.
 */
export function walkPidTable(space: AddressSpace, o: TaskOffsets, p: PidOffsets, initPidNs: bigint, levels: PagingLevels, limit = MAX_TASKS): PidTableWalk {
  const entries: PidEntry[] = [];
  const problems: string[] = [];
  const chunkShift = Math.log2(p.nodeSlotCount);
  const head = readU64(space, initPidNs + BigInt(p.nsXaHead));
  if (head === undefined) return { entries, complete: false, problems: [`init_pid_ns.idr at ${hex(initPidNs)} cannot be read`], nodes: 0 };
  let complete = true;
  let nodes = 0;
  const leaf = (index: number, entry: bigint): void => {
    if (entries.length >= limit) {
      complete = false;
      return;
    }
    if (!isKernelPointer(entry, levels)) {
      problems.push(`PID ${index}: entry ${hex(entry)} is not a kernel address`);
      complete = false;
      return;
    }
    const first = readU64(space, entry + BigInt(p.tasks));
    const nr = space.read(entry + BigInt(p.nr), 4)?.readInt32LE(0);
    if (nr !== undefined && nr !== index) problems.push(`PID table index ${index} holds struct pid ${hex(entry)} numbered ${nr}`);
    const task = first !== undefined && first !== 0n && isKernelPointer(first, levels) ? first - BigInt(o.pidLinks) : undefined;
    entries.push({ nr: index, pid: entry, task });
  };
  if (head === 0n) return { entries, complete, problems, nodes };
  if ((head & 3n) === 0n) {
    // A single entry lives in the head itself, at index 0.
    leaf(0, head);
    return { entries, complete, problems, nodes };
  }
  if ((head & 3n) !== XA_INTERNAL || head <= 4096n) return { entries, complete, problems, nodes };
  // Depth-first; each stack item is a node with the index its slot 0 stands for and the shift it must have.
  const stack: { node: bigint; base: number; shift: number | undefined; parent: bigint; offset: number }[] = [{ node: head - 2n, base: 0, shift: undefined, parent: 0n, offset: 0 }];
  const seen = new Set<bigint>();
  while (stack.length > 0) {
    const it = stack.pop() as (typeof stack)[number];
    if (++nodes > MAX_XA_NODES || seen.has(it.node) || !isKernelPointer(it.node, levels)) {
      problems.push(`xarray node ${hex(it.node)}: ${seen.has(it.node) ? "reached twice" : nodes > MAX_XA_NODES ? "too many nodes" : "not a kernel address"}`);
      complete = false;
      if (nodes > MAX_XA_NODES) break;
      continue;
    }
    seen.add(it.node);
    const hdr = space.read(it.node, Math.max(p.nodeShift, p.nodeOffset) + 1);
    const parent = readU64(space, it.node + BigInt(p.nodeParent));
    const slots = space.read(it.node + BigInt(p.nodeSlots), p.nodeSlotCount * 8);
    if (!hdr || parent === undefined || !slots) {
      problems.push(`xarray node ${hex(it.node)} cannot be read`);
      complete = false;
      continue;
    }
    const shift = hdr[p.nodeShift] as number;
    // PIDs fit in 22 bits; shifts are multiples of the chunk shift.
    if (shift % chunkShift !== 0 || shift > 30 || (it.shift !== undefined && shift !== it.shift) || parent !== it.parent || (it.parent !== 0n && hdr[p.nodeOffset] !== it.offset)) {
      problems.push(`xarray node ${hex(it.node)} (shift ${shift}) does not fit where it was reached`);
      complete = false;
      continue;
    }
    for (let s = p.nodeSlotCount - 1; s >= 0; s--) {
      const e = slots.readBigUInt64LE(s * 8);
      if (e === 0n) continue;
      const index = it.base + s * 2 ** shift;
      if ((e & 3n) === XA_INTERNAL) {
        if (e > 4096n && shift > 0) stack.push({ node: e - 2n, base: index, shift: shift - chunkShift, parent: it.node, offset: s });
        continue; // sibling, retry and zero entries carry no pid
      }
      if ((e & 1n) === 1n) continue; // value entries: not used by the IDR
      if (index <= PID_MAX) leaf(index, e);
    }
  }
  entries.sort((a, b) => a.nr - b.nr);
  return { entries, complete, problems: problems.slice(0, 32), nodes };
}
