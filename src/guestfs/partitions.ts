/**
 * Partition tables of a dormant disk (MBR with its extended/logical chain, and GPT), read over any `BlockReader`
 * (usually a qcow2 backing chain, src/storage/chain.ts), for offline scans (docs/transience.md, "Reading a dormant
 * disk"). The table is hostile input: every field is checked before use, the logical-partition chain and the GPT
 * entry array are bounded by `PartitionLimits`, and each partition is handed out as a bounds-checked slice of
 * the disk. A malformed table is refused with a `PartitionError` naming the structure and its byte offset.
 *
 * Decisions (checked against `sfdisk --json` in partitions.test.ts):
 * - 512-byte sectors (what QEMU presents a disk image with by default, and what sfdisk uses on an image file).
 * - A disk is GPT when its MBR has a protective entry (type 0xee), as the Linux kernel decides; the other MBR
 *   entries of a hybrid MBR are then ignored. A GPT disk whose primary header or entry array is invalid (bad
 *   signature, CRC, or a field out of range) is read from the backup header in the disk's last sector, as the
 *   kernel and libfdisk do, and the result says so (`usedBackup`); both invalid: refused.
 * - MBR: primaries are numbered 1-4 by slot, logicals from 5 in chain order (Linux numbering); the extended
 *   partition is listed (kind "extended", as sfdisk lists it) but is a container, not a file system.
 * - Refused rather than repaired: partitions past the end of the disk, partitions overlapping each other (a
 *   logical partition inside its extended container is not an overlap), partitions starting at sector 0, more
 *   than one extended partition, an EBR outside its extended partition or visited twice, more entries than the
 *   limits allow. The kernel truncates or skips some of these; a scanner that reads "what the guest would see"
 *   cannot know which repair the guest's kernel made, so it reports no partitions at all.
 */
import { crc32 } from "node:zlib";
import { VigilError } from "../errors.ts";
import type { BlockReader } from "../storage/block-reader.ts";

export const SECTOR = 512;
const SECTOR_N = 512n;

export class PartitionError extends VigilError {
  constructor(message: string) {
    super("VIGIL_BAD_REQUEST", message);
    this.name = "PartitionError";
  }
}

export interface PartitionLimits {
  /** Most logical partitions followed through an extended partition's EBR chain. */
  readonly maxLogical: number;
  /** Most GPT entries read (the spec's minimum array is 128; Linux reads up to what the header says). */
  readonly maxGptEntries: number;
}

export const DEFAULT_PARTITION_LIMITS: PartitionLimits = { maxLogical: 256, maxGptEntries: 4096 };

export interface Partition {
  /** Linux's number: sda<number>. */
  readonly number: number;
  readonly kind: "primary" | "extended" | "logical" | "gpt";
  /** Start and size in bytes. */
  readonly start: bigint;
  readonly size: bigint;
  /** MBR: the type byte as lowercase hex ("83"); GPT: the type GUID, lowercase. */
  readonly type: string;
  /** MBR: the boot flag. */
  readonly bootable?: boolean;
  /** GPT: the partition's unique GUID (lowercase), name and attribute bits. */
  readonly uuid?: string;
  readonly name?: string;
  readonly attributes?: bigint;
  /** The partition's bytes, bounds-checked. */
  readonly reader: BlockReader;
}

export interface PartitionTable {
  readonly scheme: "mbr" | "gpt" | "none";
  /** MBR: the disk signature as "0x%08x"; GPT: the disk GUID, lowercase. */
  readonly id?: string;
  /** GPT only: the primary header or entry array was invalid and the backup was used. */
  readonly usedBackup?: boolean;
  /** GPT only: the usable sector range. */
  readonly firstUsableLba?: bigint;
  readonly lastUsableLba?: bigint;
  readonly partitions: readonly Partition[];
}

/** Bytes `[start, start + size)` of another reader, as a disk of its own. */
export class SliceReader implements BlockReader {
  constructor(
    private readonly disk: BlockReader,
    readonly start: bigint,
    readonly virtualSize: bigint,
    private readonly label: string,
  ) {
    if (start < 0n || virtualSize < 0n || start + virtualSize > disk.virtualSize) {
      throw new PartitionError(`Cannot use ${label}: bytes ${start}..${start + virtualSize} are not inside the disk (${disk.virtualSize} bytes)`);
    }
  }

  read(offset: bigint, length: number): Buffer {
    if (!Number.isSafeInteger(length) || length < 0 || offset < 0n || offset + BigInt(length) > this.virtualSize) {
      throw new PartitionError(`Cannot read ${length} bytes at offset ${offset} of ${this.label}: it has ${this.virtualSize} bytes`);
    }
    return this.disk.read(this.start + offset, length);
  }
}

function guid(b: Buffer, at: number): string {
  const h = (from: number, to: number) => b.subarray(at + from, at + to).toString("hex");
  const le = (from: number, to: number) => Buffer.from(b.subarray(at + from, at + to)).reverse().toString("hex");
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${h(8, 10)}-${h(10, 16)}`;
}

const ZERO_GUID = "00000000-0000-0000-0000-000000000000";

interface Extent {
  readonly what: string;
  readonly first: bigint;
  /** Exclusive, in sectors. */
  readonly end: bigint;
  readonly role?: "container" | "logical";
}

/** Refuses overlaps; `inside` pairs (a logical in its container) are allowed. */
function checkOverlaps(extents: readonly Extent[], allowed: (a: Extent, b: Extent) => boolean): void {
  const sorted = [...extents].sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  // O(n log n) sort, then each extent is compared with the ones that start before it ends: bounded by the limits.
  for (let i = 0; i < sorted.length; i++) {
    const a = sorted[i]!;
    for (let j = i + 1; j < sorted.length && sorted[j]!.first < a.end; j++) {
      const b = sorted[j]!;
      if (!allowed(a, b)) {
        throw new PartitionError(`Invalid partition table: ${a.what} (sectors ${a.first}..${a.end - 1n}) overlaps ${b.what} (sectors ${b.first}..${b.end - 1n})`);
      }
    }
  }
}

/** Reads the partition table of `disk`: MBR, GPT, or none (no 0x55aa signature). */
export function readPartitions(disk: BlockReader, limits: Partial<PartitionLimits> = {}): PartitionTable {
  const lim = { ...DEFAULT_PARTITION_LIMITS, ...limits };
  const sectors = disk.virtualSize / SECTOR_N;
  if (sectors < 1n) return { scheme: "none", partitions: [] };
  const mbr = disk.read(0n, SECTOR);
  if (mbr.readUInt16LE(510) !== 0xaa55) return { scheme: "none", partitions: [] };
  const entries = [0, 1, 2, 3].map((i) => {
    const at = 446 + i * 16;
    return { slot: i + 1, at, status: mbr[at]!, type: mbr[at + 4]!, lba: BigInt(mbr.readUInt32LE(at + 8)), count: BigInt(mbr.readUInt32LE(at + 12)) };
  });
  if (entries.some((e) => e.type === 0xee)) return readGpt(disk, sectors, lim);

  const parts: Partition[] = [];
  const extents: Extent[] = [];
  const add = (number: number, kind: Partition["kind"], first: bigint, count: bigint, type: number, status: number, what: string) => {
    if (first === 0n) throw new PartitionError(`Invalid partition table: ${what} starts at sector 0, over the MBR`);
    if (first + count > sectors) {
      throw new PartitionError(`Invalid partition table: ${what} (sectors ${first}..${first + count - 1n}) runs past the end of the disk (${sectors} sectors)`);
    }
    const label = `partition ${number}`;
    extents.push({ what, first, end: first + count, ...(kind === "extended" ? { role: "container" as const } : kind === "logical" ? { role: "logical" as const } : {}) });
    parts.push({
      number,
      kind,
      start: first * SECTOR_N,
      size: count * SECTOR_N,
      type: type.toString(16),
      bootable: status === 0x80,
      reader: new SliceReader(disk, first * SECTOR_N, count * SECTOR_N, label),
    });
  };
  let extended: { first: bigint; count: bigint; what: string } | undefined;
  for (const e of entries) {
    if (e.type === 0 || e.count === 0n) continue;
    const what = `MBR entry ${e.slot} (at offset ${e.at})`;
    if (e.status !== 0 && e.status !== 0x80) throw new PartitionError(`Invalid partition table: ${what} has boot flag 0x${e.status.toString(16)} (0x00 or 0x80)`);
    const isExtended = e.type === 0x05 || e.type === 0x0f || e.type === 0x85;
    if (isExtended) {
      if (extended) throw new PartitionError(`Invalid partition table: ${what} is a second extended partition (the first is ${extended.what})`);
      extended = { first: e.lba, count: e.count, what };
    }
    add(e.slot, isExtended ? "extended" : "primary", e.lba, e.count, e.type, e.status, what);
  }
  if (extended) readLogical(disk, extended, lim, add);
  // The extended container holds the logicals (and their EBRs); nothing else may overlap anything.
  checkOverlaps(extents, (a, b) => (a.role === "container" && b.role === "logical") || (b.role === "container" && a.role === "logical"));
  parts.sort((a, b) => a.number - b.number);
  return { scheme: "mbr", id: `0x${mbr.readUInt32LE(440).toString(16).padStart(8, "0")}`, partitions: parts };
}

function readLogical(
  disk: BlockReader,
  ext: { first: bigint; count: bigint; what: string },
  lim: PartitionLimits,
  add: (number: number, kind: Partition["kind"], first: bigint, count: bigint, type: number, status: number, what: string) => void,
): void {
  const extEnd = ext.first + ext.count;
  const visited = new Set<bigint>();
  let ebr = ext.first;
  let number = 5;
  // Bounded by maxLogical, and no EBR is read twice.
  for (let n = 0; ; n++) {
    const what = `EBR at offset ${ebr * SECTOR_N}`;
    if (visited.has(ebr)) throw new PartitionError(`Invalid partition table: the ${what} is reached twice (the EBR chain loops)`);
    visited.add(ebr);
    if (ebr < ext.first || ebr >= extEnd) throw new PartitionError(`Invalid partition table: the ${what} lies outside the extended partition (${ext.what})`);
    if (n >= lim.maxLogical) throw new PartitionError(`Invalid partition table: the EBR chain holds more than ${lim.maxLogical} logical partitions`);
    const sec = disk.read(ebr * SECTOR_N, SECTOR);
    if (sec.readUInt16LE(510) !== 0xaa55) {
      // An empty extended partition has no valid first EBR; a broken link further down is an error.
      if (n === 0) return;
      throw new PartitionError(`Invalid partition table: the ${what} has no 0x55aa signature`);
    }
    const entry = (i: number) => {
      const at = 446 + i * 16;
      return { at, status: sec[at]!, type: sec[at + 4]!, lba: BigInt(sec.readUInt32LE(at + 8)), count: BigInt(sec.readUInt32LE(at + 12)) };
    };
    const data = entry(0);
    const link = entry(1);
    if (data.type !== 0 && data.count !== 0n) {
      const first = ebr + data.lba;
      const lwhat = `logical partition ${number} (${what})`;
      if (data.lba === 0n) throw new PartitionError(`Invalid partition table: ${lwhat} starts on its own EBR`);
      if (first + data.count > extEnd) {
        throw new PartitionError(`Invalid partition table: ${lwhat} (sectors ${first}..${first + data.count - 1n}) runs past its extended partition (ends at sector ${extEnd - 1n})`);
      }
      if (data.type === 0x05 || data.type === 0x0f || data.type === 0x85) throw new PartitionError(`Invalid partition table: ${lwhat} is itself extended`);
      add(number, "logical", first, data.count, data.type, data.status === 0x80 ? 0x80 : 0, lwhat);
      number++;
    }
    if (link.type === 0 || link.count === 0n) return;
    if (link.type !== 0x05 && link.type !== 0x0f && link.type !== 0x85) {
      throw new PartitionError(`Invalid partition table: the link entry of the ${what} has type 0x${link.type.toString(16)}, not an extended type`);
    }
    ebr = ext.first + link.lba;
  }
}

interface GptHeader {
  readonly diskGuid: string;
  readonly firstUsable: bigint;
  readonly lastUsable: bigint;
  readonly entriesLba: bigint;
  readonly count: number;
  readonly entrySize: number;
  readonly entries: Buffer;
}

/** One GPT header and its entry array at `lba`, or the reason it is invalid. */
function gptAt(disk: BlockReader, sectors: bigint, lba: bigint, primary: boolean, lim: PartitionLimits): GptHeader | string {
  const where = `${primary ? "primary" : "backup"} GPT header at offset ${lba * SECTOR_N}`;
  if (lba < 1n || lba >= sectors) return `the ${where} lies outside the disk`;
  const h = disk.read(lba * SECTOR_N, SECTOR);
  if (h.toString("latin1", 0, 8) !== "EFI PART") return `the ${where} has no "EFI PART" signature`;
  const size = h.readUInt32LE(12);
  if (size < 92 || size > SECTOR) return `the ${where} has header size ${size} (92..${SECTOR})`;
  const stored = h.readUInt32LE(16);
  const copy = Buffer.from(h.subarray(0, size));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) return `the ${where} fails its CRC32`;
  const myLba = h.readBigUInt64LE(24);
  if (myLba !== lba) return `the ${where} says it is at sector ${myLba}`;
  const firstUsable = h.readBigUInt64LE(40);
  const lastUsable = h.readBigUInt64LE(48);
  const entriesLba = h.readBigUInt64LE(72);
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  const entriesCrc = h.readUInt32LE(88);
  if (firstUsable > lastUsable || lastUsable >= sectors || firstUsable < 2n) {
    return `the ${where} has usable sectors ${firstUsable}..${lastUsable}, not inside the disk (${sectors} sectors)`;
  }
  if (entrySize < 128 || entrySize > 4096 || (entrySize & (entrySize - 1)) !== 0) return `the ${where} has entry size ${entrySize} (a power of two, 128..4096)`;
  if (count > lim.maxGptEntries) return `the ${where} lists ${count} entries, more than the limit of ${lim.maxGptEntries}`;
  const bytes = count * entrySize;
  const arraySectors = BigInt(Math.ceil(bytes / SECTOR));
  // The array sits between the header and the usable area (primary) or between the usable area and the header.
  const ok = primary ? entriesLba > lba && entriesLba + arraySectors <= firstUsable : entriesLba > lastUsable && entriesLba + arraySectors <= lba;
  if (!ok) return `the ${where} places its ${count} entries at sector ${entriesLba}, overlapping the header or the usable sectors`;
  const entries = disk.read(entriesLba * SECTOR_N, bytes);
  if (crc32(entries) !== entriesCrc) return `the entry array of the ${where} fails its CRC32`;
  return { diskGuid: guid(h, 56), firstUsable, lastUsable, entriesLba, count, entrySize, entries };
}

function readGpt(disk: BlockReader, sectors: bigint, lim: PartitionLimits): PartitionTable {
  const primary = gptAt(disk, sectors, 1n, true, lim);
  let header: GptHeader;
  let usedBackup = false;
  if (typeof primary === "string") {
    const backup = gptAt(disk, sectors, sectors - 1n, false, lim);
    if (typeof backup === "string") throw new PartitionError(`Invalid GPT: ${primary}, and ${backup}`);
    header = backup;
    usedBackup = true;
  } else {
    header = primary;
  }
  const parts: Partition[] = [];
  const extents: Extent[] = [];
  for (let i = 0; i < header.count; i++) {
    const at = i * header.entrySize;
    const type = guid(header.entries, at);
    if (type === ZERO_GUID) continue;
    const first = header.entries.readBigUInt64LE(at + 32);
    const last = header.entries.readBigUInt64LE(at + 40);
    const what = `GPT entry ${i + 1} (at offset ${header.entriesLba * SECTOR_N + BigInt(at)})`;
    if (first > last || first < header.firstUsable || last > header.lastUsable) {
      throw new PartitionError(`Invalid GPT: ${what} spans sectors ${first}..${last}, outside the usable sectors ${header.firstUsable}..${header.lastUsable}`);
    }
    const nameRaw = header.entries.subarray(at + 56, at + 128);
    let nameEnd = 0;
    while (nameEnd < nameRaw.length && nameRaw.readUInt16LE(nameEnd) !== 0) nameEnd += 2;
    extents.push({ what, first, end: last + 1n });
    parts.push({
      number: i + 1,
      kind: "gpt",
      start: first * SECTOR_N,
      size: (last - first + 1n) * SECTOR_N,
      type,
      uuid: guid(header.entries, at + 16),
      name: nameRaw.toString("utf16le", 0, nameEnd),
      attributes: header.entries.readBigUInt64LE(at + 48),
      reader: new SliceReader(disk, first * SECTOR_N, (last - first + 1n) * SECTOR_N, `partition ${i + 1}`),
    });
  }
  checkOverlaps(extents, () => false);
  return { scheme: "gpt", id: header.diskGuid, usedBackup, firstUsableLba: header.firstUsable, lastUsableLba: header.lastUsable, partitions: parts };
}
