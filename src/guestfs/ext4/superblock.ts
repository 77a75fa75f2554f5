/**
 * The ext2/3/4 superblock (1024 bytes at byte 1024 of the file system): geometry and feature flags, each field
 * bounded before anything else uses it. Incompatible features this reader does not understand are refused by
 * name; read-only-compatible ones do not change how blocks are found, so they are reported, not refused.
 */
import type { BlockReader } from "../../storage/block-reader.ts";
import { Ext4Error, malformed } from "./errors.ts";

export const SUPERBLOCK_OFFSET = 1024n;
const MAGIC = 0xef53;

/** Incompatible feature bits, by the names mke2fs and the kernel use. */
export const INCOMPAT = {
  compression: 0x1,
  filetype: 0x2,
  needs_recovery: 0x4,
  journal_dev: 0x8,
  meta_bg: 0x10,
  extent: 0x40,
  "64bit": 0x80,
  mmp: 0x100,
  flex_bg: 0x200,
  ea_inode: 0x400,
  dirdata: 0x1000,
  metadata_csum_seed: 0x2000,
  large_dir: 0x4000,
  inline_data: 0x8000,
  encrypt: 0x10000,
  casefold: 0x20000,
} as const;

/**
 * What this reader handles. Refused: compression (never finished in Linux), journal_dev (an external journal,
 * not a file system), dirdata (Lustre's extra dirent data changes the dirent layout). `encrypt` is accepted:
 * only inodes flagged encrypted are refused (their names and bytes are ciphertext); `casefold` is accepted:
 * names are stored as created and looked up byte for byte.
 */
const SUPPORTED_INCOMPAT =
  INCOMPAT.filetype | INCOMPAT.needs_recovery | INCOMPAT.meta_bg | INCOMPAT.extent | INCOMPAT["64bit"] | INCOMPAT.mmp |
  INCOMPAT.flex_bg | INCOMPAT.ea_inode | INCOMPAT.metadata_csum_seed | INCOMPAT.large_dir | INCOMPAT.inline_data |
  INCOMPAT.encrypt | INCOMPAT.casefold;

const RO_COMPAT_SPARSE_SUPER = 0x1;
const COMPAT_HAS_JOURNAL = 0x4;
const COMPAT_SPARSE_SUPER2 = 0x200;

export interface Superblock {
  readonly inodesCount: number;
  readonly blocksCount: number;
  readonly firstDataBlock: number;
  readonly blockSize: number;
  readonly blocksPerGroup: number;
  readonly inodesPerGroup: number;
  readonly groupCount: number;
  readonly inodeSize: number;
  readonly firstIno: number;
  readonly revLevel: number;
  readonly featureCompat: number;
  readonly featureIncompat: number;
  readonly featureRoCompat: number;
  /** Names of the incompatible features set, for reports. */
  readonly incompatNames: readonly string[];
  readonly descSize: number;
  readonly firstMetaBg: number;
  readonly sparseSuper: boolean;
  /** sparse_super2: superblock backups only in these (at most two) groups, besides group 0. */
  readonly backupGroups: readonly number[] | undefined;
  readonly hasJournal: boolean;
  /** The journal holds transactions not yet written to their places; this reader does not replay them. */
  readonly needsRecovery: boolean;
  readonly volumeName: string;
  readonly uuid: string;
}

export function has(sb: Superblock, bit: number): boolean {
  return (sb.featureIncompat & bit) !== 0;
}

/** Reads and checks the superblock of the file system on `reader`. */
export function readSuperblock(reader: BlockReader): Superblock {
  if (reader.virtualSize < SUPERBLOCK_OFFSET + 1024n) {
    throw malformed(`Cannot open ext4 file system: the disk has ${reader.virtualSize} bytes, too few for a superblock at byte 1024`);
  }
  const b = reader.read(SUPERBLOCK_OFFSET, 1024);
  if (b.length !== 1024) throw malformed("Cannot open ext4 file system: short read of the superblock");
  const magic = b.readUInt16LE(56);
  if (magic !== MAGIC) throw malformed(`Cannot open ext4 file system: superblock magic at byte 1080 is 0x${magic.toString(16)}, not 0xef53`);
  const field = (name: string, off: number, value: number, allowed: string): Ext4Error =>
    malformed(`Cannot open ext4 file system: superblock field ${name} (byte ${1024 + off}) is ${value}, allowed ${allowed}`);

  const logBlock = b.readUInt32LE(24);
  if (logBlock > 6) throw field("s_log_block_size", 24, logBlock, "0..6 (1 KiB..64 KiB blocks)");
  const blockSize = 1024 << logBlock;
  const featureCompat = b.readUInt32LE(92);
  const featureIncompat = b.readUInt32LE(96);
  const featureRoCompat = b.readUInt32LE(100);
  const revLevel = b.readUInt32LE(76);
  if (revLevel > 1) throw field("s_rev_level", 76, revLevel, "0 or 1");

  const unknown = featureIncompat & ~SUPPORTED_INCOMPAT;
  if (unknown !== 0) {
    const names: string[] = [];
    for (let bit = 0; bit < 32; bit++) {
      const v = (1 << bit) >>> 0;
      if ((unknown & v) === 0) continue;
      const known = Object.entries(INCOMPAT).find(([, x]) => x === v);
      names.push(known ? known[0] : `bit ${bit}`);
    }
    throw new Ext4Error("unsupported", `Cannot open ext4 file system: it uses incompatible feature(s) ${names.join(", ")}, which this reader does not support`);
  }
  const is64 = (featureIncompat & INCOMPAT["64bit"]) !== 0;
  const blocksHi = is64 ? b.readUInt32LE(336) : 0;
  const blocksCount = blocksHi * 2 ** 32 + b.readUInt32LE(4);
  const firstDataBlock = b.readUInt32LE(20);
  const wantFirst = blockSize === 1024 ? 1 : 0;
  if (firstDataBlock !== wantFirst) throw field("s_first_data_block", 20, firstDataBlock, `${wantFirst} for ${blockSize}-byte blocks`);
  if (BigInt(blocksCount) * BigInt(blockSize) > reader.virtualSize) {
    throw malformed(`Cannot open ext4 file system: it claims ${blocksCount} blocks of ${blockSize} bytes (superblock byte 1028), more than the ${reader.virtualSize}-byte disk holds`);
  }
  if (blocksCount <= firstDataBlock + 1) throw field("s_blocks_count", 4, blocksCount, `more than ${firstDataBlock + 1}`);
  const blocksPerGroup = b.readUInt32LE(32);
  if (blocksPerGroup < 8 || blocksPerGroup > blockSize * 8 || blocksPerGroup % 8 !== 0) {
    throw field("s_blocks_per_group", 32, blocksPerGroup, `a multiple of 8 in 8..${blockSize * 8}`);
  }
  const inodesPerGroup = b.readUInt32LE(40);
  if (inodesPerGroup < 1 || inodesPerGroup > blockSize * 8) throw field("s_inodes_per_group", 40, inodesPerGroup, `1..${blockSize * 8}`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  const inodesCount = b.readUInt32LE(0);
  if (inodesCount < 11 || inodesCount > groupCount * inodesPerGroup) {
    throw field("s_inodes_count", 0, inodesCount, `11..${groupCount * inodesPerGroup} (groups × inodes per group)`);
  }
  const inodeSize = revLevel === 0 ? 128 : b.readUInt16LE(88);
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
    throw field("s_inode_size", 88, inodeSize, `a power of two in 128..${blockSize}`);
  }
  const firstIno = revLevel === 0 ? 11 : b.readUInt32LE(84);
  if (firstIno < 11 || firstIno > inodesCount) throw field("s_first_ino", 84, firstIno, `11..${inodesCount}`);
  let descSize = 32;
  if (is64) {
    descSize = b.readUInt16LE(254);
    if (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) throw field("s_desc_size", 254, descSize, "a power of two in 64..1024 (64bit)");
  }
  const firstMetaBg = b.readUInt32LE(260);
  const incompatNames = Object.entries(INCOMPAT).filter(([, v]) => (featureIncompat & v) !== 0).map(([k]) => k);
  const hex = b.subarray(104, 120).toString("hex");
  return {
    inodesCount,
    blocksCount,
    firstDataBlock,
    blockSize,
    blocksPerGroup,
    inodesPerGroup,
    groupCount,
    inodeSize,
    firstIno,
    revLevel,
    featureCompat,
    featureIncompat,
    featureRoCompat,
    incompatNames,
    descSize,
    firstMetaBg,
    sparseSuper: (featureRoCompat & RO_COMPAT_SPARSE_SUPER) !== 0,
    backupGroups: (featureCompat & COMPAT_SPARSE_SUPER2) !== 0 ? [b.readUInt32LE(588), b.readUInt32LE(592)].filter((g) => g !== 0) : undefined,
    hasJournal: (featureCompat & COMPAT_HAS_JOURNAL) !== 0,
    needsRecovery: (featureIncompat & INCOMPAT.needs_recovery) !== 0,
    volumeName: cString(b.subarray(120, 136)),
    uuid: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
  };
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString("utf8");
}
