/**
 * A tiny, bounded ELF64 (little-endian) section reader: just enough to pull `.BTF` out of a vmlinux file (or any
 * named section out of an ELF image in memory). Files handed to it may come from a guest's disk, so every
 * header field is checked against the file size before it is used.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { IntrospectionError } from "./errors.ts";

export interface ElfSection {
  readonly name: string;
  readonly type: number;
  readonly flags: bigint;
  readonly addr: bigint;
  readonly offset: bigint;
  readonly size: bigint;
}

/** SHT_NOBITS: the section occupies no file bytes (.bss). */
export const SHT_NOBITS = 8;
const MAX_SECTIONS = 65_535;
const MAX_NAME = 256;
/** Largest section this reader returns; the 6.12 vmlinux `.BTF` is 4.5 MiB. */
export const MAX_SECTION_BYTES = 256 * 1024 * 1024;

/** Reads bytes of an ELF image by file offset; undefined past the end. */
export type ElfByteSource = (offset: bigint, length: number) => Buffer | undefined;

function bad(message: string): IntrospectionError {
  return new IntrospectionError("malformed", `Cannot read ELF: ${message}`);
}

/** Lists the sections of an ELF64 little-endian image of `fileSize` bytes. */
export function readElfSections(read: ElfByteSource, fileSize: bigint): ElfSection[] {
  const eh = read(0n, 64);
  if (!eh || eh.length < 64) throw bad("shorter than an ELF64 header");
  if (eh.readUInt32BE(0) !== 0x7f454c46) throw bad("no ELF magic");
  if (eh[4] !== 2) throw bad(`class ${eh[4]} is not ELFCLASS64`);
  if (eh[5] !== 1) throw bad(`data encoding ${eh[5]} is not little-endian`);
  const shoff = eh.readBigUInt64LE(0x28);
  const shentsize = eh.readUInt16LE(0x3a);
  let shnum = eh.readUInt16LE(0x3c);
  let shstrndx = eh.readUInt16LE(0x3e);
  if (shoff === 0n) return [];
  if (shentsize !== 64) throw bad(`section header size ${shentsize} (expected 64)`);
  // Extended numbering: section 0 carries the real count and string-table index.
  const first = shoff + 64n <= fileSize ? read(shoff, 64) : undefined;
  if (!first) throw bad(`section headers at ${shoff} lie past the end of the file (${fileSize} bytes)`);
  if (shnum === 0) {
    const n = first.readBigUInt64LE(0x20);
    if (n > BigInt(MAX_SECTIONS)) throw bad(`${n} sections (at most ${MAX_SECTIONS})`);
    shnum = Number(n);
  }
  if (shstrndx === 0xffff) shstrndx = first.readUInt32LE(0x28);
  if (shoff + BigInt(shnum) * 64n > fileSize) throw bad(`${shnum} section headers at ${shoff} run past the end of the file`);
  const table = read(shoff, shnum * 64);
  if (!table || table.length !== shnum * 64) throw bad("cannot read the section headers");
  if (shstrndx >= shnum) throw bad(`section-name table index ${shstrndx} out of range (${shnum} sections)`);
  const raw = Array.from({ length: shnum }, (_, i) => {
    const o = i * 64;
    return {
      nameOff: table.readUInt32LE(o),
      type: table.readUInt32LE(o + 4),
      flags: table.readBigUInt64LE(o + 8),
      addr: table.readBigUInt64LE(o + 16),
      offset: table.readBigUInt64LE(o + 24),
      size: table.readBigUInt64LE(o + 32),
    };
  });
  const strSec = raw[shstrndx];
  if (!strSec) throw bad("no section-name table");
  if (strSec.offset + strSec.size > fileSize || strSec.size > BigInt(MAX_SECTION_BYTES)) throw bad("the section-name table runs past the end of the file");
  const strtab = read(strSec.offset, Number(strSec.size));
  if (!strtab) throw bad("cannot read the section-name table");
  return raw.map((s, i) => {
    if (s.nameOff >= strtab.length) throw bad(`section ${i} name offset ${s.nameOff} is outside the section-name table`);
    const end = strtab.indexOf(0, s.nameOff);
    if (end < 0 || end - s.nameOff > MAX_NAME) throw bad(`section ${i} name is not NUL-terminated within ${MAX_NAME} bytes`);
    if (s.type !== SHT_NOBITS && s.offset + s.size > fileSize) throw bad(`section ${i} runs past the end of the file`);
    return { name: strtab.toString("latin1", s.nameOff, end), type: s.type, flags: s.flags, addr: s.addr, offset: s.offset, size: s.size };
  });
}

/** The contents of section `name` of an ELF image held in memory, or undefined if it has none. */
export function elfSectionFromBuffer(image: Buffer, name: string): Buffer | undefined {
  const read: ElfByteSource = (offset, length) => {
    if (offset < 0n || offset + BigInt(length) > BigInt(image.length)) return undefined;
    return image.subarray(Number(offset), Number(offset) + length);
  };
  const s = readElfSections(read, BigInt(image.length)).find((x) => x.name === name);
  if (!s || s.type === SHT_NOBITS) return undefined;
  if (s.size > BigInt(MAX_SECTION_BYTES)) throw bad(`section ${JSON.stringify(name)} is ${s.size} bytes (at most ${MAX_SECTION_BYTES})`);
  return read(s.offset, Number(s.size));
}

/** The contents of section `name` of the ELF file at `path` (read with a few positioned reads, not whole). */
export function readElfSectionFromFile(path: string, name: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    throw new IntrospectionError("host-input", `Cannot open ELF file ${JSON.stringify(path)}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = BigInt(fstatSync(fd).size);
    const read: ElfByteSource = (offset, length) => {
      if (offset < 0n || length < 0 || offset + BigInt(length) > size) return undefined;
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      for (let guard = 0; done < length && guard < length; guard++) {
        const n = readSync(fd, buf, done, length - done, offset + BigInt(done));
        if (n <= 0) break;
        done += n;
      }
      return done === length ? buf : undefined;
    };
    const s = readElfSections(read, size).find((x) => x.name === name);
    if (!s || s.type === SHT_NOBITS) return undefined;
    if (s.size > BigInt(MAX_SECTION_BYTES)) throw bad(`section ${JSON.stringify(name)} is ${s.size} bytes (at most ${MAX_SECTION_BYTES})`);
    const data = read(s.offset, Number(s.size));
    if (!data) throw bad(`cannot read section ${JSON.stringify(name)}`);
    return data;
  } finally {
    closeSync(fd);
  }
}
