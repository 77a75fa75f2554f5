/**
 * Test support: builds synthetic guest memory the way a Linux 6.4+ x86-64 kernel lays it out — page tables,
 * VMCOREINFO (data page and ELF note), kallsyms tables in kernel order, BTF, ELF files — so the parsers can be
 * tested, fuzzed and cross-checked without booting a VM. Used only by the *.test.ts files; nothing here reads
 * guest data.
 */
import { BufferPhysicalMemory } from "../physical-memory.ts";

const U64 = (1n << 64n) - 1n;
export const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
export const LINK_TEXT = 0xffff_ffff_8100_0000n;

/** The VMCOREINFO lines (key, value) that locate kallsyms, as a 6.4+ kernel writes them. */
export function kallsymsVmcoreinfo(sym: (name: string) => bigint): Array<[string, string]> {
  return ["kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table", "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base"].map((n) => [`SYMBOL(${n})`, sym(n).toString(16)]);
}

// ---------------------------------------------------------------------------------------------------------------
// Page tables

export interface PteFlags {
  writable?: boolean;
  user?: boolean;
  nx?: boolean;
}

/** Writes x86-64 page tables into a Buffer, allocating table pages from a bump allocator. */
export class PageTableBuilder {
  readonly root: bigint;
  private next: bigint;

  constructor(
    readonly ram: Buffer,
    readonly levels: 4 | 5,
    /** Physical range [start, end) to allocate table pages from. */
    private readonly pool: { start: bigint; end: bigint },
  ) {
    this.next = pool.start;
    this.root = this.alloc();
  }

  alloc(): bigint {
    const p = this.next;
    if (p + 4096n > this.pool.end) throw new Error("page-table pool exhausted");
    this.next += 4096n;
    this.ram.fill(0, Number(p), Number(p) + 4096);
    return p;
  }

  private entry(table: bigint, index: bigint): number {
    return Number(table + index * 8n);
  }

  /** Maps `va` to `pa` with a page of `size` bytes (4 KiB, 2 MiB or 1 GiB). Intermediate entries are RW, US, X. */
  map(va: bigint, pa: bigint, size: 4096 | 0x200000 | 0x40000000, flags: PteFlags = {}, intermediate: PteFlags = { writable: true, user: true }): void {
    const leafLevel = size === 4096 ? 1 : size === 0x200000 ? 2 : 3;
    let table = this.root;
    for (let level = this.levels; level > leafLevel; level--) {
      const idx = (va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn;
      const off = this.entry(table, idx);
      let e = this.ram.readBigUInt64LE(off);
      if ((e & 1n) === 0n) {
        const t = this.alloc();
        e = t | 1n | (intermediate.writable ? 2n : 0n) | (intermediate.user ? 4n : 0n) | (intermediate.nx ? 1n << 63n : 0n);
        this.ram.writeBigUInt64LE(e, off);
      }
      table = e & 0x000f_ffff_ffff_f000n;
    }
    const idx = (va >> BigInt(12 + 9 * (leafLevel - 1))) & 0x1ffn;
    const leaf = pa | 1n | (flags.writable ? 2n : 0n) | (flags.user ? 4n : 0n) | (flags.nx ? 1n << 63n : 0n) | (leafLevel > 1 ? 0x80n : 0n);
    this.ram.writeBigUInt64LE(leaf, this.entry(table, idx));
  }

  /** Writes a raw entry into the table that maps `va` at `level` (must already exist down to that level). */
  setRaw(va: bigint, level: number, value: bigint): void {
    let table = this.root;
    for (let l = this.levels; l > level; l--) {
      const idx = (va >> BigInt(12 + 9 * (l - 1))) & 0x1ffn;
      table = this.ram.readBigUInt64LE(this.entry(table, idx)) & 0x000f_ffff_ffff_f000n;
    }
    const idx = (va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn;
    this.ram.writeBigUInt64LE(value, this.entry(table, idx));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// kallsyms

export interface SymbolSpec {
  name: string;
  type: string;
  /** Absolute address (per-CPU symbols: a small value; everything else: a kernel virtual address). */
  address: bigint;
  /** Per-CPU symbol stored as an absolute value. */
  absolute?: boolean;
}

/** The token table: identity tokens for printable bytes, frequent bigrams in the other 162 slots. */
export function buildTokens(names: readonly string[]): string[] {
  const tokens: string[] = new Array<string>(256);
  for (let c = 0x21; c <= 0x7e; c++) tokens[c] = String.fromCharCode(c);
  const free: number[] = [];
  for (let c = 0; c < 256; c++) if (tokens[c] === undefined) free.push(c);
  const counts = new Map<string, number>();
  for (const n of names) for (let i = 0; i + 1 < n.length; i++) counts.set(n.slice(i, i + 2), (counts.get(n.slice(i, i + 2)) ?? 0) + 1);
  const best = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([k]) => k);
  let filler = 0;
  for (const slot of free) {
    const t = best.shift();
    if (t !== undefined) tokens[slot] = t;
    else {
      // Unique, printable, never produced by the greedy encoder (longer than any bigram match it tries).
      tokens[slot] = `~~${(filler++).toString(36)}~`;
    }
  }
  return tokens;
}

/** Greedy encoding of one expanded name (type letter + name) with bigram tokens first. */
export function encodeName(expanded: string, tokens: readonly string[]): number[] {
  const byText = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (!byText.has(t)) byText.set(t, i);
  });
  const out: number[] = [];
  for (let i = 0; i < expanded.length; ) {
    const two = byText.get(expanded.slice(i, i + 2));
    if (two !== undefined && i + 2 <= expanded.length) {
      out.push(two);
      i += 2;
    } else {
      const one = byText.get(expanded[i] as string);
      if (one === undefined) throw new Error(`cannot encode ${JSON.stringify(expanded[i])}`);
      out.push(one);
      i += 1;
    }
  }
  return out;
}

export interface KallsymsImage {
  /** The bytes of the tables, to be placed at `base`. */
  bytes: Buffer;
  /** Table addresses (in whatever address space `base` is in). */
  layout: {
    numSyms: bigint;
    names: bigint;
    markers: bigint;
    tokenTable: bigint;
    tokenIndex: bigint;
    offsets: bigint;
    relativeBase: bigint;
    seqsOfNames: bigint;
  };
  /** Symbols in kallsyms order, with the table symbols' addresses filled in. */
  symbols: SymbolSpec[];
  tokens: string[];
}

const align8 = (n: number): number => (n + 7) & ~7;

/**
 * Lays out kallsyms in the 6.4+ order at `base` (an address in the space the tables are read through; the table
 * symbols get addresses `virtBase + offset`), like scripts/kallsyms.c: num_syms, names, markers, token_table,
 * token_index, offsets, relative_base, seqs_of_names, each 8-byte aligned. `tableSymbols` adds symbols named
 * kallsyms_* at the tables' own addresses, as a real kernel has.
 */
export function buildKallsyms(
  input: readonly SymbolSpec[],
  options: { virtBase: bigint; relativeBase: bigint; absolutePercpu: boolean; tableSymbols?: boolean },
): KallsymsImage {
  const tableNames = ["kallsyms_num_syms", "kallsyms_names", "kallsyms_markers", "kallsyms_token_table", "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base", "kallsyms_seqs_of_names"];
  const syms: SymbolSpec[] = input.map((s) => ({ ...s }));
  if (options.tableSymbols ?? true) for (const n of tableNames) syms.push({ name: n, type: "D", address: 0n });
  const n = syms.length;
  const tokens = buildTokens(syms.map((s) => s.type + s.name));
  const encoded = syms.map((s) => encodeName(s.type + s.name, tokens));
  const entryBytes = (e: number[]): number => (e.length > 127 ? 2 : 1) + e.length;
  const namesLen = encoded.reduce((a, e) => a + entryBytes(e), 0);
  const tokenTableLen = tokens.reduce((a, t) => a + t.length + 1, 0);
  const m = Math.ceil(n / 256);
  const off: Record<string, number> = {};
  let p = 0;
  off.numSyms = p;
  p = align8(p + 4);
  off.names = p;
  p = align8(p + namesLen);
  off.markers = p;
  p = align8(p + 4 * m);
  off.tokenTable = p;
  p = align8(p + tokenTableLen);
  off.tokenIndex = p;
  p = align8(p + 512);
  off.offsets = p;
  p = align8(p + 4 * n);
  off.relativeBase = p;
  p = align8(p + 8);
  off.seqsOfNames = p;
  p = align8(p + 3 * n);
  const total = p;
  const at = (k: string): bigint => options.virtBase + BigInt(off[k] as number);
  const symAddr: Record<string, bigint> = {
    kallsyms_num_syms: at("numSyms"),
    kallsyms_names: at("names"),
    kallsyms_markers: at("markers"),
    kallsyms_token_table: at("tokenTable"),
    kallsyms_token_index: at("tokenIndex"),
    kallsyms_offsets: at("offsets"),
    kallsyms_relative_base: at("relativeBase"),
    kallsyms_seqs_of_names: at("seqsOfNames"),
  };
  for (const s of syms) if ((options.tableSymbols ?? true) && s.address === 0n && symAddr[s.name] !== undefined && !s.absolute) s.address = symAddr[s.name] as bigint;
  // kallsyms order: by address (absolute per-CPU values are small, so they come first), stable.
  const order = syms.map((_, i) => i).sort((a, b) => {
    const x = (syms[a] as SymbolSpec).address;
    const y = (syms[b] as SymbolSpec).address;
    return x < y ? -1 : x > y ? 1 : a - b;
  });
  const sorted = order.map((i) => syms[i] as SymbolSpec);
  const enc = order.map((i) => encoded[i] as number[]);

  const buf = Buffer.alloc(total);
  buf.writeUInt32LE(n, off.numSyms as number);
  let w = off.names as number;
  const markers: number[] = [];
  enc.forEach((e, i) => {
    if (i % 256 === 0) markers.push(w - (off.names as number));
    if (e.length > 127) {
      buf[w++] = (e.length & 0x7f) | 0x80;
      buf[w++] = e.length >> 7;
    } else buf[w++] = e.length;
    for (const t of e) buf[w++] = t;
  });
  markers.forEach((v, i) => buf.writeUInt32LE(v, (off.markers as number) + 4 * i));
  let q = off.tokenTable as number;
  tokens.forEach((t, i) => {
    buf.writeUInt16LE(q - (off.tokenTable as number), (off.tokenIndex as number) + 2 * i);
    buf.write(t, q, "latin1");
    q += t.length + 1;
  });
  sorted.forEach((s, i) => {
    let v: number;
    if (!options.absolutePercpu) v = Number(s.address - options.relativeBase) | 0;
    else if (s.absolute) v = Number(s.address);
    else v = Number(options.relativeBase - s.address - 1n);
    buf.writeInt32LE(v, (off.offsets as number) + 4 * i);
  });
  buf.writeBigUInt64LE(options.relativeBase, off.relativeBase as number);
  const byName = sorted.map((_, i) => i).sort((a, b) => {
    const x = (sorted[a] as SymbolSpec).name;
    const y = (sorted[b] as SymbolSpec).name;
    return x < y ? -1 : x > y ? 1 : a - b;
  });
  byName.forEach((idx, k) => {
    const o = (off.seqsOfNames as number) + 3 * k;
    buf[o] = (idx >> 16) & 0xff;
    buf[o + 1] = (idx >> 8) & 0xff;
    buf[o + 2] = idx & 0xff;
  });
  return {
    bytes: buf,
    layout: {
      numSyms: at("numSyms"),
      names: at("names"),
      markers: at("markers"),
      tokenTable: at("tokenTable"),
      tokenIndex: at("tokenIndex"),
      offsets: at("offsets"),
      relativeBase: at("relativeBase"),
      seqsOfNames: at("seqsOfNames"),
    },
    symbols: sorted,
    tokens,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// BTF

export interface MemberSpec {
  name: string;
  type: number;
  bitOffset: number;
  bitfieldSize?: number;
}

/** Writes BTF blobs type by type. Type ids are assigned in call order starting at 1. */
export class BtfBuilder {
  private readonly strs: string[] = [""];
  private readonly strOff = new Map<string, number>([["", 0]]);
  private strLen = 1;
  private readonly recs: Buffer[] = [];

  str(s: string): number {
    const have = this.strOff.get(s);
    if (have !== undefined) return have;
    const o = this.strLen;
    this.strs.push(s);
    this.strOff.set(s, o);
    this.strLen += Buffer.byteLength(s, "latin1") + 1;
    return o;
  }

  /** The id the next type will get. */
  nextId(): number {
    return this.recs.length + 1;
  }

  raw(kind: number, name: string, vlen: number, sizeOrType: number, extra: Buffer = Buffer.alloc(0), kindFlag = false): number {
    const b = Buffer.alloc(12);
    b.writeUInt32LE(this.str(name), 0);
    b.writeUInt32LE((((kindFlag ? 1 : 0) << 31) | ((kind & 0x1f) << 24) | (vlen & 0xffff)) >>> 0, 4);
    b.writeUInt32LE(sizeOrType >>> 0, 8);
    this.recs.push(Buffer.concat([b, extra]));
    return this.recs.length;
  }

  int(name: string, bytes: number, signed = false): number {
    const e = Buffer.alloc(4);
    e.writeUInt32LE(((signed ? 1 : 0) << 24) | (bytes * 8), 0);
    return this.raw(1, name, 0, bytes, e);
  }

  ptr(type: number): number {
    return this.raw(2, "", 0, type);
  }

  array(elem: number, index: number, n: number): number {
    const e = Buffer.alloc(12);
    e.writeUInt32LE(elem, 0);
    e.writeUInt32LE(index, 4);
    e.writeUInt32LE(n, 8);
    return this.raw(3, "", 0, 0, e);
  }

  struct(name: string, size: number, members: readonly MemberSpec[], opts: { union?: boolean; kindFlag?: boolean } = {}): number {
    const e = Buffer.alloc(12 * members.length);
    members.forEach((m, i) => {
      e.writeUInt32LE(this.str(m.name), i * 12);
      e.writeUInt32LE(m.type, i * 12 + 4);
      e.writeUInt32LE(opts.kindFlag ? (((m.bitfieldSize ?? 0) << 24) | m.bitOffset) >>> 0 : m.bitOffset, i * 12 + 8);
    });
    return this.raw(opts.union ? 5 : 4, name, members.length, size, e, opts.kindFlag ?? false);
  }

  typedef(name: string, type: number): number {
    return this.raw(8, name, 0, type);
  }

  build(): Buffer {
    const types = Buffer.concat(this.recs);
    const strings = Buffer.concat(this.strs.map((s) => Buffer.from(s + "\0", "latin1")));
    const h = Buffer.alloc(24);
    h.writeUInt16LE(0xeb9f, 0);
    h[2] = 1;
    h[3] = 0;
    h.writeUInt32LE(24, 4);
    h.writeUInt32LE(0, 8);
    h.writeUInt32LE(types.length, 12);
    h.writeUInt32LE(types.length, 16);
    h.writeUInt32LE(strings.length, 20);
    return Buffer.concat([h, types, strings]);
  }
}

/** Expected layout facts of `kernelLikeBtf`. */
export const BTF_FACTS = {
  "task_struct.tasks": 2224,
  "task_struct.pid": 2432,
  "task_struct.tgid": 2436,
  "task_struct.comm": 2976,
  "task_struct.mm": 2304,
  "task_struct.flags_bits": 2440, // a bitfield: byte holding bit 19520
  "mm_struct.pgd": 120,
  "module.list": 8,
  "module.name": 24,
  "list_head.next": 0,
  "list_head.prev": 8,
  sizeof_task_struct: 9792,
  sizeof_mm_struct: 1344,
  sizeof_list_head: 16,
};

/** A small BTF with the shapes the engine relies on: anonymous struct in mm_struct, an anonymous union, bitfields. */
export function kernelLikeBtf(): Buffer {
  const b = new BtfBuilder();
  const int = b.int("int", 4, true);
  const ulong = b.int("long unsigned int", 8);
  const char = b.int("char", 1, true);
  const lhPtr = b.nextId();
  b.ptr(lhPtr + 1);
  const lh = b.struct("list_head", 16, [
    { name: "next", type: lhPtr, bitOffset: 0 },
    { name: "prev", type: lhPtr, bitOffset: 64 },
  ]);
  const comm = b.array(char, int, 16);
  // mm_struct keeps its members in an anonymous struct (for __randomize_layout), as in 6.12.
  const mmPtr = b.ptr(b.nextId() + 3);
  const pgdT = b.ptr(ulong);
  const anonMm = b.struct("", 1336, [
    { name: "mm_mt", type: ulong, bitOffset: 0 },
    { name: "pgd", type: pgdT, bitOffset: 120 * 8 },
  ]);
  b.struct("mm_struct", 1344, [
    { name: "", type: anonMm, bitOffset: 0 },
    { name: "cpu_bitmap", type: ulong, bitOffset: 1336 * 8 },
  ]);
  // An anonymous union holding a named member, and bitfields with kind_flag.
  const anonUnion = b.struct(
    "",
    8,
    [
      { name: "wake_q_count", type: ulong, bitOffset: 0 },
      { name: "real_parent", type: ulong, bitOffset: 0 },
    ],
    { union: true },
  );
  b.struct(
    "task_struct",
    9792,
    [
      { name: "__state", type: int, bitOffset: 24 * 8 },
      { name: "tasks", type: lh, bitOffset: 2224 * 8 },
      { name: "mm", type: mmPtr, bitOffset: 2304 * 8 },
      { name: "pid", type: int, bitOffset: 2432 * 8 },
      { name: "tgid", type: int, bitOffset: 2436 * 8 },
      { name: "flags_bits", type: int, bitOffset: 2440 * 8, bitfieldSize: 3 },
      { name: "other_bits", type: int, bitOffset: 2440 * 8 + 3, bitfieldSize: 5 },
      { name: "", type: anonUnion, bitOffset: 2448 * 8 },
      { name: "comm", type: comm, bitOffset: 2976 * 8 },
    ],
    { kindFlag: true },
  );
  const modName = b.array(char, int, 56);
  b.struct("module", 1280, [
    { name: "state", type: int, bitOffset: 0 },
    { name: "list", type: lh, bitOffset: 64 },
    { name: "name", type: modName, bitOffset: 24 * 8 },
  ]);
  b.typedef("atomic_long_t", b.struct("", 8, [{ name: "counter", type: ulong, bitOffset: 0 }]));
  return b.build();
}

// ---------------------------------------------------------------------------------------------------------------
// ELF

/** A minimal ELF64 little-endian file with the given sections (plus the null section and .shstrtab). */
export function buildElf(sections: readonly { name: string; data: Buffer; addr?: bigint; type?: number }[]): Buffer {
  const names = [".shstrtab", ...sections.map((s) => s.name)];
  let shstr = Buffer.from("\0");
  const nameOff: number[] = [];
  for (const n of names) {
    nameOff.push(shstr.length);
    shstr = Buffer.concat([shstr, Buffer.from(n + "\0", "latin1")]);
  }
  const parts: Buffer[] = [];
  let off = 64;
  const placed: { offset: number; size: number }[] = [];
  for (const d of [shstr, ...sections.map((s) => s.data)]) {
    placed.push({ offset: off, size: d.length });
    parts.push(d);
    off += d.length;
  }
  const pad = (8 - (off % 8)) % 8;
  const shoff = off + pad;
  const shnum = names.length + 1;
  const sh = Buffer.alloc(64 * shnum);
  placed.forEach((p, i) => {
    const o = 64 * (i + 1);
    const sec = i === 0 ? undefined : sections[i - 1];
    sh.writeUInt32LE(nameOff[i] as number, o);
    sh.writeUInt32LE(i === 0 ? 3 : (sec?.type ?? 1), o + 4);
    sh.writeBigUInt64LE(sec?.addr ?? 0n, o + 16);
    sh.writeBigUInt64LE(BigInt(p.offset), o + 24);
    sh.writeBigUInt64LE(BigInt(p.size), o + 32);
  });
  const eh = Buffer.alloc(64);
  eh.writeUInt32BE(0x7f454c46, 0);
  eh[4] = 2;
  eh[5] = 1;
  eh[6] = 1;
  eh.writeUInt16LE(2, 0x10);
  eh.writeUInt16LE(62, 0x12);
  eh.writeUInt32LE(1, 0x14);
  eh.writeBigUInt64LE(BigInt(shoff), 0x28);
  eh.writeUInt16LE(64, 0x34);
  eh.writeUInt16LE(64, 0x3a);
  eh.writeUInt16LE(shnum, 0x3c);
  eh.writeUInt16LE(1, 0x3e);
  return Buffer.concat([eh, ...parts, Buffer.alloc(pad), sh]);
}

// ---------------------------------------------------------------------------------------------------------------
// A whole guest

export interface SyntheticGuestOptions {
  levels?: 4 | 5;
  /** KASLR shift of the virtual image (multiple of 2 MiB). */
  shift?: bigint;
  /** Physical address of _text (2 MiB aligned). */
  physText?: bigint;
  release?: string;
  buildId?: string;
  /** Extra / replaced VMCOREINFO lines, e.g. { KERNELOFFSET: "1000000" }; null removes a key. */
  vmcoreinfo?: Record<string, string | null>;
  /** Write the ELF-note copy of VMCOREINFO too (default true). */
  note?: boolean;
  /** Write VMCOREINFO at all (default true). */
  withVmcoreinfo?: boolean;
  /** Filler symbols (default 700, so there are several marker blocks). */
  fillerSymbols?: number;
  ramBytes?: number;
}

export interface SyntheticGuest {
  ram: Buffer;
  mem: BufferPhysicalMemory;
  levels: 4 | 5;
  shift: bigint;
  physBase: bigint;
  /** Physical address of init_top_pgt. */
  root: bigint;
  text: bigint;
  symbols: SymbolSpec[];
  vmcoreinfoText: string;
  vmcoreinfoAt: bigint;
  noteAt: bigint;
  kallsyms: KallsymsImage;
  btf: Buffer;
  /** Physical address of the kallsyms tables. */
  kallsymsPhys: bigint;
  tables: PageTableBuilder;
  /** CR3 of a "user process": another PGD sharing the kernel half, with PCID and the KPTI bit set. */
  cr3: bigint;
  cr4: bigint;
}

/**
 * A 32 MiB guest: a 4 MiB kernel image at `physText` mapped with 2 MiB pages at 0xffffffff81000000 + shift,
 * init_top_pgt inside the image, kallsyms and BTF in the image, VMCOREINFO in a separate page and note.
 */
export function buildSyntheticGuest(o: SyntheticGuestOptions = {}): SyntheticGuest {
  const levels = o.levels ?? 5;
  const shift = o.shift ?? 0x2c20_0000n;
  const physText = o.physText ?? 0x100_0000n;
  const release = o.release ?? "6.12.117+deb12-cloud-amd64";
  const buildId = o.buildId ?? "7f76f39faf07f34cfa9fadd801e131bfa8cb6dc3";
  const ram = Buffer.alloc(o.ramBytes ?? 32 * 1024 * 1024);
  const text = LINK_TEXT + shift;
  const physBase = (physText - (text - START_KERNEL_MAP)) & U64;
  const imageBytes = 0x40_0000n;
  // Inside the image: text at 0, page tables at 1 MiB, kallsyms at 2 MiB, BTF after them.
  const tablesPhys = physText + 0x10_0000n;
  const tables = new PageTableBuilder(ram, levels, { start: tablesPhys, end: tablesPhys + 0x4_0000n });
  const root = tables.root;
  for (let off = 0n; off < imageBytes; off += 0x20_0000n) tables.map(text + off, physText + off, 0x200000, { writable: off >= 0x20_0000n, nx: off >= 0x20_0000n });
  // A "process" PGD pair (8 KiB aligned, as under KPTI) sharing the kernel half, like every mm's PGD does.
  tables.alloc();
  const userPgd = tables.alloc();
  if ((userPgd & 0x1fffn) !== 0n) tables.alloc();
  const procPgd = (userPgd + 0x1fffn) & ~0x1fffn;
  ram.copy(ram, Number(procPgd) + 2048, Number(root) + 2048, Number(root) + 4096);
  // The KPTI user bit and a PCID: both masked off by rootFromCr3.
  const cr3 = procPgd | 0x1000n | 0x5n;
  const cr4 = levels === 5 ? 0x751ef0n : 0x750ef0n;

  const va = (off: bigint): bigint => text + off;
  const symbols: SymbolSpec[] = [
    { name: "fixed_percpu_data", type: "D", address: 0n, absolute: true },
    { name: "__per_cpu_start", type: "D", address: 0n, absolute: true },
    { name: "cpu_tss_rw", type: "D", address: 0x6000n, absolute: true },
    { name: "_text", type: "T", address: va(0n) },
    { name: "_stext", type: "T", address: va(0n) },
    { name: "x64_sys_call", type: "T", address: va(0x8a50n) },
    { name: "entry_SYSCALL_64", type: "T", address: va(0x1_0080n) },
    { name: "init_top_pgt", type: "D", address: va(0x10_0000n) },
    { name: "init_task", type: "D", address: va(0x10_8000n) },
    { name: "__func__.1", type: "d", address: va(0x1_1000n) },
    { name: "__func__.1", type: "d", address: va(0x1_2000n) },
    { name: "__func__.1", type: "d", address: va(0x1_3000n) },
    { name: "a_rather_long_symbol_name_that_needs_a_two_byte_length_prefix_in_kallsyms_because_it_is_long_" + "x".repeat(120), type: "t", address: va(0x1_4000n) },
  ];
  const filler = o.fillerSymbols ?? 700;
  for (let i = 0; i < filler; i++) symbols.push({ name: `func_${i.toString().padStart(4, "0")}`, type: i % 3 === 0 ? "t" : "T", address: va(0x2_0000n + BigInt(i) * 0x40n) });
  const kallsymsOff = 0x20_0000n;
  // A first build to learn the tables' size, then the real one with __start_BTF etc. after it.
  const placeholder = va(kallsymsOff);
  const probe = buildKallsyms([...symbols, { name: "linux_banner", type: "D", address: placeholder }, { name: "__start_BTF", type: "R", address: placeholder }, { name: "__stop_BTF", type: "R", address: placeholder }], {
    virtBase: va(kallsymsOff),
    relativeBase: text,
    absolutePercpu: true,
  });
  const bannerOff = kallsymsOff + BigInt((probe.bytes.length + 4095) & ~4095);
  const btf = kernelLikeBtf();
  const btfOff = bannerOff + 0x1000n;
  symbols.push({ name: "linux_banner", type: "D", address: va(bannerOff) });
  symbols.push({ name: "__start_BTF", type: "R", address: va(btfOff) });
  symbols.push({ name: "__stop_BTF", type: "R", address: va(btfOff + BigInt(btf.length)) });
  const ks = buildKallsyms(symbols, { virtBase: va(kallsymsOff), relativeBase: text, absolutePercpu: true });
  if (ks.bytes.length !== probe.bytes.length) throw new Error("kallsyms size changed between passes");
  ks.bytes.copy(ram, Number(physText + kallsymsOff));
  ram.write(`Linux version ${release} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\n\0`, Number(physText + bannerOff), "latin1");
  btf.copy(ram, Number(physText + btfOff));

  const sym = (n: string): bigint => (ks.symbols.find((s) => s.name === n) as SymbolSpec).address;
  const lines: [string, string][] = [
    ["OSRELEASE", release],
    ["BUILD-ID", buildId],
    ["PAGESIZE", "4096"],
    ["SYMBOL(init_uts_ns)", (text + 0x12_0000n).toString(16)],
    ["SYMBOL(swapper_pg_dir)", sym("init_top_pgt").toString(16)],
    ["SYMBOL(_stext)", sym("_stext").toString(16)],
    ["SYMBOL(mem_section)", "ff1bfae94fd8c680"],
    ["SIZE(list_head)", "16"],
    ["OFFSET(list_head.next)", "0"],
    ["OFFSET(list_head.prev)", "8"],
    ["OFFSET(atomic_long_t.counter)", "0"],
    ["NUMBER(VMALLOC_START)", "0xff51e4f640000000"],
    ...kallsymsVmcoreinfo(sym),
    ["NUMBER(phys_base)", BigInt.asIntN(64, physBase).toString()],
    ["SYMBOL(init_top_pgt)", sym("init_top_pgt").toString(16)],
    ["NUMBER(pgtable_l5_enabled)", levels === 5 ? "1" : "0"],
    ["KERNELOFFSET", shift.toString(16)],
    ["NUMBER(KERNEL_IMAGE_SIZE)", "1073741824"],
  ];
  const map = new Map(lines);
  for (const [k, v] of Object.entries(o.vmcoreinfo ?? {})) {
    if (v === null) map.delete(k);
    else map.set(k, v);
  }
  const vmcoreinfoText = [...map.entries()].map(([k, v]) => `${k}=${v}\n`).join("");
  const vmcoreinfoAt = 0x60_0000n;
  const noteAt = 0x70_0000n + 24n;
  if (o.withVmcoreinfo ?? true) {
    ram.write(vmcoreinfoText, Number(vmcoreinfoAt), "latin1");
    if (o.note ?? true) {
      const h = Number(noteAt - 24n);
      ram.writeUInt32LE(11, h);
      ram.writeUInt32LE(vmcoreinfoText.length, h + 4);
      ram.writeUInt32LE(0, h + 8);
      ram.write("VMCOREINFO\0", h + 12, "latin1");
      ram.write(vmcoreinfoText, Number(noteAt), "latin1");
    }
  }
  // A decoy: the kernel's own format string, as found in .rodata of every real kernel.
  ram.write("\0VMCOREINFO\0OSRELEASE=%s\n\0", Number(physText + 0x3_0000n), "latin1");

  return {
    ram,
    mem: new BufferPhysicalMemory(ram),
    levels,
    shift,
    physBase,
    root,
    text,
    symbols: ks.symbols,
    vmcoreinfoText,
    vmcoreinfoAt,
    noteAt,
    kallsyms: ks,
    btf,
    kallsymsPhys: physText + kallsymsOff,
    tables,
    cr3,
    cr4,
  };
}
