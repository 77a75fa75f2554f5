/**
 * Integrity of kernel text and read-only data, page by page, against a baseline taken at a trusted moment.
 *
 * Hashing all of it (≈ 27 MiB on a 6.12 cloud kernel: 16 MiB text, 11 MiB rodata) costs 50-80 ms, far over a
 * 5 ms sweep, so each sweep hashes a rotating window of pages plus an always-checked set of critical pages (the
 * syscall dispatch code, the IDT handlers, the syscall table) and any page already found changed. A page whose
 * hash differs is normalised — every legitimately patched site (ftrace, jump labels, static calls: see
 * patch-sites.ts) put back to its baseline bytes — and hashed again: equal means EXPLAINED, not alarmed.
 *
 * Memory: the baseline keeps a SHA-256 per page (32 B × ~6,800 pages ≈ 210 KiB), a CRC32 per 256-byte block
 * (64 B per page ≈ 430 KiB), the patch sites (~60k × 10 B) and the full bytes of the critical pages only (≈ 15
 * pages), so a changed critical page is diffed byte by byte and any other changed page is located to its
 * 256-byte blocks. The CRCs only locate; the SHA-256 decides (a guest that forges CRCs misleads the location
 * of a change, never hides it). `keepAllBytes` keeps every page (≈ 27 MiB per VM) for exact diffs everywhere.
 */
import { hash } from "node:crypto";
import { crc32 } from "node:zlib";
import { IntrospectionError, hex } from "./errors.ts";
import { describeAddress, inRange, type AddressRange, type KernelLayout } from "./kernel-layout.ts";
import type { KernelModel } from "./kernel-model.ts";
import { retargetedBranches, type RetargetedBranch } from "./attribution.ts";
import { readFtraceOps } from "./ftrace-ops.ts";
import { PatchSiteTable, collectPatchSites, normalise, type PatchKind, type SerializedPatchSites, type TargetPolicy } from "./patch-sites.ts";

const PAGE = 4096;
const HASH_BYTES = 32;
/** Granularity of the locating CRCs. */
export const BLOCK = 256;
const BLOCKS_PER_PAGE = PAGE / BLOCK;
/** Bytes read on each side of a changed page so that patch sites straddling its edges can be judged whole. */
const MARGIN = 8;
/** A kernel with more text + rodata pages than this (1 GiB) is not one we baseline. */
const MAX_PAGES = 262_144;
/** Pages found changed are re-checked every sweep; beyond this many only the rotation sees them. */
export const MAX_HOT_PAGES = 256;
const MAX_DIFFS = 16;

export type TextRegionName = "text" | "rodata";

export interface TextRegion {
  readonly name: TextRegionName;
  readonly start: bigint;
  readonly end: bigint;
  /** Global index of the region's first page. */
  readonly firstPage: number;
  readonly pages: number;
}

/** A named range whose bytes are compared every sweep (the syscall dispatch code). */
export interface CriticalFunction {
  readonly name: string;
  readonly start: bigint;
  readonly end: bigint;
}

/** The JSON form kept in a Baseline. */
export interface TextBaselineData {
  readonly regions: { name: TextRegionName; start: string; end: string }[];
  /** base64 of one SHA-256 per page, in page order */
  readonly pageHashes: string;
  /** base64 of one CRC32 (u32 LE) per 256-byte block, in page order: locates a change inside a page */
  readonly blockCrcs: string;
  readonly sites: SerializedPatchSites;
  readonly siteProblems: string[];
  /** Pages (global indexes) checked every sweep. */
  readonly criticalPages: number[];
  readonly functions: { name: string; start: string; end: string }[];
  /** Full baseline bytes of some pages (the critical ones; all with keepAllBytes). */
  readonly keptPages: { page: number; data: string }[];
}

export interface TextBaselineOptions {
  /** Extra critical ranges, e.g. the pages of IDT handlers. */
  criticalAddresses?: readonly bigint[];
  criticalFunctions?: readonly CriticalFunction[];
  keepAllBytes?: boolean;
}

const sha256 = (b: Uint8Array): Buffer => hash("sha256", b, "buffer");

/** Text and rodata as regions with global page indexes. */
export function textRegions(layout: KernelLayout): TextRegion[] {
  const out: TextRegion[] = [];
  let first = 0;
  const push = (name: TextRegionName, r: AddressRange | undefined): void => {
    if (!r) return;
    const pages = Number((r.end - r.start) / BigInt(PAGE));
    out.push({ name, start: r.start, end: r.end, firstPage: first, pages });
    first += pages;
  };
  push("text", layout.text);
  // rodata follows text in every x86-64 layout; an overlap would double-count pages, so it is refused.
  if (layout.rodata && (!layout.text || layout.rodata.start >= layout.text.end)) push("rodata", layout.rodata);
  return out;
}

/** Reads a region's pages and builds the baseline data. */
export function takeTextBaseline(model: KernelModel, layout: KernelLayout, options: TextBaselineOptions = {}): TextBaselineData {
  const regions = textRegions(layout);
  const total = regions.reduce((n, r) => n + r.pages, 0);
  if (regions.length === 0 || !layout.text) throw new IntrospectionError("not-found", `Cannot baseline kernel text: ${layout.problems.join("; ") || "no text range"}`);
  if (total > MAX_PAGES) throw new IntrospectionError("malformed", `Cannot baseline kernel text: ${total} pages (at most ${MAX_PAGES})`);
  const hashes = Buffer.alloc(total * HASH_BYTES);
  const crcs = Buffer.alloc(total * BLOCKS_PER_PAGE * 4);
  let textBytes: Buffer | undefined;
  const bytesOf = new Map<number, Buffer>();
  for (const r of regions) {
    const data = model.kernel.readDetailed(r.start, Number(r.end - r.start));
    if (!data.ok) throw new IntrospectionError("unreadable", `Cannot baseline kernel ${r.name}: ${hex(data.vaddr)} is not mapped`);
    if (r.name === "text") textBytes = data.data;
    for (let p = 0; p < r.pages; p++) {
      const page = data.data.subarray(p * PAGE, (p + 1) * PAGE);
      sha256(page).copy(hashes, (r.firstPage + p) * HASH_BYTES);
      blockCrcsOf(page).copy(crcs, (r.firstPage + p) * BLOCKS_PER_PAGE * 4);
      if (options.keepAllBytes) bytesOf.set(r.firstPage + p, page);
    }
    if (!options.keepAllBytes) bytesOf.set(-1 - r.firstPage, data.data); // whole region, for the critical pages below
  }
  const text = layout.text;
  const sites = collectPatchSites(model, text, textBytes as Buffer, layout.ftrace);
  const critical = new Set<number>();
  const addPage = (va: bigint): void => {
    const i = pageIndex(regions, va);
    if (i !== undefined) critical.add(i);
  };
  for (const f of options.criticalFunctions ?? []) for (let va = f.start & ~0xfffn; va < f.end; va += BigInt(PAGE)) addPage(va);
  for (const a of options.criticalAddresses ?? []) addPage(a);
  const kept: { page: number; data: string }[] = [];
  const pageBytes = (i: number): Buffer | undefined => {
    const have = bytesOf.get(i);
    if (have) return have;
    const r = regions.find((x) => i >= x.firstPage && i < x.firstPage + x.pages);
    const whole = r ? bytesOf.get(-1 - r.firstPage) : undefined;
    return r && whole ? whole.subarray((i - r.firstPage) * PAGE, (i - r.firstPage + 1) * PAGE) : undefined;
  };
  const keep = options.keepAllBytes ? Array.from({ length: total }, (_, i) => i) : [...critical].sort((a, b) => a - b);
  for (const i of keep) {
    const b = pageBytes(i);
    if (b) kept.push({ page: i, data: b.toString("base64") });
  }
  return {
    regions: regions.map((r) => ({ name: r.name, start: hex(r.start), end: hex(r.end) })),
    pageHashes: hashes.toString("base64"),
    blockCrcs: crcs.toString("base64"),
    sites: sites.table.serialize(),
    siteProblems: [...sites.problems, ...(sites.unrecognised > 0 ? [`${sites.unrecognised} jump-table sites held neither a NOP nor a jmp at baseline`] : [])],
    criticalPages: [...critical].sort((a, b) => a - b),
    functions: (options.criticalFunctions ?? []).map((f) => ({ name: f.name, start: hex(f.start), end: hex(f.end) })),
    keptPages: kept,
  };
}

/** The CRC32 of each 256-byte block of a page, as u32 LE. */
function blockCrcsOf(page: Buffer): Buffer {
  const out = Buffer.alloc(BLOCKS_PER_PAGE * 4);
  for (let b = 0; b < BLOCKS_PER_PAGE; b++) out.writeUInt32LE(crc32(page.subarray(b * BLOCK, (b + 1) * BLOCK)), b * 4);
  return out;
}

/** Global page index of `va`, or undefined outside the regions. */
function pageIndex(regions: readonly TextRegion[], va: bigint): number | undefined {
  for (const r of regions) if (va >= r.start && va < r.end) return r.firstPage + Number((va - r.start) / BigInt(PAGE));
  return undefined;
}

const HEX_ADDR = /^0x[0-9a-f]{1,16}$/;

/** How one page compared. */
export type PageVerdict =
  | { readonly page: number; readonly status: "same" }
  | {
      readonly page: number;
      readonly status: "explained";
      readonly patched: Partial<Record<PatchKind, number>>;
      readonly foreign: { site: bigint; kind: PatchKind; target: bigint }[];
    }
  | {
      readonly page: number;
      readonly status: "changed";
      readonly illegitimate: { site: bigint; kind: PatchKind; found: string; why: string; target?: bigint }[];
      /** Exact changed byte runs (after normalisation), when the baseline kept this page's bytes. */
      readonly diffs: { address: bigint; expected: string; found: string }[] | undefined;
      /** Start addresses of the 256-byte blocks whose CRC changed (after normalisation). */
      readonly blocks: bigint[];
      /** Direct calls/jmps the change rewired (only when the baseline kept this page's bytes). */
      readonly branches: RetargetedBranch[];
    }
  | { readonly page: number; readonly status: "unreadable"; readonly address: bigint };

/** The decoded text baseline, ready to check pages. */
export class TextBaseline {
  readonly totalPages: number;
  private readonly kept = new Map<number, Buffer>();

  private constructor(
    readonly regions: readonly TextRegion[],
    private readonly hashes: Buffer,
    private readonly crcs: Buffer,
    readonly sites: PatchSiteTable,
    readonly criticalPages: readonly number[],
    readonly functions: readonly CriticalFunction[],
    kept: { page: number; data: Buffer }[],
  ) {
    this.totalPages = regions.reduce((n, r) => n + r.pages, 0);
    for (const k of kept) this.kept.set(k.page, k.data);
  }

  /** Decodes (and checks) the JSON form. */
  static decode(d: TextBaselineData): TextBaseline {
    const bad = (why: string): IntrospectionError => new IntrospectionError("host-input", `Cannot read the text baseline: ${why}`);
    if (!Array.isArray(d.regions) || d.regions.length === 0 || d.regions.length > 4) throw bad("no regions");
    const regions: TextRegion[] = [];
    let first = 0;
    for (const r of d.regions) {
      if ((r.name !== "text" && r.name !== "rodata") || !HEX_ADDR.test(r.start) || !HEX_ADDR.test(r.end)) throw bad(`region ${JSON.stringify(r)}`);
      const start = BigInt(r.start);
      const end = BigInt(r.end);
      if (end <= start || (end - start) % BigInt(PAGE) !== 0n || (start & 0xfffn) !== 0n) throw bad(`region ${r.name} is not page-aligned`);
      const pages = Number((end - start) / BigInt(PAGE));
      if (first + pages > MAX_PAGES) throw bad("too many pages");
      regions.push({ name: r.name, start, end, firstPage: first, pages });
      first += pages;
    }
    const hashes = Buffer.from(d.pageHashes, "base64");
    if (hashes.length !== first * HASH_BYTES) throw bad(`${hashes.length} hash bytes for ${first} pages`);
    const crcs = Buffer.from(d.blockCrcs, "base64");
    if (crcs.length !== first * BLOCKS_PER_PAGE * 4) throw bad(`${crcs.length} CRC bytes for ${first} pages`);
    const inPages = (i: unknown): i is number => Number.isInteger(i) && (i as number) >= 0 && (i as number) < first;
    if (!Array.isArray(d.criticalPages) || !d.criticalPages.every(inPages)) throw bad("critical pages out of range");
    const functions = (d.functions ?? []).map((f) => {
      if (typeof f.name !== "string" || !HEX_ADDR.test(f.start) || !HEX_ADDR.test(f.end) || BigInt(f.end) <= BigInt(f.start)) throw bad(`function ${JSON.stringify(f)}`);
      return { name: f.name, start: BigInt(f.start), end: BigInt(f.end) };
    });
    const kept = (d.keptPages ?? []).map((k) => {
      const data = Buffer.from(k.data, "base64");
      if (!inPages(k.page) || data.length !== PAGE) throw bad(`kept page ${String(k.page)}`);
      return { page: k.page, data };
    });
    return new TextBaseline(regions, hashes, crcs, PatchSiteTable.deserialize(d.sites), [...d.criticalPages], functions, kept);
  }

  /** Kernel virtual address of page `i`. */
  pageAddress(i: number): bigint {
    for (const r of this.regions) if (i >= r.firstPage && i < r.firstPage + r.pages) return r.start + BigInt((i - r.firstPage) * PAGE);
    throw new IntrospectionError("host-input", `Cannot locate text page ${i}: there are ${this.totalPages}`);
  }

  regionOf(i: number): TextRegion | undefined {
    return this.regions.find((r) => i >= r.firstPage && i < r.firstPage + r.pages);
  }

  /** Whether the baseline kept page `i`'s bytes. */
  hasBytes(i: number): boolean {
    return this.kept.has(i);
  }

  private expectedHash(i: number): Buffer {
    return this.hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  /**
   * Checks pages (global indexes; consecutive runs in one region are read with one read). Each page costs one
   * SHA-256 when unchanged; a changed page is re-read with margins and normalised.
   */
  check(model: KernelModel, pages: readonly number[], policy: TargetPolicy): PageVerdict[] {
    const out: PageVerdict[] = [];
    let i = 0;
    while (i < pages.length) {
      const first = pages[i] as number;
      const region = this.regionOf(first);
      let n = 1;
      while (i + n < pages.length && pages[i + n] === first + n && region && first + n < region.firstPage + region.pages && n < 1024) n++;
      i += n;
      if (!region) continue;
      const va = this.pageAddress(first);
      const run = model.kernel.read(va, n * PAGE);
      for (let k = 0; k < n; k++) {
        const p = first + k;
        const page = run ? run.subarray(k * PAGE, (k + 1) * PAGE) : model.kernel.read(va + BigInt(k * PAGE), PAGE);
        if (!page) {
          out.push({ page: p, status: "unreadable", address: va + BigInt(k * PAGE) });
          continue;
        }
        if (sha256(page).equals(this.expectedHash(p))) out.push({ page: p, status: "same" });
        else out.push(this.explain(model, p, page, policy));
      }
    }
    return out;
  }

  /** The slow path for a page whose hash differs. */
  private explain(model: KernelModel, p: number, page: Buffer, policy: TargetPolicy): PageVerdict {
    const va = this.pageAddress(p);
    const region = this.regionOf(p);
    // Margins let sites on the page's edges be judged whole; at a region's edge they may be unmapped.
    const wide = model.kernel.read(va - BigInt(MARGIN), PAGE + 2 * MARGIN);
    const cur = wide ?? page;
    const curStart = wide ? va - BigInt(MARGIN) : va;
    const n = region?.name === "text" ? normalise(cur, curStart, va, va + BigInt(PAGE), this.sites, policy) : undefined;
    const normalised = n?.normalised ?? page;
    if (n && sha256(normalised).equals(this.expectedHash(p))) return { page: p, status: "explained", patched: n.patched, foreign: n.foreign };
    const base = this.kept.get(p);
    const now = blockCrcsOf(normalised);
    const was = this.crcs.subarray(p * BLOCKS_PER_PAGE * 4, (p + 1) * BLOCKS_PER_PAGE * 4);
    const blocks: bigint[] = [];
    for (let b = 0; b < BLOCKS_PER_PAGE; b++) if (now.readUInt32LE(b * 4) !== was.readUInt32LE(b * 4)) blocks.push(va + BigInt(b * BLOCK));
    return { page: p, status: "changed", illegitimate: n?.illegitimate ?? [], diffs: base ? diffRuns(va, base, normalised) : undefined, blocks, branches: base ? retargetedBranches(va, base, normalised) : [] };
  }

  /** Sorted global page indexes of the pages overlapping [start, end). */
  pagesOf(start: bigint, end: bigint): number[] {
    const out: number[] = [];
    for (let va = start & ~0xfffn; va < end && out.length < 4096; va += BigInt(PAGE)) {
      const i = pageIndex(this.regions, va);
      if (i !== undefined) out.push(i);
    }
    return out;
  }
}

/** Runs of differing bytes, at most MAX_DIFFS, each cut to 32 bytes for the report. */
export function diffRuns(va: bigint, expected: Buffer, found: Buffer): { address: bigint; expected: string; found: string }[] {
  const out: { address: bigint; expected: string; found: string }[] = [];
  const n = Math.min(expected.length, found.length);
  for (let i = 0; i < n && out.length < MAX_DIFFS; i++) {
    if (expected[i] === found[i]) continue;
    // Differences fewer than 4 equal bytes apart are one change (one instruction rewritten); a run is ≤ 64 bytes.
    let last = i;
    for (let j = i + 1; j < n && j - last <= 4 && j - i < 64; j++) if (expected[j] !== found[j]) last = j;
    const end = Math.min(last + 1, i + 32);
    out.push({ address: va + BigInt(i), expected: expected.subarray(i, end).toString("hex"), found: found.subarray(i, end).toString("hex") });
    i = last;
  }
  return out;
}

/** The incremental part of the sweep state. */
export interface TextCursor {
  /** Next page of the rotating window. */
  cursor: number;
  /** Pages found changed (not explained), re-checked every sweep. */
  hot: number[];
}

/** Which pages this sweep hashes: the window, then critical and hot pages not already in it. Sorted, unique. */
export function planPages(total: number, cursor: number, perSweep: number, critical: readonly number[], hot: readonly number[]): { pages: number[]; next: number; window: number } {
  if (total <= 0) return { pages: [], next: 0, window: 0 };
  const w = Math.max(0, Math.min(total, Math.floor(perSweep)));
  const start = Number.isInteger(cursor) && cursor >= 0 ? cursor % total : 0;
  const set = new Set<number>();
  for (let k = 0; k < w; k++) set.add((start + k) % total);
  for (const p of critical) if (Number.isInteger(p) && p >= 0 && p < total) set.add(p);
  for (const p of hot.slice(0, MAX_HOT_PAGES)) if (Number.isInteger(p) && p >= 0 && p < total) set.add(p);
  return { pages: [...set].sort((a, b) => a - b), next: (start + w) % total, window: w };
}

/**
 * A TargetPolicy from the model: function starts in kernel text, plus the module area; for ftrace call sites
 * only ftrace_caller, ftrace_regs_caller and the trampolines of the ops now on ftrace_ops_list (read now), plus
 * `recentTrampolines`: ones seen on the list in recent sweeps (ftrace_shutdown() unlinks an ops before it puts
 * its sites back to NOPs, so for a moment the sites call a trampoline whose ops is no longer listed).
 */
export function targetPolicy(model: KernelModel, layout: KernelLayout, recentTrampolines: readonly bigint[] = []): TargetPolicy & { readonly ftraceProblem: string | undefined; readonly trampolines: readonly bigint[] } {
  const ftrace = new Set<bigint>();
  for (const name of ["ftrace_caller", "ftrace_regs_caller"]) {
    const a = model.symbols.address(name);
    if (a !== undefined && inRange(layout.text, a)) ftrace.add(a);
  }
  let ftraceProblem: string | undefined;
  const trampolines: bigint[] = [];
  const w = readFtraceOps(model, layout);
  if (!w) ftraceProblem = "no struct ftrace_ops layout or no ftrace_ops_list/ftrace_list_end: ftrace trampolines are not accepted";
  else {
    if (!w.complete) ftraceProblem = `${w.problem ?? "ftrace_ops_list cannot be walked"}: ftrace trampolines are not accepted`;
    for (const t of w.trampolines) trampolines.push(t.start);
  }
  for (const t of [...trampolines, ...recentTrampolines]) if (inRange(layout.moduleArea, t)) ftrace.add(t);
  return {
    moduleArea: layout.moduleArea,
    ftraceProblem,
    trampolines,
    isFtraceTarget: (address: bigint): boolean => ftrace.has(address),
    isFunctionStart(address: bigint): boolean {
      if (!inRange(layout.text, address)) return false;
      const n = model.symbols.nearest(address);
      return n !== undefined && n.offset === 0n;
    },
  };
}

/** "sym+0x10 .. sym2+0x40" for a page, for messages. */
export function describePage(model: KernelModel, va: bigint): string {
  return `${describeAddress(model.symbols, va)} .. ${describeAddress(model.symbols, va + BigInt(PAGE - 1))}`;
}
