/**
 * IPv4 address management for vigil networks (docs/network.md), pure: parsing and validating a network's CIDR,
 * its gateway (the first host address, held by the bridge), and handing out the lowest free host address. The
 * network address, the gateway and the broadcast address are never handed out.
 */
import { VigilError, q } from "../errors.ts";

/** Smallest and largest networks vigil accepts: a /16 is 65,534 hosts; a /29 leaves 5 addresses for VMs. */
export const MIN_PREFIX = 16;
export const MAX_PREFIX = 29;

export interface Cidr {
  /** The network address as an unsigned 32-bit integer. */
  network: number;
  prefix: number;
  /** Canonical text, e.g. "10.77.0.0/24". */
  text: string;
}

const OCTET = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/** A dotted-quad IPv4 address as an unsigned integer; undefined when it is not one (no leading zeros). */
export function parseIpv4(text: string): number | undefined {
  const m = IPV4.exec(text);
  if (!m) return undefined;
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

const mask = (prefix: number) => (prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);

/** The dotted netmask of a prefix length ("255.255.255.0" for 24). */
export function netmask(prefix: number): string {
  return formatIpv4(mask(prefix));
}

/**
 * Parses a network's `--cidr`: a dotted network address and a prefix length /16../29, host bits zero
 * ("10.77.0.0/24", not "10.77.0.1/24"). `field` names the input in the error.
 */
export function parseCidr(text: string, field = "cidr"): Cidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  const addr = m ? parseIpv4(m[1]!) : undefined;
  if (!m || addr === undefined) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${q(text)}: use an IPv4 network as ADDRESS/PREFIX, e.g. 10.77.0.0/24`, { field });
  const prefix = Number(m[2]);
  if (prefix < MIN_PREFIX || prefix > MAX_PREFIX) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${q(text)}: the prefix must be /${MIN_PREFIX} to /${MAX_PREFIX} (a /${prefix} is ${prefix > MAX_PREFIX ? "too small for a gateway and VMs" : "too large"})`, { field });
  }
  const network = (addr & mask(prefix)) >>> 0;
  if (network !== addr) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${q(text)}: host bits are set (the network is ${formatIpv4(network)}/${prefix})`, { field });
  return { network, prefix, text: `${formatIpv4(network)}/${prefix}` };
}

/** Number of addresses in the range, network and broadcast included. */
export const size = (c: Cidr): number => 2 ** (32 - c.prefix);
export const broadcast = (c: Cidr): number => (c.network + size(c) - 1) >>> 0;
/** The gateway: the first host address, the bridge's own. */
export const gateway = (c: Cidr): number => c.network + 1;

/** Whether `ip` lies in the range (network and broadcast included). */
export function contains(c: Cidr, ip: number): boolean {
  return ((ip & mask(c.prefix)) >>> 0) === c.network;
}

/** Whether two ranges share any address (with CIDR blocks: one contains the other). */
export function overlaps(a: Cidr, b: Cidr): boolean {
  return contains(a, b.network) || contains(b, a.network);
}

/** Addresses a VM may get: every host address but the gateway. */
export function assignable(c: Cidr): number {
  return size(c) - 3;
}

/**
 * The lowest address of the range that is not the network, the gateway, the broadcast address or in `used`
 * (dotted strings; ones outside the range are ignored). With `pool` (a spanned network's slice for this host,
 * inclusive), only addresses inside it are handed out. Throws when the range (or the pool) is full.
 */
export function allocate(c: Cidr, used: Iterable<string>, networkName = c.text, pool?: { first: string; last: string }): string {
  const taken = new Set<number>();
  for (const u of used) {
    const n = parseIpv4(u);
    if (n !== undefined && contains(c, n)) taken.add(n);
  }
  const lo = Math.max(gateway(c) + 1, pool ? parseIpv4(pool.first)! : 0);
  const hi = Math.min(broadcast(c) - 1, pool ? parseIpv4(pool.last)! : 0xffffffff);
  for (let ip = lo; ip <= hi; ip++) {
    if (!taken.has(ip)) return formatIpv4(ip);
  }
  if (pool) throw new VigilError("VIGIL_CONFLICT", `Cannot allocate an address on network ${q(networkName)}: this host's pool ${pool.first}-${pool.last} is full`);
  throw new VigilError("VIGIL_CONFLICT", `Cannot allocate an address on network ${q(networkName)}: all ${assignable(c)} addresses of ${c.text} are in use`);
}

/**
 * Checks a spanned network's pool: two addresses of the range, neither the network, the gateway nor the
 * broadcast address, first ≤ last. `field` names the input in the error.
 */
export function checkPool(c: Cidr, pool: { first: string; last: string }, field = "span.pool"): void {
  const first = parseIpv4(pool.first);
  const last = parseIpv4(pool.last);
  const ok = (n: number | undefined) => n !== undefined && contains(c, n) && n > gateway(c) && n < broadcast(c);
  if (!ok(first) || !ok(last) || first! > last!) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${q(`${pool.first}-${pool.last}`)}: give two host addresses of ${c.text} after the gateway, first ≤ last`, { field });
  }
}

/** Splits the assignable addresses (after the gateway) into `n` disjoint, contiguous, nearly equal slices. */
export function splitPool(c: Cidr, n: number): { first: string; last: string }[] {
  const lo = gateway(c) + 1;
  const total = broadcast(c) - lo;
  if (n < 1 || total < n) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot split ${c.text} between ${n} hosts: only ${total} addresses`, { field: "cidr" });
  const out: { first: string; last: string }[] = [];
  let start = lo;
  for (let i = 0; i < n; i++) {
    const len = Math.floor(total / n) + (i < total % n ? 1 : 0);
    out.push({ first: formatIpv4(start), last: formatIpv4(start + len - 1) });
    start += len;
  }
  return out;
}
