/**
 * NAT to the outside (docs/network.md, "## NAT"): the one place vigil touches the network of the namespace the
 * daemon runs in (the host's, normally), and only while at least one network says `nat: true`.
 *
 * One uplink veth pair per vigil netns: `vu-<8 hex>` inside vigil's netns ↔ `vigil-up-<6 hex>` in the daemon's,
 * on a /30 link net from 169.254.0.0/16 (link-local: never routed beyond the host). Inside vigil's netns:
 * ip_forward=1, a default route via the host end, and `table ip vigil_nat` (masquerade of the NAT networks'
 * CIDRs out of the uplink; only NAT networks' bridges may reach the uplink; nothing from the uplink opens a
 * connection). In the daemon's netns: ip_forward=1 (the value it had is recorded in a state file and put back)
 * and `table ip vigil_uplink` (masquerade of the link net toward anything but the uplink; nothing from the uplink
 * opens a connection to the host itself). The last NAT network's deletion removes all of it.
 *
 * The pure parts (names, link-net allocation, both rulesets) are separate from the commands so they are tested
 * without a namespace.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { BugError, VigilError, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { runCommand } from "../util/run-command.ts";
import { formatIpv4, parseIpv4 } from "./ipam.ts";
import { inNetns } from "./netns-exec.ts";
import { netnsExists } from "./netns.ts";
import type { HostNetns, NetworkInfo } from "./types.ts";

export const NAT_TABLE = "vigil_nat";
export const UPLINK_TABLE = "vigil_uplink";

/** The uplink's two device names, derived from vigil's netns name (so two daemons on one host never collide). */
export function uplinkNames(netnsName: string): { vigil: string; host: string } {
  const h = createHash("sha256").update(netnsName).digest("hex");
  return { vigil: `vu-${h.slice(0, 8)}`, host: `vigil-up-${h.slice(8, 14)}` };
}

export interface LinkNet {
  /** e.g. "169.254.37.8/30". */
  cidr: string;
  /** The daemon's netns end (the default route of vigil's netns). */
  hostAddr: string;
  /** vigil's netns end (what the host sees as the source of NAT networks' traffic). */
  vigilAddr: string;
}

const LINK_BASE = parseIpv4("169.254.0.0")!;
// RFC 3927 reserves 169.254.0.0/24 and 169.254.255.0/24; 169.254.169.254 is the cloud metadata address.
const FIRST = parseIpv4("169.254.1.0")!;
const LAST = parseIpv4("169.254.254.252")!;
const METADATA = parseIpv4("169.254.169.252")!;
const SLOTS = (LAST - FIRST) / 4 + 1;

/**
 * The /30 for this vigil netns: a slot chosen from the hash of `seed` (vigil's netns name), moving on past every
 * /30 that holds one of `used` (addresses already on the host, any prefix). Deterministic for one host state.
 */
export function allocateLinkNet(seed: string, used: readonly string[]): LinkNet {
  const taken = new Set<number>();
  for (const u of used) {
    const a = parseIpv4(u.split("/")[0] ?? "");
    if (a !== undefined && a >>> 16 === LINK_BASE >>> 16) taken.add((a & ~3) >>> 0);
  }
  const start = Number.parseInt(createHash("sha256").update(`linknet:${seed}`).digest("hex").slice(0, 8), 16) % SLOTS;
  for (let i = 0; i < SLOTS; i++) {
    const net = (FIRST + ((start + i) % SLOTS) * 4) >>> 0;
    if (net === METADATA || taken.has(net)) continue;
    return { cidr: `${formatIpv4(net)}/30`, hostAddr: formatIpv4(net + 1), vigilAddr: formatIpv4(net + 2) };
  }
  throw new VigilError("VIGIL_HOST", "Cannot create the NAT uplink: every /30 of 169.254.0.0/16 is in use on this host");
}

const DEV = /^[A-Za-z0-9_.-]{1,15}$/;
const CIDR = /^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/;
function must(re: RegExp, v: string, what: string): string {
  if (!re.test(v)) throw new BugError(`the NAT ruleset got a bad ${what} ${JSON.stringify(v)}`);
  return v;
}

const T = "\t";

/** The nft script (one transaction) that replaces `table ip vigil_nat` inside vigil's netns. */
export function natRuleset(uplink: string, natNetworks: readonly Pick<NetworkInfo, "cidr" | "bridge">[]): string {
  const up = must(DEV, uplink, "uplink device");
  const head = [`table ip ${NAT_TABLE}`, `delete table ip ${NAT_TABLE}`];
  if (natNetworks.length === 0) return head.join("\n") + "\n";
  const cidrs = [...new Set(natNetworks.map((n) => must(CIDR, n.cidr, "CIDR")))].sort().join(", ");
  const bridges = [...new Set(natNetworks.map((n) => `"${must(DEV, n.bridge, "bridge")}"`))].sort().join(", ");
  return [
    ...head,
    `table ip ${NAT_TABLE} {`,
    `${T}chain forward {`,
    `${T}${T}type filter hook forward priority filter - 10; policy accept;`,
    `${T}${T}oifname "${up}" iifname != { ${bridges} } drop comment "only NAT networks reach the uplink"`,
    `${T}${T}oifname "${up}" ip saddr != { ${cidrs} } drop comment "only NAT networks' addresses leave"`,
    `${T}${T}iifname "${up}" ct state != { established, related } drop comment "no connection is opened from outside"`,
    `${T}${T}iifname "${up}" oifname != { ${bridges} } drop`,
    `${T}}`,
    `${T}chain input {`,
    `${T}${T}type filter hook input priority filter - 10; policy accept;`,
    `${T}${T}iifname "${up}" ct state != { established, related } drop comment "the host opens nothing in vigil's netns"`,
    `${T}}`,
    `${T}chain postrouting {`,
    `${T}${T}type nat hook postrouting priority srcnat; policy accept;`,
    `${T}${T}oifname "${up}" ip saddr { ${cidrs} } masquerade`,
    `${T}}`,
    `}`,
  ].join("\n") + "\n";
}

/** The nft script (one transaction) that replaces `table ip vigil_uplink` in the daemon's netns. */
export function uplinkRuleset(hostDev: string, linkNet: string): string {
  const dev = must(DEV, hostDev, "uplink device");
  const net = must(CIDR, linkNet, "link net");
  return [
    `table ip ${UPLINK_TABLE}`,
    `delete table ip ${UPLINK_TABLE}`,
    `table ip ${UPLINK_TABLE} {`,
    `${T}chain postrouting {`,
    `${T}${T}type nat hook postrouting priority srcnat; policy accept;`,
    `${T}${T}ip saddr ${net} oifname != "${dev}" masquerade comment "vigil NAT networks, already masqueraded to the link net"`,
    `${T}}`,
    `${T}chain input {`,
    `${T}${T}type filter hook input priority filter - 10; policy accept;`,
    `${T}${T}iifname "${dev}" ct state != { established, related } drop comment "vigil's netns opens no connection to this host"`,
    `${T}}`,
    `}`,
  ].join("\n") + "\n";
}

/** What the uplink needs to be put back: written before the daemon's netns is changed. */
interface UplinkState {
  linkNet: LinkNet;
  /** net.ipv4.ip_forward of the daemon's netns before vigil set it to 1. */
  forwardBefore: string;
}

const FORWARD = "/proc/sys/net/ipv4/ip_forward";
const host = (args: string[]) => runCommand("ip", args, { what: `ip ${args.slice(0, 3).join(" ")}` });

/** What a sync changed in the daemon's netns (audited by the switch as `net.uplink`). */
export interface UplinkChange {
  change: "created" | "removed";
  hostDevice: string;
  vigilDevice: string;
  linkNet: string | undefined;
  /** The daemon's netns' ip_forward before the change and after it. */
  forward: { before: string; after: string };
}

/** The uplink of one vigil netns: `sync` makes it exist exactly while some network has NAT. */
export class NatUplink {
  readonly names: { vigil: string; host: string };

  /** `stateFile`: inside a 0700 directory of the daemon (HOME/run/nat/uplink.json). */
  constructor(
    private readonly ns: HostNetns,
    private readonly stateFile: string,
  ) {
    this.names = uplinkNames(ns.name);
  }

  private readState(): UplinkState | undefined {
    if (!existsSync(this.stateFile)) return undefined;
    const s = JSON.parse(readFileSync(this.stateFile, "utf8")) as UplinkState;
    return s;
  }

  /** The link net in use, when the uplink exists (or is recorded). */
  linkNet(): LinkNet | undefined {
    return this.readState()?.linkNet;
  }

  /**
   * Makes the uplink match `networks`: present with their NAT CIDRs when any has NAT, gone otherwise. Returns
   * what it changed in the daemon's netns (undefined: nothing there was created or removed).
   */
  async sync(networks: readonly NetworkInfo[]): Promise<UplinkChange | undefined> {
    const nat = networks.filter((n) => n.nat);
    if (nat.length === 0) return this.remove();
    return this.ensure(nat);
  }

  /** Device names of the daemon's netns → their kind ("veth", "bridge", … or "" when plain). */
  private async hostLinks(): Promise<Map<string, string>> {
    const { stdout } = await runCommand("ip", ["-d", "-j", "link", "show"], { what: "ip link show" });
    return new Map((JSON.parse(stdout || "[]") as Array<{ ifname: string; linkinfo?: { info_kind?: string } }>).map((l) => [l.ifname, l.linkinfo?.info_kind ?? ""]));
  }

  private async ensure(nat: readonly NetworkInfo[]): Promise<UplinkChange | undefined> {
    const kind = (await this.hostLinks()).get(this.names.host);
    if (kind !== undefined && kind !== "veth") {
      throw new VigilError("VIGIL_HOST", `Cannot create the NAT uplink: a device named ${q(this.names.host)} exists in the daemon's network namespace and is not vigil's (a ${kind || "plain"} device)`);
    }
    let state = this.readState();
    if (!state) {
      const { stdout } = await runCommand("ip", ["-j", "-4", "addr", "show"], { what: "ip addr show" });
      const used = (JSON.parse(stdout || "[]") as Array<{ addr_info?: Array<{ local?: string }> }>).flatMap((l) => (l.addr_info ?? []).map((a) => a.local ?? ""));
      state = { linkNet: allocateLinkNet(this.ns.name, used), forwardBefore: readFileSync(FORWARD, "utf8").trim() };
      ensurePrivateDir(dirname(this.stateFile));
      writeFileSync(this.stateFile, JSON.stringify(state), { mode: 0o600 });
    }
    const { linkNet } = state;
    const prefix = "/30";
    if (kind === undefined) {
      // A vigil end left alone (its pair cannot be half-deleted, but a failed move can leave it here) goes first.
      await inNetns(this.ns, "ip", ["link", "delete", this.names.vigil]).catch(() => undefined);
      await host(["link", "add", this.names.host, "type", "veth", "peer", "name", this.names.vigil]);
      try {
        await host(["link", "set", this.names.vigil, "netns", this.ns.name]);
      } catch (err) {
        await host(["link", "delete", this.names.host]).catch(() => undefined);
        throw err;
      }
    }
    await runCommand("sysctl", ["-q", "-w", `net.ipv6.conf.${this.names.host}.disable_ipv6=1`], { what: "sysctl (uplink)" });
    await host(["addr", "replace", `${linkNet.hostAddr}${prefix}`, "dev", this.names.host]);
    await host(["link", "set", this.names.host, "up"]);
    await runCommand("nft", ["-f", "-"], { input: uplinkRuleset(this.names.host, linkNet.cidr), what: `nft (table ip ${UPLINK_TABLE})` });
    writeFileSync(FORWARD, "1\n");

    await inNetns(this.ns, "sysctl", ["-q", "-w", `net.ipv6.conf.${this.names.vigil}.disable_ipv6=1`]);
    await inNetns(this.ns, "ip", ["addr", "replace", `${linkNet.vigilAddr}${prefix}`, "dev", this.names.vigil]);
    await inNetns(this.ns, "ip", ["link", "set", this.names.vigil, "up"]);
    await inNetns(this.ns, "ip", ["route", "replace", "default", "via", linkNet.hostAddr, "dev", this.names.vigil]);
    await inNetns(this.ns, "nft", ["-f", "-"], { input: natRuleset(this.names.vigil, nat), what: `nft (table ip ${NAT_TABLE} in ${this.ns.name})` });
    await inNetns(this.ns, "sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"]);
    return kind === undefined ? { change: "created", hostDevice: this.names.host, vigilDevice: this.names.vigil, linkNet: linkNet.cidr, forward: { before: state.forwardBefore, after: "1" } } : undefined;
  }

  /**
   * Removes the uplink, both tables, and puts the daemon's netns' ip_forward back. Idempotent; with nothing of
   * NAT present it only reads (the daemon's netns is never written to when no network ever had NAT).
   */
  async remove(): Promise<UplinkChange | undefined> {
    if (netnsExists(this.ns)) {
      await inNetns(this.ns, "sysctl", ["-q", "-w", "net.ipv4.ip_forward=0"]);
      await inNetns(this.ns, "nft", ["-f", "-"], { input: natRuleset(this.names.vigil, []), what: `nft (table ip ${NAT_TABLE} in ${this.ns.name})` });
      await inNetns(this.ns, "ip", ["link", "delete", this.names.vigil]).catch(() => undefined);
    }
    // Only vigil's own veth goes: a device of another kind that squats the name is not ours to delete.
    const hadVeth = (await this.hostLinks()).get(this.names.host) === "veth";
    if (hadVeth) await host(["link", "delete", this.names.host]);
    const forwardNow = readFileSync(FORWARD, "utf8").trim();
    const tables = (await runCommand("nft", ["list", "tables", "ip"], { what: "nft list tables" })).stdout;
    if (new RegExp(`^table ip ${UPLINK_TABLE}$`, "m").test(tables)) {
      await runCommand("nft", ["delete", "table", "ip", UPLINK_TABLE], { what: `nft delete table ip ${UPLINK_TABLE}` });
    }
    const state = this.readState();
    if (state) {
      // Another vigil on this host (its own netns, its own uplink) may still need forwarding: leave it on then.
      const others = [...(await this.hostLinks()).keys()].some((l) => l.startsWith("vigil-up-"));
      if (/^[01]$/.test(state.forwardBefore) && !others) writeFileSync(FORWARD, `${state.forwardBefore}\n`);
      rmSync(this.stateFile, { force: true });
    }
    if (!hadVeth && !state) return undefined;
    return { change: "removed", hostDevice: this.names.host, vigilDevice: this.names.vigil, linkNet: state?.linkNet.cidr, forward: { before: forwardNow, after: readFileSync(FORWARD, "utf8").trim() } };
  }
}
