/**
 * Test support for the backing-chain reader: `qemu-img map --output=json` through a chain and the reader's
 * `extents()`, both in one comparable form (kind and depth per run, adjacent runs merged).
 */
import type { ImageChain } from "../chain.ts";
import type { QemuMapEntry } from "./qcow2-fixtures.ts";

export interface ChainRun {
  start: number;
  length: number;
  depth: number;
  kind: "data" | "zero" | "unallocated";
}

/** qemu-img map's entries as runs: present and not zero is data (compressed included), not present unallocated. */
export function runsOfQemuMap(entries: readonly QemuMapEntry[]): ChainRun[] {
  const out: ChainRun[] = [];
  for (const e of entries) {
    const kind = !e.present ? "unallocated" : e.zero ? "zero" : "data";
    const last = out.at(-1);
    if (last && last.kind === kind && last.depth === e.depth && last.start + last.length === e.start) last.length += e.length;
    else out.push({ start: e.start, length: e.length, depth: e.depth, kind });
  }
  return out;
}

export function runsOfChain(chain: ImageChain): ChainRun[] {
  return [...chain.extents()].map((e) => ({ start: Number(e.offset), length: Number(e.length), depth: e.depth, kind: e.kind }));
}
