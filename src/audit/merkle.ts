/**
 * The audit log's Merkle tree, RFC 9162 §2.1: leaf hash = SHA-256(0x00 || leaf data), node hash =
 * SHA-256(0x01 || left || right), MTH of n leaves split at the largest power of two below n. Pure functions
 * over an async source of stored perfect subtrees ("node (level, index)" covers leaves
 * [index·2^level, (index+1)·2^level)), so proofs cost O(log n) reads; the verifiers need no source at all.
 * scripts/verify-audit-export.mjs implements the same verifiers independently.
 *
 * Sizes and indexes are JavaScript numbers, so every halving is arithmetic (Math.floor(x / 2)), never a 32-bit
 * shift.
 */
import { createHash } from "node:crypto";

export const EMPTY_ROOT = createHash("sha256").digest();

export function leafHash(data: Buffer | string): Buffer {
  return createHash("sha256").update(Buffer.of(0)).update(data).digest();
}

export function nodeHash(left: Buffer, right: Buffer): Buffer {
  return createHash("sha256").update(Buffer.of(1)).update(left).update(right).digest();
}

/** Stored perfect subtrees: node(level, index) is the MTH of leaves [index·2^level, (index+1)·2^level). */
export interface NodeSource {
  node(level: number, index: number): Promise<Buffer>;
}

/** The largest power of two strictly below n (n ≥ 2). */
export function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function perfectLevel(start: number, size: number): number | undefined {
  let level = 0;
  let s = 1;
  while (s < size) {
    s *= 2;
    level++;
  }
  return s === size && start % size === 0 ? level : undefined;
}

/** MTH of leaves [start, end): one read for a perfect aligned subtree, else split as the RFC does. */
export async function rangeHash(src: NodeSource, start: number, end: number): Promise<Buffer> {
  const n = end - start;
  if (n <= 0) return EMPTY_ROOT;
  const level = perfectLevel(start, n);
  if (level !== undefined) return src.node(level, start / n);
  const k = splitPoint(n);
  return nodeHash(await rangeHash(src, start, start + k), await rangeHash(src, start + k, end));
}

/** RFC 9162 §2.1.3.1 PATH(m, D[start:end]): the audit path of leaf m (absolute index), deepest first. */
export async function inclusionPath(src: NodeSource, m: number, start: number, end: number): Promise<Buffer[]> {
  const n = end - start;
  if (n <= 1) return [];
  const k = splitPoint(n);
  if (m - start < k) return [...(await inclusionPath(src, m, start, start + k)), await rangeHash(src, start + k, end)];
  return [...(await inclusionPath(src, m, start + k, end)), await rangeHash(src, start, start + k)];
}

/** RFC 9162 §2.1.4.1 PROOF(m, D[0:n]) for 0 < m < n (empty otherwise). */
export async function consistencyPath(src: NodeSource, m: number, n: number): Promise<Buffer[]> {
  if (m <= 0 || m >= n) return [];
  const sub = async (m: number, start: number, end: number, whole: boolean): Promise<Buffer[]> => {
    const size = end - start;
    if (m === size) return whole ? [] : [await rangeHash(src, start, end)];
    const k = splitPoint(size);
    if (m <= k) return [...(await sub(m, start, start + k, whole)), await rangeHash(src, start + k, end)];
    return [...(await sub(m - k, start + k, end, false)), await rangeHash(src, start, start + k)];
  };
  return sub(m, 0, n, true);
}

/** A proof's path as sent in JSON: at most 64 hex SHA-256 hashes (sizes stay below 2^53: real paths are shorter), else undefined. */
export function parsePath(a: unknown): Buffer[] | undefined {
  return Array.isArray(a) && a.length <= 64 && a.every((x) => typeof x === "string" && /^[0-9a-f]{64}$/.test(x)) ? a.map((x: string) => Buffer.from(x, "hex")) : undefined;
}

const odd = (x: number) => x % 2 === 1;
const half = (x: number) => Math.floor(x / 2);
const is32 = (b: unknown): b is Buffer => Buffer.isBuffer(b) && b.length === 32;

/** RFC 9162 §2.1.3.2: does `path` prove leaf `index` (hash `leaf`) is in the tree of `size` with `root`? */
export function verifyInclusion(leaf: Buffer, index: number, size: number, path: readonly Buffer[], root: Buffer): boolean {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return false;
  if (!is32(leaf) || !is32(root) || !path.every(is32)) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && r.equals(root);
}

/** RFC 9162 §2.1.4.2: does `path` prove the tree (size2, root2) extends the tree (size1, root1)? */
export function verifyConsistency(size1: number, size2: number, root1: Buffer, root2: Buffer, path: readonly Buffer[]): boolean {
  if (!Number.isSafeInteger(size1) || !Number.isSafeInteger(size2) || size1 < 0 || size2 < size1) return false;
  if (!is32(root1) || !is32(root2) || !path.every(is32)) return false;
  if (size1 === size2) return path.length === 0 && root1.equals(root2);
  if (size1 === 0) return path.length === 0 && root1.equals(EMPTY_ROOT);
  if (path.length === 0) return false;
  let p = [...path];
  if (perfectLevel(0, size1) !== undefined) p = [root1, ...p];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = p[0]!;
  let sr = p[0]!;
  for (const c of p.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && fr.equals(root1) && sr.equals(root2);
}

/**
 * The right edge of a growing tree: the perfect subtrees of the current size, largest (leftmost) first. Appending
 * a leaf merges equal-sized neighbours; the root folds them from the right. Both O(log n), no reads.
 */
export class Frontier {
  /** [level, hash] pairs, levels strictly decreasing. */
  constructor(
    public size = 0,
    private readonly edge: Array<[number, Buffer]> = [],
  ) {}

  /** Adds a leaf hash; returns the new perfect subtrees (level, index, hash), the leaf first. */
  push(leaf: Buffer): Array<{ level: number; index: number; hash: Buffer }> {
    const made = [{ level: 0, index: this.size, hash: leaf }];
    let level = 0;
    let index = this.size;
    let hash = leaf;
    while (odd(index)) {
      const [, left] = this.edge.pop()!;
      hash = nodeHash(left, hash);
      level++;
      index = half(index);
      made.push({ level, index, hash });
    }
    this.edge.push([level, hash]);
    this.size++;
    return made;
  }

  root(): Buffer {
    if (this.edge.length === 0) return EMPTY_ROOT;
    let r = this.edge[this.edge.length - 1]![1];
    for (let i = this.edge.length - 2; i >= 0; i--) r = nodeHash(this.edge[i]![1], r);
    return r;
  }

  /** The newest node at each level on the right edge, for a NodeSource to answer without a read. */
  lookup(level: number, index: number): Buffer | undefined {
    let start = 0;
    for (const [l, h] of this.edge) {
      const width = 2 ** l;
      if (l === level && start / width === index) return h;
      start += width;
    }
    return undefined;
  }

  static clone(f: Frontier): Frontier {
    return new Frontier(f.size, [...f.edge]);
  }

  /** The frontier of `size` leaves, read from stored nodes: one read per set bit of size. */
  static async load(src: NodeSource, size: number): Promise<Frontier> {
    const edge: Array<[number, Buffer]> = [];
    let start = 0;
    let remaining = size;
    while (remaining > 0) {
      let level = 0;
      while (2 ** (level + 1) <= remaining) level++;
      const width = 2 ** level;
      edge.push([level, await src.node(level, start / width)]);
      start += width;
      remaining -= width;
    }
    return new Frontier(size, edge);
  }
}
