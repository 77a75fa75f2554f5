/**
 * Page permissions of what must never change at run time: kernel text (present, read-only, executable), read-only
 * data and the IDT (present, read-only), each mapped where the kernel image says (a text page quietly remapped to
 * a modified copy would pass every hash of the original), and their direct-map aliases read-only too. Walks the
 * kernel page tables over each range reading every table page once (text in 2 MiB pages is ~10 entries, a
 * 4 KiB-mapped tail one table page), bounded, and reports the first offending ranges rather than every page.
 */
import { hex } from "./errors.ts";
import { isCanonical, type PagingRoot } from "./page-walk.ts";
import type { AddressSpace } from "./physical-memory.ts";

export type PermissionProblemKind = "unmapped" | "writable" | "not-executable" | "executable" | "user" | "remapped";

/** A range the CPU must see with given permissions. */
export interface PermissionRule {
  /** For messages and evidence: "text", "rodata", "idt", "text (direct-map alias)". */
  readonly name: string;
  readonly start: bigint;
  readonly end: bigint;
  /** text: must be executable; rodata/idt: must not be (undefined: not checked). */
  readonly executable: boolean | undefined;
  /** Where `va` must map; undefined: not checked. */
  readonly expectPhys: ((va: bigint) => bigint) | undefined;
}

export interface PermissionProblem {
  readonly rule: string;
  readonly kind: PermissionProblemKind;
  readonly start: bigint;
  readonly end: bigint;
  readonly detail: string;
}

export interface PermissionResult {
  readonly problems: PermissionProblem[];
  /** Problems beyond `max` are counted, not listed. */
  readonly omitted: number;
  readonly translations: number;
}

/** Most page-table entries one check may visit (a 1 GiB range of 4 KiB pages is 262k; real text is ~200). */
const MAX_STEPS = 300_000;

const ADDR_MASK = 0x000f_ffff_ffff_f000n;
const U64 = (1n << 64n) - 1n;

/** One leaf mapping (or hole) met by `walkRange`, clipped to the range asked for. */
export type RangePiece =
  | { readonly mapped: true; readonly start: bigint; readonly end: bigint; readonly paddr: bigint; readonly writable: boolean; readonly user: boolean; readonly nx: boolean; readonly pageSize: number }
  | { readonly mapped: false; readonly start: bigint; readonly end: bigint; readonly why: string };

/**
 * Walks the page tables under `root` over [start, end) and calls `visit` for every leaf mapping and every hole,
 * reading each table page once (the point translation of page-walk.ts would walk from the root for every
 * 4 KiB page). Effective permissions combine like the CPU's: RW and US ANDed, NX ORed. At most `maxSteps` entries.
 * `start`/`end` may be canonical kernel addresses; the pieces carry them zero-extended (bits above 48/57 clear).
 */
export function walkRange(mem: AddressSpace, root: PagingRoot, start: bigint, end: bigint, visit: (p: RangePiece) => void, maxSteps = MAX_STEPS): number {
  let steps = 0;
  const levels = root.levels;
  const descend = (table: bigint, level: number, base: bigint, rw: boolean, us: boolean, nx: boolean, lo: bigint, hi: bigint): void => {
    const shift = BigInt(12 + 9 * (level - 1));
    const span = 1n << shift;
    const first = Number((lo - base) >> shift);
    const last = Number((hi - 1n - base) >> shift);
    const page = mem.read(table & ADDR_MASK, 4096);
    if (!page) {
      visit({ mapped: false, start: lo, end: hi, why: `page table at ${hex(table & ADDR_MASK)} (level ${level}) is outside RAM` });
      return;
    }
    for (let i = first; i <= last && steps < maxSteps; i++) {
      steps++;
      const va0 = base + BigInt(i) * span;
      const a = va0 > lo ? va0 : lo;
      const b = va0 + span < hi ? va0 + span : hi;
      const e = page.readBigUInt64LE(i * 8);
      if ((e & 1n) === 0n) {
        visit({ mapped: false, start: a, end: b, why: `not present at level ${level}` });
        continue;
      }
      const w = rw && (e & 2n) !== 0n;
      const u = us && (e & 4n) !== 0n;
      const x = nx || (e & (1n << 63n)) !== 0n;
      const ps = (e & 0x80n) !== 0n;
      if (ps && level >= 4) {
        visit({ mapped: false, start: a, end: b, why: `reserved bits at level ${level}` });
        continue;
      }
      // A large-page entry keeps PAT in bit 12; the bits between 13 and the page size must be clear.
      if (ps && (e & (span - 1n) & ADDR_MASK & ~0x1000n) !== 0n) {
        visit({ mapped: false, start: a, end: b, why: `reserved bits at level ${level}` });
        continue;
      }
      if (level === 1 || ps) {
        const frame = e & ADDR_MASK & ~(span - 1n);
        visit({ mapped: true, start: a, end: b, paddr: frame + (a - va0), writable: w, user: u, nx: x, pageSize: Number(span) });
        continue;
      }
      descend(e, level - 1, va0, w, u, x, a, b);
    }
  };
  if (end <= start) return 0;
  // The walk works on the non-canonical (zero-extended) index space; addresses handed out are canonical again.
  const bits = BigInt(12 + 9 * levels);
  const mask = (1n << bits) - 1n;
  const lo = start & mask;
  const hi = ((end - 1n) & mask) + 1n;
  if (hi <= lo) return 0;
  descend(root.base, levels, 0n, true, true, false, lo, hi);
  return steps;
}

/** Checks every rule; reports at most `max` problem ranges (adjacent pages with the same problem merge). */
export function checkPagePermissions(mem: AddressSpace, root: PagingRoot, rules: readonly PermissionRule[], max = 16): PermissionResult {
  const problems: PermissionProblem[] = [];
  let omitted = 0;
  let steps = 0;
  const report = (rule: string, kind: PermissionProblemKind, start: bigint, end: bigint, detail: string): void => {
    const last = problems[problems.length - 1];
    if (last && last.rule === rule && last.kind === kind && last.end === start && last.detail === detail) {
      problems[problems.length - 1] = { ...last, end };
      return;
    }
    if (problems.length < max) problems.push({ rule, kind, start, end, detail });
    else omitted++;
  };
  for (const r of rules) {
    if (r.end <= r.start || !isCanonical(r.start, root.levels) || !isCanonical(r.end - 1n, root.levels) || r.start >> 63n !== (r.end - 1n) >> 63n) {
      report(r.name, "unmapped", r.start, r.end, "not a canonical kernel range");
      continue;
    }
    const sign = r.start & ~((1n << BigInt(12 + 9 * root.levels)) - 1n);
    steps += walkRange(mem, root, r.start, r.end, (p) => {
      const a = (p.start | sign) & U64;
      const b = ((p.end - 1n) | sign) + 1n;
      if (!p.mapped) {
        report(r.name, "unmapped", a, b, p.why);
        return;
      }
      if (p.writable) report(r.name, "writable", a, b, "writable");
      if (p.user) report(r.name, "user", a, b, "user-accessible");
      if (r.executable === true && p.nx) report(r.name, "not-executable", a, b, "marked no-execute");
      if (r.executable === false && !p.nx) report(r.name, "executable", a, b, "executable");
      if (r.expectPhys) {
        const want = r.expectPhys(a);
        if (p.paddr !== want) report(r.name, "remapped", a, b, `maps to physical ${hex(p.paddr)} instead of ${hex(want)}`);
      }
    }, MAX_STEPS - steps);
  }
  return { problems, omitted, translations: steps };
}
