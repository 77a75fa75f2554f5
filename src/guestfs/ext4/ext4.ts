/**
 * A read-only, bounded ext2/3/4 reader over a `BlockReader` (a partition of a dormant guest's disk). The file
 * system is hostile input: see errors.ts for the bounds, and each module for what it checks. It never writes,
 * never mounts, and does not replay the journal: a dormant image shut down cleanly has an empty one, and when
 * needs_recovery is set the file system is read as it stands and `needsRecovery` says so (recent writes may be
 * missing or stale). Paths resolve inside the image: ".." at the root stays at the root, an absolute symlink
 * target restarts at the image's root, and at most `maxSymlinks` links are followed per path.
 */
import type { BlockReader } from "../../storage/block-reader.ts";
import { MAX_DISK_READ, Disk } from "./disk.ts";
import { parseDirents, type DirEntry } from "./directory.ts";
import { DEFAULT_EXT4_LIMITS, Ext4Error, type Ext4Limits, malformed } from "./errors.ts";
import { extentRuns, type Run } from "./extents.ts";
import { GroupTable } from "./groups.ts";
import { indirectRuns } from "./indirect.ts";
import { FLAG, type FileType, type Inode, inlineTail, readInode } from "./inode.ts";
import { INCOMPAT, type Superblock, has, readSuperblock } from "./superblock.ts";

export const ROOT_INO = 2;

/** What `stat` tells: the inode's fields a caller may rely on (not its block map or flags). */
export type Ext4Stat = Pick<Inode, "ino" | "type" | "perm" | "uid" | "gid" | "size" | "links" | "mtime">;

export interface WalkEntry {
  /** Absolute path inside the image, names decoded as UTF-8. */
  readonly path: string;
  readonly ino: number;
  readonly type: FileType;
  readonly size: number;
  readonly depth: number;
}

export interface WalkOptions {
  /** Most entries visited (default 1 000 000); past it the walk stops and says so. */
  readonly maxEntries?: number;
  /** Deepest directory level descended into, the root's children being depth 1 (default 64). */
  readonly maxDepth?: number;
  /** Record unreadable directories and entries in `skipped` instead of throwing (default false). */
  readonly skipUnreadable?: boolean;
}

export interface WalkSummary {
  readonly visited: number;
  /** The walk stopped at `maxEntries`. */
  readonly truncated: boolean;
  readonly skipped: ReadonlyArray<{ readonly path: string; readonly reason: string }>;
}

export interface ReadOptions {
  /** Largest file read; a larger one is refused (or, with `truncate`, read up to this many bytes). */
  readonly maxBytes?: number;
  readonly truncate?: boolean;
  /** Largest chunk yielded by `chunks` (default 1 MiB). */
  readonly chunkBytes?: number;
}

type Target = string | number;

export class Ext4 {
  readonly superblock: Superblock;
  readonly limits: Ext4Limits;
  readonly #disk: Disk;
  readonly #groups: GroupTable;
  readonly #fileType: boolean;

  private constructor(reader: BlockReader, limits: Ext4Limits) {
    this.limits = limits;
    this.superblock = readSuperblock(reader);
    const sb = this.superblock;
    this.#disk = new Disk(reader, sb.blockSize, sb.blocksCount, limits.cacheBytes);
    this.#groups = new GroupTable(sb, this.#disk);
    this.#fileType = has(sb, INCOMPAT.filetype);
  }

  /** Opens the file system on `reader` (not owned: closing it is the caller's business). */
  static open(reader: BlockReader, limits: Partial<Ext4Limits> = {}): Ext4 {
    const fs = new Ext4(reader, { ...DEFAULT_EXT4_LIMITS, ...limits });
    const root = fs.inode(ROOT_INO);
    if (root.type !== "dir") throw malformed(`Cannot open ext4 file system: the root inode ${ROOT_INO} is a ${root.type}, not a directory`);
    return fs;
  }

  /** The journal was not replayed though it holds transactions: the view may lack the last writes. */
  get needsRecovery(): boolean {
    return this.superblock.needsRecovery;
  }

  /** The in-use inode `ino` (a deleted or never-used inode is `not-found`). */
  inode(ino: number): Inode {
    return readInode(this.superblock, this.#disk, this.#groups, ino);
  }

  /** The first block of group `g`'s inode table (for reports and cross-checks with debugfs). */
  inodeTableBlock(g: number): number {
    if (!Number.isInteger(g) || g < 0 || g >= this.superblock.groupCount) {
      throw new Ext4Error("not-found", `Cannot locate group ${g}: groups run 0..${this.superblock.groupCount - 1}`);
    }
    return this.#groups.inodeTable(g);
  }

  /** Resolves `path` (absolute inside the image) to an inode, following symlinks (the last one only if `followLast`). */
  lookup(path: string, options: { followLast?: boolean } = {}): Inode {
    const followLast = options.followLast ?? true;
    const dirs: number[] = [ROOT_INO];
    // Components still to resolve, last first (so a symlink's target is pushed in front of the rest).
    const todo = splitPath(path).reverse();
    let links = 0;
    let current = this.inode(ROOT_INO);
    while (todo.length > 0) {
      const c = todo.pop()!;
      if (current.type !== "dir") throw new Ext4Error("wrong-type", `Cannot resolve ${JSON.stringify(path)}: a component before ${JSON.stringify(c)} is a ${current.type}, not a directory`);
      if (c === ".") continue;
      if (c === "..") {
        if (dirs.length > 1) dirs.pop();
        current = this.inode(dirs[dirs.length - 1]!);
        continue;
      }
      const want = Buffer.from(c, "utf8");
      const entry = this.#entries(current).find((e) => e.nameBytes.equals(want));
      if (!entry) throw new Ext4Error("not-found", `Cannot resolve ${JSON.stringify(path)}: no entry ${JSON.stringify(c)} in directory inode ${current.ino}`);
      const node = this.inode(entry.ino);
      if (node.type === "symlink" && (todo.length > 0 || followLast)) {
        if (++links > this.limits.maxSymlinks) {
          throw new Ext4Error("limit", `Cannot resolve ${JSON.stringify(path)}: more than ${this.limits.maxSymlinks} symbolic links (a loop?)`);
        }
        const target = this.#readlink(node);
        if (target.startsWith("/")) dirs.length = 1;
        current = this.inode(dirs[dirs.length - 1]!);
        todo.push(...splitPath(target).reverse());
        continue;
      }
      dirs.push(node.ino);
      current = node;
    }
    return current;
  }

  /** Status of `path`, following symlinks. */
  stat(path: Target): Ext4Stat {
    return statOf(this.#resolve(path, true));
  }

  /** Status of `path` itself (a symlink is reported, not followed). */
  lstat(path: Target): Ext4Stat {
    return statOf(this.#resolve(path, false));
  }

  /** The entries of a directory, without "." and "..", in on-disk order. */
  readdir(path: Target): DirEntry[] {
    return this.#entries(this.#resolve(path, true));
  }

  /** A symlink's target, as stored. */
  readlink(path: Target): string {
    return this.#readlink(this.#resolve(path, false));
  }

  /** A whole regular file (symlinks followed), refused if larger than `maxBytes` (default `limits.maxReadBytes`). */
  readFile(path: Target, options: ReadOptions = {}): Buffer {
    const parts: Buffer[] = [];
    // Buffer.concat copies; the chunks themselves (fresh reads, or the never-written zero buffer) are not reused.
    for (const c of this.chunks(path, options)) parts.push(c);
    return Buffer.concat(parts);
  }

  /**
   * A regular file's bytes in chunks of at most `chunkBytes`, read lazily so a scanner can hash a big file in
   * bounded memory. Holes and unwritten extents read as zeros. Chunks may share memory: copy to keep one.
   */
  *chunks(path: Target, options: ReadOptions = {}): Generator<Buffer> {
    const inode = this.#resolve(path, true);
    if (inode.type !== "file") throw new Ext4Error("wrong-type", `Cannot read inode ${inode.ino}: it is a ${inode.type}, not a regular file`);
    const maxBytes = options.maxBytes ?? this.limits.maxReadBytes;
    if (inode.size > maxBytes && !options.truncate) {
      throw new Ext4Error("limit", `Cannot read inode ${inode.ino}: it has ${inode.size} bytes, more than the ${maxBytes} allowed`);
    }
    const chunkBytes = Math.max(this.superblock.blockSize, Math.min(options.chunkBytes ?? 1024 * 1024, MAX_DISK_READ));
    yield* this.#data(inode, Math.min(inode.size, maxBytes), chunkBytes);
  }

  /**
   * Visits every entry under `root` depth-first (symlinks are reported, never followed; a directory reached twice
   * is not entered again). `visit` returning false skips a directory's contents.
   */
  walk(root: string, visit: (e: WalkEntry) => boolean | void, options: WalkOptions = {}): WalkSummary {
    const maxEntries = options.maxEntries ?? 1_000_000;
    const maxDepth = options.maxDepth ?? 64;
    const skipped: Array<{ path: string; reason: string }> = [];
    const start = this.lookup(root);
    if (start.type !== "dir") throw new Ext4Error("wrong-type", `Cannot walk ${JSON.stringify(root)}: it is a ${start.type}, not a directory`);
    const base = splitPath(root).length === 0 ? "" : `/${splitPath(root).join("/")}`;
    const stack: Array<{ inode: Inode; path: string; depth: number }> = [{ inode: start, path: base, depth: 0 }];
    const seen = new Set<number>([start.ino]);
    let visited = 0;
    const guard = <T>(path: string, f: () => T): T | undefined => {
      try {
        return f();
      } catch (err) {
        if (!options.skipUnreadable || !(err instanceof Ext4Error)) throw err;
        skipped.push({ path, reason: err.message });
        return undefined;
      }
    };
    while (stack.length > 0) {
      const dir = stack.pop()!;
      if (dir.inode.flags & FLAG.encrypt) {
        skipped.push({ path: dir.path || "/", reason: "encrypted directory" });
        continue;
      }
      const entries = guard(dir.path || "/", () => this.#entries(dir.inode));
      if (!entries) continue;
      const subdirs: Array<{ inode: Inode; path: string; depth: number }> = [];
      for (const e of entries) {
        const path = `${dir.path}/${e.name}`;
        const inode = guard(path, () => this.inode(e.ino));
        if (!inode) continue;
        if (visited >= maxEntries) return { visited, truncated: true, skipped };
        visited++;
        const depth = dir.depth + 1;
        const descend = visit({ path, ino: inode.ino, type: inode.type, size: inode.size, depth });
        if (inode.type !== "dir" || descend === false) continue;
        if (seen.has(inode.ino)) {
          skipped.push({ path, reason: `directory inode ${inode.ino} already visited (a directory hard link)` });
        } else if (depth >= maxDepth) {
          skipped.push({ path, reason: `deeper than ${maxDepth} levels` });
        } else {
          seen.add(inode.ino);
          subdirs.push({ inode, path, depth });
        }
      }
      stack.push(...subdirs.reverse());
    }
    return { visited, truncated: false, skipped };
  }

  #resolve(path: Target, follow: boolean): Inode {
    return typeof path === "number" ? this.inode(path) : this.lookup(path, { followLast: follow });
  }

  #entries(dir: Inode): DirEntry[] {
    if (dir.type !== "dir") throw new Ext4Error("wrong-type", `Cannot list inode ${dir.ino}: it is a ${dir.type}, not a directory`);
    this.#refuseEncrypted(dir);
    const sb = this.superblock;
    const out: DirEntry[] = [];
    if (dir.flags & FLAG.inlineData) {
      // i_block holds the parent's inode number, then dirents; the rest of the dirents are in system.data.
      parseDirents({ buf: dir.iBlock, start: 4, end: 60, where: `inline directory inode ${dir.ino}` }, this.#fileType, sb.blockSize, sb.inodesCount, out);
      const tail = inlineTail(sb, dir);
      if (tail.length > 0) parseDirents({ buf: tail, start: 0, end: tail.length, where: `inline directory inode ${dir.ino} (system.data)` }, this.#fileType, sb.blockSize, sb.inodesCount, out);
      return out;
    }
    if (dir.size > this.limits.maxDirBytes) throw new Ext4Error("limit", `Cannot list directory inode ${dir.ino}: it has ${dir.size} bytes, more than the ${this.limits.maxDirBytes} allowed`);
    if (dir.size % sb.blockSize !== 0) throw malformed(`Cannot list directory inode ${dir.ino}: its size ${dir.size} is not a multiple of the ${sb.blockSize}-byte block`);
    for (const run of this.#runs(dir, dir.size / sb.blockSize)) {
      if (run.physical === 0) continue;
      for (let i = 0; i < run.count; i++) {
        const blk = this.#disk.block(run.physical + i, `block ${run.logical + i} of directory inode ${dir.ino}`);
        parseDirents({ buf: blk, start: 0, end: blk.length, where: `block ${run.logical + i} of directory inode ${dir.ino}` }, this.#fileType, sb.blockSize, sb.inodesCount, out);
      }
    }
    return out;
  }

  #readlink(node: Inode): string {
    if (node.type !== "symlink") throw new Ext4Error("wrong-type", `Cannot read link inode ${node.ino}: it is a ${node.type}, not a symlink`);
    this.#refuseEncrypted(node);
    const max = this.limits.maxSymlinkBytes;
    if (node.size === 0 || node.size > max) throw malformed(`Cannot read link inode ${node.ino}: its target has ${node.size} bytes, allowed 1..${max}`);
    const eaBlocks = node.fileAcl !== 0 ? this.superblock.blockSize / 512 : 0;
    let bytes: Buffer;
    if (!(node.flags & FLAG.inlineData) && !(node.flags & FLAG.extents) && node.blocks - eaBlocks === 0) {
      // A fast symlink: the target is in i_block.
      if (node.size >= 60) throw malformed(`Cannot read link inode ${node.ino}: a fast symlink of ${node.size} bytes does not fit i_block`);
      bytes = node.iBlock.subarray(0, node.size);
    } else {
      const parts: Buffer[] = [];
      for (const c of this.#data(node, node.size, max)) parts.push(c);
      bytes = Buffer.concat(parts);
    }
    if (bytes.includes(0)) throw malformed(`Cannot read link inode ${node.ino}: its target contains a NUL byte`);
    return bytes.toString("utf8");
  }

  #refuseEncrypted(node: Inode): void {
    if (node.flags & FLAG.encrypt) throw new Ext4Error("unsupported", `Cannot read inode ${node.ino}: it is encrypted (fscrypt), and this reader has no keys`);
  }

  #runs(inode: Inode, limitBlocks: number): Generator<Run> {
    if (inode.flags & FLAG.extents) return extentRuns(this.#disk, inode.ino, inode.iBlock, limitBlocks, this.limits.maxExtentNodes);
    const maxBlocks = 12 + 2 ** 30 * 3; // beyond the triple indirect range the map cannot reach
    if (limitBlocks > maxBlocks) throw malformed(`Cannot map inode ${inode.ino}: its ${inode.size} bytes exceed what a block map can address`);
    return indirectRuns(this.#disk, inode.ino, inode.iBlock, limitBlocks);
  }

  *#data(inode: Inode, length: number, chunkBytes: number): Generator<Buffer> {
    this.#refuseEncrypted(inode);
    if (length === 0) return;
    const bs = this.superblock.blockSize;
    if (inode.flags & FLAG.inlineData) {
      const all = Buffer.concat([inode.iBlock, inlineTail(this.superblock, inode)]);
      if (all.length < length) throw malformed(`Cannot read inline data of inode ${inode.ino}: it holds ${all.length} bytes, but i_size is ${inode.size}`);
      yield all.subarray(0, length);
      return;
    }
    let zeros: Buffer | undefined; // allocated at the first hole: most files have none
    let pos = 0; // bytes yielded so far
    function* zero(until: number): Generator<Buffer> {
      while (pos < until) {
        zeros ??= Buffer.alloc(chunkBytes);
        const n = Math.min(chunkBytes, until - pos);
        pos += n;
        yield zeros.subarray(0, n);
      }
    }
    const perChunk = Math.max(1, Math.floor(chunkBytes / bs));
    for (const run of this.#runs(inode, Math.ceil(length / bs))) {
      yield* zero(Math.min(run.logical * bs, length));
      const runEnd = Math.min((run.logical + run.count) * bs, length);
      if (run.physical === 0) {
        yield* zero(runEnd);
        continue;
      }
      for (let i = 0; pos < runEnd; i += perChunk) {
        const n = Math.min(perChunk, run.count - i);
        const buf = this.#disk.blocks(run.physical + i, n, `data of inode ${inode.ino}`);
        const take = Math.min(buf.length, runEnd - pos);
        pos += take;
        yield take === buf.length ? buf : buf.subarray(0, take);
      }
    }
    yield* zero(length);
  }
}

function statOf(i: Inode): Ext4Stat {
  return { ino: i.ino, type: i.type, perm: i.perm, uid: i.uid, gid: i.gid, size: i.size, links: i.links, mtime: i.mtime };
}

function splitPath(path: string): string[] {
  return path.split("/").filter((c) => c !== "");
}
