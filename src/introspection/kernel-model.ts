/**
 * Builds the engine's model of a running guest kernel from its physical memory alone: which kernel it is
 * (release, build id), where KASLR put it, how it pages (4 or 5 levels), its page-table base, its symbols
 * (kallsyms) and its types (BTF). Every fact that can be derived two ways is derived two ways, and where the
 * ways differ the model records a `Disagreement` instead of failing: a guest that lies in VMCOREINFO, patches
 * kallsyms or runs unexpected page tables shows up as data for the checks built on top.
 *
 * Models are expensive (tens of ms) and identical for every VM running the same build, so they are cached by
 * build id; a cached model is re-placed for the new boot's KASLR shift after a cheap consistency check.
 */
import { createHash } from "node:crypto";
import { Btf } from "./btf.ts";
import { IntrospectionError, hex } from "./errors.ts";
import { carveKallsyms, checkKallsymsVersion, decodeKallsyms, kallsymsLayoutFromVmcoreinfo, type KallsymsChecks, type KallsymsLayout, type SymbolTable } from "./kallsyms.ts";
import { VirtualMemory, la57FromCr4, rootFromCr3, type PagingLevels, type PagingRoot, type Translation } from "./page-walk.ts";
import type { PhysicalMemory } from "./physical-memory.ts";
import { candidateAt, kernelVersion, scanVmcoreinfo, type VmcoreInfo, type VmcoreinfoCandidate } from "./vmcoreinfo.ts";

/** x86-64 __START_KERNEL_map: the kernel image mapping starts here; __pa_symbol(x) = x - this + phys_base. */
export const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
/** Link-time _text of a default x86-64 build (CONFIG_PHYSICAL_START 16 MiB): the base of the KASLR shift. */
export const DEFAULT_LINK_TEXT = 0xffff_ffff_8100_0000n;
const U64 = (1n << 64n) - 1n;
const MAX_BTF_BYTES = 64 * 1024 * 1024;

/** Something two sources say differently. `check` is a stable identifier for alerting and tests. */
export interface Disagreement {
  readonly check: string;
  /** "alert": a sign of tampering or a wrong model; "warning": odd but explainable; "info": noted. */
  readonly severity: "info" | "warning" | "alert";
  readonly message: string;
}

export interface KernelModelTimings {
  vmcoreinfoMs: number;
  kallsymsMs: number;
  btfMs: number;
  totalMs: number;
}

/** What the engine knows about one running kernel. */
export interface KernelModel {
  readonly release: string;
  readonly version: readonly [number, number, number];
  readonly buildId: string | undefined;
  /** Runtime minus link-time address of the kernel image (KASLR), as this model settled on it. */
  readonly kaslrShift: bigint;
  /** __pa_symbol(x) = x - START_KERNEL_MAP + physBase (mod 2^64). */
  readonly physBase: bigint;
  readonly pagingLevels: PagingLevels;
  /** swapper_pg_dir (init_top_pgt): the kernel's own top-level page table, physical. */
  readonly kernelRoot: PagingRoot;
  /** Kernel virtual memory through swapper_pg_dir. Clear its cache at each sweep. */
  readonly kernel: VirtualMemory;
  readonly symbols: SymbolTable;
  readonly btf: Btf | undefined;
  /** VMCOREINFO as used (undefined when the model was built from a carve). */
  readonly vmcoreinfo: VmcoreInfo | undefined;
  /** Guest-physical address of the VMCOREINFO text used; pass it back as `vmcoreinfoHint` next time. */
  readonly vmcoreinfoAt: bigint | undefined;
  readonly kallsymsLayout: Required<KallsymsLayout>;
  readonly kallsymsChecks: KallsymsChecks;
  readonly disagreements: readonly Disagreement[];
  /** True when symbols and types came from the cache. */
  readonly fromCache: boolean;
  readonly timings: KernelModelTimings;
}

/** The per-build part of a model: what is the same for every boot of the same kernel build. */
export interface CachedBuild {
  readonly release: string;
  readonly symbols: SymbolTable;
  readonly btf: Btf | undefined;
  readonly kallsymsChecks: KallsymsChecks;
  /** SHA-256 of kallsyms_token_table + kallsyms_token_index + kallsyms_num_syms, to recognise the same table. */
  readonly tableDigest: string;
}

/** Models by build id. A plain Map: builds are few and small next to guest RAM. */
export type KernelModelCache = Map<string, CachedBuild>;

export interface KernelModelOptions {
  /** Live CR3 (any process: the kernel half of every page table is shared). Cross-checks the kernel mapping. */
  cr3?: bigint;
  /** Live CR4: LA57 decides 4- vs 5-level paging over VMCOREINFO's word. */
  cr4?: bigint;
  /** Where VMCOREINFO was last time; tried before scanning all of RAM. */
  vmcoreinfoHint?: bigint;
  cache?: KernelModelCache;
  /** "memory" (default): __start_BTF..__stop_BTF; a Buffer: a BTF blob (e.g. a vmlinux .BTF); "none": skip. */
  btf?: "memory" | "none" | Buffer;
  /** Also carve kallsyms from physical memory and compare with the VMCOREINFO layout (≈ 60-100 ms more). */
  independentCarve?: boolean;
  /** A System.map (name → link-time address) for the same build: cross-checks the KASLR shift. */
  systemMap?: ReadonlyMap<string, bigint>;
  /** Link-time _text when no System.map is given. Default 0xffffffff81000000. */
  linkTimeText?: bigint;
}

const ms = (t0: number): number => Math.round((performance.now() - t0) * 100) / 100;
const paSymbol = (va: bigint, physBase: bigint): bigint => (va - START_KERNEL_MAP + physBase) & U64;

/** Builds (or fetches from the cache) the model of the kernel running in `mem`. */
export function buildKernelModel(mem: PhysicalMemory, options: KernelModelOptions = {}): KernelModel {
  const t0 = performance.now();
  const disagreements: Disagreement[] = [];
  const note = (check: string, severity: Disagreement["severity"], message: string): void => {
    if (disagreements.length < 1000) disagreements.push({ check, severity, message });
  };

  // 1. VMCOREINFO: the hinted location first, then a scan. Distinct texts are tried in turn.
  let candidates: VmcoreinfoCandidate[] = [];
  if (options.vmcoreinfoHint !== undefined) {
    const c = candidateAt(mem, options.vmcoreinfoHint);
    if (c.result.ok) candidates = [c];
  }
  if (candidates.length === 0) {
    let scan = scanVmcoreinfo(mem);
    if (scan.valid.length === 0) scan = scanVmcoreinfo(mem, { mode: "anywhere" });
    if (scan.truncated) note("vmcoreinfo-decoys", "alert", `More than ${scan.candidates.length} VMCOREINFO-like texts in RAM: the scan stopped early`);
    candidates = [...scan.valid];
  }
  const vmcoreinfoMs = ms(t0);
  const distinct = new Map<string, VmcoreinfoCandidate>();
  for (const c of candidates) if (!distinct.has(c.text)) distinct.set(c.text, c);
  if (distinct.size > 1) {
    note("vmcoreinfo-copies", "alert", `VMCOREINFO copies differ: ${[...distinct.values()].map((c) => `${c.site} at ${hex(c.paddr)}`).join(", ")}`);
  }

  if (distinct.size === 0) {
    note("vmcoreinfo-missing", "alert", "No VMCOREINFO in guest RAM: the model was built from an independent kallsyms carve");
    return fromCarve(mem, options, disagreements, t0, vmcoreinfoMs);
  }
  let lastError: unknown;
  for (const c of distinct.values()) {
    if (!c.result.ok) continue;
    try {
      return fromVmcoreinfo(mem, c, c.result.info, options, [...disagreements], t0, vmcoreinfoMs);
    } catch (err) {
      if (!(err instanceof IntrospectionError)) throw err;
      if (err.reason === "unsupported") throw err;
      lastError = err;
      note("vmcoreinfo-unusable", "alert", `VMCOREINFO at ${hex(c.paddr)} did not lead to a usable model: ${err.message}`);
    }
  }
  // Every VMCOREINFO copy misled us (or was damaged): the carve does not depend on it.
  try {
    return fromCarve(mem, options, disagreements, t0, vmcoreinfoMs);
  } catch (err) {
    if (!(err instanceof IntrospectionError)) throw err;
    throw lastError instanceof IntrospectionError ? lastError : err;
  }
}

interface Placement {
  levels: PagingLevels;
  root: PagingRoot;
  kernel: VirtualMemory;
}

/** Paging levels from VMCOREINFO, overridden by CR4.LA57 (hardware state) when given. */
function decideLevels(info: VmcoreInfo | undefined, options: KernelModelOptions, note: (c: string, s: Disagreement["severity"], m: string) => void): PagingLevels {
  const claimed = info?.pgtableL5Enabled;
  if (options.cr4 !== undefined) {
    const la57 = la57FromCr4(options.cr4);
    if (claimed !== undefined && claimed !== la57) {
      note("paging-levels", "alert", `VMCOREINFO says pgtable_l5_enabled=${claimed ? 1 : 0} but CR4.LA57 is ${la57 ? 1 : 0}; using CR4`);
    }
    return la57 ? 5 : 4;
  }
  return claimed ? 5 : 4;
}

function describe(t: Translation): string {
  return t.mapped ? hex(t.paddr) : `not mapped (${t.reason} at level ${t.level})`;
}

/** True when the table at `rootBase`, walked with `levels`, maps `va` to __pa_symbol(va). */
function mapsItself(mem: PhysicalMemory, rootBase: bigint, levels: PagingLevels, va: bigint, physBase: bigint): boolean {
  const t = new VirtualMemory(mem, { base: rootBase, levels }).translate(va);
  return t.mapped && t.paddr === paSymbol(va, physBase);
}

/** Cross-checks the kernel mapping: swapper_pg_dir maps itself and _stext where __pa_symbol says, as does CR3. */
function checkPlacement(
  p: Placement,
  anchors: { name: string; va: bigint }[],
  physBase: bigint,
  options: KernelModelOptions,
  note: (c: string, s: Disagreement["severity"], m: string) => void,
): void {
  for (const { name, va } of anchors) {
    const t = p.kernel.translate(va);
    const expect = paSymbol(va, physBase);
    if (!t.mapped || t.paddr !== expect) {
      note("kernel-mapping", "alert", `${name} (${hex(va)}) translates to ${describe(t)} through swapper_pg_dir, but __pa_symbol gives ${hex(expect)}`);
    }
    if (options.cr3 !== undefined) {
      const live = new VirtualMemory(p.kernel.physical, rootFromCr3(options.cr3, p.levels)).translate(va);
      if (!live.mapped || !t.mapped || live.paddr !== t.paddr) {
        note("cr3-mapping", "alert", `${name} (${hex(va)}) translates to ${describe(live)} through the live CR3 but to ${describe(t)} through swapper_pg_dir`);
      }
    }
  }
}

/**
 * A digest of all of kallsyms — offsets, relative base, count, names, markers, token tables: the contiguous
 * region from the lowest to the end of the token index — so a cached model is reused only for a guest whose
 * symbol data is byte for byte the one decoded. (The cache is shared by all VMs of a host: a guest that
 * altered its own kallsyms must not hand its symbols to another tenant's VM of the same build.)
 */
function digestTables(kernel: VirtualMemory, layout: KallsymsLayout): string | undefined {
  const start = [layout.offsets, layout.relativeBase, layout.numSyms, layout.names, layout.tokenTable, layout.tokenIndex].reduce((a, b) => (b < a ? b : a));
  const end = layout.tokenIndex + 512n;
  if (end <= start || end - start > MAX_KALLSYMS_DIGEST) return undefined;
  const h = createHash("sha256");
  for (let at = start; at < end; at += DIGEST_CHUNK) {
    const read = kernel.read(at, Number(end - at < DIGEST_CHUNK ? end - at : DIGEST_CHUNK));
    if (!read) return undefined;
    // kallsyms_relative_base is relocated at boot (it moves with KASLR; the cached symbols are rebased on it):
    // its 8 bytes count as zeros. (A copy: the read may share the page cache's memory.)
    const part = Buffer.from(read);
    for (let i = 0n; i < 8n; i++) {
      const off = layout.relativeBase + i - at;
      if (off >= 0n && off < BigInt(part.length)) part[Number(off)] = 0;
    }
    h.update(part);
  }
  return h.digest("hex");
}

/** kallsyms of the 6.12 cloud kernel spans ≈ 2.6 MiB; a region far larger is not a kernel's. */
const MAX_KALLSYMS_DIGEST = 32n << 20n;
const DIGEST_CHUNK = 1n << 20n;
/** Builds kept in a model cache: a guest can make up build ids, so the cache must not grow with them. */
export const MODEL_CACHE_BUILDS = 8;

/** Loads BTF as the options say; failures become disagreements, not errors. */
function loadBtf(kernel: VirtualMemory, symbols: SymbolTable, options: KernelModelOptions, note: (c: string, s: Disagreement["severity"], m: string) => void): Btf | undefined {
  const source = options.btf ?? "memory";
  if (source === "none") return undefined;
  try {
    if (Buffer.isBuffer(source)) return Btf.parse(source);
    const start = symbols.address("__start_BTF");
    const stop = symbols.address("__stop_BTF");
    if (start === undefined || stop === undefined) {
      note("btf-missing", "warning", "The kernel has no __start_BTF/__stop_BTF symbols: no type information");
      return undefined;
    }
    if (stop <= start || stop - start > BigInt(MAX_BTF_BYTES)) {
      note("btf-bounds", "alert", `__start_BTF..__stop_BTF (${hex(start)}..${hex(stop)}) is not a plausible BTF range`);
      return undefined;
    }
    const r = kernel.readDetailed(start, Number(stop - start));
    if (!r.ok) {
      note("btf-unreadable", "alert", `BTF at ${hex(start)} cannot be read: ${hex(r.vaddr)} is not mapped`);
      return undefined;
    }
    // Copy: the parsed BTF outlives the sweep's page cache and must not alias it.
    return Btf.parse(Buffer.from(r.data));
  } catch (err) {
    if (!(err instanceof IntrospectionError)) throw err;
    note("btf-malformed", "alert", err.message);
    return undefined;
  }
}

/** VMCOREINFO's OFFSET()/SIZE() entries against BTF: two descriptions of the same build's types. */
function crossCheckTypes(info: VmcoreInfo, btf: Btf, note: (c: string, s: Disagreement["severity"], m: string) => void): void {
  let checked = 0;
  for (const [key, value] of info.offsets) {
    if (++checked > 512) break;
    const dot = key.indexOf(".");
    if (dot <= 0) continue;
    try {
      const got = btf.structMemberOffset(key.slice(0, dot), key.slice(dot + 1));
      if (BigInt(got) !== value) note("btf-vs-vmcoreinfo", "alert", `OFFSET(${key}) is ${value} in VMCOREINFO but ${got} in BTF`);
    } catch (err) {
      if (!(err instanceof IntrospectionError)) throw err;
      // Not every crash-tool name is a BTF struct member (e.g. renamed or macro-built names): not a disagreement.
    }
  }
  for (const [key, value] of info.sizes) {
    if (++checked > 1024) break;
    try {
      const got = btf.structSize(key);
      if (BigInt(got) !== value) note("btf-vs-vmcoreinfo", "alert", `SIZE(${key}) is ${value} in VMCOREINFO but ${got} in BTF`);
    } catch (err) {
      if (!(err instanceof IntrospectionError)) throw err;
    }
  }
}

/** SYMBOL()s whose value is a pointer's content, not the symbol's address (SPARSEMEM_EXTREME, vmemmap base). */
const VALUE_SYMBOLS = new Set(["mem_section", "vmemmap"]);

function fromVmcoreinfo(
  mem: PhysicalMemory,
  cand: VmcoreinfoCandidate,
  info: VmcoreInfo,
  options: KernelModelOptions,
  disagreements: Disagreement[],
  t0: number,
  vmcoreinfoMs: number,
): KernelModel {
  const note = (check: string, severity: Disagreement["severity"], message: string): void => {
    if (disagreements.length < 1000) disagreements.push({ check, severity, message });
  };
  const version = checkKallsymsVersion(info.osRelease);
  const need = (v: bigint | undefined, what: string): bigint => {
    if (v === undefined) throw new IntrospectionError("not-found", `Cannot build a kernel model from VMCOREINFO at ${hex(cand.paddr)}: it has no ${what}`);
    return v;
  };
  const physBase = need(info.physBase, "NUMBER(phys_base)");
  const swapper = info.symbols.get("swapper_pg_dir") ?? need(info.symbols.get("init_top_pgt"), "SYMBOL(swapper_pg_dir)");
  const stext = need(info.symbols.get("_stext"), "SYMBOL(_stext)");
  const rootBase = paSymbol(swapper, physBase) & 0x000f_ffff_ffff_f000n;
  let levels = decideLevels(info, options, note);
  if (options.cr4 === undefined && !mapsItself(mem, rootBase, levels, swapper, physBase)) {
    // Without CR4, VMCOREINFO's word is all we have; if its paging mode cannot even map swapper_pg_dir, try the other.
    const other: PagingLevels = levels === 5 ? 4 : 5;
    if (mapsItself(mem, rootBase, other, swapper, physBase)) {
      note("paging-levels", "alert", `VMCOREINFO says ${levels}-level paging, but only ${other}-level walks of swapper_pg_dir work`);
      levels = other;
    }
  }
  const root: PagingRoot = { base: rootBase, levels };
  const kernel = new VirtualMemory(mem, root);
  checkPlacement({ levels, root, kernel }, [{ name: "swapper_pg_dir", va: swapper }, { name: "_stext", va: stext }], physBase, options, note);

  const layout = kallsymsLayoutFromVmcoreinfo(info);
  const tk = performance.now();
  let symbols: SymbolTable;
  let checks: KallsymsChecks;
  let fullLayout: Required<KallsymsLayout>;
  let btf: Btf | undefined;
  let fromCache = false;
  let btfMs = 0;
  const cached = info.buildId !== undefined ? options.cache?.get(info.buildId) : undefined;
  const digest = cached ? digestTables(kernel, layout) : undefined;
  const baseBuf = cached ? kernel.read(layout.relativeBase, 8) : undefined;
  if (cached && cached.release === info.osRelease && digest === cached.tableDigest && baseBuf) {
    symbols = cached.symbols.rebase(baseBuf.readBigUInt64LE(0));
    checks = cached.kallsymsChecks;
    btf = cached.btf;
    fromCache = true;
    // The kernel's own symbols for the two tables VMCOREINFO does not list.
    fullLayout = { ...layout, markers: symbols.address("kallsyms_markers") ?? 0n, seqsOfNames: symbols.address("kallsyms_seqs_of_names") ?? 0n };
  } else {
    if (cached) note("cache-mismatch", "alert", `Build ${info.buildId ?? "?"} is cached, but this guest's kallsyms tables differ from the cached build's`);
    const decoded = decodeKallsyms(kernel, layout, info.osRelease);
    symbols = decoded.table;
    checks = decoded.checks;
    fullLayout = decoded.layout;
  }
  const kallsymsMs = ms(tk);
  if (!fromCache) {
    const tb = performance.now();
    btf = loadBtf(kernel, symbols, options, note);
    btfMs = ms(tb);
    if (info.buildId !== undefined && options.cache && !cached) {
      const d = digestTables(kernel, layout);
      if (d !== undefined) {
        options.cache.set(info.buildId, { release: info.osRelease, symbols, btf, kallsymsChecks: checks, tableDigest: d });
        // A Map iterates in insertion order: the oldest builds go first.
        for (const key of options.cache.keys()) if (options.cache.size > MODEL_CACHE_BUILDS) options.cache.delete(key);
      }
    }
  }

  if (checks.markers !== "ok") note("kallsyms-markers", "alert", `kallsyms_markers ${checks.markers === "mismatch" ? "disagree with the names stream" : "cannot be read"}`);
  if (checks.seqsOfNames !== "ok") note("kallsyms-seqs", "alert", `kallsyms_seqs_of_names is ${checks.seqsOfNames}`);
  if (!checks.addressesSorted) note("kallsyms-order", "alert", "kallsyms addresses are not in ascending order");
  if (checks.unusedTokens > 16) note("kallsyms-tokens", "info", `${checks.unusedTokens} kallsyms tokens are never used (a kernel-built table uses nearly all)`);

  // Symbols VMCOREINFO names vs the same symbols in kallsyms.
  for (const [name, va] of info.symbols) {
    if (VALUE_SYMBOLS.has(name)) continue;
    const kname = name === "swapper_pg_dir" ? "init_top_pgt" : name;
    const k = symbols.lookupAll(kname);
    if (k.length === 0) continue;
    if (!k.some((s) => s.address === va)) {
      note("symbol-vs-vmcoreinfo", "alert", `SYMBOL(${name}) is ${hex(va)} in VMCOREINFO but ${k.map((s) => hex(s.address)).join(", ")} in kallsyms`);
    }
  }
  const kText = symbols.address("_text") ?? symbols.address("_stext");
  if (kText === undefined) note("kaslr-shift", "alert", "kallsyms has no _text/_stext");
  const kallsymsShift = kText !== undefined ? (kText - (options.linkTimeText ?? DEFAULT_LINK_TEXT)) & U64 : undefined;
  let kaslrShift = info.kernelOffset ?? kallsymsShift ?? 0n;
  if (options.systemMap) {
    const linkStext = options.systemMap.get("_stext");
    const runStext = symbols.address("_stext");
    if (linkStext !== undefined && runStext !== undefined) {
      const mapShift = (runStext - linkStext) & U64;
      if (info.kernelOffset !== undefined && mapShift !== info.kernelOffset) {
        note("kaslr-shift", "alert", `KERNELOFFSET is ${hex(info.kernelOffset)} but kallsyms _stext minus System.map _stext is ${hex(mapShift)}`);
      }
      kaslrShift = mapShift;
    }
  } else if (info.kernelOffset !== undefined && kallsymsShift !== undefined && kallsymsShift !== info.kernelOffset) {
    note("kaslr-shift", "alert", `KERNELOFFSET is ${hex(info.kernelOffset)} but kallsyms _text implies ${hex(kallsymsShift)} (link-time _text ${hex(options.linkTimeText ?? DEFAULT_LINK_TEXT)})`);
  }
  if (info.kernelOffset === undefined) note("kaslr-shift", "warning", "VMCOREINFO has no KERNELOFFSET: the shift comes from kallsyms");
  // phys_base as the page tables imply it, from where kallsyms_token_table really is.
  const tt = kernel.translate(layout.tokenTable);
  if (tt.mapped) {
    const implied = (tt.paddr - (layout.tokenTable - START_KERNEL_MAP)) & U64;
    if (implied !== physBase) note("phys-base", "alert", `NUMBER(phys_base) is ${hex(physBase)} but the page tables imply ${hex(implied)}`);
  }
  if (btf) crossCheckTypes(info, btf, note);
  if (options.independentCarve) {
    try {
      const carved = carveKallsyms(mem).layout;
      for (const key of ["numSyms", "names", "tokenTable", "tokenIndex", "offsets", "relativeBase"] as const) {
        const t = kernel.translate(layout[key]);
        if (!t.mapped || t.paddr !== carved[key]) note("kallsyms-carve", "alert", `kallsyms ${key} is at ${t.mapped ? hex(t.paddr) : "an unmapped address"} per VMCOREINFO but at ${hex(carved[key])} per the carve`);
      }
    } catch (err) {
      if (!(err instanceof IntrospectionError)) throw err;
      note("kallsyms-carve", "warning", err.message);
    }
  }
  return {
    release: info.osRelease,
    version,
    buildId: info.buildId,
    kaslrShift,
    physBase,
    pagingLevels: levels,
    kernelRoot: root,
    kernel,
    symbols,
    btf,
    vmcoreinfo: info,
    vmcoreinfoAt: cand.paddr,
    kallsymsLayout: fullLayout,
    kallsymsChecks: checks,
    disagreements,
    fromCache,
    timings: { vmcoreinfoMs, kallsymsMs, btfMs, totalMs: ms(t0) },
  };
}

/** Without VMCOREINFO: carve kallsyms from physical memory, then derive phys_base, the page tables and the release. */
function fromCarve(mem: PhysicalMemory, options: KernelModelOptions, disagreements: Disagreement[], t0: number, vmcoreinfoMs: number): KernelModel {
  const note = (check: string, severity: Disagreement["severity"], message: string): void => {
    if (disagreements.length < 1000) disagreements.push({ check, severity, message });
  };
  const tk = performance.now();
  const carved = carveKallsyms(mem);
  // The carve only recognises the 6.4+ table order, so gate the decoder on that until the banner is read.
  const decoded = decodeKallsyms(mem, carved.layout, "6.4.0");
  const symbols = decoded.table;
  const kallsymsMs = ms(tk);
  const ttVa = symbols.address("kallsyms_token_table");
  const top = symbols.address("init_top_pgt");
  const banner = symbols.address("linux_banner");
  if (ttVa === undefined || top === undefined) throw new IntrospectionError("not-found", "Cannot build a kernel model from a kallsyms carve: kallsyms_token_table or init_top_pgt is missing");
  const physBase = (carved.layout.tokenTable - (ttVa - START_KERNEL_MAP)) & U64;
  const stext = symbols.address("_stext") ?? top;
  const topPa = paSymbol(top, physBase) & 0x000f_ffff_ffff_f000n;
  let levels: PagingLevels;
  if (options.cr4 !== undefined) levels = decideLevels(undefined, options, note);
  else {
    // No word on the paging mode: take the one under which init_top_pgt maps _stext where __pa_symbol puts it.
    const fits = (l: PagingLevels): boolean => mapsItself(mem, topPa, l, stext, physBase);
    levels = fits(5) && !fits(4) ? 5 : 4;
    note("paging-levels", "info", `Neither VMCOREINFO nor CR4 gave the paging mode: ${levels} levels fit the page tables`);
  }
  const root: PagingRoot = { base: topPa, levels };
  const kernel = new VirtualMemory(mem, root);
  checkPlacement({ levels, root, kernel }, [{ name: "init_top_pgt", va: top }, { name: "_stext", va: stext }], physBase, options, note);
  let release = "";
  const b = banner !== undefined ? kernel.read(banner, 256) : undefined;
  const m = b ? /^Linux version ([A-Za-z0-9._+~-]{1,64}) /.exec(b.toString("latin1", 0, Math.max(0, b.indexOf(0)))) : null;
  if (m?.[1]) release = m[1];
  const version = kernelVersion(release);
  if (!version) throw new IntrospectionError("not-found", "Cannot build a kernel model from a kallsyms carve: linux_banner does not name a release");
  if (version[0] < 6 || (version[0] === 6 && version[1] < 4)) {
    throw new IntrospectionError("unsupported", `Cannot build a kernel model of Linux ${release} without VMCOREINFO: the kallsyms carve needs 6.4 or later`);
  }
  const tb = performance.now();
  const btf = loadBtf(kernel, symbols, options, note);
  const btfMs = ms(tb);
  const text = symbols.address("_text") ?? stext;
  return {
    release,
    version,
    buildId: undefined,
    kaslrShift: (text - (options.linkTimeText ?? DEFAULT_LINK_TEXT)) & U64,
    physBase,
    pagingLevels: levels,
    kernelRoot: root,
    kernel,
    symbols,
    btf,
    vmcoreinfo: undefined,
    vmcoreinfoAt: undefined,
    kallsymsLayout: decoded.layout,
    kallsymsChecks: decoded.checks,
    disagreements,
    fromCache: false,
    timings: { vmcoreinfoMs, kallsymsMs, btfMs, totalMs: ms(t0) },
  };
}

/** A one-line summary for logs and the dev check. */
export function summarizeModel(m: KernelModel): Record<string, unknown> {
  return {
    release: m.release,
    buildId: m.buildId,
    kaslrShift: hex(m.kaslrShift),
    physBase: hex(m.physBase),
    pagingLevels: m.pagingLevels,
    kernelRoot: hex(m.kernelRoot.base),
    symbols: m.symbols.count,
    btfTypes: m.btf?.typeCount,
    vmcoreinfoAt: m.vmcoreinfoAt === undefined ? undefined : hex(m.vmcoreinfoAt),
    fromCache: m.fromCache,
    kallsymsChecks: m.kallsymsChecks,
    disagreements: m.disagreements,
    timings: m.timings,
  };
}
