/**
 * x86-64 virtual → physical translation done in software over guest-physical memory: 4- and 5-level paging,
 * 4 KiB / 2 MiB / 1 GiB pages, with the effective permissions the CPU would apply (RW and US are ANDed across
 * levels, NX is ORed). The page tables are guest data: an entry pointing outside RAM, a reserved bit pattern or a
 * non-canonical address is a typed "not mapped" result, never an exception, and every walk is at most five reads.
 */
import { IntrospectionError, hex } from "./errors.ts";
import { MAX_READ_BYTES, type AddressSpace, type PhysicalMemory } from "./physical-memory.ts";

export type PagingLevels = 4 | 5;

/** Where a walk starts: the physical address of the top-level table and how many levels there are. */
export interface PagingRoot {
  readonly base: bigint;
  readonly levels: PagingLevels;
}

const ADDR_MASK = 0x000f_ffff_ffff_f000n; // bits 12..51: MAXPHYADDR is at most 52
const P = 1n;
const RW = 2n;
const US = 4n;
const PS = 0x80n;
const NX = 1n << 63n;
const U64 = (1n << 64n) - 1n;

/**
 * The top-level table from a CR3 value: drops the PCID (bits 0-11) and bit 12, which under KPTI selects the user
 * half of the 8 KiB PGD pair, so user and kernel CR3 values give the same (kernel) table. Also drops bits above
 * MAXPHYADDR (LAM, NOFLUSH).
 */
export function rootFromCr3(cr3: bigint, levels: PagingLevels): PagingRoot {
  return { base: cr3 & 0x000f_ffff_ffff_e000n, levels };
}

/** CR4.LA57 (bit 12): the CPU is using 5-level paging. */
export function la57FromCr4(cr4: bigint): boolean {
  return (cr4 & (1n << 12n)) !== 0n;
}

/** A successful translation. */
export interface Mapped {
  readonly mapped: true;
  readonly paddr: bigint;
  /** 4096, 2 MiB or 1 GiB. */
  readonly pageSize: number;
  /** Physical address of the start of the page. */
  readonly pageBase: bigint;
  readonly present: true;
  /** Writable at every level. */
  readonly writable: boolean;
  /** User-accessible at every level. */
  readonly user: boolean;
  /** Execute-disable at some level. */
  readonly nx: boolean;
}

/** Why an address does not translate. */
export type NotMappedReason = "non-canonical" | "not-present" | "table-outside-ram" | "reserved-bits";

export interface NotMapped {
  readonly mapped: false;
  readonly reason: NotMappedReason;
  /** Paging level (5..1) at which the walk stopped; 0 for a non-canonical address. */
  readonly level: number;
}

export type Translation = Mapped | NotMapped;

/** True when `vaddr` is canonical for the given number of levels (48 or 57 significant bits). */
export function isCanonical(vaddr: bigint, levels: PagingLevels): boolean {
  if (vaddr < 0n || vaddr > U64) return false;
  const bits = levels === 5 ? 57n : 48n;
  const top = vaddr >> (bits - 1n);
  return top === 0n || top === (1n << (65n - bits)) - 1n;
}

/** Walks the page tables for one address. At most `levels` 8-byte reads of physical memory. */
export function translate(mem: AddressSpace, root: PagingRoot, vaddr: bigint): Translation {
  if (!isCanonical(vaddr, root.levels)) return { mapped: false, reason: "non-canonical", level: 0 };
  let table = root.base & ADDR_MASK;
  let writable = true;
  let user = true;
  let nx = false;
  for (let level: number = root.levels; level >= 1; level--) {
    const shift = BigInt(12 + 9 * (level - 1));
    const index = (vaddr >> shift) & 0x1ffn;
    const raw = mem.read(table + index * 8n, 8);
    if (!raw || raw.length !== 8) return { mapped: false, reason: "table-outside-ram", level };
    const entry = raw.readBigUInt64LE(0);
    if ((entry & P) === 0n) return { mapped: false, reason: "not-present", level };
    writable &&= (entry & RW) !== 0n;
    user &&= (entry & US) !== 0n;
    nx ||= (entry & NX) !== 0n;
    const large = (entry & PS) !== 0n && (level === 2 || level === 3);
    if ((entry & PS) !== 0n && level >= 4) return { mapped: false, reason: "reserved-bits", level };
    if (large || level === 1) {
      const pageSize = 1n << shift;
      const baseMask = ADDR_MASK & ~(pageSize - 1n);
      // A large-page entry keeps PAT in bit 12 and must have the bits between 13 and the page size clear.
      if (large && (entry & (pageSize - 1n) & ADDR_MASK & ~0x1000n) !== 0n) return { mapped: false, reason: "reserved-bits", level };
      const pageBase = entry & baseMask;
      return { mapped: true, present: true, paddr: pageBase + (vaddr & (pageSize - 1n)), pageBase, pageSize: Number(pageSize), writable, user, nx };
    }
    table = entry & ADDR_MASK;
  }
  // Unreachable: level 1 always returns above. Kept so the type checker sees every path return.
  return { mapped: false, reason: "not-present", level: 1 };
}

/** The result of a virtual read that may fail part-way. */
export type VirtualRead = { ok: true; data: Buffer } | { ok: false; vaddr: bigint; translation: NotMapped | undefined };

/** Translations are cached per 4 KiB page; at most this many before the cache starts over. */
const MAX_TLB_ENTRIES = 65536;

/**
 * A virtual address space over guest-physical memory, with a software TLB. Like the page cache, the TLB is only
 * valid for one sweep: call `clearCache()` when the guest may have changed its page tables.
 */
export class VirtualMemory implements AddressSpace {
  private readonly tlb = new Map<number, Mapped | NotMapped>();
  /**
   * Large pages by 2 MiB / 1 GiB frame number: kernel text and the direct map are mapped with them, and one walk
   * then serves every 4 KiB page inside (a sweep touches hundreds of pages in a few large ones).
   */
  private readonly tlb2m = new Map<number, Mapped>();
  private readonly tlb1g = new Map<number, Mapped>();

  constructor(
    readonly physical: PhysicalMemory,
    readonly root: PagingRoot,
  ) {
    if (root.levels !== 4 && root.levels !== 5) throw new IntrospectionError("host-input", `Cannot walk page tables with ${String(root.levels)} levels (4 or 5)`);
  }

  /** Translates one address (cached per page). */
  translate(vaddr: bigint): Translation {
    if (vaddr < 0n || vaddr > U64) return { mapped: false, reason: "non-canonical", level: 0 };
    // Key on the page number; 52 bits fit a JS number exactly.
    const key = Number(vaddr >> 12n);
    let t = this.tlb.get(key);
    if (t === undefined) {
      const big = this.tlb2m.get(Number(vaddr >> 21n)) ?? this.tlb1g.get(Number(vaddr >> 30n));
      if (big !== undefined) return { ...big, paddr: big.pageBase + (vaddr & BigInt(big.pageSize - 1)) };
      t = translate(this.physical, this.root, vaddr & ~0xfffn);
      if (t.mapped && t.pageSize > 4096) {
        const map = t.pageSize === 0x20_0000 ? this.tlb2m : this.tlb1g;
        if (map.size >= MAX_TLB_ENTRIES) map.clear();
        map.set(Number(vaddr >> (t.pageSize === 0x20_0000 ? 21n : 30n)), t);
        return { ...t, paddr: t.pageBase + (vaddr & BigInt(t.pageSize - 1)) };
      }
      if (this.tlb.size >= MAX_TLB_ENTRIES) this.tlb.clear();
      this.tlb.set(key, t);
    }
    if (!t.mapped) return t;
    const off = vaddr & 0xfffn;
    return off === 0n ? t : { ...t, paddr: t.paddr + off };
  }

  /** Reads `length` bytes at `vaddr`, crossing page boundaries; undefined if any page is unmapped or outside RAM. */
  read(vaddr: bigint, length: number): Buffer | undefined {
    const r = this.readDetailed(vaddr, length);
    return r.ok ? r.data : undefined;
  }

  /** Like `read`, but says which address failed and why. */
  readDetailed(vaddr: bigint, length: number): VirtualRead {
    if (!Number.isInteger(length) || length < 0 || length > MAX_READ_BYTES || vaddr < 0n || vaddr + BigInt(length) > U64 + 1n) {
      return { ok: false, vaddr, translation: undefined };
    }
    const parts: Buffer[] = [];
    let done = 0;
    // Each iteration consumes at least the rest of one 4 KiB page.
    const maxSteps = Math.ceil(length / 4096) + 2;
    for (let step = 0; done < length && step < maxSteps; step++) {
      const va = vaddr + BigInt(done);
      const t = this.translate(va);
      if (!t.mapped) return { ok: false, vaddr: va, translation: t };
      const inPage = Number(t.pageBase + BigInt(t.pageSize) - t.paddr);
      // Within a large page the physical range is contiguous, so read it in one go.
      const n = Math.min(length - done, inPage);
      const data = this.physical.read(t.paddr, n);
      if (!data) return { ok: false, vaddr: va, translation: { mapped: false, reason: "table-outside-ram", level: 0 } };
      parts.push(data);
      done += n;
    }
    if (done !== length) return { ok: false, vaddr: vaddr + BigInt(done), translation: undefined };
    return { ok: true, data: parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, length) };
  }

  /** Reads a little-endian u64 at `vaddr`, or undefined. */
  readU64(vaddr: bigint): bigint | undefined {
    const b = this.read(vaddr, 8);
    return b ? b.readBigUInt64LE(0) : undefined;
  }

  clearCache(): void {
    this.tlb.clear();
    this.tlb2m.clear();
    this.tlb1g.clear();
  }
}

/** Describes a failed translation for messages: `not present at level 2`. */
export function describeNotMapped(vaddr: bigint, t: NotMapped | undefined): string {
  if (!t) return `${hex(vaddr)} cannot be read`;
  return t.reason === "non-canonical" ? `${hex(vaddr)} is not canonical` : `${hex(vaddr)} is not mapped (${t.reason} at level ${t.level})`;
}

/** Control registers of one vCPU, as HMP `info registers` prints them. */
export interface ControlRegisters {
  cpu: number;
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint | undefined;
  /** IDTR base (on Linux the fixed read-only alias 0xfffffe0000000000), when printed. */
  idtBase: bigint | undefined;
  /** IDTR limit (0xfff for 256 gates), when printed. */
  idtLimit: number | undefined;
}

/**
 * Reads CR0/CR3/CR4 (and EFER and IDTR) of every vCPU from HMP `info registers` (QMP `human-monitor-command`). QEMU 7.2
 * prints "CPU#n" before each CPU's block when asked for all of them, and nothing when asked for one.
 */
export function parseControlRegisters(text: string): ControlRegisters[] {
  if (text.length > 4 * 1024 * 1024) throw new IntrospectionError("host-input", `Cannot parse "info registers": ${text.length} characters`);
  const blocks = text.split(/^CPU#(\d{1,4})\s*$/m);
  const out: ControlRegisters[] = [];
  // split() with a capture group alternates text and CPU numbers: [before, n0, block0, n1, block1, ...].
  const pairs: [number, string][] = blocks.length === 1 ? [[0, text]] : [];
  for (let i = 1; i + 1 < blocks.length && pairs.length < 1024; i += 2) pairs.push([Number(blocks[i]), blocks[i + 1] ?? ""]);
  for (const [cpu, block] of pairs) {
    const reg = (name: string): bigint | undefined => {
      const m = new RegExp(`\\b${name}=([0-9a-fA-F]{1,16})\\b`).exec(block);
      return m ? BigInt("0x" + m[1]) : undefined;
    };
    const cr0 = reg("CR0");
    const cr3 = reg("CR3");
    const cr4 = reg("CR4");
    if (cr0 === undefined || cr3 === undefined || cr4 === undefined) {
      throw new IntrospectionError("host-input", `Cannot parse "info registers" for CPU ${cpu}: CR0, CR3 or CR4 is missing`);
    }
    // "IDT=     fffffe0000000000 00000fff": base, then limit.
    const idt = /\bIDT=\s*([0-9a-fA-F]{1,16}) ([0-9a-fA-F]{1,8})\b/.exec(block);
    out.push({ cpu, cr0, cr3, cr4, efer: reg("EFER"), idtBase: idt ? BigInt("0x" + idt[1]) : undefined, idtLimit: idt ? Number.parseInt(idt[2] as string, 16) : undefined });
  }
  return out;
}
