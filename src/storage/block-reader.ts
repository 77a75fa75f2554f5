/**
 * The smallest interface a disk-image reader offers to whoever layers on top of it (a qcow2 overlay reading
 * through to its backing file, a scanner, an exporter), and its simplest implementation: a raw image file.
 * Reads are synchronous and bounded so that a layer above can promise bounded memory per call.
 */
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { BugError, VigilError, messageOf, q } from "../errors.ts";
import { readFully } from "../host/read-fully.ts";

/** A read-only virtual disk of `virtualSize` bytes. */
export interface BlockReader {
  /** Size of the virtual disk in bytes; reads must stay below it. */
  readonly virtualSize: bigint;
  /** Returns exactly `length` bytes of the virtual disk starting at `offset`, or throws a `VigilError`. */
  read(offset: bigint, length: number): Buffer;
}

/** Largest single read a `RawImage` serves; callers chunk larger transfers. */
export const MAX_RAW_READ_BYTES = 64 * 1024 * 1024;

export { readFully };

/** Opens `path` read-only, turning a missing file into `VIGIL_NOT_FOUND` and other failures into `VIGIL_HOST`. */
export function openReadOnly(path: string, what: string): { fd: number; size: bigint } {
  let fd: number;
  try {
    // O_NONBLOCK: a name that leads to a FIFO must not hang the open (reads of regular files ignore the flag);
    // O_NOCTTY: nor may a terminal become ours. Anything but a regular file is refused below.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new VigilError("VIGIL_NOT_FOUND", `Cannot open ${what} ${q(path)}: no such file`, { cause: err });
    throw new VigilError("VIGIL_HOST", `Cannot open ${what} ${q(path)}: ${messageOf(err)}`, { cause: err });
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot open ${what} ${q(path)}: not a regular file`);
    return { fd, size: st.size };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** A raw disk image: the file's bytes are the disk's bytes. */
export class RawImage implements BlockReader {
  readonly virtualSize: bigint;
  #fd: number | undefined;

  private constructor(
    readonly path: string,
    fd: number,
    size: bigint,
  ) {
    this.#fd = fd;
    this.virtualSize = size;
  }

  /** Takes over an opened descriptor of a raw image of `size` bytes; `close()` releases it. */
  static fromFd(path: string, fd: number, size: bigint): RawImage {
    return new RawImage(path, fd, size);
  }

  /** Opens a raw image read-only; `close()` releases the descriptor. */
  static open(path: string): RawImage {
    const { fd, size } = openReadOnly(path, "raw image");
    return new RawImage(path, fd, size);
  }

  read(offset: bigint, length: number): Buffer {
    if (this.#fd === undefined) throw new BugError(`raw image ${q(this.path)} used after close()`);
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_RAW_READ_BYTES) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${length} bytes of raw image ${q(this.path)}: at most ${MAX_RAW_READ_BYTES} bytes per read`);
    }
    if (offset < 0n || offset + BigInt(length) > this.virtualSize) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${length} bytes at offset ${offset} of raw image ${q(this.path)}: it has ${this.virtualSize} bytes`);
    }
    const buf = Buffer.alloc(length);
    // A file that shrank since open() reads as zeros past its new end, like QEMU's file driver does.
    readFully(this.#fd, buf, offset);
    return buf;
  }

  close(): void {
    if (this.#fd === undefined) return;
    closeSync(this.#fd);
    this.#fd = undefined;
  }
}
