/**
 * The x86-64 system call table (`sys_call_table`): one handler address per system call number, each of which
 * must be a `__x64_sys_*` function (or `__x64_sys_ni_syscall` for the unimplemented ones). Since Linux 6.9 the
 * table is no longer used for dispatch (`x64_sys_call` is a switch), but it is still what tools and many rootkits
 * read and write, so its entries are checked here and the dispatch code itself is hashed by text-integrity.ts.
 *
 * The number of entries comes from the symbol table (the distance to the next symbol), bounded, with trailing
 * zero padding trimmed at baseline time.
 */
import { symbolExtent, namesAt, inRange, type KernelLayout } from "./kernel-layout.ts";
import type { SymbolTable } from "./kallsyms.ts";
import type { AddressSpace } from "./physical-memory.ts";

/** No x86-64 kernel has more than ~470 system calls; the bound leaves room and keeps reads small. */
export const MAX_SYSCALLS = 1024;

/** Where the table is and how many entries the symbol table allows it. */
export function syscallTableExtent(symbols: SymbolTable): { address: bigint; maxEntries: number } | undefined {
  const ext = symbolExtent(symbols, "sys_call_table", [], MAX_SYSCALLS * 8 + 4096);
  if (!ext) return undefined;
  return { address: ext.start, maxEntries: Math.min(MAX_SYSCALLS, Number((ext.end - ext.start) / 8n)) };
}

/** Reads `count` entries; undefined when the table cannot be read. */
export function readSyscallTable(space: AddressSpace, address: bigint, count: number): bigint[] | undefined {
  if (!Number.isInteger(count) || count < 0 || count > MAX_SYSCALLS) return undefined;
  const buf = space.read(address, count * 8);
  if (!buf) return undefined;
  const out: bigint[] = [];
  for (let i = 0; i < count; i++) out.push(buf.readBigUInt64LE(i * 8));
  return out;
}

/** Entries up to the last non-zero one: the table's tail is alignment padding. */
export function trimPadding(entries: readonly bigint[]): bigint[] {
  let n = entries.length;
  while (n > 0 && entries[n - 1] === 0n) n--;
  return entries.slice(0, n);
}

/** What an entry points at: the `__x64_sys_*` name there, if any, and whether it lies in kernel text. */
export function resolveHandler(symbols: SymbolTable, layout: KernelLayout, address: bigint): { name: string | undefined; inText: boolean } {
  const names = namesAt(symbols, address);
  return { name: names.find((n) => n.startsWith("__x64_sys_")), inText: inRange(layout.text, address) };
}
