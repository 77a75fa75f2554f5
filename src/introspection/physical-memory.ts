/**
 * Guest-physical memory as the introspection engine sees it: a read-only view of the VM's RAM, reached either
 * through QEMU's `memory-backend-file` RAM file (opened read-only: the engine must never be able to write guest
 * memory) or through a Buffer (tests, snapshots). Guest-physical addresses map to file offsets through a list of
 * RAM regions, which QMP `info mtree -f` reports for the system address space; `parseMtreeFlat` reads that text.
 *
 * A sweep of checks reads the same page tables and structures many times, so the file-backed memory keeps a
 * 4 KiB page cache that the caller clears between sweeps (guest memory changes between them).
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { IntrospectionError, hex } from "./errors.ts";

export const PAGE_SIZE = 4096;
const PAGE_SHIFT = 12n;

/** Reads larger than this are refused (undefined): no legitimate single structure is this big. */
export const MAX_READ_BYTES = 64 * 1024 * 1024;

/** A run of guest-physical addresses backed by RAM at a fixed offset in the backing store. */
export interface RamRegion {
  /** Memory-region name as QEMU reports it (the memory-backend id, e.g. "mem", or "pc.ram"). */
  readonly name: string;
  /** First guest-physical address. */
  readonly start: bigint;
  /** One past the last guest-physical address. */
  readonly end: bigint;
  /** Offset of `start` in the RAM file (or Buffer). */
  readonly fileOffset: bigint;
  /** Mapped read-only for the guest (BIOS shadow ranges show as "rom"); still readable here. */
  readonly readOnly: boolean;
}

/** Anything bytes can be read from by address: guest-physical memory, or a kernel virtual address space. */
export interface AddressSpace {
  /** `length` bytes at `addr`, or undefined when any of them cannot be read. Never modify the result. */
  read(addr: bigint, length: number): Buffer | undefined;
}

/** Read-only access to guest-physical memory. */
export interface PhysicalMemory extends AddressSpace {
  /**
   * Reads `length` bytes at guest-physical `paddr`. Undefined when any byte lies outside RAM, or the length is
   * not an integer in [0, MAX_READ_BYTES]. The returned Buffer may be shared with a cache: never modify it.
   */
  read(paddr: bigint, length: number): Buffer | undefined;
  /**
   * Copies `length` bytes at `paddr` into `dst` at `dstOffset`, bypassing the cache; false (dst partly written)
   * when any byte lies outside RAM. For bulk scans: reusing one buffer avoids faulting in fresh memory per read.
   */
  readInto(paddr: bigint, dst: Buffer, dstOffset: number, length: number): boolean;
  /** The RAM regions, sorted by address and non-overlapping. */
  readonly regions: readonly RamRegion[];
  /** Total bytes of RAM over all regions. */
  readonly size: bigint;
  /** Drops cached pages; call at the start of every sweep, since the guest keeps running between sweeps. */
  clearCache(): void;
  /** Releases the file descriptor, if any. Reads after close return undefined. */
  close(): void;
}

/** Cache counters, for benchmarks and for tuning the cache size. */
export interface CacheStats {
  hits: number;
  misses: number;
  cachedPages: number;
}

/** Checks a region list: sorted, non-overlapping, non-empty ranges, non-negative offsets. */
export function validateRegions(regions: readonly RamRegion[]): RamRegion[] {
  const sorted = [...regions].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let prevEnd = -1n;
  for (const r of sorted) {
    if (r.start < 0n || r.end <= r.start || r.fileOffset < 0n || r.end > 1n << 64n) {
      throw new IntrospectionError("host-input", `Cannot use RAM region ${JSON.stringify(r.name)} at ${hex(r.start)}-${hex(r.end)}: empty or out of range`);
    }
    if (r.start < prevEnd) {
      throw new IntrospectionError("host-input", `Cannot use RAM region ${JSON.stringify(r.name)} at ${hex(r.start)}: it overlaps the previous region`);
    }
    prevEnd = r.end;
  }
  return sorted;
}

/**
 * The RAM layout of QEMU's `pc` (i440fx) machine for `ramBytes` of RAM, for when `info mtree` is not available:
 * RAM below 4 GiB at file offset = address; if RAM is 3.5 GiB or more, only 3 GiB stay low and the rest sits at
 * 4 GiB, file offset 0xc0000000. (q35 splits at 2 GiB / 0x80000000 instead.) Prefer `parseMtreeFlat`.
 */
export function pcRamRegions(ramBytes: bigint, name = "mem"): RamRegion[] {
  const lowLimit = ramBytes >= 0xe000_0000n ? 0xc000_0000n : ramBytes;
  const regions: RamRegion[] = [{ name, start: 0n, end: lowLimit, fileOffset: 0n, readOnly: false }];
  if (ramBytes > lowLimit) {
    regions.push({ name, start: 0x1_0000_0000n, end: 0x1_0000_0000n + (ramBytes - lowLimit), fileOffset: lowLimit, readOnly: false });
  }
  return regions;
}

/** One range of a flattened QEMU memory view. */
export interface MtreeRange {
  start: bigint;
  /** Exclusive. */
  end: bigint;
  priority: number;
  /** "ram", "rom", "romd", "ramd", "i/o", possibly with QEMU's "nv-" prefix. */
  kind: string;
  /** Name of the memory region that finally backs the range (aliases are resolved in a flat view). */
  name: string;
  /** Offset of `start` inside that memory region; for a RAM backend, the offset in its file. */
  offsetInRegion: bigint;
}

const MAX_MTREE_CHARS = 16 * 1024 * 1024;
const MAX_MTREE_LINES = 200_000;
const MAX_MTREE_RANGES = 20_000;
const RANGE_LINE = /^\s+([0-9a-f]{1,16})-([0-9a-f]{1,16}) \(prio (-?\d{1,6}), ([a-z/-]{1,16})\): (\S{1,256})(?: @([0-9a-f]{1,16}))?(?: .*)?$/;

/**
 * Parses `info mtree -f` (HMP, via QMP `human-monitor-command`) and returns the ranges of the flat view that
 * serves address space `addressSpace` ("memory" is the system address space; "cpu-memory-0" is CPU 0's view).
 */
export function parseMtreeFlat(text: string, addressSpace = "memory"): MtreeRange[] {
  if (text.length > MAX_MTREE_CHARS) throw new IntrospectionError("host-input", `Cannot parse "info mtree -f": ${text.length} characters (at most ${MAX_MTREE_CHARS})`);
  const lines = text.split("\n", MAX_MTREE_LINES + 1);
  if (lines.length > MAX_MTREE_LINES) throw new IntrospectionError("host-input", `Cannot parse "info mtree -f": more than ${MAX_MTREE_LINES} lines`);
  let inView = false;
  let matched = false;
  const ranges: MtreeRange[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? "").replace(/\r$/, "");
    if (line.startsWith("FlatView #")) {
      if (matched) break; // the wanted view has ended
      inView = false;
      continue;
    }
    const as = /^ AS "([^"]{0,256})"/.exec(line);
    if (as) {
      if (as[1] === addressSpace) inView = matched = true;
      continue;
    }
    if (!inView) continue;
    const m = RANGE_LINE.exec(line);
    if (!m) continue;
    const start = BigInt("0x" + m[1]);
    const last = BigInt("0x" + m[2]);
    if (last < start) throw new IntrospectionError("host-input", `Cannot parse "info mtree -f" line ${i + 1}: range ends before it starts`);
    if (ranges.length >= MAX_MTREE_RANGES) throw new IntrospectionError("host-input", `Cannot parse "info mtree -f": more than ${MAX_MTREE_RANGES} ranges`);
    ranges.push({
      start,
      end: last + 1n,
      priority: Number(m[3]),
      kind: m[4] ?? "",
      name: m[5] ?? "",
      offsetInRegion: m[6] === undefined ? 0n : BigInt("0x" + m[6]),
    });
  }
  if (!matched) throw new IntrospectionError("host-input", `Cannot parse "info mtree -f": no flat view for address space ${JSON.stringify(addressSpace)}`);
  return ranges;
}

/**
 * The RAM regions of a flat view that live in the RAM backend called `backendName` ("mem" for
 * `-object memory-backend-file,id=mem`). Without a name, every region backing a "ram" range counts, plus the
 * read-only ("rom") windows onto the same regions (the BIOS shadow at 0xc0000-0xfffff).
 */
export function ramRegionsFromMtree(ranges: readonly MtreeRange[], backendName?: string): RamRegion[] {
  const names = new Set<string>();
  if (backendName !== undefined) names.add(backendName);
  else for (const r of ranges) if (r.kind === "ram" || r.kind === "nv-ram") names.add(r.name);
  const out: RamRegion[] = [];
  for (const r of ranges) {
    if (!names.has(r.name)) continue;
    const kind = r.kind.replace(/^nv-/, "");
    if (kind !== "ram" && kind !== "rom") continue;
    out.push({ name: r.name, start: r.start, end: r.end, fileOffset: r.offsetInRegion, readOnly: kind === "rom" });
  }
  return validateRegions(out);
}

/** Where region-mapped memory gets its bytes: a file descriptor or a Buffer. */
interface Backing {
  /** Fills dst[dstOffset, dstOffset+length) from backing offset `offset`; returns the bytes actually read. */
  readInto(dst: Buffer, dstOffset: number, length: number, offset: bigint): number;
  close(): void;
}

/** Region lookup, segmentation of reads that span regions, and the optional page cache. */
class RegionMemory implements PhysicalMemory {
  readonly regions: readonly RamRegion[];
  readonly size: bigint;
  private readonly starts: bigint[];
  private readonly cache = new Map<number, Buffer | null>();
  private hits = 0;
  private misses = 0;
  private closed = false;

  constructor(
    regions: readonly RamRegion[],
    private readonly backing: Backing,
    private readonly maxCachedPages: number,
  ) {
    this.regions = validateRegions(regions);
    this.starts = this.regions.map((r) => r.start);
    this.size = this.regions.reduce((n, r) => n + (r.end - r.start), 0n);
  }

  /** Index of the region holding `paddr`, or -1. */
  private regionIndex(paddr: bigint): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if ((this.starts[mid] as bigint) <= paddr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return -1;
    return paddr < (this.regions[found] as RamRegion).end ? found : -1;
  }

  read(paddr: bigint, length: number): Buffer | undefined {
    if (this.closed || !Number.isInteger(length) || length < 0 || length > MAX_READ_BYTES || paddr < 0n) return undefined;
    if (length === 0) return this.regionIndex(paddr) >= 0 ? Buffer.alloc(0) : undefined;
    const pageOff = Number(paddr & 0xfffn);
    if (this.maxCachedPages > 0 && pageOff + length <= PAGE_SIZE) {
      const page = this.page(paddr >> PAGE_SHIFT);
      if (page !== null) return page.subarray(pageOff, pageOff + length);
    }
    return this.readDirect(paddr, length);
  }

  /** A whole cached page, or null when the page is not entirely inside one region (then read directly). */
  private page(pfn: bigint): Buffer | null {
    const key = Number(pfn);
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      this.hits++;
      return cached;
    }
    this.misses++;
    const base = pfn << PAGE_SHIFT;
    let page: Buffer | null = null;
    const idx = this.regionIndex(base);
    const region = this.regions[idx];
    if (region && base + BigInt(PAGE_SIZE) <= region.end) {
      const buf = Buffer.allocUnsafe(PAGE_SIZE);
      if (this.backing.readInto(buf, 0, PAGE_SIZE, region.fileOffset + (base - region.start)) === PAGE_SIZE) page = buf;
    }
    if (this.cache.size >= this.maxCachedPages) this.cache.clear();
    this.cache.set(key, page);
    return page;
  }

  private readDirect(paddr: bigint, length: number): Buffer | undefined {
    const out = Buffer.allocUnsafe(length);
    return this.fill(paddr, out, 0, length) ? out : undefined;
  }

  readInto(paddr: bigint, dst: Buffer, dstOffset: number, length: number): boolean {
    if (this.closed || !Number.isInteger(length) || !Number.isInteger(dstOffset) || length < 0 || dstOffset < 0 || dstOffset + length > dst.length || paddr < 0n) return false;
    return this.fill(paddr, dst, dstOffset, length);
  }

  private fill(paddr: bigint, out: Buffer, outOffset: number, length: number): boolean {
    let done = 0;
    // Each step consumes the rest of one region, so the loop is bounded by the region count.
    for (let step = 0; done < length && step <= this.regions.length; step++) {
      const cur = paddr + BigInt(done);
      const region = this.regions[this.regionIndex(cur)];
      if (!region) return false;
      const avail = region.end - cur;
      const n = avail < BigInt(length - done) ? Number(avail) : length - done;
      if (this.backing.readInto(out, outOffset + done, n, region.fileOffset + (cur - region.start)) !== n) return false;
      done += n;
    }
    return done === length;
  }

  clearCache(): void {
    this.cache.clear();
  }

  stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, cachedPages: this.cache.size };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cache.clear();
    this.backing.close();
  }
}

export interface FileMemoryOptions {
  /** Upper bound of the page cache (pages); when reached the cache starts over. 0 disables it. Default 16384. */
  maxCachedPages?: number;
}

/** Guest RAM read from QEMU's RAM file. The file is opened read-only, whatever its mode. */
export class FilePhysicalMemory extends RegionMemory {
  /** Opens `path` read-only. `regions` map guest-physical ranges to file offsets (see `ramRegionsFromMtree`). */
  static open(path: string, regions: readonly RamRegion[], options: FileMemoryOptions = {}): FilePhysicalMemory {
    validateRegions(regions); // before opening, so a bad list cannot leak the descriptor
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (err) {
      throw new IntrospectionError("host-input", `Cannot open RAM file ${JSON.stringify(path)}: ${(err as Error).message}`, { cause: err });
    }
    return FilePhysicalMemory.fromFd(fd, regions, options, JSON.stringify(path));
  }

  /**
   * Takes ownership of `fd` (already open, read-only: e.g. QEMU's RAM memfd from host/guest-ram.ts) and closes
   * it on `close()` — or at once, if the regions do not fit.
   */
  static fromFd(fd: number, regions: readonly RamRegion[], options: FileMemoryOptions = {}, label = "guest RAM"): FilePhysicalMemory {
    let fileSize: bigint;
    try {
      validateRegions(regions);
      fileSize = BigInt(fstatSync(fd).size);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    for (const r of regions) {
      if (r.fileOffset + (r.end - r.start) > fileSize) {
        closeSync(fd);
        throw new IntrospectionError("host-input", `Cannot map RAM region ${JSON.stringify(r.name)} at ${hex(r.start)}: it ends past the end of ${label} (${fileSize} bytes)`);
      }
    }
    let open = true;
    const backing: Backing = {
      readInto(dst, dstOffset, length, offset) {
        if (!open) return 0;
        let done = 0;
        // readSync may return short counts; a zero return is end of file. At most `length` iterations.
        for (let guard = 0; done < length && guard < length; guard++) {
          const n = readSync(fd, dst, dstOffset + done, length - done, offset + BigInt(done));
          if (n <= 0) break;
          done += n;
        }
        return done;
      },
      close() {
        if (open) closeSync(fd);
        open = false;
      },
    };
    return new FilePhysicalMemory(regions, backing, options.maxCachedPages ?? 16384);
  }
}

/** Guest RAM held in a Buffer: tests, fixtures, saved snapshots. No cache (nothing to save). */
export class BufferPhysicalMemory extends RegionMemory {
  /** `regions` defaults to one region covering the Buffer at guest-physical 0. */
  constructor(buffer: Buffer, regions?: readonly RamRegion[]) {
    const regs = regions ?? [{ name: "mem", start: 0n, end: BigInt(buffer.length), fileOffset: 0n, readOnly: false }];
    const len = BigInt(buffer.length);
    for (const r of regs) {
      if (r.fileOffset + (r.end - r.start) > len) {
        throw new IntrospectionError("host-input", `Cannot map RAM region ${JSON.stringify(r.name)} at ${hex(r.start)}: it ends past the end of the buffer`);
      }
    }
    super(
      regs,
      {
        readInto(dst, dstOffset, length, offset) {
          const start = Number(offset);
          return buffer.copy(dst, dstOffset, start, Math.min(buffer.length, start + length));
        },
        close() {},
      },
      0,
    );
  }
}
