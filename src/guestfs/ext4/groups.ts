/**
 * Block group descriptors (32 bytes, or s_desc_size with 64bit), read lazily per group. Only the inode table's
 * location is needed to read files; it is checked to lie inside the file system with room for the whole table.
 * With meta_bg, descriptor blocks from s_first_meta_bg on live in the first group of their meta group (after a
 * superblock backup when that group has one) instead of after the primary superblock.
 */
import type { Disk } from "./disk.ts";
import { malformed } from "./errors.ts";
import { INCOMPAT, type Superblock, has } from "./superblock.ts";

export class GroupTable {
  readonly #tables = new Map<number, number>();
  readonly #perBlock: number;
  readonly #tableBlocks: number;

  constructor(
    readonly sb: Superblock,
    readonly disk: Disk,
  ) {
    this.#perBlock = sb.blockSize / sb.descSize;
    this.#tableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
  }

  /** The first block of group `g`'s inode table, checked. */
  inodeTable(g: number): number {
    const hit = this.#tables.get(g);
    if (hit !== undefined) return hit;
    const descBlock = Math.floor(g / this.#perBlock);
    const at = (g % this.#perBlock) * this.sb.descSize;
    const blockNo = this.#descriptorBlock(descBlock);
    const buf = this.disk.block(blockNo, `group descriptor block ${descBlock}`);
    const lo = buf.readUInt32LE(at + 8);
    const hi = this.sb.descSize >= 64 ? buf.readUInt32LE(at + 0x28) : 0;
    const table = hi * 2 ** 32 + lo;
    if (table <= this.sb.firstDataBlock || table + this.#tableBlocks > this.sb.blocksCount) {
      throw malformed(
        `Cannot read group descriptor ${g} (block ${blockNo}, byte ${at}): inode table at block ${table} (+${this.#tableBlocks}) is outside the file system (${this.sb.blocksCount} blocks)`,
      );
    }
    if (this.#tables.size > 65536) this.#tables.clear();
    this.#tables.set(g, table);
    return table;
  }

  #descriptorBlock(n: number): number {
    const sb = this.sb;
    if (!has(sb, INCOMPAT.meta_bg) || n < sb.firstMetaBg) return sb.firstDataBlock + 1 + n;
    const group = n * this.#perBlock;
    if (group >= sb.groupCount) throw malformed(`Cannot read group descriptor block ${n}: meta group starts at group ${group}, past the last group ${sb.groupCount - 1}`);
    const first = sb.firstDataBlock + group * sb.blocksPerGroup;
    return first + (hasSuperBackup(sb, group) ? 1 : 0);
  }
}

/** Whether group `g` starts with a superblock backup (then its meta_bg descriptor block comes one later). */
function hasSuperBackup(sb: Superblock, g: number): boolean {
  if (g === 0) return true;
  if (sb.backupGroups) return sb.backupGroups.includes(g);
  if (g === 1 || !sb.sparseSuper) return true;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < g) p *= base;
    if (p === g) return true;
  }
  return false;
}
