/**
 * The slice of POSIX tar (ustar) a vigil bundle needs: regular files with short names, written and read as a
 * stream. The reader is for hostile archives: it parses one 512-byte header at a time, verifies the header
 * checksum, accepts only regular files, never trusts a size beyond what the caller allows, and hands back data
 * in bounded chunks. Sizes over 8 GiB use the GNU base-256 encoding (both directions).
 */
import { VigilError } from "../../errors.ts";

export const BLOCK = 512;

export interface TarHeader {
  name: string;
  size: bigint;
  /** The byte offset of this header in the archive (for error messages). */
  offset: number;
}

function bad(offset: number, what: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${what} (tar header at byte ${offset})`);
}

function writeOctal(buf: Buffer, value: bigint, at: number, width: number): void {
  const digits = value.toString(8);
  if (digits.length <= width - 1) {
    buf.write(digits.padStart(width - 1, "0") + "\0", at, "ascii");
    return;
  }
  // GNU base-256: high bit of the first byte set, big-endian value in the rest.
  let v = value;
  for (let i = width - 1; i >= 1; i--) {
    buf[at + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  buf[at] = 0x80;
}

function readNumber(buf: Buffer, at: number, width: number, offset: number, field: string): bigint {
  const first = buf[at]!;
  if (first & 0x80) {
    if (first !== 0x80) throw bad(offset, `negative or oversized ${field}`);
    let v = 0n;
    for (let i = 1; i < width; i++) v = (v << 8n) | BigInt(buf[at + i]!);
    return v;
  }
  const text = buf.toString("ascii", at, at + width).replace(/[\0 ]+$/, "").replace(/^ +/, "");
  if (text === "") return 0n;
  if (!/^[0-7]+$/.test(text)) throw bad(offset, `${field} is not an octal number`);
  return BigInt("0o" + text);
}

/** A ustar header block for a regular file. */
export function fileHeader(name: string, size: bigint, mtimeSec = 0): Buffer {
  if (!/^[A-Za-z0-9._/-]{1,99}$/.test(name)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot write tar entry ${JSON.stringify(name)}: names are 1-99 safe characters`);
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, "ascii");
  writeOctal(h, 0o600n, 100, 8);
  writeOctal(h, 0n, 108, 8);
  writeOctal(h, 0n, 116, 8);
  writeOctal(h, size, 124, 12);
  writeOctal(h, BigInt(mtimeSec), 136, 12);
  h.fill(0x20, 148, 156); // checksum field counts as spaces while summing
  h.write("0", 156, "ascii");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, "ascii");
  return h;
}

/** Zero padding after `size` bytes of data. */
export function padding(size: bigint): Buffer {
  const rem = Number(size % BigInt(BLOCK));
  return Buffer.alloc(rem === 0 ? 0 : BLOCK - rem);
}

/** The end-of-archive marker: two zero blocks. */
export const END = Buffer.alloc(2 * BLOCK);

/**
 * Parses one header block. Returns undefined for a zero block (end of archive). Only regular files ('0' or
 * NUL typeflag) with a plain name are accepted; links, devices, directories and extended headers are refused.
 */
export function parseHeader(block: Buffer, offset: number): TarHeader | undefined {
  if (block.length !== BLOCK) throw bad(offset, "short header block (truncated archive)");
  if (block.every((b) => b === 0)) return undefined;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  const stored = readNumber(block, 148, 8, offset, "checksum");
  if (BigInt(sum) !== stored) throw bad(offset, "header checksum mismatch");
  const type = block[156]!;
  if (type !== 0x30 && type !== 0) throw bad(offset, `entry type ${JSON.stringify(String.fromCharCode(type))} is not a regular file`);
  const nameEnd = block.indexOf(0, 0);
  const name = block.toString("latin1", 0, nameEnd === -1 || nameEnd > 100 ? 100 : nameEnd);
  if (block[345] !== 0 && block.toString("latin1", 257, 262) === "ustar") throw bad(offset, "prefixed (long) names are not used in bundles");
  const size = readNumber(block, 124, 12, offset, "size");
  return { name, size, offset };
}
