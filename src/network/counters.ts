/**
 * Per-vNIC counters (issue 11 item 5): the kernel's own statistics of the NIC's tap inside vigil's netns, read with
 * `ip -s -j link show dev TAP`. Counters are as the switch port sees them: `rx` is what the VM sent, `tx` is what
 * was delivered to it. The JSON is parsed strictly (bounded size, one link, every field a non-negative integer):
 * a changed iproute2 output gives an error, never a wrong number.
 */
import { VigilError, q } from "../errors.ts";
import { inNetns } from "./netns-exec.ts";
import type { AttachedNic, HostNetns } from "./types.ts";

export interface DirectionCounters {
  bytes: number;
  packets: number;
  errors: number;
  dropped: number;
}

export interface NicCounters {
  nic: string;
  tap: string;
  network: string;
  ip: string;
  /** Received by the switch port: sent by the VM. */
  rx: DirectionCounters;
  /** Sent by the switch port: delivered to the VM. */
  tx: DirectionCounters;
}

const MAX_JSON = 64 * 1024;

function count(obj: Record<string, unknown>, key: string, where: string): number {
  const v = obj[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: ${where}.${key} is ${q(JSON.stringify(v))}, not a non-negative integer`);
  }
  return v;
}

function direction(stats: Record<string, unknown>, key: "rx" | "tx"): DirectionCounters {
  const d = stats[key];
  if (typeof d !== "object" || d === null || Array.isArray(d)) throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: stats64.${key} is missing`);
  const o = d as Record<string, unknown>;
  const where = `stats64.${key}`;
  return { bytes: count(o, "bytes", where), packets: count(o, "packets", where), errors: count(o, "errors", where), dropped: count(o, "dropped", where) };
}

/** Parses `ip -s -j link show dev IFNAME` output for exactly that interface. */
export function parseLinkStats(text: string, ifname: string): { rx: DirectionCounters; tx: DirectionCounters } {
  if (text.length > MAX_JSON) throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: ip printed ${text.length} bytes (at most ${MAX_JSON})`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new VigilError("VIGIL_HOST", "Cannot read NIC counters: ip did not print JSON", { cause: err });
  }
  if (!Array.isArray(parsed) || parsed.length !== 1) throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: expected one link for ${q(ifname)}`);
  const link = parsed[0] as unknown;
  if (typeof link !== "object" || link === null) throw new VigilError("VIGIL_HOST", "Cannot read NIC counters: the link is not an object");
  const l = link as Record<string, unknown>;
  if (l.ifname !== ifname) throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: ip answered for ${q(l.ifname)}, not ${q(ifname)}`);
  const stats = l.stats64;
  if (typeof stats !== "object" || stats === null || Array.isArray(stats)) throw new VigilError("VIGIL_HOST", "Cannot read NIC counters: stats64 is missing");
  const s = stats as Record<string, unknown>;
  return { rx: direction(s, "rx"), tx: direction(s, "tx") };
}

/** Reads the counters of every given NIC's tap (one `ip` call each). */
export async function readCounters(ns: HostNetns, nics: readonly AttachedNic[]): Promise<NicCounters[]> {
  const out: NicCounters[] = [];
  for (const nic of nics) {
    if (!/^vt-[0-9a-f]{10}$/.test(nic.tap)) throw new VigilError("VIGIL_HOST", `Cannot read NIC counters: ${q(nic.tap)} is not a vigil tap name`);
    const r = await inNetns(ns, "ip", ["-s", "-j", "link", "show", "dev", nic.tap], { timeoutMs: 10_000 });
    out.push({ nic: nic.nic, tap: nic.tap, network: nic.network, ip: nic.ip, ...parseLinkStats(r.stdout, nic.tap) });
  }
  return out;
}
