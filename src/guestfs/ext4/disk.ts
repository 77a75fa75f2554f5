/**
 * Block access for the ext4 reader: every block number is checked against the file system's block count (which
 * `open` has checked against the reader's size) before it is read, and metadata blocks are kept in a small cache
 * bounded in bytes.
 */
import type { BlockReader } from "../../storage/block-reader.ts";
import { Ext4Error, malformed } from "./errors.ts";

/** Largest single read issued to the BlockReader; data runs are split into reads of at most this size. */
export const MAX_DISK_READ = 8 * 1024 * 1024;

export class Disk {
  readonly #cache = new Map<number, Buffer>();
  readonly #maxCached: number;

  constructor(
    readonly reader: BlockReader,
    readonly blockSize: number,
    /** Blocks in the file system; no block at or past it is read. */
    readonly blocksCount: number,
    cacheBytes: number,
  ) {
    this.#maxCached = Math.max(4, Math.floor(cacheBytes / blockSize));
  }

  /** Throws unless blocks [block, block+count) lie inside the file system; `what` names the structure. */
  check(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block <= 0 || count < 0 || block + count > this.blocksCount) {
      throw malformed(`Cannot read ${what}: block ${block} (+${count}) is outside the file system (${this.blocksCount} blocks)`);
    }
  }

  /** One metadata block, cached. The buffer is shared: callers must not modify it. */
  block(block: number, what: string): Buffer {
    const hit = this.#cache.get(block);
    if (hit) {
      this.#cache.delete(block);
      this.#cache.set(block, hit);
      return hit;
    }
    this.check(block, 1, what);
    const buf = this.#raw(BigInt(block) * BigInt(this.blockSize), this.blockSize, what);
    if (this.#cache.size >= this.#maxCached) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    this.#cache.set(block, buf);
    return buf;
  }

  /** `count` contiguous blocks, uncached (file data). */
  blocks(block: number, count: number, what: string): Buffer {
    this.check(block, count, what);
    return this.#raw(BigInt(block) * BigInt(this.blockSize), count * this.blockSize, what);
  }

  /** Bytes at an absolute offset (the superblock, which is not block-aligned at 1 KiB blocks... or is). */
  bytes(offset: bigint, length: number, what: string): Buffer {
    return this.#raw(offset, length, what);
  }

  #raw(offset: bigint, length: number, what: string): Buffer {
    if (offset < 0n || offset + BigInt(length) > this.reader.virtualSize) {
      throw malformed(`Cannot read ${what}: bytes ${offset}..${offset + BigInt(length)} are past the end of the disk (${this.reader.virtualSize} bytes)`);
    }
    const buf = this.reader.read(offset, length);
    if (buf.length !== length) throw new Ext4Error("malformed", `Cannot read ${what}: the disk returned ${buf.length} of ${length} bytes at offset ${offset}`);
    return buf;
  }
}
