/**
 * VMCOREINFO: the text page the kernel keeps for crash-dump tools (`OSRELEASE=...`, `SYMBOL(x)=...`,
 * `KERNELOFFSET=...`). It tells us the kernel release, its build id, the KASLR shift and where its key tables
 * are, without any symbol file. The page is ordinary guest memory, writable by a compromised kernel, and
 * anything can contain the string `OSRELEASE=`: the scan returns every candidate it finds, strictly parsed, and
 * the kernel model cross-checks them against what it decodes elsewhere.
 */
import { IntrospectionError, hex } from "./errors.ts";
import type { PhysicalMemory } from "./physical-memory.ts";

/** The kernel caps the text at one page (VMCOREINFO_BYTES); a little slack for odd page sizes is allowed. */
export const MAX_VMCOREINFO_BYTES = 8192;
const MAX_LINES = 1024;
const MAX_VALUE_CHARS = 256;
/** `KEY` or `KIND(name)` as the kernel writes them: `BUILD-ID`, `SYMBOL(init_top_pgt)`, `OFFSET(page.flags)`. */
const KEY_RE = /^[A-Z][A-Z0-9_-]{0,31}(?:\([A-Za-z0-9_.]{1,128}\))?$/;
const VALUE_RE = /^[\x20-\x7e]*$/;
const RELEASE_RE = /^[A-Za-z0-9._+~-]{1,64}$/;
const HEX_RE = /^(?:0x)?[0-9a-fA-F]{1,16}$/;
const DEC_RE = /^-?[0-9]{1,20}$/;
const MARKER = Buffer.from("OSRELEASE=", "latin1");
const U64 = 1n << 64n;

/** A parsed VMCOREINFO text. Addresses and numbers are BigInt; negative NUMBER()s are kept signed. */
export interface VmcoreInfo {
  readonly osRelease: string;
  /** Lower-case hex, as the kernel prints it; undefined on kernels that do not include it. */
  readonly buildId: string | undefined;
  readonly pageSize: number | undefined;
  /** KERNELOFFSET: the KASLR shift of the kernel image (virtual), i.e. runtime _text - link-time _text. */
  readonly kernelOffset: bigint | undefined;
  /** NUMBER(phys_base) reduced modulo 2^64: __pa_symbol(x) = x - 0xffffffff80000000 + phys_base (mod 2^64). */
  readonly physBase: bigint | undefined;
  readonly pgtableL5Enabled: boolean | undefined;
  /** SYMBOL(name) → address. */
  readonly symbols: ReadonlyMap<string, bigint>;
  /** NUMBER(name) → value (signed). */
  readonly numbers: ReadonlyMap<string, bigint>;
  /** OFFSET(struct.member) → byte offset. */
  readonly offsets: ReadonlyMap<string, bigint>;
  /** SIZE(type) → bytes. */
  readonly sizes: ReadonlyMap<string, bigint>;
  /** LENGTH(name) → element count. */
  readonly lengths: ReadonlyMap<string, bigint>;
  /** Every KEY=VALUE line, verbatim. */
  readonly raw: ReadonlyMap<string, string>;
}

function parseHex(value: string, key: string, offset: number): bigint {
  if (!HEX_RE.test(value)) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO ${key} at byte offset ${offset}: ${JSON.stringify(value)} is not a 64-bit hex number`);
  return BigInt(value.startsWith("0x") ? value : "0x" + value);
}

/** NUMBER() values are printed with %ld (decimal, maybe negative) or %#lx (0x-hex). */
function parseNumber(value: string, key: string, offset: number): bigint {
  if (value.startsWith("0x")) return parseHex(value, key, offset);
  if (!DEC_RE.test(value)) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO ${key} at byte offset ${offset}: ${JSON.stringify(value)} is not a number`);
  const n = BigInt(value);
  if (n < -(1n << 63n) || n >= U64) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO ${key} at byte offset ${offset}: ${value} does not fit 64 bits`);
  return n;
}

/**
 * Parses VMCOREINFO text. Strict: every line must be `KEY=VALUE` with the kernel's key syntax and printable
 * values, keys may repeat only with the same value, and the first key must be OSRELEASE with a plausible release
 * string. Errors give the byte offset of the offending line.
 */
export function parseVmcoreinfo(text: string): VmcoreInfo {
  if (text.length > MAX_VMCOREINFO_BYTES) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO: ${text.length} bytes (at most ${MAX_VMCOREINFO_BYTES})`);
  const raw = new Map<string, string>();
  const symbols = new Map<string, bigint>();
  const numbers = new Map<string, bigint>();
  const offsets = new Map<string, bigint>();
  const sizes = new Map<string, bigint>();
  const lengths = new Map<string, bigint>();
  let pos = 0;
  let lineNo = 0;
  while (pos < text.length) {
    if (++lineNo > MAX_LINES) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO: more than ${MAX_LINES} lines`);
    let nl = text.indexOf("\n", pos);
    if (nl < 0) nl = text.length;
    const line = text.slice(pos, nl);
    const lineOffset = pos;
    pos = nl + 1;
    if (line.length === 0) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO line ${lineNo} at byte offset ${lineOffset}: no KEY=VALUE`);
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (!KEY_RE.test(key)) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO line ${lineNo} at byte offset ${lineOffset}: key ${JSON.stringify(key.slice(0, 64))} is not KEY or KIND(name)`);
    if (value.length > MAX_VALUE_CHARS || !VALUE_RE.test(value)) {
      throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO ${key} at byte offset ${lineOffset}: the value is not printable text of at most ${MAX_VALUE_CHARS} characters`);
    }
    if (lineNo === 1 && key !== "OSRELEASE") throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO: it starts with ${JSON.stringify(key)}, not OSRELEASE`);
    const prev = raw.get(key);
    if (prev !== undefined) {
      if (prev !== value) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO ${key} at byte offset ${lineOffset}: given twice with different values`);
      continue;
    }
    raw.set(key, value);
    const paren = key.indexOf("(");
    if (paren > 0) {
      const kind = key.slice(0, paren);
      const name = key.slice(paren + 1, -1);
      if (kind === "SYMBOL") symbols.set(name, parseHex(value, key, lineOffset));
      else if (kind === "NUMBER") numbers.set(name, parseNumber(value, key, lineOffset));
      else if (kind === "OFFSET") offsets.set(name, parseNumber(value, key, lineOffset));
      else if (kind === "SIZE") sizes.set(name, parseNumber(value, key, lineOffset));
      else if (kind === "LENGTH") lengths.set(name, parseNumber(value, key, lineOffset));
    }
  }
  const osRelease = raw.get("OSRELEASE");
  if (osRelease === undefined || !RELEASE_RE.test(osRelease)) {
    throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO: OSRELEASE ${JSON.stringify(osRelease ?? "")} is not a kernel release`);
  }
  const buildId = raw.get("BUILD-ID");
  if (buildId !== undefined && !/^[0-9a-f]{2,128}$/.test(buildId)) {
    throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO BUILD-ID: ${JSON.stringify(buildId.slice(0, 64))} is not lower-case hex`);
  }
  const pageSizeText = raw.get("PAGESIZE");
  let pageSize: number | undefined;
  if (pageSizeText !== undefined) {
    if (!/^[0-9]{1,8}$/.test(pageSizeText)) throw new IntrospectionError("malformed", `Cannot parse VMCOREINFO PAGESIZE: ${JSON.stringify(pageSizeText)}`);
    pageSize = Number(pageSizeText);
  }
  const ko = raw.get("KERNELOFFSET");
  const physBase = numbers.get("phys_base");
  const l5 = numbers.get("pgtable_l5_enabled");
  return {
    osRelease,
    buildId,
    pageSize,
    kernelOffset: ko === undefined ? undefined : parseHex(ko, "KERNELOFFSET", 0),
    physBase: physBase === undefined ? undefined : ((physBase % U64) + U64) % U64,
    pgtableL5Enabled: l5 === undefined ? undefined : l5 !== 0n,
    symbols,
    numbers,
    offsets,
    sizes,
    lengths,
    raw,
  };
}

/** Where a candidate came from: the ELF note copy (`VMCOREINFO` note header right before) or a bare page. */
export type VmcoreinfoSite = "note" | "page";

/** One occurrence of `OSRELEASE=` that could be VMCOREINFO. */
export interface VmcoreinfoCandidate {
  readonly paddr: bigint;
  readonly site: VmcoreinfoSite;
  readonly text: string;
  /** The parse, or why it failed. */
  readonly result: { ok: true; info: VmcoreInfo } | { ok: false; error: IntrospectionError };
}

export interface VmcoreinfoScan {
  /** Every candidate found, in address order, at most `maxCandidates`. */
  readonly candidates: readonly VmcoreinfoCandidate[];
  /** Candidates that parsed. */
  readonly valid: readonly VmcoreinfoCandidate[];
  /** True when the scan stopped at `maxCandidates` (a guest can plant many decoys; more than a few is suspicious). */
  readonly truncated: boolean;
  readonly bytesScanned: bigint;
}

export interface ScanOptions {
  /** Stop after this many matches (valid or not). Default 64. */
  maxCandidates?: number;
  /** Bytes per read. Default 1 MiB. */
  chunkBytes?: number;
  /**
   * "page-aligned" (default) only looks where Linux ≥ 4.15 puts VMCOREINFO: at the start of a page (the data
   * page, from get_zeroed_page) and 24 bytes into one (the ELF note, from alloc_pages_exact). "anywhere" finds
   * every match; it costs about twice as much.
   */
  mode?: "page-aligned" | "anywhere";
}

/** The text at a match: up to the first NUL, bounded by the note's descsz when there is a note header. */
function extractText(mem: PhysicalMemory, paddr: bigint, regionEnd: bigint): { text: string; site: VmcoreinfoSite } | { error: IntrospectionError } {
  let site: VmcoreinfoSite = "page";
  let limit = MAX_VMCOREINFO_BYTES;
  // Elf64_Nhdr { namesz = 11, descsz, type = 0 } "VMCOREINFO\0" padded to 12, then the text.
  if (paddr >= 24n) {
    const hdr = mem.read(paddr - 24n, 24);
    if (hdr && hdr.readUInt32LE(0) === 11 && hdr.toString("latin1", 12, 23) === "VMCOREINFO\0") {
      site = "note";
      const descsz = hdr.readUInt32LE(4);
      if (descsz > 0 && descsz <= MAX_VMCOREINFO_BYTES) limit = descsz;
    }
  }
  const avail = regionEnd - paddr;
  const n = avail < BigInt(limit) ? Number(avail) : limit;
  const buf = mem.read(paddr, n);
  if (!buf) return { error: new IntrospectionError("unreadable", `Cannot read VMCOREINFO candidate at ${hex(paddr)}`) };
  const nul = buf.indexOf(0);
  if (nul < 0 && site === "page") {
    return { error: new IntrospectionError("malformed", `Cannot parse VMCOREINFO at ${hex(paddr)}: no terminating NUL within ${limit} bytes`) };
  }
  return { text: buf.toString("latin1", 0, nul < 0 ? buf.length : nul), site };
}

/**
 * Scans all of guest RAM for VMCOREINFO. Matches must start a line (preceded by NUL or at the start of RAM),
 * which keeps out format strings and most page-cache text; each is then parsed strictly. Cost is one sequential
 * read of RAM (≈ 40 ms for 256 MiB from the host page cache on the build machines).
 */
export function scanVmcoreinfo(mem: PhysicalMemory, options: ScanOptions = {}): VmcoreinfoScan {
  const maxCandidates = options.maxCandidates ?? 64;
  const aligned = (options.mode ?? "page-aligned") === "page-aligned";
  // Whole pages per chunk, so page-aligned offsets inside a chunk are page-aligned in RAM.
  const chunk = Math.max(1, Math.min(Math.floor((options.chunkBytes ?? 1024 * 1024) / 4096), 16384)) * 4096;
  const candidates: VmcoreinfoCandidate[] = [];
  let bytesScanned = 0n;
  let truncated = false;
  const consider = (paddr: bigint, prevByte: number, regionEnd: bigint): boolean => {
    if (prevByte !== 0) return true;
    if (candidates.length >= maxCandidates) {
      truncated = true;
      return false;
    }
    candidates.push(candidateAt(mem, paddr, regionEnd));
    return true;
  };
  const whole = Buffer.allocUnsafe(chunk + MARKER.length);
  outer: for (const region of mem.regions) {
    // Overlap consecutive chunks by the marker length so a match across a chunk boundary is still seen.
    for (let start = region.start; start < region.end; start += BigInt(chunk)) {
      const len = region.end - start < BigInt(chunk + MARKER.length) ? Number(region.end - start) : chunk + MARKER.length;
      if (!mem.readInto(start, whole, 0, len)) continue;
      const buf = len === whole.length ? whole : whole.subarray(0, len);
      bytesScanned += BigInt(Math.min(len, chunk));
      if (aligned) {
        if ((start & 0xfffn) !== 0n) continue; // regions are page-granular in practice; skip odd ones
        for (let p = 0; p < chunk && p + 34 <= buf.length; p += 4096) {
          if (buf[p] === 0x4f && buf.compare(MARKER, 0, MARKER.length, p, p + MARKER.length) === 0) {
            // The data page starts with the text: a page start always begins a line.
            if (!consider(start + BigInt(p), 0, region.end)) break outer;
          }
          if (buf[p + 24] === 0x4f && buf.compare(MARKER, 0, MARKER.length, p + 24, p + 24 + MARKER.length) === 0) {
            if (!consider(start + BigInt(p + 24), buf[p + 23] ?? 0, region.end)) break outer;
          }
        }
        continue;
      }
      let i = buf.indexOf(MARKER);
      // Each iteration advances i, so this is bounded by the chunk size; the candidate cap bounds the work.
      while (i >= 0 && i < chunk) {
        const paddr = start + BigInt(i);
        const prevByte = i > 0 ? (buf[i - 1] ?? 0) : paddr === region.start ? 0 : (mem.read(paddr - 1n, 1)?.[0] ?? 0);
        if (!consider(paddr, prevByte, region.end)) break outer;
        i = buf.indexOf(MARKER, i + 1);
      }
    }
  }
  return { candidates, valid: candidates.filter((c) => c.result.ok), truncated, bytesScanned };
}

/** Reads and parses the candidate at `paddr` (also used to re-check a known location without a scan). */
export function candidateAt(mem: PhysicalMemory, paddr: bigint, regionEnd?: bigint): VmcoreinfoCandidate {
  let end = regionEnd;
  if (end === undefined) {
    const region = mem.regions.find((r) => r.start <= paddr && paddr < r.end);
    if (!region) {
      return { paddr, site: "page", text: "", result: { ok: false, error: new IntrospectionError("unreadable", `Cannot read VMCOREINFO at ${hex(paddr)}: outside RAM`) } };
    }
    end = region.end;
  }
  const ex = extractText(mem, paddr, end);
  if ("error" in ex) return { paddr, site: "page", text: "", result: { ok: false, error: ex.error } };
  let result: VmcoreinfoCandidate["result"];
  try {
    result = { ok: true, info: parseVmcoreinfo(ex.text) };
  } catch (err) {
    if (!(err instanceof IntrospectionError)) throw err;
    result = { ok: false, error: err };
  }
  return { paddr, site: ex.site, text: ex.text, result };
}

/** Parses a kernel release ("6.12.117+deb12-cloud-amd64") into [major, minor, patch]; undefined if it is not one. */
export function kernelVersion(release: string): [number, number, number] | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})(?:\.(\d{1,5}))?/.exec(release);
  if (!m) return undefined;
  return [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
}
