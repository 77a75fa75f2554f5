/** The ext2/3/4 reader's public surface. */
export { Ext4, ROOT_INO, type Ext4Stat, type WalkEntry, type WalkOptions, type WalkSummary, type ReadOptions } from "./ext4.ts";
export { Ext4Error, DEFAULT_EXT4_LIMITS, type Ext4Limits, type Ext4FailureReason } from "./errors.ts";
export type { DirEntry } from "./directory.ts";
export type { FileType, Inode } from "./inode.ts";
export type { Superblock } from "./superblock.ts";
