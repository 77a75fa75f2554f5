/**
 * Overwrite-then-unlink for files that held a VM's data. One pass of zeros over the file's length, fsync, then
 * unlink (NIST SP 800-88 "clear" for files on magnetic media). On SSDs and copy-on-write filesystems the old
 * blocks may survive remapping: the data registry records what was done so nobody over-trusts it.
 */
import { closeSync, fsyncSync, fstatSync, openSync, unlinkSync, writeSync } from "node:fs";

const CHUNK = 1024 * 1024;

export function overwriteAndUnlink(path: string): { bytes: number } {
  const fd = openSync(path, "r+");
  let bytes = 0;
  try {
    const size = fstatSync(fd).size;
    const zeros = Buffer.alloc(Math.min(CHUNK, Math.max(size, 1)));
    while (bytes < size) {
      const n = Math.min(zeros.length, size - bytes);
      writeSync(fd, zeros, 0, n, bytes);
      bytes += n;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  unlinkSync(path);
  return { bytes };
}
