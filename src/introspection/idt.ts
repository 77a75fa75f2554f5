/**
 * The interrupt descriptor table as the CPU sees it: read through the IDTR base (on Linux the fixed read-only
 * alias 0xfffffe0000000000 in the CPU entry area) and decoded gate by gate — handler address, code selector,
 * interrupt stack, gate type, privilege level, present bit. Redirecting a gate is the oldest kernel hook there is;
 * changing a gate's DPL to 3 lets user space raise it. Decoding is pure over bytes: every field of every gate of
 * any 16-byte pattern decodes to something, and nothing about a gate is trusted until compared with a baseline.
 */
import { IntrospectionError, hex } from "./errors.ts";
import type { AddressSpace } from "./physical-memory.ts";

/** Linux's IDT alias (CPU_ENTRY_AREA_RO_IDT), what IDTR holds on every x86-64 kernel since 4.15. */
export const IDT_ALIAS = 0xffff_fe00_0000_0000n;
export const IDT_GATES = 256;
const GATE_BYTES = 16;

/** Vectors 22-28, 30 and 31 keep the early boot handlers (in init text, freed after boot) on Linux x86-64. */
export const EARLY_IDT_VECTORS: ReadonlySet<number> = new Set([22, 23, 24, 25, 26, 27, 28, 30, 31]);

export interface IdtGate {
  readonly vector: number;
  readonly handler: bigint;
  readonly selector: number;
  /** Interrupt stack table index (0: none). */
  readonly ist: number;
  /** 0xe interrupt gate, 0xf trap gate. */
  readonly type: number;
  readonly dpl: number;
  readonly present: boolean;
}

/** Decodes the gates in `buf` (at most 256; a trailing partial gate is ignored). */
export function decodeIdt(buf: Buffer): IdtGate[] {
  const n = Math.min(IDT_GATES, Math.floor(buf.length / GATE_BYTES));
  const out: IdtGate[] = [];
  for (let v = 0; v < n; v++) {
    const o = v * GATE_BYTES;
    const handler = BigInt(buf.readUInt16LE(o)) | (BigInt(buf.readUInt16LE(o + 6)) << 16n) | (BigInt(buf.readUInt32LE(o + 8)) << 32n);
    const attr = buf[o + 5] as number;
    out.push({ vector: v, handler, selector: buf.readUInt16LE(o + 2), ist: (buf[o + 4] as number) & 7, type: attr & 0xf, dpl: (attr >> 5) & 3, present: (attr & 0x80) !== 0 });
  }
  return out;
}

/** Reads and decodes the IDT at `base` with IDTR limit `limit` (bytes - 1); undefined when it cannot be read. */
export function readIdt(space: AddressSpace, base: bigint, limit: number): IdtGate[] | undefined {
  if (!Number.isInteger(limit) || limit < 0 || limit > IDT_GATES * GATE_BYTES - 1) {
    throw new IntrospectionError("host-input", `Cannot read the IDT: limit ${String(limit)} is outside 0..${hex(IDT_GATES * GATE_BYTES - 1)}`);
  }
  const bytes = Math.floor((limit + 1) / GATE_BYTES) * GATE_BYTES;
  const buf = space.read(base, bytes);
  return buf ? decodeIdt(buf) : undefined;
}

/** What differs between two gates of the same vector, as words for a message ("handler", "dpl", ...). */
export function gateDifferences(a: IdtGate, b: IdtGate): string[] {
  const out: string[] = [];
  if (a.handler !== b.handler) out.push("handler");
  if (a.selector !== b.selector) out.push("selector");
  if (a.ist !== b.ist) out.push("ist");
  if (a.type !== b.type) out.push("type");
  if (a.dpl !== b.dpl) out.push("dpl");
  if (a.present !== b.present) out.push("present");
  return out;
}

/** The JSON form of a gate in a baseline. */
export interface SerializedGate {
  v: number;
  handler: string;
  sel: number;
  ist: number;
  type: number;
  dpl: number;
  p: boolean;
}

export function serializeGate(g: IdtGate): SerializedGate {
  return { v: g.vector, handler: hex(g.handler), sel: g.selector, ist: g.ist, type: g.type, dpl: g.dpl, p: g.present };
}

export function deserializeGate(s: SerializedGate): IdtGate {
  const small = (x: unknown, max: number): x is number => Number.isInteger(x) && (x as number) >= 0 && (x as number) <= max;
  if (!s || !small(s.v, 255) || typeof s.handler !== "string" || !/^0x[0-9a-f]{1,16}$/.test(s.handler) || !small(s.sel, 0xffff) || !small(s.ist, 7) || !small(s.type, 15) || !small(s.dpl, 3) || typeof s.p !== "boolean") {
    throw new IntrospectionError("host-input", `Cannot read a baseline IDT gate: ${JSON.stringify(s)}`);
  }
  return { vector: s.v, handler: BigInt(s.handler), selector: s.sel, ist: s.ist, type: s.type, dpl: s.dpl, present: s.p };
}

/** "vector 14 (handler asm_exc_page_fault, ist 0, type 0xe, dpl 0)" */
export function describeGate(g: IdtGate, name: string): string {
  return `handler ${name}, selector ${hex(g.selector)}, ist ${g.ist}, type ${hex(g.type)}, dpl ${g.dpl}${g.present ? "" : ", not present"}`;
}
