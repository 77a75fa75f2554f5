/**
 * The one error the ext2/3/4 reader throws for anything an image or a caller did, and the bounds that cap the
 * time and memory a hostile file system could otherwise choose.
 */
import { VigilError } from "../../errors.ts";

/** How an ext4 operation failed; the message says what and where. */
export type Ext4FailureReason =
  /** The image breaks the format: a bad magic, a field out of range, a block outside the file system. */
  | "malformed"
  /** A well-formed file system using something this reader does not do (an incompatible feature, encryption). */
  | "unsupported"
  /** A path that does not exist, or an inode that is not in use. */
  | "not-found"
  /** A path of the wrong kind: a file where a directory was needed, or the reverse. */
  | "wrong-type"
  /** A bound in `Ext4Limits` was reached (symlink loops count here too). */
  | "limit";

const REASON_CODE = {
  malformed: "VIGIL_BAD_REQUEST",
  unsupported: "VIGIL_BAD_REQUEST",
  "not-found": "VIGIL_NOT_FOUND",
  "wrong-type": "VIGIL_BAD_REQUEST",
  limit: "VIGIL_BAD_REQUEST",
} as const;

export class Ext4Error extends VigilError {
  readonly reason: Ext4FailureReason;

  constructor(reason: Ext4FailureReason, message: string, options: { cause?: unknown } = {}) {
    super(REASON_CODE[reason], message, options);
    this.name = "Ext4Error";
    this.reason = reason;
  }
}

export const malformed = (message: string): Ext4Error => new Ext4Error("malformed", message);

/** Per-file-system bounds. */
export interface Ext4Limits {
  /** Symbolic links followed while resolving one path (Linux: 40). */
  readonly maxSymlinks: number;
  /** Longest symlink target, in bytes (Linux: PATH_MAX, 4096). */
  readonly maxSymlinkBytes: number;
  /** Largest directory (its i_size) that is read. */
  readonly maxDirBytes: number;
  /** Extent tree nodes visited while mapping one file (a hostile tree could point many times at one node). */
  readonly maxExtentNodes: number;
  /** Bytes of metadata blocks (inode table, extent, indirect, directory blocks) cached between calls. */
  readonly cacheBytes: number;
  /** Default bound of `readFile` when the caller gives none. */
  readonly maxReadBytes: number;
}

export const DEFAULT_EXT4_LIMITS: Ext4Limits = {
  maxSymlinks: 40,
  maxSymlinkBytes: 4096,
  maxDirBytes: 256 * 1024 * 1024,
  maxExtentNodes: 1 << 16,
  cacheBytes: 4 * 1024 * 1024,
  maxReadBytes: 64 * 1024 * 1024,
};
