import { readSync } from "node:fs";

/**
 * Reads exactly `buf.length` bytes at `position` from `fd`, or returns how many bytes it managed before EOF. The
 * one positioned-read loop: the qcow2 reader (storage/block-reader.ts) and the console-log tail both use it.
 */
export function readFully(fd: number, buf: Buffer, position: bigint): number {
  let done = 0;
  // Each iteration either makes progress or stops: a regular file returns 0 only at EOF.
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + BigInt(done));
    if (n <= 0) break;
    done += n;
  }
  return done;
}
