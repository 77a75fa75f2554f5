/**
 * Inodes: located through the group descriptors, parsed into the fields a reader needs, and (for inline_data)
 * the bytes kept in the inode itself: the first 60 in i_block, the rest in the in-inode extended attribute
 * "system.data". Every offset inside the inode is checked against the inode size.
 */
import type { Disk } from "./disk.ts";
import { Ext4Error, malformed } from "./errors.ts";
import type { GroupTable } from "./groups.ts";
import type { Superblock } from "./superblock.ts";

export const FLAG = {
  encrypt: 0x800,
  index: 0x1000,
  hugeFile: 0x40000,
  extents: 0x80000,
  eaInode: 0x200000,
  inlineData: 0x10000000,
} as const;

export type FileType = "file" | "dir" | "symlink" | "chardev" | "blockdev" | "fifo" | "socket";

const TYPE_BY_MODE: Record<number, FileType> = {
  0x8000: "file",
  0x4000: "dir",
  0xa000: "symlink",
  0x2000: "chardev",
  0x6000: "blockdev",
  0x1000: "fifo",
  0xc000: "socket",
};

export interface Inode {
  readonly ino: number;
  readonly type: FileType;
  /** Permission bits and set-id/sticky bits (mode & 0o7777). */
  readonly perm: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  readonly links: number;
  readonly flags: number;
  readonly mtime: number;
  /** 512-byte sectors (or blocks with huge_file) charged to the inode, as stored. */
  readonly blocks: number;
  readonly fileAcl: number;
  /** The 60 bytes of i_block: extent root, block pointers, a fast symlink target or inline data. */
  readonly iBlock: Buffer;
  /** The whole on-disk inode, for inline data's extended attribute. */
  readonly raw: Buffer;
}

export function readInode(sb: Superblock, disk: Disk, groups: GroupTable, ino: number): Inode {
  if (!Number.isInteger(ino) || ino < 1 || ino > sb.inodesCount) {
    throw malformed(`Cannot read inode ${ino}: inode numbers run 1..${sb.inodesCount}`);
  }
  const g = Math.floor((ino - 1) / sb.inodesPerGroup);
  const index = (ino - 1) % sb.inodesPerGroup;
  const byte = index * sb.inodeSize;
  const block = groups.inodeTable(g) + Math.floor(byte / sb.blockSize);
  const within = byte % sb.blockSize;
  const raw = Buffer.from(disk.block(block, `inode table of group ${g}`).subarray(within, within + sb.inodeSize));
  const mode = raw.readUInt16LE(0);
  const links = raw.readUInt16LE(26);
  const type = TYPE_BY_MODE[mode & 0xf000];
  const dtime = raw.readUInt32LE(20);
  // As Linux: no links means deleted (or never used), and a directory entry naming it is stale or forged. The
  // deletion time is not consulted: the orphan list reuses it as a link in inodes still in use.
  if (links === 0 || type === undefined) {
    throw new Ext4Error("not-found", `Cannot read inode ${ino}: it is not in use (mode 0o${mode.toString(8)}, links ${links}, dtime ${dtime})`);
  }
  const flags = raw.readUInt32LE(32);
  const sizeHi = raw.readUInt32LE(108);
  // 2^48 bytes is beyond any ext4 file (2^32 blocks of at most 64 KiB): larger is corruption, and it keeps sizes
  // exact as JavaScript numbers.
  if (sizeHi >= 0x10000) throw malformed(`Cannot read inode ${ino}: i_size_high (inode byte 108) is ${sizeHi}, larger than any ext4 file`);
  const size = sizeHi * 2 ** 32 + raw.readUInt32LE(4);
  return {
    ino,
    type,
    perm: mode & 0o7777,
    uid: raw.readUInt16LE(2) | (raw.readUInt16LE(120) << 16),
    gid: raw.readUInt16LE(24) | (raw.readUInt16LE(122) << 16),
    size,
    links,
    flags,
    mtime: raw.readUInt32LE(16),
    blocks: raw.readUInt16LE(116) * 2 ** 32 + raw.readUInt32LE(28),
    fileAcl: raw.readUInt16LE(118) * 2 ** 32 + raw.readUInt32LE(104),
    iBlock: raw.subarray(40, 100),
    raw,
  };
}

const XATTR_MAGIC = 0xea020000;
const XATTR_INDEX_SYSTEM = 7;

/**
 * The bytes of an inline-data inode past the 60 in i_block: the value of "system.data" in the in-inode xattr
 * area (empty when the attribute is absent or empty).
 */
export function inlineTail(sb: Superblock, inode: Inode): Buffer {
  const raw = inode.raw;
  if (sb.inodeSize <= 128) throw malformed(`Cannot read inline data of inode ${inode.ino}: 128-byte inodes have no room for it`);
  const extra = raw.readUInt16LE(128);
  const start = 128 + extra;
  if (extra % 4 !== 0 || start + 4 > raw.length) {
    throw malformed(`Cannot read inline data of inode ${inode.ino}: i_extra_isize (inode byte 128) is ${extra}, which leaves no xattr area in a ${raw.length}-byte inode`);
  }
  if (raw.readUInt32LE(start) !== XATTR_MAGIC) return Buffer.alloc(0);
  const base = start + 4;
  let at = base;
  // Each entry is at least 16 bytes, so the loop runs at most inodeSize/16 times.
  while (at + 16 <= raw.length) {
    const nameLen = raw.readUInt8(at);
    const index = raw.readUInt8(at + 1);
    if (nameLen === 0 && index === 0 && raw.readUInt32LE(at) === 0) break; // the terminating zero entry
    const valueOffs = raw.readUInt16LE(at + 2);
    const valueInum = raw.readUInt32LE(at + 4);
    const valueSize = raw.readUInt32LE(at + 8);
    if (at + 16 + nameLen > raw.length) throw malformed(`Cannot read inline data of inode ${inode.ino}: xattr entry at inode byte ${at} runs past the inode`);
    const name = raw.subarray(at + 16, at + 16 + nameLen).toString("latin1");
    if (index === XATTR_INDEX_SYSTEM && name === "data") {
      if (valueInum !== 0) throw new Ext4Error("unsupported", `Cannot read inline data of inode ${inode.ino}: its system.data value lives in inode ${valueInum} (ea_inode)`);
      const v = base + valueOffs;
      if (v + valueSize > raw.length) {
        throw malformed(`Cannot read inline data of inode ${inode.ino}: system.data value (${valueSize} bytes at inode byte ${v}) runs past the ${raw.length}-byte inode`);
      }
      return raw.subarray(v, v + valueSize);
    }
    at += (16 + nameLen + 3) & ~3;
  }
  return Buffer.alloc(0);
}
