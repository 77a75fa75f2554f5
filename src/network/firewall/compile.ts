/**
 * The firewall compiler (docs/network.md, "The firewall"): what is attached on this host, the VMs' policies, the
 * quarantine set and the quarantine zone's services in; ONE nft script out that deletes and re-creates both of
 * vigil's tables, so `nft -f` loads it as one transaction (all or nothing, never a moment with neither ruleset).
 *
 * Pure: no I/O, same input → same text (NICs sorted by tap), covered by golden tests. Every value that reaches the
 * text is either a fixed keyword or checked against a strict pattern first (a tap name, a MAC, an address), so no
 * input can inject nft syntax; user comments never reach the ruleset (rules carry "rule N" instead).
 *
 *  - `table bridge vigil_l2`, prerouting: per tap (`iifname`) anti-spoofing — own MAC only, ARP only for own
 *    MAC/IP, IPv4 only from own IP (or DHCP discover from 0.0.0.0), no DHCP server replies, nothing else (no IPv6,
 *    no VLAN tags). Unknown ports are dropped (a tap whose rules are not installed yet has no network).
 *  - `table inet vigil_fw` (bridged IPv4 passes it through br_netfilter, with conntrack; iif/oif are the bridge):
 *    forward: bridge-to-bridge dropped, established/related accepted, invalid dropped, then the source NIC's out
 *    chain (by bridge . ip saddr; allow = return, so the destination's in chain still runs), then the destination
 *    NIC's in chain (by bridge . ip daddr), default drop for anything that is neither. input (to the gateway):
 *    DHCP and the quarantine services from VMs accepted, everything else from a VM dropped.
 *  - A network spanning hosts (docs/cluster.md "Networks across hosts (VXLAN)"): its VXLAN port is the one
 *    non-tap port the L2 table lets in (the sending host filtered its own taps), minus DHCP, ARP about the
 *    gateway and IPv4 to or from it (every host's bridge holds the same gateway and serves its own NICs only); in forward, a local NIC whose
 *    out chain returned may reach the rest of the network's range (a VM on another host, whose host applies
 *    its in chain); a remote source reaches a local NIC only through that NIC's in chain, as a local one.
 *  - A quarantined NIC: keeps its anti-spoofing; its out chain is replaced by the quarantine chain (NEW only to
 *    the services) and NEW connections to it are dropped; established flows and ARP/DHCP still pass.
 */
import { BugError } from "../../errors.ts";
import type { AttachedNic, NetworkInfo } from "../types.ts";
import { parseCidr, type Peer, type Policy, type Rule, defaultPolicy } from "./policy.ts";

/** A named service of the quarantine zone: the only place a quarantined VM may open connections to. */
export interface QuarantineService {
  name: string;
  ip: string;
  proto: "tcp" | "udp";
  port: number;
}

export interface CompileInput {
  nics: readonly AttachedNic[];
  networks: readonly NetworkInfo[];
  /** VM id → policy; a VM missing here gets the default policy. */
  policies: ReadonlyMap<string, Policy>;
  quarantined: ReadonlySet<string>;
  services: readonly QuarantineService[];
  /**
   * The NAT uplink's device in vigil's netns (docs/network.md, "## NAT"), when NAT networks exist: their VMs'
   * traffic that their out policy allows may leave through it; nothing else may, and nothing may open from it.
   */
  uplink?: string | undefined;
}

/** Something `fw show` should tell the user about a rule that was compiled differently from how it reads. */
export interface CompileNote {
  vmId: string;
  /** 1-based rule index in the policy. */
  rule: number;
  note: string;
}

export interface CompiledRuleset {
  text: string;
  notes: CompileNote[];
}

export const L2_TABLE = "vigil_l2";
export const FW_TABLE = "vigil_fw";

/** The chain names of one NIC (keyed by its tap), as installed; `fw show` reads them back by these names. */
export function chainNames(tap: string): { l2: string; in: string; out: string; quarantine: string } {
  return { l2: `l2-${tap}`, in: `in-${tap}`, out: `out-${tap}`, quarantine: `q-${tap}` };
}

const TAP_RE = /^vt-[0-9a-f]{10}$/;
const MAC_RE = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/;
const BRIDGE_RE = /^vb-[a-z][a-z0-9-]{0,11}$/;
const UPLINK_RE = /^vu-[0-9a-f]{8}$/;
const VXLAN_RE = /^vx-[a-z][a-z0-9-]{0,11}$/;
const CIDR_RE = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\/(?:1[6-9]|2\d)$/;
const IP_RE = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

function must(re: RegExp, value: string, what: string): string {
  if (!re.test(value)) throw new BugError(`the switch handed the firewall a ${what} ${JSON.stringify(value)} it cannot use`);
  return value;
}

function checkedNic(n: AttachedNic): AttachedNic {
  must(TAP_RE, n.tap, "tap name");
  must(BRIDGE_RE, n.bridge, "bridge name");
  must(IP_RE, n.ip, "NIC address");
  return { ...n, mac: must(MAC_RE, n.mac.toLowerCase(), "MAC") };
}

/** The addresses a peer stands for, or null when it stands for no attached NIC (the rule then matches nothing). */
function peerAddresses(peer: Peer, nics: readonly AttachedNic[]): string[] | null {
  if ("cidr" in peer) {
    const c = parseCidr(peer.cidr);
    if (!c) throw new BugError(`a validated policy holds the CIDR ${JSON.stringify(peer.cidr)}`);
    return [c.len === 32 ? c.addr : `${c.addr}/${c.len}`];
  }
  let ips: string[];
  if ("vm" in peer) ips = nics.filter((n) => n.vmName === peer.vm).map((n) => n.ip);
  else {
    const eq = peer.label.indexOf("=");
    const key = peer.label.slice(0, eq);
    const value = peer.label.slice(eq + 1);
    ips = nics.filter((n) => Object.hasOwn(n.labels, key) && n.labels[key] === value).map((n) => n.ip);
  }
  const unique = [...new Set(ips)].sort(compareIp);
  return unique.length === 0 ? null : unique;
}

function compareIp(a: string, b: string): number {
  const na = a.split(".").map(Number);
  const nb = b.split(".").map(Number);
  for (let i = 0; i < 4; i++) if (na[i] !== nb[i]) return (na[i] ?? 0) - (nb[i] ?? 0);
  return 0;
}

function addrMatch(field: "saddr" | "daddr", addrs: string[]): string {
  return addrs.length === 1 ? `ip ${field} ${addrs[0]}` : `ip ${field} { ${addrs.join(", ")} }`;
}

function protoMatch(r: Rule): string | null {
  if (r.proto === "any") return null;
  if (r.proto === "icmp") return "meta l4proto icmp";
  return r.ports === undefined ? `meta l4proto ${r.proto}` : `${r.proto} dport ${r.ports}`;
}

/** The nft statement for one policy rule, or null with a note when its peer matches nothing. */
function compileRule(r: Rule, index: number, nics: readonly AttachedNic[]): { stmt: string | null; note?: string } {
  const parts: string[] = [];
  if (r.peer !== undefined) {
    const addrs = peerAddresses(r.peer, nics);
    if (addrs === null) {
      const what = "vm" in r.peer ? `no VM named "${r.peer.vm}"` : `no VM labelled "${"label" in r.peer ? r.peer.label : ""}"`;
      return { stmt: null, note: `matches nothing: ${what} is attached on this host` };
    }
    parts.push(addrMatch(r.direction === "in" ? "saddr" : "daddr", addrs));
  }
  const p = protoMatch(r);
  if (p) parts.push(p);
  // Outbound allow is `return`: the destination's own in chain still decides.
  const verdict = r.action === "drop" ? "drop" : r.direction === "out" ? "return" : "accept";
  parts.push(`${verdict} comment "rule ${index}"`);
  return { stmt: parts.join(" ") };
}

function serviceElements(services: readonly QuarantineService[]): string | null {
  const checked = [...services]
    .map((s) => {
      must(IP_RE, s.ip, "service address");
      if (!Number.isInteger(s.port) || s.port < 1 || s.port > 65535 || (s.proto !== "tcp" && s.proto !== "udp")) throw new BugError(`bad quarantine service ${s.name}`);
      return `${s.ip} . ${s.proto} . ${s.port}`;
    })
    .sort();
  const unique = [...new Set(checked)];
  return unique.length === 0 ? null : `{ ${unique.join(", ")} }`;
}

const T = "\t";

/** Compiles the whole host's ruleset; see the module header for what it holds. */
export function compileRuleset(input: CompileInput): CompiledRuleset {
  const header = [`table bridge ${L2_TABLE}`, `delete table bridge ${L2_TABLE}`, `table inet ${FW_TABLE}`, `delete table inet ${FW_TABLE}`];
  const nics = input.nics.map(checkedNic).sort((a, b) => (a.tap < b.tap ? -1 : a.tap > b.tap ? 1 : 0));
  const notes: CompileNote[] = [];
  // No NIC on this host: no tables at all (teardown leaves nothing behind).
  if (nics.length === 0) return { text: header.join("\n") + "\n", notes };
  const taps = new Set<string>();
  for (const n of nics) {
    if (taps.has(n.tap)) throw new BugError(`the switch reports tap ${n.tap} twice`);
    taps.add(n.tap);
  }

  const l2: string[] = [];
  l2.push(`table bridge ${L2_TABLE} {`);
  l2.push(`${T}chain prerouting {`, `${T}${T}type filter hook prerouting priority filter; policy drop;`);
  const spanned = input.networks
    .filter((n) => n.span !== undefined)
    .map((n) => ({ device: must(VXLAN_RE, n.span!.device, "VXLAN device"), bridge: must(BRIDGE_RE, n.bridge, "bridge name"), gateway: must(IP_RE, n.gateway, "gateway"), cidr: must(CIDR_RE, n.cidr, "network range") }))
    .sort((a, b) => (a.device < b.device ? -1 : a.device > b.device ? 1 : 0));
  const ports = [...nics.map((n) => `"${n.tap}" : jump ${chainNames(n.tap).l2}`), ...spanned.map((v) => `"${v.device}" : jump from-${v.device}`)];
  l2.push(`${T}${T}iifname vmap { ${ports.join(", ")} }`);
  l2.push(`${T}}`);
  for (const v of spanned) {
    l2.push(`${T}chain from-${v.device} {`);
    l2.push(`${T}${T}ether type arp arp saddr ip ${v.gateway} drop comment "another host's gateway"`);
    l2.push(`${T}${T}ether type arp arp daddr ip ${v.gateway} drop comment "the gateway is each host's own"`);
    l2.push(`${T}${T}ether type ip udp dport { 67, 68 } drop comment "each host serves DHCP to its own NICs"`);
    l2.push(`${T}${T}ether type ip ip daddr ${v.gateway} drop comment "no VM of another host reaches this host's gateway"`);
    l2.push(`${T}${T}ether type ip ip saddr ${v.gateway} drop comment "nor does another host's gateway reach this host's VMs"`);
    l2.push(`${T}${T}accept comment "from another host of the network (it filtered its own taps)"`);
    l2.push(`${T}}`);
  }
  for (const n of nics) {
    l2.push(`${T}chain ${chainNames(n.tap).l2} {`);
    l2.push(`${T}${T}ether saddr != ${n.mac} drop comment "spoofed MAC"`);
    l2.push(`${T}${T}ether type arp arp saddr ether ${n.mac} arp saddr ip { 0.0.0.0, ${n.ip} } accept`);
    l2.push(`${T}${T}ether type arp drop comment "spoofed ARP"`);
    l2.push(`${T}${T}ether type ip udp sport 67 drop comment "DHCP server reply from a VM"`);
    l2.push(`${T}${T}ether type ip ip saddr ${n.ip} accept`);
    l2.push(`${T}${T}ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept`);
    l2.push(`${T}${T}drop comment "spoofed IP or other protocol"`);
    l2.push(`${T}}`);
  }
  l2.push(`}`);

  const services = serviceElements(input.services);
  const fw: string[] = [];
  const bridges = [...new Set([...input.networks.map((n) => n.bridge), ...nics.map((n) => n.bridge)])].map((b) => must(BRIDGE_RE, b, "bridge name")).sort();
  fw.push(`table inet ${FW_TABLE} {`);
  fw.push(`${T}chain forward {`, `${T}${T}type filter hook forward priority filter; policy drop;`);
  // NAT (docs/network.md, "## NAT"): a NAT network's bridge may also send to the uplink; nothing opens from it.
  const uplink = input.uplink === undefined ? undefined : must(UPLINK_RE, input.uplink, "uplink device");
  const natBridges = new Set(uplink === undefined ? [] : input.networks.filter((n) => n.nat === true).map((n) => n.bridge));
  for (const b of bridges) {
    fw.push(natBridges.has(b) ? `${T}${T}iifname "${b}" oifname != { "${b}", "${uplink}" } drop comment "between networks"` : `${T}${T}iifname "${b}" oifname != "${b}" drop comment "between networks"`);
  }
  fw.push(`${T}${T}ct state established,related accept`, `${T}${T}ct state invalid drop`);
  if (uplink !== undefined) fw.push(`${T}${T}iifname "${uplink}" drop comment "nothing opens a connection from the NAT uplink"`);
  const outMap = nics.map((n) => {
    const c = chainNames(n.tap);
    return `"${n.bridge}" . ${n.ip} : jump ${input.quarantined.has(n.vmId) ? c.quarantine : c.out}`;
  });
  const inMap = nics.map((n) => `"${n.bridge}" . ${n.ip} : ${input.quarantined.has(n.vmId) ? "drop" : `jump ${chainNames(n.tap).in}`}`);
  fw.push(`${T}${T}iifname . ip saddr vmap { ${outMap.join(", ")} }`);
  fw.push(`${T}${T}oifname . ip daddr vmap { ${inMap.join(", ")} }`);
  // Reached only when the source NIC's out chain returned (allowed): the NICs of NAT networks may go out.
  const natSources = nics.filter((n) => natBridges.has(n.bridge) && !input.quarantined.has(n.vmId)).map((n) => `"${n.bridge}" . ${n.ip}`);
  if (uplink !== undefined && natSources.length > 0) fw.push(`${T}${T}oifname "${uplink}" iifname . ip saddr { ${natSources.join(", ")} } accept comment "NAT: allowed by the out policy"`);
  // Reached only when the source NIC's out chain returned and the destination is no NIC of this host: on a
  // spanned network, a VM on another host (its own host runs its in chain); never another host's gateway.
  for (const v of spanned) {
    const sources = nics.filter((n) => n.bridge === v.bridge && !input.quarantined.has(n.vmId)).map((n) => n.ip);
    if (sources.length > 0) fw.push(`${T}${T}iifname "${v.bridge}" oifname "${v.bridge}" ${addrMatch("saddr", [...sources].sort(compareIp))} ip daddr ${v.cidr} ip daddr != ${v.gateway} accept comment "to another host of the network: allowed by the out policy"`);
  }
  fw.push(`${T}}`);

  fw.push(`${T}chain input {`, `${T}${T}type filter hook input priority filter; policy accept;`);
  fw.push(`${T}${T}ct state established,related accept`, `${T}${T}ct state invalid drop`);
  fw.push(`${T}${T}ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept`, `${T}${T}ip saddr 0.0.0.0 drop`);
  fw.push(`${T}${T}iifname . ip saddr { ${nics.map((n) => `"${n.bridge}" . ${n.ip}`).join(", ")} } jump from-vm`);
  fw.push(`${T}}`);
  fw.push(`${T}chain from-vm {`, `${T}${T}udp sport 68 udp dport 67 accept comment "DHCP"`);
  if (services) fw.push(`${T}${T}ip daddr . meta l4proto . th dport ${services} accept comment "quarantine services"`);
  fw.push(`${T}${T}drop`, `${T}}`);

  for (const n of nics) {
    const c = chainNames(n.tap);
    if (input.quarantined.has(n.vmId)) {
      fw.push(`${T}chain ${c.quarantine} {`);
      if (services) fw.push(`${T}${T}ip daddr . meta l4proto . th dport ${services} accept comment "quarantine services"`);
      fw.push(`${T}${T}drop comment "quarantined"`, `${T}}`);
      continue;
    }
    const policy = input.policies.get(n.vmId) ?? defaultPolicy();
    const rulesIn: string[] = [];
    const rulesOut: string[] = [];
    policy.rules.forEach((r, i) => {
      const { stmt, note } = compileRule(r, i + 1, nics);
      if (note && !notes.some((x) => x.vmId === n.vmId && x.rule === i + 1)) notes.push({ vmId: n.vmId, rule: i + 1, note });
      if (stmt) (r.direction === "in" ? rulesIn : rulesOut).push(stmt);
    });
    fw.push(`${T}chain ${c.out} {`);
    for (const s of rulesOut) fw.push(`${T}${T}${s}`);
    fw.push(`${T}${T}${policy.defaults.out === "accept" ? "return" : "drop"} comment "default out"`, `${T}}`);
    fw.push(`${T}chain ${c.in} {`);
    for (const s of rulesIn) fw.push(`${T}${T}${s}`);
    fw.push(`${T}${T}${policy.defaults.in} comment "default in"`, `${T}}`);
  }
  fw.push(`}`);

  return { text: [...header, ...l2, ...fw].join("\n") + "\n", notes };
}
