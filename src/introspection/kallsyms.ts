/**
 * Decodes the kernel's own compressed symbol table (kallsyms) from guest memory, so the engine knows where every
 * kernel function and variable is without trusting anything the guest says at run time and without a symbol
 * file. The table's addresses come from VMCOREINFO (`kallsymsLayoutFromVmcoreinfo`) or from an independent carve
 * of physical memory (`carveKallsyms`, which finds the token table by its "0\0".."9\0" run).
 *
 * Format (Linux 6.2+, scripts/kallsyms.c): kallsyms_names is a stream of entries, each a length (one byte, or two
 * when the first has bit 7 set — 6.1+) and that many token indexes; kallsyms_token_table holds 256 NUL-terminated
 * tokens located by the u16 kallsyms_token_index; the expansion's first character is the symbol type.
 * kallsyms_offsets are s32 relative to kallsyms_relative_base (with x86-64's absolute per-CPU mode: non-negative
 * values are absolute, negative ones mean base - 1 - value). kallsyms_markers (u32 since 4.20) give the names
 * offset of every 256th entry; kallsyms_seqs_of_names (6.2+, 3 bytes each) list the entries in name order.
 * Older formats (before 4.6: absolute addresses; before 4.20: u64 markers; before 6.1: one-byte lengths; before
 * 6.2: no seqs_of_names) are refused rather than guessed.
 */
import { IntrospectionError, hex } from "./errors.ts";
import type { AddressSpace, PhysicalMemory } from "./physical-memory.ts";
import { kernelVersion, type VmcoreInfo } from "./vmcoreinfo.ts";

/** Addresses of the kallsyms tables in some address space (kernel virtual, or guest-physical for a carve). */
export interface KallsymsLayout {
  readonly numSyms: bigint;
  readonly names: bigint;
  readonly tokenTable: bigint;
  readonly tokenIndex: bigint;
  readonly offsets: bigint;
  readonly relativeBase: bigint;
  /** Found by position when not given: right after the names. */
  readonly markers?: bigint;
  /** Found by position when not given (after relative_base on 6.4+, after the markers on 6.2/6.3). */
  readonly seqsOfNames?: bigint;
}

export interface KallsymsLimits {
  /** Largest symbol count accepted (the 6.12 cloud kernel has ~155k; allyesconfig builds a few hundred k). Default 1M. */
  maxSymbols?: number;
  /** Largest kallsyms_names stream accepted, in bytes. */
  maxNamesBytes?: number;
}

const DEFAULT_MAX_SYMBOLS = 1_000_000;
const DEFAULT_MAX_NAMES_BYTES = 64 * 1024 * 1024;
/** All names expanded (the 6.12 cloud kernel: 4.6 MB); bounds memory however the tokens are chosen. */
const MAX_EXPANDED_BYTES = 256 * 1024 * 1024;
/** KSYM_NAME_LEN is 512 since 6.1; one more for the type character. */
const MAX_EXPANDED_NAME = 513;
const MAX_TOKEN_TABLE_BYTES = 64 * 1024;
const MAX_TOKEN_LEN = 512;
const U64 = (1n << 64n) - 1n;

const align8 = (a: bigint): bigint => (a + 7n) & ~7n;

/** Refuses kernels whose kallsyms format this decoder does not implement. */
export function checkKallsymsVersion(release: string): [number, number, number] {
  const v = kernelVersion(release);
  if (!v) throw new IntrospectionError("unsupported", `Cannot decode kallsyms: ${JSON.stringify(release)} is not a kernel release`);
  const [major, minor] = v;
  if (major < 6 || (major === 6 && minor < 2)) {
    throw new IntrospectionError(
      "unsupported",
      `Cannot decode kallsyms of Linux ${release}: only 6.2 and later are supported (the table format changed in 4.6, 4.20, 6.1 and 6.2)`,
    );
  }
  return v;
}

/** The layout VMCOREINFO announces (Linux 6.0+ exports the kallsyms table addresses for crash tools). */
export function kallsymsLayoutFromVmcoreinfo(info: VmcoreInfo): KallsymsLayout {
  const need = (name: string): bigint => {
    const v = info.symbols.get(name);
    if (v === undefined) {
      const why = name === "kallsyms_relative_base" && info.symbols.has("kallsyms_addresses") ? " (it uses absolute kallsyms_addresses, which this decoder does not read)" : "";
      throw new IntrospectionError(info.symbols.has("kallsyms_addresses") ? "unsupported" : "not-found", `Cannot locate kallsyms from VMCOREINFO: it has no SYMBOL(${name})${why}`);
    }
    return v;
  };
  return {
    numSyms: need("kallsyms_num_syms"),
    names: need("kallsyms_names"),
    tokenTable: need("kallsyms_token_table"),
    tokenIndex: need("kallsyms_token_index"),
    offsets: need("kallsyms_offsets"),
    relativeBase: need("kallsyms_relative_base"),
  };
}

/** One kernel symbol. */
export interface KernelSymbol {
  readonly name: string;
  /** The kallsyms type letter: T/t text, D/d data, R/r rodata, B/b bss, A/a absolute, W/w weak, ... */
  readonly type: string;
  readonly address: bigint;
  /** Position in kallsyms order. */
  readonly index: number;
}

/** The expanded names of all symbols, back to back, each starting with its type letter. */
export interface NameBlob {
  readonly bytes: Buffer;
  /** ends[i] is one past the last byte of symbol i; symbol i starts at ends[i - 1] (0 for the first). */
  readonly ends: Uint32Array;
}

const TWO32 = 2 ** 32;

/**
 * The decoded symbol table: name → address by binary search over the symbols in name order, and address →
 * nearest symbol by binary search in address order. Names stay as bytes until asked for, which keeps decoding a
 * 150k-symbol table in the tens of milliseconds. Immutable; `rebase` gives the same table for another KASLR
 * placement of the same build.
 */
export class SymbolTable {
  readonly count: number;
  /** Indexes in address order; undefined when kallsyms order already is address order (the normal case). */
  private readonly order: Uint32Array | undefined;

  /**
   * @param blob expanded names in kallsyms order
   * @param byName symbol indexes in name order (bytewise, as the kernel sorts); must be a sorted permutation
   * @param rawOffsets kallsyms_offsets as stored (s32)
   * @param relativeBase kallsyms_relative_base
   * @param absolutePercpu the offsets use the absolute per-CPU encoding
   */
  constructor(
    private readonly blob: NameBlob,
    private readonly byName: Uint32Array,
    readonly rawOffsets: Int32Array,
    readonly relativeBase: bigint,
    readonly absolutePercpu: boolean,
    order?: Uint32Array | null,
  ) {
    this.count = rawOffsets.length;
    if (blob.ends.length !== this.count || byName.length !== this.count) throw new IntrospectionError("malformed", "Cannot build a symbol table: names, offsets and name order differ in length");
    if (absolutePercpu && relativeBase < BigInt(TWO32)) {
      throw new IntrospectionError("malformed", `Cannot build a symbol table: kallsyms_relative_base ${hex(relativeBase)} is below 4 GiB with absolute per-CPU symbols`);
    }
    if (order !== undefined) this.order = order ?? undefined;
    else {
      let sorted = true;
      for (let i = 1; i < this.count && sorted; i++) if (this.key(i) < this.key(i - 1)) sorted = false;
      if (sorted) this.order = undefined;
      else {
        const idx = Array.from({ length: this.count }, (_, i) => i);
        idx.sort((x, y) => this.key(x) - this.key(y) || x - y);
        this.order = Uint32Array.from(idx);
      }
    }
  }

  /**
   * A number that orders symbols like their addresses without BigInt: absolute per-CPU values (< 2^31) sort
   * before everything relative to the base (which is ≥ 4 GiB in that mode), so they get value - 2^32.
   */
  private key(i: number): number {
    const off = this.rawOffsets[i] as number;
    if (!this.absolutePercpu) return off >>> 0;
    return off >= 0 ? off - TWO32 : -1 - off;
  }

  /** The key an address would have, clamped so that binary search finds the symbol at or below it. */
  private keyOf(address: bigint): number {
    if (address >= this.relativeBase) {
      const d = address - this.relativeBase;
      return d >= BigInt(TWO32) ? Infinity : Number(d);
    }
    // Below the base only absolute per-CPU symbols (keys in [-2^32, -2^31)) can be at or below the address.
    if (!this.absolutePercpu) return -1;
    return address < BigInt(TWO32) ? Number(address) - TWO32 : -0.5;
  }

  /** False when the guest's table was not in address order (kallsyms always is; this means tampering). */
  get inAddressOrder(): boolean {
    return this.order === undefined;
  }

  private start(i: number): number {
    return i === 0 ? 0 : (this.blob.ends[i - 1] as number);
  }

  /** The address of symbol `i` (kallsyms_sym_address() of Linux 6.2-6.14). */
  addressAt(i: number): bigint {
    return offsetToAddress(this.rawOffsets[i] as number, this.relativeBase, this.absolutePercpu);
  }

  /** The symbol at kallsyms position `index`. */
  symbol(index: number): KernelSymbol | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) return undefined;
    const s = this.start(index);
    return {
      name: this.blob.bytes.toString("latin1", s + 1, this.blob.ends[index] as number),
      type: String.fromCharCode(this.blob.bytes[s] as number),
      address: this.addressAt(index),
      index,
    };
  }

  /** Compares symbol i's name (without its type letter) with `name` bytewise. */
  private compareName(i: number, name: Buffer): number {
    const bytes = this.blob.bytes;
    const s = this.start(i) + 1;
    const e = this.blob.ends[i] as number;
    return bytes.compare(name, 0, name.length, s, e);
  }

  /** Position in name order of the first symbol whose name is ≥ `name`. */
  private lowerBound(name: Buffer): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.compareName(this.byName[mid] as number, name) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Address of the first symbol (in kallsyms order) called `name`. */
  address(name: string): bigint | undefined {
    let first = -1;
    for (const i of this.indexesOf(name)) if (first < 0 || i < first) first = i;
    return first < 0 ? undefined : this.addressAt(first);
  }

  private indexesOf(name: string): number[] {
    if (name.length === 0 || name.length > MAX_EXPANDED_NAME) return [];
    const key = Buffer.from(name, "latin1");
    const out: number[] = [];
    // Duplicates are adjacent in name order; local statics like "__func__.1" repeat a few hundred times at most.
    for (let k = this.lowerBound(key); k < this.count && out.length < this.count; k++) {
      const i = this.byName[k] as number;
      if (this.compareName(i, key) !== 0) break;
      out.push(i);
    }
    return out;
  }

  /** Every symbol called `name` (local statics share names), in kallsyms order. */
  lookupAll(name: string): KernelSymbol[] {
    return this.indexesOf(name)
      .sort((a, b) => a - b)
      .map((i) => this.symbol(i) as KernelSymbol);
  }

  /** The symbol at or below `address` (the first of several at the same address), and the distance to it. */
  nearest(address: bigint): { symbol: KernelSymbol; offset: bigint } | undefined {
    const target = this.keyOf(address);
    const idx = (k: number): number => (this.order ? (this.order[k] as number) : k);
    let lo = 0;
    let hi = this.count - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.key(idx(mid)) <= target) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return undefined;
    const k0 = this.key(idx(found));
    // Bounded by the number of aliases at one address.
    while (found > 0 && this.key(idx(found - 1)) === k0) found--;
    const symbol = this.symbol(idx(found)) as KernelSymbol;
    return { symbol, offset: address - symbol.address };
  }

  /** All symbols in kallsyms order. */
  *entries(): IterableIterator<KernelSymbol> {
    for (let i = 0; i < this.count; i++) yield this.symbol(i) as KernelSymbol;
  }

  /** The same build placed at another address: same names and offsets, another kallsyms_relative_base. */
  rebase(relativeBase: bigint): SymbolTable {
    return new SymbolTable(this.blob, this.byName, this.rawOffsets, relativeBase, this.absolutePercpu, this.order ?? null);
  }
}

/** kallsyms_sym_address() of Linux 6.2-6.14. */
function offsetToAddress(off: number, base: bigint, absolutePercpu: boolean): bigint {
  if (!absolutePercpu) return (base + BigInt(off >>> 0)) & U64;
  if (off >= 0) return BigInt(off);
  return (base - 1n - BigInt(off)) & U64;
}

/** Bytewise comparison of two names in a blob (type letters skipped), like the kernel's strcmp. */
function compareBlob(bytes: Uint8Array, ends: Uint32Array, a: number, b: number): number {
  let i = (a === 0 ? 0 : (ends[a - 1] as number)) + 1;
  let j = (b === 0 ? 0 : (ends[b - 1] as number)) + 1;
  const ie = ends[a] as number;
  const je = ends[b] as number;
  for (; i < ie && j < je; i++, j++) {
    const d = (bytes[i] as number) - (bytes[j] as number);
    if (d !== 0) return d;
  }
  return ie - i - (je - j);
}

/** Consistency checks of the tables the decoder does not need but the kernel uses (tampering shows here). */
export interface KallsymsChecks {
  /** kallsyms_markers agree with the names stream. */
  markers: "ok" | "mismatch" | "unreadable";
  /** kallsyms_seqs_of_names is a permutation listing names in sorted order. */
  seqsOfNames: "ok" | "not-a-permutation" | "not-sorted" | "unreadable";
  /** The addresses are non-decreasing in kallsyms order. */
  addressesSorted: boolean;
  /** Tokens of the token table that no name uses (0 for a kernel-built table). */
  unusedTokens: number;
}

export interface DecodedKallsyms {
  readonly table: SymbolTable;
  readonly checks: KallsymsChecks;
  /** The layout with markers and seqs_of_names filled in. */
  readonly layout: Required<KallsymsLayout>;
  /** Bytes of kallsyms_names consumed. */
  readonly namesBytes: number;
}

function must(buf: Buffer | undefined, what: string, addr: bigint, len: number): Buffer {
  if (!buf || buf.length !== len) throw new IntrospectionError("unreadable", `Cannot read ${what} (${len} bytes at ${hex(addr)})`);
  return buf;
}

/** The 256 tokens, validated: every index inside the table, every token printable and NUL-terminated. */
function readTokens(space: AddressSpace, layout: KallsymsLayout): { bytes: Uint8Array; start: Uint32Array; len: Uint32Array } {
  const gap = layout.tokenIndex - layout.tokenTable;
  if (gap <= 0n || gap > BigInt(MAX_TOKEN_TABLE_BYTES)) {
    throw new IntrospectionError("malformed", `Cannot decode kallsyms: token_index (${hex(layout.tokenIndex)}) does not follow token_table (${hex(layout.tokenTable)}) within ${MAX_TOKEN_TABLE_BYTES} bytes`);
  }
  const tableLen = Number(gap);
  const table = must(space.read(layout.tokenTable, tableLen), "kallsyms_token_table", layout.tokenTable, tableLen);
  const index = must(space.read(layout.tokenIndex, 512), "kallsyms_token_index", layout.tokenIndex, 512);
  const start = new Uint32Array(256);
  const len = new Uint32Array(256);
  for (let t = 0; t < 256; t++) {
    const off = index.readUInt16LE(t * 2);
    if (off >= tableLen) throw new IntrospectionError("malformed", `Cannot decode kallsyms: token ${t} starts at ${off}, past the token table (${tableLen} bytes)`);
    let end = off;
    // Bounded by the table length and MAX_TOKEN_LEN.
    while (end < tableLen && table[end] !== 0 && end - off <= MAX_TOKEN_LEN) {
      const c = table[end] as number;
      if (c < 0x21 || c > 0x7e) throw new IntrospectionError("malformed", `Cannot decode kallsyms: token ${t} contains byte ${hex(c)} at token-table offset ${end}`);
      end++;
    }
    if (end >= tableLen || table[end] !== 0) throw new IntrospectionError("malformed", `Cannot decode kallsyms: token ${t} at token-table offset ${off} is not NUL-terminated within ${MAX_TOKEN_LEN} bytes`);
    if (end === off) throw new IntrospectionError("malformed", `Cannot decode kallsyms: token ${t} is empty`);
    start[t] = off;
    len[t] = end - off;
  }
  return { bytes: table, start, len };
}

/**
 * Decodes the table at `layout` in `space` (a kernel virtual address space, or physical memory for a carve).
 * `release` gates the format. Throws IntrospectionError for anything that is not a well-formed table.
 */
export function decodeKallsyms(space: AddressSpace, layout: KallsymsLayout, release: string, limits: KallsymsLimits = {}): DecodedKallsyms {
  const [major, minor] = checkKallsymsVersion(release);
  const maxSymbols = limits.maxSymbols ?? DEFAULT_MAX_SYMBOLS;
  const maxNamesBytes = limits.maxNamesBytes ?? DEFAULT_MAX_NAMES_BYTES;

  const n = must(space.read(layout.numSyms, 4), "kallsyms_num_syms", layout.numSyms, 4).readUInt32LE(0);
  if (n === 0 || n > maxSymbols) throw new IntrospectionError("malformed", `Cannot decode kallsyms: kallsyms_num_syms is ${n} (1 to ${maxSymbols} accepted)`);
  const tokens = readTokens(space, layout);

  // The names stream ends before the next table after it; every known kernel layout has the token table after it.
  const bound = layout.tokenTable > layout.names ? layout.tokenTable - layout.names : BigInt(maxNamesBytes);
  const namesLen = bound > BigInt(maxNamesBytes) ? maxNamesBytes : Number(bound);
  const names = must(space.read(layout.names, namesLen), "kallsyms_names", layout.names, namesLen);

  // Tokens packed back to back, so the copy loop reads one small array.
  const tb = new Uint8Array(256 * (MAX_TOKEN_LEN + 1));
  const ts = new Uint32Array(256);
  const tl = new Uint32Array(256);
  for (let t = 0, q = 0; t < 256; t++) {
    ts[t] = q;
    tl[t] = tokens.len[t] as number;
    tb.set(tokens.bytes.subarray(tokens.start[t] as number, (tokens.start[t] as number) + (tokens.len[t] as number)), q);
    q += tokens.len[t] as number;
  }
  // Pass 1: entry boundaries and expanded lengths, validated, so pass 2 can copy without checks.
  const nameEnd = new Uint32Array(n);
  const namePos = new Uint32Array(n + 1);
  const tokenUsed = new Uint8Array(256);
  let w = 0;
  let pos = 0;
  for (let i = 0; i < n; i++) {
    namePos[i] = pos;
    if (pos >= namesLen) throw new IntrospectionError("malformed", `Cannot decode kallsyms: the names stream ends at symbol ${i} of ${n} (byte offset ${pos})`);
    let len = names[pos++] as number;
    if (len & 0x80) {
      if (pos >= namesLen) throw new IntrospectionError("malformed", `Cannot decode kallsyms: symbol ${i} has a truncated length at byte offset ${pos - 1}`);
      len = (len & 0x7f) | ((names[pos++] as number) << 7);
    }
    if (len === 0 || pos + len > namesLen) throw new IntrospectionError("malformed", `Cannot decode kallsyms: symbol ${i} has length ${len} at byte offset ${pos - 1} (names stream is ${namesLen} bytes)`);
    const type = tb[ts[names[pos] as number] as number] as number;
    if (!((type >= 0x41 && type <= 0x5a) || (type >= 0x61 && type <= 0x7a))) {
      throw new IntrospectionError("malformed", `Cannot decode kallsyms: symbol ${i} has type character ${hex(type)}, not a letter`);
    }
    let expanded = 0;
    const stop = pos + len;
    for (; pos < stop; pos++) {
      const t = names[pos] as number;
      tokenUsed[t] = 1;
      expanded += tl[t] as number;
    }
    if (expanded > MAX_EXPANDED_NAME) throw new IntrospectionError("malformed", `Cannot decode kallsyms: symbol ${i} expands to ${expanded} characters (at most ${MAX_EXPANDED_NAME})`);
    if (expanded < 2) throw new IntrospectionError("malformed", `Cannot decode kallsyms: symbol ${i} has an empty name`);
    w += expanded;
    if (w > MAX_EXPANDED_BYTES) throw new IntrospectionError("malformed", `Cannot decode kallsyms: the names expand to more than ${MAX_EXPANDED_BYTES} bytes by symbol ${i}`);
    nameEnd[i] = w;
  }
  namePos[n] = pos;
  // Pass 2: expand. Sizes are known and bounded (n * MAX_EXPANDED_NAME at most).
  const out = Buffer.allocUnsafe(w);
  w = 0;
  for (let p = namePos[0] as number, i = 0; i < n; i++) {
    let len = names[p++] as number;
    if (len & 0x80) len = (len & 0x7f) | ((names[p++] as number) << 7);
    const stop = p + len;
    while (p < stop) {
      const t = names[p++] as number;
      let k = ts[t] as number;
      const l = tl[t] as number;
      if (l === 1) out[w++] = tb[k] as number;
      else for (const e = k + l; k < e; ) out[w++] = tb[k++] as number;
    }
  }

  const blob: NameBlob = { bytes: out, ends: nameEnd };

  const offBytes = n * 4;
  const offBuf = must(space.read(layout.offsets, offBytes), "kallsyms_offsets", layout.offsets, offBytes);
  const rawOffsets = new Int32Array(n);
  let absolutePercpu = false;
  for (let i = 0; i < n; i++) {
    const v = offBuf.readInt32LE(i * 4);
    rawOffsets[i] = v;
    if (v < 0) absolutePercpu = true;
  }
  const relativeBase = must(space.read(layout.relativeBase, 8), "kallsyms_relative_base", layout.relativeBase, 8).readBigUInt64LE(0);

  // Markers follow the names; seqs_of_names follow relative_base (6.4+ order) or the markers (6.2, 6.3).
  const markerCount = Math.ceil(n / 256);
  const markers = layout.markers ?? align8(layout.names + BigInt(pos));
  const seqsOfNames = layout.seqsOfNames ?? (major > 6 || minor >= 4 ? align8(layout.relativeBase + 8n) : align8(markers + BigInt(markerCount * 4)));
  let markerCheck: KallsymsChecks["markers"] = "ok";
  const mBuf = space.read(markers, markerCount * 4);
  if (!mBuf || mBuf.length !== markerCount * 4) markerCheck = "unreadable";
  else {
    for (let k = 0; k < markerCount; k++) {
      if (mBuf.readUInt32LE(k * 4) !== namePos[k * 256]) {
        markerCheck = "mismatch";
        break;
      }
    }
  }
  // The guest's name order is used for lookups only once proven to be a sorted permutation; otherwise sort here.
  let seqCheck: KallsymsChecks["seqsOfNames"] = "ok";
  let byName: Uint32Array | undefined = new Uint32Array(n);
  const sBuf = space.read(seqsOfNames, n * 3);
  if (!sBuf || sBuf.length !== n * 3) seqCheck = "unreadable";
  else {
    const seen = new Uint8Array(n);
    for (let k = 0; k < n; k++) {
      const seq = ((sBuf[k * 3] as number) << 16) | ((sBuf[k * 3 + 1] as number) << 8) | (sBuf[k * 3 + 2] as number);
      if (seq >= n || seen[seq]) {
        seqCheck = "not-a-permutation";
        break;
      }
      seen[seq] = 1;
      byName[k] = seq;
      if (k > 0 && compareBlob(blob.bytes, blob.ends, byName[k - 1] as number, seq) > 0) {
        seqCheck = "not-sorted";
        break;
      }
    }
  }
  if (seqCheck !== "ok") {
    const idx = Array.from({ length: n }, (_, i) => i);
    idx.sort((a, b) => compareBlob(blob.bytes, blob.ends, a, b) || a - b);
    byName = Uint32Array.from(idx);
  }
  const table = new SymbolTable(blob, byName, rawOffsets, relativeBase, absolutePercpu);

  let unusedTokens = 0;
  for (let t = 0; t < 256; t++) if (!tokenUsed[t]) unusedTokens++;
  return {
    table,
    checks: { markers: markerCheck, seqsOfNames: seqCheck, addressesSorted: table.inAddressOrder, unusedTokens },
    layout: { ...layout, markers, seqsOfNames },
    namesBytes: pos,
  };
}

const DIGIT_RUN = Buffer.from("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00", "latin1");

export interface CarveOptions {
  /**
   * Give up after examining this many digit runs (a real 256 MiB guest has about 10). Default 256: each costs up to
   * ~1 MiB of reads, and a guest that plants more decoys than this only makes the carve fail, visibly.
   */
  maxCandidates?: number;
  limits?: KallsymsLimits;
}

/** A kallsyms table found in physical memory without VMCOREINFO. Addresses in `layout` are guest-physical. */
export interface CarvedKallsyms {
  readonly layout: KallsymsLayout;
  /** Digit runs examined (all of them, including rejected ones). */
  readonly candidatesExamined: number;
}

/**
 * Walks back from the "0" token (token 0x30) over 48 NUL-terminated tokens to the start of the table, and forward
 * over the 198 after "9"; the table is real if kallsyms_token_index (next 8-byte boundary) lists exactly those
 * starts. Returns the table start and index address, or undefined.
 */
function tokenTableAt(mem: PhysicalMemory, digitRun: bigint): { tokenTable: bigint; tokenIndex: bigint; tableLen: number } | undefined {
  const back = 48 * (MAX_TOKEN_LEN + 1);
  const winStart = digitRun > BigInt(back) ? digitRun - BigInt(back) : 0n;
  const fwd = 198 * (MAX_TOKEN_LEN + 1) + 20 + 8 + 512;
  const win = mem.read(winStart, Number(digitRun - winStart) + fwd) ?? mem.read(winStart, Number(digitRun - winStart) + 20 + 198 * 16 + 8 + 512);
  if (!win) return undefined;
  const d = Number(digitRun - winStart);
  const starts: number[] = new Array<number>(256);
  // Backwards: token k ends at (start of token k+1) - 1, which must be a NUL.
  let p = d;
  for (let t = 47; t >= 0; t--) {
    if (p < 2 || win[p - 1] !== 0) return undefined;
    let s = p - 1;
    for (let guard = 0; s > 0 && win[s - 1] !== 0 && guard < MAX_TOKEN_LEN; guard++) s--;
    if (s === p - 1) return undefined; // empty token
    starts[t] = s;
    p = s;
  }
  const tableStart = p;
  for (let t = 48; t < 58; t++) starts[t] = d + (t - 48) * 2;
  let q = d + 20;
  for (let t = 58; t < 256; t++) {
    starts[t] = q;
    const nul = win.indexOf(0, q);
    if (nul < 0 || nul === q || nul - q > MAX_TOKEN_LEN) return undefined;
    q = nul + 1;
  }
  const tableLen = q - tableStart;
  const idxOff = Number(align8(BigInt(winStart) + BigInt(q)) - winStart);
  if (idxOff + 512 > win.length) return undefined;
  for (let t = 0; t < 256; t++) if (win.readUInt16LE(idxOff + t * 2) !== (starts[t] as number) - tableStart) return undefined;
  return { tokenTable: winStart + BigInt(tableStart), tokenIndex: winStart + BigInt(idxOff), tableLen };
}

/**
 * Finds kallsyms in physical memory on its own (6.4+ table order: num_syms, names, markers, token_table,
 * token_index, offsets, relative_base, seqs_of_names): the token table by its digit run, the markers by walking
 * back from it (u32, strictly increasing from 0), the names start by the num_syms in front of it and a length
 * walk of the last 256 entries that must end at the markers. Independent of VMCOREINFO, so it can check it.
 */
export function carveKallsyms(mem: PhysicalMemory, options: CarveOptions = {}): CarvedKallsyms {
  const maxCandidates = options.maxCandidates ?? 256;
  const maxSymbols = options.limits?.maxSymbols ?? DEFAULT_MAX_SYMBOLS;
  let examined = 0;
  const chunk = 4 * 1024 * 1024;
  const buf = Buffer.allocUnsafe(chunk + DIGIT_RUN.length);
  for (const region of mem.regions) {
    for (let start = region.start; start < region.end; start += BigInt(chunk)) {
      const len = region.end - start < BigInt(buf.length) ? Number(region.end - start) : buf.length;
      if (!mem.readInto(start, buf, 0, len)) continue;
      const view = buf.subarray(0, len);
      for (let i = view.indexOf(DIGIT_RUN); i >= 0 && i < chunk; i = view.indexOf(DIGIT_RUN, i + 1)) {
        if (++examined > maxCandidates) {
          throw new IntrospectionError("not-found", `Cannot carve kallsyms: more than ${maxCandidates} token-table candidates, none valid`);
        }
        const tt = tokenTableAt(mem, start + BigInt(i));
        if (!tt) continue;
        const layout = layoutAroundTokenTable(mem, tt.tokenTable, tt.tokenIndex, maxSymbols);
        if (layout) return { layout, candidatesExamined: examined };
      }
    }
  }
  throw new IntrospectionError("not-found", `Cannot carve kallsyms: no valid token table in ${examined} candidates`);
}

/** The rest of a 6.4+-ordered table around a validated token table, or undefined. */
function layoutAroundTokenTable(mem: PhysicalMemory, tokenTable: bigint, tokenIndex: bigint, maxSymbols: number): KallsymsLayout | undefined {
  const maxMarkers = Math.ceil(maxSymbols / 256);
  // Markers end at the token table, maybe followed by 4 bytes of zero padding.
  const span = Math.min(maxMarkers * 4 + 8, Number(tokenTable));
  const back = mem.read(tokenTable - BigInt(span), span);
  if (!back) return undefined;
  let e = span;
  if (back.readUInt32LE(e - 4) === 0) e -= 4;
  // Walk back over strictly decreasing non-zero values to the 0 of markers[0].
  let k = e - 4;
  let prevVal = Number.MAX_SAFE_INTEGER;
  for (; k >= 0; k -= 4) {
    const v = back.readUInt32LE(k);
    if (v === 0) break;
    if (v >= prevVal) return undefined;
    prevVal = v;
  }
  if (k < 0 || (tokenTable - BigInt(span - k)) % 8n !== 0n) return undefined;
  const markersAddr = tokenTable - BigInt(span - k);
  const m = (e - k) / 4;
  const lastMarker = m > 1 ? back.readUInt32LE(e - 4) : 0;
  // Names start S: the last block (≤ 256 entries) lies between S + lastMarker and the markers. Two bounded windows:
  // one over the candidate starts (num_syms sits 8 bytes before S), one over the possible last blocks.
  const maxLastBlock = 512 * 1024;
  if (BigInt(lastMarker) + 24n > markersAddr) return undefined;
  const hi = markersAddr - BigInt(lastMarker) - 2n;
  const lo = hi - BigInt(maxLastBlock) - 16n > 8n ? hi - BigInt(maxLastBlock) - 16n : 8n;
  const heads = mem.read(lo - 8n, Number(hi - lo) + 16);
  const tailStart = lo + BigInt(lastMarker);
  const tails = mem.read(tailStart, Number(markersAddr - tailStart));
  if (!heads || !tails) return undefined;
  // Candidate S must be 8-aligned with num_syms (u32, then 4 bytes of padding) right before it.
  for (let sAddr = hi & ~7n; sAddr >= lo; sAddr -= 8n) {
    const o = Number(sAddr - (lo - 8n));
    const nSyms = heads.readUInt32LE(o - 8);
    if (nSyms === 0 || nSyms > maxSymbols || Math.ceil(nSyms / 256) !== m || heads.readUInt32LE(o - 4) !== 0) continue;
    // Walk the lengths of the last block: it must end at the markers (after ≤ 7 bytes of padding).
    let p = Number(sAddr + BigInt(lastMarker) - tailStart);
    let ok = true;
    for (let i = 256 * (m - 1); i < nSyms; i++) {
      if (p >= tails.length) {
        ok = false;
        break;
      }
      let l = tails[p++] as number;
      if (l & 0x80) l = (l & 0x7f) | ((tails[p++] ?? 0) << 7);
      if (l === 0) {
        ok = false;
        break;
      }
      p += l;
    }
    const namesEnd = tailStart + BigInt(p);
    if (!ok || namesEnd > markersAddr || align8(namesEnd) !== markersAddr) continue;
    const offsets = align8(tokenIndex + 512n);
    const relativeBase = align8(offsets + BigInt(nSyms * 4));
    return { numSyms: sAddr - 8n, names: sAddr, markers: markersAddr, tokenTable, tokenIndex, offsets, relativeBase, seqsOfNames: align8(relativeBase + 8n) };
  }
  return undefined;
}
