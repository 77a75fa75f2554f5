/**
 * A bounded reader of classic pcap files (what `tcpdump -w` writes): the mirror uses it to count and trim a
 * capture, tests use it to find their own traffic. Every offset and length is checked before it is read, the loop
 * runs at most once per 16 bytes of input, and a hostile or truncated file gives a VigilError naming the byte
 * offset, never a loop or a read past the end. Decodes Ethernet/IPv4/TCP/UDP far enough to say who talked to whom.
 */
import { VigilError } from "../errors.ts";

export interface PcapPacket {
  /** Byte offset of the record header in the file. */
  offset: number;
  tsSec: number;
  tsFrac: number;
  capturedLength: number;
  originalLength: number;
  data: Uint8Array;
}

export interface PcapFile {
  littleEndian: boolean;
  nanoseconds: boolean;
  snaplen: number;
  linktype: number;
  packets: PcapPacket[];
  /** Bytes of complete records (global header included): where a trimmed file may end. */
  completeBytes: number;
}

export interface PacketSummary {
  src: string;
  dst: string;
  proto: "tcp" | "udp" | "icmp" | number;
  sport?: number;
  dport?: number;
  payload: Uint8Array;
}

/** No record may claim more than this (tcpdump's own default snaplen). */
export const MAX_RECORD = 262_144;

function fail(offset: number, why: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Not a valid pcap file at byte ${offset}: ${why}`);
}

/**
 * Parses a pcap file. With `allowTruncatedTail`, a last record cut short (a capture stopped mid-write) ends the
 * list instead of failing; its start is `completeBytes`.
 */
export function parsePcap(buf: Uint8Array, options: { allowTruncatedTail?: boolean } = {}): PcapFile {
  if (buf.length < 24) throw fail(0, `the global header needs 24 bytes, the file has ${buf.length}`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magicBE = view.getUint32(0, false);
  let littleEndian: boolean;
  let nanoseconds: boolean;
  if (magicBE === 0xa1b2c3d4 || magicBE === 0xa1b23c4d) {
    littleEndian = false;
    nanoseconds = magicBE === 0xa1b23c4d;
  } else if (magicBE === 0xd4c3b2a1 || magicBE === 0x4d3cb2a1) {
    littleEndian = true;
    nanoseconds = magicBE === 0x4d3cb2a1;
  } else {
    throw fail(0, `magic 0x${magicBE.toString(16).padStart(8, "0")} is not a pcap magic`);
  }
  const major = view.getUint16(4, littleEndian);
  if (major !== 2) throw fail(4, `version ${major} is not 2`);
  const snaplen = view.getUint32(16, littleEndian);
  const linktype = view.getUint32(20, littleEndian) & 0x0fffffff;
  const packets: PcapPacket[] = [];
  let off = 24;
  const maxIterations = Math.floor(buf.length / 16) + 1;
  for (let i = 0; off < buf.length; i++) {
    if (i > maxIterations) throw fail(off, "more records than the file has room for");
    if (buf.length - off < 16) {
      if (options.allowTruncatedTail) break;
      throw fail(off, `a record header needs 16 bytes, ${buf.length - off} remain`);
    }
    const tsSec = view.getUint32(off, littleEndian);
    const tsFrac = view.getUint32(off + 4, littleEndian);
    const incl = view.getUint32(off + 8, littleEndian);
    const orig = view.getUint32(off + 12, littleEndian);
    if (incl > MAX_RECORD || (snaplen > 0 && incl > Math.max(snaplen, 65_535))) throw fail(off + 8, `captured length ${incl} exceeds the bound`);
    if (tsFrac >= (nanoseconds ? 1_000_000_000 : 1_000_000)) throw fail(off + 4, `fraction ${tsFrac} out of range`);
    if (buf.length - off - 16 < incl) {
      if (options.allowTruncatedTail) break;
      throw fail(off + 16, `the record claims ${incl} bytes, ${buf.length - off - 16} remain`);
    }
    packets.push({ offset: off, tsSec, tsFrac, capturedLength: incl, originalLength: orig, data: buf.subarray(off + 16, off + 16 + incl) });
    off += 16 + incl;
  }
  return { littleEndian, nanoseconds, snaplen, linktype, packets, completeBytes: off };
}

const ip4 = (d: Uint8Array, o: number) => `${d[o]}.${d[o + 1]}.${d[o + 2]}.${d[o + 3]}`;

/** Ethernet → IPv4 → TCP/UDP; undefined for anything else or anything cut short. */
export function summarize(pkt: Uint8Array, linktype = 1): PacketSummary | undefined {
  if (linktype !== 1 || pkt.length < 14) return undefined;
  let o = 12;
  let ethertype = (pkt[o]! << 8) | pkt[o + 1]!;
  if (ethertype === 0x8100 && pkt.length >= 18) {
    o += 4;
    ethertype = (pkt[o]! << 8) | pkt[o + 1]!;
  }
  o += 2;
  if (ethertype !== 0x0800 || pkt.length < o + 20) return undefined;
  const ihl = (pkt[o]! & 0x0f) * 4;
  const total = (pkt[o + 2]! << 8) | pkt[o + 3]!;
  if (pkt[o]! >> 4 !== 4 || ihl < 20 || total < ihl || pkt.length < o + ihl) return undefined;
  const end = Math.min(pkt.length, o + total);
  const protoNum = pkt[o + 9]!;
  const src = ip4(pkt, o + 12);
  const dst = ip4(pkt, o + 16);
  const l4 = o + ihl;
  if (protoNum === 6 && end >= l4 + 20) {
    const doff = (pkt[l4 + 12]! >> 4) * 4;
    if (doff < 20 || end < l4 + doff) return undefined;
    return { src, dst, proto: "tcp", sport: (pkt[l4]! << 8) | pkt[l4 + 1]!, dport: (pkt[l4 + 2]! << 8) | pkt[l4 + 3]!, payload: pkt.subarray(l4 + doff, end) };
  }
  if (protoNum === 17 && end >= l4 + 8) {
    return { src, dst, proto: "udp", sport: (pkt[l4]! << 8) | pkt[l4 + 1]!, dport: (pkt[l4 + 2]! << 8) | pkt[l4 + 3]!, payload: pkt.subarray(l4 + 8, end) };
  }
  return { src, dst, proto: protoNum === 1 ? "icmp" : protoNum, payload: pkt.subarray(Math.min(l4, end), end) };
}
