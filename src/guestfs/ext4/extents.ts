/**
 * The extent tree (ext4 "extent" feature): a header and up to four entries in i_block, deeper nodes in blocks.
 * Mapped runs come out in increasing logical order; every node's magic, entry count, capacity and depth are
 * checked, children must have exactly one depth less (so the descent ends after at most 5 levels, Linux's
 * maximum), entries must be sorted and lie inside their parent's range, physical blocks inside the file system,
 * and the number of nodes visited per file is capped (a forged index could name one leaf many times).
 */
import type { Disk } from "./disk.ts";
import { Ext4Error, malformed } from "./errors.ts";

export const EXTENT_MAGIC = 0xf30a;
export const MAX_EXTENT_DEPTH = 5;
/** An extent longer than this is "unwritten" (preallocated): it reads as zeros. */
const INIT_MAX_LEN = 32768;

/** A run of logical blocks; `physical` 0 means the run reads as zeros (unwritten extent). */
export interface Run {
  readonly logical: number;
  readonly physical: number;
  readonly count: number;
}

interface Ctx {
  readonly disk: Disk;
  readonly ino: number;
  readonly maxNodes: number;
  nodes: number;
  /** Logical blocks below this were already yielded: the next extent must start at or after it. */
  next: number;
}

/** Runs of the file whose extent root is `iBlock`, for logical blocks below `limitBlocks`. */
export function* extentRuns(disk: Disk, ino: number, iBlock: Buffer, limitBlocks: number, maxNodes: number): Generator<Run> {
  const ctx: Ctx = { disk, ino, maxNodes, nodes: 0, next: 0 };
  const root = header(ctx, iBlock, "extent root in i_block", -1);
  yield* walk(ctx, iBlock, root, 0, 2 ** 32, limitBlocks, "extent root in i_block");
}

function header(ctx: Ctx, node: Buffer, where: string, wantDepth: number): { entries: number; depth: number } {
  const magic = node.readUInt16LE(0);
  if (magic !== EXTENT_MAGIC) throw malformed(`Cannot map inode ${ctx.ino}: ${where} has magic 0x${magic.toString(16)}, not 0xf30a`);
  const entries = node.readUInt16LE(2);
  const max = node.readUInt16LE(4);
  const depth = node.readUInt16LE(6);
  const capacity = Math.floor((node.length - 12) / 12);
  if (max > capacity || entries > max) {
    throw malformed(`Cannot map inode ${ctx.ino}: ${where} claims ${entries} entries of at most ${max}, but has room for ${capacity}`);
  }
  if (wantDepth < 0 ? depth > MAX_EXTENT_DEPTH : depth !== wantDepth) {
    throw malformed(`Cannot map inode ${ctx.ino}: ${where} has depth ${depth}, expected ${wantDepth < 0 ? `at most ${MAX_EXTENT_DEPTH}` : wantDepth}`);
  }
  if (++ctx.nodes > ctx.maxNodes) throw new Ext4Error("limit", `Cannot map inode ${ctx.ino}: more than ${ctx.maxNodes} extent tree nodes`);
  return { entries, depth };
}

function* walk(ctx: Ctx, node: Buffer, h: { entries: number; depth: number }, lo: number, hi: number, limit: number, where: string): Generator<Run> {
  for (let i = 0; i < h.entries; i++) {
    const e = 12 + i * 12;
    const first = node.readUInt32LE(e);
    if (first >= limit) return;
    if (first < lo || first >= hi) throw malformed(`Cannot map inode ${ctx.ino}: ${where} entry ${i} starts at logical block ${first}, outside its parent's range ${lo}..${hi - 1}`);
    if (h.depth === 0) {
      const rawLen = node.readUInt16LE(e + 4);
      const unwritten = rawLen > INIT_MAX_LEN;
      const count = unwritten ? rawLen - INIT_MAX_LEN : rawLen;
      const physical = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
      if (count === 0 || first < ctx.next || first + count > hi) {
        throw malformed(`Cannot map inode ${ctx.ino}: ${where} extent ${i} (logical ${first}, ${count} blocks) is empty, overlaps the previous one or leaves its parent's range`);
      }
      ctx.disk.check(physical, count, `extent ${i} of inode ${ctx.ino} (${where})`);
      ctx.next = first + count;
      yield { logical: first, physical: unwritten ? 0 : physical, count: Math.min(count, limit - first) };
    } else {
      const childHi = i + 1 < h.entries ? node.readUInt32LE(e + 12) : hi;
      if (childHi <= first) throw malformed(`Cannot map inode ${ctx.ino}: ${where} index entries ${i} and ${i + 1} are not in increasing order`);
      const leaf = node.readUInt16LE(e + 8) * 2 ** 32 + node.readUInt32LE(e + 4);
      const childWhere = `extent node at block ${leaf}`;
      const child = ctx.disk.block(leaf, `${childWhere} of inode ${ctx.ino}`);
      const ch = header(ctx, child, childWhere, h.depth - 1);
      yield* walk(ctx, child, ch, first, Math.min(childHi, hi), limit, childWhere);
    }
  }
}
