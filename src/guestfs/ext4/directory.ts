/**
 * Directory entries, read linearly. An htree directory needs no special case: its root block reads as "." and
 * a ".." whose record spans the rest of the block, and its interior blocks as one empty record, so only leaf
 * blocks yield names. Checksum tails (metadata_csum) are records with inode 0 and are skipped like any unused
 * record; checksums themselves are not verified (see docs/transience.md). Every record length is checked to be
 * a multiple of 4, at least 8 plus the name, and inside its block, so a region of n bytes has at most n/8 records.
 */
import { malformed } from "./errors.ts";
import type { FileType } from "./inode.ts";

export interface DirEntry {
  /** The name decoded as UTF-8 (invalid bytes become U+FFFD); `nameBytes` is exact. */
  readonly name: string;
  readonly nameBytes: Buffer;
  readonly ino: number;
  /** From the entry's file_type byte (filetype feature), or undefined when the entry does not say. */
  readonly type: FileType | undefined;
}

const TYPE_BY_DIRENT: Record<number, FileType> = { 1: "file", 2: "dir", 3: "chardev", 4: "blockdev", 5: "fifo", 6: "socket", 7: "symlink" };

export interface DirRegion {
  readonly buf: Buffer;
  readonly start: number;
  readonly end: number;
  /** Says where the region is, for errors ("block 1234 of directory inode 12"). */
  readonly where: string;
}

/** Parses one region of dirents (a directory block, or an inline-data area), appending live entries to `out`. */
export function parseDirents(r: DirRegion, fileType: boolean, blockSize: number, inodesCount: number, out: DirEntry[]): void {
  let at = r.start;
  while (at < r.end) {
    if (at + 8 > r.end) throw malformed(`Cannot read ${r.where}: a directory entry at byte ${at - r.start} is cut off at the end of the block`);
    const ino = r.buf.readUInt32LE(at);
    let recLen = r.buf.readUInt16LE(at + 4);
    if (blockSize >= 65536 && (recLen === 65535 || recLen === 0)) recLen = 65536;
    const nameLen = fileType ? r.buf.readUInt8(at + 6) : r.buf.readUInt16LE(at + 6);
    if (recLen < 8 || recLen % 4 !== 0 || at + recLen > r.end || (ino !== 0 && 8 + nameLen > recLen)) {
      throw malformed(`Cannot read ${r.where}: the directory entry at byte ${at - r.start} has record length ${recLen} and name length ${nameLen}, which do not fit its ${r.end - r.start}-byte block`);
    }
    if (ino !== 0 && nameLen > 0) {
      if (ino > inodesCount) throw malformed(`Cannot read ${r.where}: the directory entry at byte ${at - r.start} names inode ${ino}, past the last inode ${inodesCount}`);
      const nameBytes = Buffer.from(r.buf.subarray(at + 8, at + 8 + nameLen));
      if (nameBytes.includes(0x2f) || nameBytes.includes(0)) {
        throw malformed(`Cannot read ${r.where}: the directory entry at byte ${at - r.start} has a name containing "/" or NUL`);
      }
      const isDot = nameLen <= 2 && nameBytes.every((c) => c === 0x2e);
      if (!isDot) {
        out.push({ name: nameBytes.toString("utf8"), nameBytes, ino, type: fileType ? TYPE_BY_DIRENT[r.buf.readUInt8(at + 7)] : undefined });
      }
    }
    at += recLen;
  }
}
