/**
 * ext2/3 block maps: 12 direct pointers, then single, double and triple indirect blocks. Only pointers that
 * cover logical blocks below the file's end are followed, a zero pointer is a hole (a whole subtree of them at
 * once), and every pointer is checked to lie inside the file system. The descent is at most three levels by
 * construction, and the work is bounded by the file's size in blocks.
 */
import type { Disk } from "./disk.ts";
import type { Run } from "./extents.ts";

/** Mapped runs (holes left out) of the file whose i_block is `iBlock`, for logical blocks below `limitBlocks`. */
export function* indirectRuns(disk: Disk, ino: number, iBlock: Buffer, limitBlocks: number): Generator<Run> {
  const per = disk.blockSize / 4;
  let pending: { logical: number; physical: number; count: number } | undefined;
  function* emit(logical: number, physical: number): Generator<Run> {
    if (pending && pending.logical + pending.count === logical && pending.physical + pending.count === physical) {
      pending.count++;
      return;
    }
    if (pending) yield pending;
    pending = { logical, physical, count: 1 };
  }
  function* level(ptr: number, depth: number, logical: number, what: string): Generator<Run> {
    if (ptr === 0 || logical >= limitBlocks) return;
    if (depth === 0) {
      disk.check(ptr, 1, `data block ${logical} of inode ${ino}`);
      yield* emit(logical, ptr);
      return;
    }
    const blk = disk.block(ptr, `${what} of inode ${ino}`);
    const span = per ** (depth - 1);
    for (let i = 0; i < per; i++) {
      const at = logical + i * span;
      if (at >= limitBlocks) break;
      yield* level(blk.readUInt32LE(i * 4), depth - 1, at, depth === 1 ? what : `${what} (level ${depth - 1})`);
    }
  }
  for (let i = 0; i < 12; i++) yield* level(iBlock.readUInt32LE(i * 4), 0, i, "direct block");
  yield* level(iBlock.readUInt32LE(48), 1, 12, "indirect block");
  yield* level(iBlock.readUInt32LE(52), 2, 12 + per, "double indirect block");
  yield* level(iBlock.readUInt32LE(56), 3, 12 + per + per * per, "triple indirect block");
  if (pending) yield pending;
}
