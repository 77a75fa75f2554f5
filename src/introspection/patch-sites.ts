/**
 * The places where a running Linux kernel legitimately rewrites its own text, and the forms each may take, so
 * that a text page that differs from its baseline can be EXPLAINED instead of alarmed:
 *
 * - ftrace call sites (5 bytes at each traceable function's fentry): a NOP, or a `call` into ftrace's entry code
 *   or a trampoline. After boot the `__mcount_loc` table is freed init memory (poisoned with 0xcc), so the sites
 *   come from ftrace's own runtime records (`ftrace_pages_start` → struct ftrace_page → struct dyn_ftrace[]).
 * - ftrace's own patchable calls inside ftrace_caller / ftrace_regs_caller (`ftrace_call`, `ftrace_regs_call`).
 * - static keys / jump labels (`__start___jump_table`..`__stop___jump_table`, entries {s32 code, s32 target,
 *   long key} relative to themselves): a 2- or 5-byte NOP, or a 2/5-byte `jmp` to exactly the entry's target.
 * - static calls: the call sites (`__start_static_call_sites`, entries {s32 addr, s32 key}) and the `__SCT__*`
 *   trampolines in .static_call.text: `call`/`jmp` to a function, a NOP, `ret`, or the 5-byte `xor %eax,%eax`.
 * - the transient states of text_poke_bp(): an int3 in the first byte while the rest is the old or new tail.
 *
 * An ftrace call site may only call what ftrace itself would write there (ftrace_get_addr_new(): ftrace_caller,
 * ftrace_regs_caller, or the trampoline of a registered ftrace_ops, `ops->trampoline`); the policy supplies that
 * set at each sweep (see text-integrity.ts targetPolicy). BPF direct-call trampolines are not accepted.
 *
 * Sites are collected at the trusted baseline moment and never re-read from the guest afterwards: a rootkit that
 * forges an ftrace record later cannot make its own patch look legitimate. A call/jmp explained as legitimate
 * must still land on a function start in kernel text or in the module area (where ftrace and BPF trampolines
 * live); targets in the module area are reported as "foreign" so an ftrace-based hook stays visible.
 */
import { IntrospectionError, hex } from "./errors.ts";
import { inRange, isKernelPointer, readU64, type AddressRange, type FtraceOffsets } from "./kernel-layout.ts";
import type { KernelModel } from "./kernel-model.ts";

export const PATCH_KINDS = ["ftrace", "ftrace-op", "jump-label", "static-call", "static-call-tramp"] as const;
export type PatchKind = (typeof PATCH_KINDS)[number];

const NOP2 = [0x66, 0x90];
const NOP5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const RET5 = [0xc3, 0xcc, 0xcc, 0xcc, 0xcc];
const XOR5RAX = [0x2e, 0x2e, 0x2e, 0x31, 0xc0];
const INT3 = 0xcc;

/** Bounds on what the guest's tables may make us collect. A 6.12 cloud kernel has ~40k + 9k + 8k + 4k sites. */
export const MAX_PATCH_SITES = 1_000_000;
const MAX_FTRACE_PAGES = 65_536;
const MAX_TABLE_BYTES = 32 * 1024 * 1024;

/** One site: where, how long, what it held at baseline, and (jump labels) where its jmp must go. */
export interface PatchSite {
  readonly address: bigint;
  readonly length: 2 | 5;
  readonly kind: PatchKind;
  readonly original: Buffer;
  /** Jump labels only: the one legal jmp target. */
  readonly target: bigint | undefined;
}

/** A site before packing: offset and target (0xffffffff: none) from the table's base, kind code as packed. */
export interface RawSite {
  offset: number;
  code: number;
  target: number;
  original: Uint8Array;
}

/** A packed, sorted, JSON-serialisable table of sites relative to one base (the start of kernel text). */
export interface SerializedPatchSites {
  readonly base: string;
  readonly count: number;
  /** base64 of u32 offsets from `base`, ascending */
  readonly offsets: string;
  /** base64 of u8 kind indexes into PATCH_KINDS, with bit 7 set for 2-byte sites */
  readonly kinds: string;
  /** base64 of 5 original bytes per site */
  readonly original: string;
  /** base64 of u32 jump-label target offsets from `base` (0xffffffff: none) */
  readonly targets: string;
}

/** The sites of one kernel, sorted by address, with range queries. */
export class PatchSiteTable {
  private constructor(
    readonly base: bigint,
    private readonly offsets: Uint32Array,
    private readonly kinds: Uint8Array,
    private readonly original: Uint8Array,
    private readonly targets: Uint32Array,
  ) {}

  get count(): number {
    return this.offsets.length;
  }

  /** Builds a table from sites (deduplicated by address, first one wins; sites outside 4 GiB of `base` dropped). */
  static from(base: bigint, sites: readonly PatchSite[]): PatchSiteTable {
    const raw: RawSite[] = [];
    for (const s of sites) {
      if (s.address < base || s.address - base >= 0xffff_fff0n || s.original.length < s.length) continue;
      const t = s.target !== undefined && s.target >= base && s.target - base < 0xffff_ffffn ? Number(s.target - base) : 0xffff_ffff;
      raw.push({ offset: Number(s.address - base), code: PATCH_KINDS.indexOf(s.kind) | (s.length === 2 ? 0x80 : 0), target: t, original: s.original });
    }
    return PatchSiteTable.fromRaw(base, raw);
  }

  /** The fast path of `from`: offsets and targets already relative to `base`. */
  static fromRaw(base: bigint, sites: RawSite[]): PatchSiteTable {
    // A stable sort keeps the first site of several at one address first.
    const sorted = sites.map((s, i) => ({ s, i })).sort((a, b) => a.s.offset - b.s.offset || a.i - b.i);
    const kept: RawSite[] = [];
    for (const { s } of sorted) if (kept.length === 0 || (kept[kept.length - 1] as RawSite).offset !== s.offset) kept.push(s);
    const n = kept.length;
    const offsets = new Uint32Array(n);
    const kinds = new Uint8Array(n);
    const original = new Uint8Array(n * 5);
    const targets = new Uint32Array(n);
    kept.forEach((s, i) => {
      offsets[i] = s.offset;
      kinds[i] = s.code;
      original.set(s.original.subarray(0, 5), i * 5);
      targets[i] = s.target;
    });
    return new PatchSiteTable(base, offsets, kinds, original, targets);
  }

  /** The i-th site in address order. */
  site(i: number): PatchSite {
    const k = this.kinds[i] as number;
    const t = this.targets[i] as number;
    return {
      address: this.base + BigInt(this.offsets[i] as number),
      length: k & 0x80 ? 2 : 5,
      kind: PATCH_KINDS[k & 0x7f] ?? "ftrace",
      original: Buffer.from(this.original.subarray(i * 5, i * 5 + 5)),
      target: t === 0xffff_ffff ? undefined : this.base + BigInt(t),
    };
  }

  /** Sites whose bytes overlap [start, end). */
  overlapping(start: bigint, end: bigint): PatchSite[] {
    if (end <= this.base) return [];
    // First site that ends after `start` (sites are at most 5 bytes long and sorted by start).
    const from = start - this.base - 5n;
    const lo0 = from < 0n ? 0 : from > 0xffff_ffffn ? 0x1_0000_0000 : Number(from);
    let lo = 0;
    let hi = this.offsets.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.offsets[mid] as number) < lo0) lo = mid + 1;
      else hi = mid;
    }
    const out: PatchSite[] = [];
    for (let i = lo; i < this.offsets.length; i++) {
      const s = this.site(i);
      if (s.address >= end) break;
      if (s.address + BigInt(s.length) > start) out.push(s);
    }
    return out;
  }

  /** Counts per kind. */
  countsByKind(): Record<PatchKind, number> {
    const c = Object.fromEntries(PATCH_KINDS.map((k) => [k, 0])) as Record<PatchKind, number>;
    for (const k of this.kinds) {
      const kind = PATCH_KINDS[k & 0x7f];
      if (kind) c[kind]++;
    }
    return c;
  }

  serialize(): SerializedPatchSites {
    const b64 = (a: Uint8Array | Uint32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
    return { base: hex(this.base), count: this.count, offsets: b64(this.offsets), kinds: b64(this.kinds), original: b64(this.original), targets: b64(this.targets) };
  }

  /** Reads a serialised table back; a table that is not internally consistent is refused. */
  static deserialize(s: SerializedPatchSites): PatchSiteTable {
    const bad = (why: string): IntrospectionError => new IntrospectionError("host-input", `Cannot read the baseline's patch sites: ${why}`);
    if (!Number.isInteger(s.count) || s.count < 0 || s.count > MAX_PATCH_SITES) throw bad(`count ${String(s.count)}`);
    if (!/^0x[0-9a-f]{1,16}$/.test(s.base)) throw bad(`base ${JSON.stringify(s.base)}`);
    const n = s.count;
    const buf = (v: string, bytes: number, what: string): Buffer => {
      const b = Buffer.from(v, "base64");
      if (b.length !== bytes) throw bad(`${what} holds ${b.length} bytes, ${bytes} expected`);
      return b;
    };
    const u32 = (b: Buffer): Uint32Array => {
      const out = new Uint32Array(b.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = b.readUInt32LE(i * 4);
      return out;
    };
    const offsets = u32(buf(s.offsets, n * 4, "offsets"));
    for (let i = 1; i < n; i++) if ((offsets[i] as number) <= (offsets[i - 1] as number)) throw bad("offsets are not ascending");
    const kinds = new Uint8Array(buf(s.kinds, n, "kinds"));
    for (const k of kinds) if ((k & 0x7f) >= PATCH_KINDS.length) throw bad(`kind ${k}`);
    return new PatchSiteTable(BigInt(s.base), offsets, kinds, new Uint8Array(buf(s.original, n * 5, "original bytes")), u32(buf(s.targets, n * 4, "targets")));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Collection (baseline time)

export interface CollectedSites {
  readonly table: PatchSiteTable;
  /** What could not be collected and why (e.g. no ftrace records): those sites will not be explained. */
  readonly problems: string[];
  /** Jump-table entries whose site held neither a NOP nor a jmp at baseline (not explained later). */
  readonly unrecognised: number;
}

/**
 * Collects every patch site inside `text` from the kernel's own tables. `textBytes` (the text region as read at
 * baseline) supplies the original bytes; sites whose bytes are not in it are dropped.
 */
export function collectPatchSites(model: KernelModel, text: AddressRange, textBytes: Buffer, ftrace: FtraceOffsets | undefined): CollectedSites {
  const k = model.kernel;
  const sym = model.symbols;
  const problems: string[] = [];
  const sites: RawSite[] = [];
  let unrecognised = 0;
  const textLen = Number(text.end - text.start);
  /** Offset of a site inside the baseline text bytes, or -1 when (part of) it lies outside them. */
  const offsetOf = (address: bigint): number => {
    if (address < text.start || address >= text.end) return -1;
    const o = Number(address - text.start);
    return o + 5 <= Math.min(textLen, textBytes.length) ? o : -1;
  };
  const add = (address: bigint, length: 2 | 5, kind: PatchKind, target?: bigint): void => {
    if (sites.length >= MAX_PATCH_SITES) return;
    const o = offsetOf(address);
    if (o < 0) return;
    const t = target !== undefined && target >= text.start && target - text.start < 0xffff_ffffn ? Number(target - text.start) : 0xffff_ffff;
    sites.push({ offset: o, code: PATCH_KINDS.indexOf(kind) | (length === 2 ? 0x80 : 0), target: t, original: textBytes.subarray(o, o + 5) });
  };
  const table = (startName: string, stopName: string, entrySize: number): { start: bigint; bytes: Buffer } | undefined => {
    const start = sym.address(startName);
    const stop = sym.address(stopName);
    if (start === undefined || stop === undefined) {
      problems.push(`kallsyms has no ${startName}/${stopName}`);
      return undefined;
    }
    const len = stop - start;
    if (len < 0n || len > BigInt(MAX_TABLE_BYTES) || len % BigInt(entrySize) !== 0n) {
      problems.push(`${startName}..${stopName} is ${len} bytes, not a table of ${entrySize}-byte entries`);
      return undefined;
    }
    const bytes = k.read(start, Number(len));
    if (!bytes) {
      problems.push(`${startName}..${stopName} cannot be read`);
      return undefined;
    }
    return { start, bytes };
  };

  // ftrace's runtime records.
  const head = sym.address("ftrace_pages_start");
  if (!ftrace) problems.push("no BTF for struct ftrace_page: ftrace call sites are not known");
  else if (head === undefined) problems.push("kallsyms has no ftrace_pages_start");
  else {
    let page = readU64(k, head);
    const seen = new Set<bigint>();
    for (let n = 0; page !== undefined && page !== 0n && n < MAX_FTRACE_PAGES; n++) {
      if (!isKernelPointer(page, model.pagingLevels) || seen.has(page)) {
        problems.push(`ftrace page list is broken at ${hex(page)}`);
        break;
      }
      seen.add(page);
      const records = readU64(k, page + BigInt(ftrace.pageRecords));
      const index = k.read(page + BigInt(ftrace.pageIndex), 4)?.readUInt32LE(0);
      if (records === undefined || index === undefined) {
        problems.push(`ftrace page ${hex(page)} cannot be read`);
        break;
      }
      const count = Math.min(index, Math.floor(MAX_TABLE_BYTES / Math.max(1, ftrace.recSize)));
      const recs = count > 0 ? k.read(records, count * ftrace.recSize) : Buffer.alloc(0);
      if (!recs) {
        problems.push(`ftrace records at ${hex(records)} cannot be read`);
        break;
      }
      for (let r = 0; r < count && ftrace.recIp + 8 <= ftrace.recSize; r++) add(recs.readBigUInt64LE(r * ftrace.recSize + ftrace.recIp), 5, "ftrace");
      page = readU64(k, page + BigInt(ftrace.pageNext));
    }
  }
  for (const name of ["ftrace_call", "ftrace_regs_call", "ftrace_graph_call"]) {
    const a = sym.address(name);
    if (a !== undefined) add(a, 5, "ftrace-op");
  }

  // Jump labels: the site's size is the size of the instruction it held at baseline.
  const jt = table("__start___jump_table", "__stop___jump_table", 16);
  if (jt) {
    for (let o = 0; o + 16 <= jt.bytes.length; o += 16) {
      const at = jt.start + BigInt(o);
      const code = at + BigInt(jt.bytes.readInt32LE(o));
      const target = at + 4n + BigInt(jt.bytes.readInt32LE(o + 4));
      const at5 = offsetOf(code);
      if (at5 < 0) continue; // init text (freed) or outside kernel text
      const b = textBytes.subarray(at5, at5 + 5);
      const len = b[0] === 0xeb || (b[0] === 0x66 && b[1] === 0x90) ? 2 : b[0] === 0xe9 || startsWith(b, NOP5) ? 5 : 0;
      if (len === 0) unrecognised++;
      else add(code, len, "jump-label", target);
    }
  }

  // Static calls: call sites and trampolines.
  const sc = table("__start_static_call_sites", "__stop_static_call_sites", 8);
  if (sc) {
    for (let o = 0; o + 8 <= sc.bytes.length; o += 8) add(sc.start + BigInt(o) + BigInt(sc.bytes.readInt32LE(o)), 5, "static-call");
  }
  const tStart = sym.address("__static_call_text_start");
  const tEnd = sym.address("__static_call_text_end");
  if (tStart !== undefined && tEnd !== undefined && tEnd > tStart && tEnd - tStart < 0x100_0000n && sym.inAddressOrder) {
    const first = sym.nearest(tStart);
    for (let i = first?.symbol.index ?? sym.count, n = 0; i < sym.count && n < MAX_PATCH_SITES; i++, n++) {
      const s = sym.symbol(i);
      if (!s || s.address >= tEnd) break;
      if (s.address >= tStart && s.name.startsWith("__SCT__")) add(s.address, 5, "static-call-tramp");
    }
  } else problems.push("no usable __static_call_text_start/__static_call_text_end: static-call trampolines are not known");

  return { table: PatchSiteTable.fromRaw(text.start, sites), problems, unrecognised };
}

function startsWith(b: Uint8Array, pattern: readonly number[], at = 0): boolean {
  if (b.length < at + pattern.length) return false;
  for (let i = 0; i < pattern.length; i++) if (b[at + i] !== pattern[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Recognising legitimate states

/** Decides whether a call/jmp target is acceptable, and whether it is "foreign" (outside kernel text). */
export interface TargetPolicy {
  /** A function start in kernel text. */
  isFunctionStart(address: bigint): boolean;
  /** ftrace/BPF trampolines and module code live here. */
  readonly moduleArea: AddressRange;
  /**
   * What an ftrace call site may call: ftrace_caller, ftrace_regs_caller, or a trampoline the kernel allocated
   * for a registered ftrace_ops (read from ftrace_ops_list). Anything else — another kernel function, module
   * code, unknown memory — is a hook disguised as tracing.
   */
  isFtraceTarget(address: bigint): boolean;
}

/** How one site's current bytes were judged. */
export type SiteState =
  | { readonly legit: true; readonly same: boolean; readonly target: bigint | undefined; readonly foreign: boolean }
  | { readonly legit: false; readonly why: string };

const rel32 = (b: Uint8Array): bigint => BigInt(Buffer.from(b.buffer, b.byteOffset, b.byteLength).readInt32LE(1));

/** The target of a call/jmp at `address`, or undefined when `b` is not one of the forms `kind` may hold. */
function formOf(kind: PatchKind, site: PatchSite, b: Uint8Array, policy: TargetPolicy): SiteState {
  const at = site.address;
  const ok = (target: bigint | undefined): SiteState => {
    if (target === undefined) return { legit: true, same: false, target: undefined, foreign: false };
    const masked = target & 0xffff_ffff_ffff_ffffn;
    if (inRange(policy.moduleArea, masked)) return { legit: true, same: false, target: masked, foreign: true };
    if (policy.isFunctionStart(masked)) return { legit: true, same: false, target: masked, foreign: false };
    return { legit: false, why: `${kind} site branches to ${hex(masked)}, which is neither a function start in kernel text nor in the module area` };
  };
  if (kind === "jump-label") {
    if (site.length === 2) {
      if (startsWith(b, NOP2)) return ok(undefined);
      if (b[0] === 0xeb) {
        const t = at + 2n + BigInt(((b[1] as number) << 24) >> 24);
        return t === site.target ? ok(undefined) : { legit: false, why: `jump label jmp goes to ${hex(t)}, not its entry's target ${hex(site.target ?? 0n)}` };
      }
      return { legit: false, why: "jump label holds neither a 2-byte NOP nor a jmp" };
    }
    if (startsWith(b, NOP5)) return ok(undefined);
    if (b[0] === 0xe9) {
      const t = at + 5n + rel32(b);
      return t === site.target ? ok(undefined) : { legit: false, why: `jump label jmp goes to ${hex(t)}, not its entry's target ${hex(site.target ?? 0n)}` };
    }
    return { legit: false, why: "jump label holds neither a 5-byte NOP nor a jmp" };
  }
  if (startsWith(b, NOP5)) return kind === "ftrace-op" ? { legit: false, why: "ftrace_call holds a NOP" } : ok(undefined);
  if (b[0] === 0xe8 && kind === "ftrace") {
    const target = (at + 5n + rel32(b)) & 0xffff_ffff_ffff_ffffn;
    if (!policy.isFtraceTarget(target)) return { legit: false, why: `ftrace site calls ${hex(target)}, which is neither ftrace_caller, ftrace_regs_caller nor a trampoline of a registered ftrace_ops` };
    return { legit: true, same: false, target, foreign: inRange(policy.moduleArea, target) };
  }
  if (b[0] === 0xe8) return ok(at + 5n + rel32(b));
  if (kind === "static-call" || kind === "static-call-tramp") {
    if (b[0] === 0xe9) return ok(at + 5n + rel32(b));
    if (startsWith(b, RET5) || startsWith(b, XOR5RAX)) return ok(undefined);
  }
  return { legit: false, why: `${kind} site holds ${Buffer.from(b).toString("hex")}, not a form it may take` };
}

const TRANSIENT_FIRST_BYTES = [0x0f, 0xe8, 0xe9, 0xeb, 0x66, 0xc3, 0x2e];

/** Judges the current bytes `cur` (site.length long) of `site`. */
export function judgeSite(site: PatchSite, cur: Uint8Array, policy: TargetPolicy): SiteState {
  const len = site.length;
  if (cur.length < len) return { legit: false, why: "site cannot be read" };
  let same = true;
  for (let i = 0; i < len; i++) if (cur[i] !== site.original[i]) same = false;
  if (same) return { legit: true, same: true, target: undefined, foreign: false };
  const direct = formOf(site.kind, site, cur, policy);
  if (direct.legit || cur[0] !== INT3) return direct;
  // text_poke_bp() in progress: int3 first, then the old tail or the new one.
  let oldTail = true;
  for (let i = 1; i < len; i++) if (cur[i] !== site.original[i]) oldTail = false;
  if (oldTail) return { legit: true, same: false, target: undefined, foreign: false };
  const probe = Buffer.from(cur.subarray(0, len));
  for (const first of TRANSIENT_FIRST_BYTES) {
    probe[0] = first;
    const s = formOf(site.kind, site, probe, policy);
    if (s.legit) return s;
  }
  return direct;
}

/** The outcome of normalising one range: which sites were patched legitimately, and which were not. */
export interface Normalisation {
  /** The range's bytes with every legitimately patched site put back to its baseline bytes. */
  readonly normalised: Buffer;
  readonly patched: Partial<Record<PatchKind, number>>;
  /** Legitimate call/jmp targets outside kernel text (module area): ftrace/BPF trampolines, or a hook. */
  readonly foreign: { site: bigint; kind: PatchKind; target: bigint }[];
  /** `target`: where the site's call/jmp now goes, when it holds one. */
  readonly illegitimate: { site: bigint; kind: PatchKind; found: string; why: string; target?: bigint }[];
}

const MAX_REPORTED_SITES = 16;

/**
 * Puts every legitimately patched site in `cur` back to its baseline bytes. `cur` holds the bytes of
 * [curStart, curStart + cur.length), which must include ≥ 4 bytes on each side of [start, end) so that sites
 * straddling the range's edges can be judged whole; only bytes inside [start, end) are returned.
 */
export function normalise(cur: Buffer, curStart: bigint, start: bigint, end: bigint, sites: PatchSiteTable, policy: TargetPolicy): Normalisation {
  if (start < curStart || end > curStart + BigInt(cur.length) || end < start || end - start > 0x4000_0000n) {
    throw new IntrospectionError("host-input", `Cannot normalise ${hex(start)}..${hex(end)}: the bytes given cover ${hex(curStart)}..${hex(curStart + BigInt(cur.length))}`);
  }
  const out = Buffer.from(cur.subarray(Number(start - curStart), Number(end - curStart)));
  const patched: Partial<Record<PatchKind, number>> = {};
  const foreign: Normalisation["foreign"] = [];
  const illegitimate: Normalisation["illegitimate"] = [];
  for (const s of sites.overlapping(start, end)) {
    const o = s.address - curStart;
    if (o < 0n || o + BigInt(s.length) > BigInt(cur.length)) continue; // cannot be judged whole: stays as it is
    const bytes = cur.subarray(Number(o), Number(o) + s.length);
    const st = judgeSite(s, bytes, policy);
    if (!st.legit) {
      const branch = s.length === 5 && (bytes[0] === 0xe8 || bytes[0] === 0xe9) ? (s.address + 5n + rel32(bytes)) & 0xffff_ffff_ffff_ffffn : undefined;
      if (illegitimate.length < MAX_REPORTED_SITES) illegitimate.push({ site: s.address, kind: s.kind, found: Buffer.from(bytes).toString("hex"), why: st.why, ...(branch !== undefined ? { target: branch } : {}) });
      continue;
    }
    if (st.same) continue;
    patched[s.kind] = (patched[s.kind] ?? 0) + 1;
    if (st.foreign && st.target !== undefined && foreign.length < MAX_REPORTED_SITES) foreign.push({ site: s.address, kind: s.kind, target: st.target });
    for (let i = 0; i < s.length; i++) {
      const a = s.address + BigInt(i);
      if (a >= start && a < end) out[Number(a - start)] = s.original[i] as number;
    }
  }
  return { normalised: out, patched, foreign, illegitimate };
}
