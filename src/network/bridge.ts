/**
 * Bridges and taps inside vigil's netns (docs/network.md): their names, creating them (a failed step undoes the
 * device), deleting them, and reading back which taps exist with their owner and bridge (`ip -d -j link`).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { inNetns } from "./netns-exec.ts";
import type { HostNetns } from "./types.ts";

/** A network's name: it becomes the bridge "vb-NAME", which must fit IFNAMSIZ (15 characters). */
export const NETWORK_NAME = /^[a-z][a-z0-9-]{0,11}$/;

export function checkNetworkName(name: string, field = "name"): void {
  if (!NETWORK_NAME.test(name)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid network name ${q(name)}: use 1-12 lower-case letters, digits or "-", starting with a letter`, { field });
}

export const bridgeName = (network: string): string => `vb-${network}`;

/** "vt-" + 10 hex of sha-256 of "VMID/NIC": stable across restarts, unique per NIC, 13 characters. */
export const tapName = (vmId: string, nic: string): string => `vt-${createHash("sha256").update(`${vmId}/${nic}`).digest("hex").slice(0, 10)}`;

/** A spanned network's VXLAN device: "vx-NAME" (≤ 15 characters, as the bridge). */
export const vxlanName = (network: string): string => `vx-${network}`;

const ip = (ns: HostNetns, args: string[]) => inNetns(ns, "ip", args);

export interface LinkInfo {
  name: string;
  /** The bridge it is enslaved to. */
  master: string | undefined;
  kind: string | undefined;
  up: boolean;
  /** tun/tap owner and group (`ip -d`), when the device is one. */
  owner: number | undefined;
  group: number | undefined;
}

interface IpLinkJson {
  ifname: string;
  master?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: number | string; group?: number | string } };
}

/** `ip` prints a tap's owner as a name when the id has one in /etc/passwd (group: /etc/group). */
function idOf(v: number | string | undefined, db: "/etc/passwd" | "/etc/group"): number | undefined {
  if (v === undefined || typeof v === "number") return v;
  if (/^\d+$/.test(v)) return Number(v);
  try {
    const line = readFileSync(db, "utf8").split("\n").find((l) => l.split(":")[0] === v);
    const id = line?.split(":")[2];
    return id !== undefined && /^\d+$/.test(id) ? Number(id) : undefined;
  } catch {
    return undefined;
  }
}

/** Every device in the netns. */
export async function listLinks(ns: HostNetns): Promise<LinkInfo[]> {
  const { stdout } = await ip(ns, ["-d", "-j", "link", "show"]);
  const rows = JSON.parse(stdout || "[]") as IpLinkJson[];
  return rows.map((r) => ({
    name: r.ifname,
    master: r.master,
    kind: r.linkinfo?.info_kind,
    up: r.flags?.includes("UP") ?? false,
    owner: idOf(r.linkinfo?.info_data?.user, "/etc/passwd"),
    group: idOf(r.linkinfo?.info_data?.group, "/etc/group"),
  }));
}

/** Creates the bridge with the gateway address and brings it up; a failure removes it again. */
export async function createBridge(ns: HostNetns, bridge: string, gatewayWithPrefix: string): Promise<void> {
  await ip(ns, ["link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
  try {
    await inNetns(ns, "sysctl", ["-q", "-w", `net.ipv6.conf.${bridge}.disable_ipv6=1`]);
    await ip(ns, ["addr", "add", gatewayWithPrefix, "dev", bridge]);
    await ip(ns, ["link", "set", bridge, "up"]);
  } catch (err) {
    await deleteLink(ns, bridge).catch(() => undefined);
    throw err;
  }
}

/** Makes an existing bridge hold its gateway address and be up (reconcile after a crash or a manual change). */
export async function repairBridge(ns: HostNetns, bridge: string, gatewayWithPrefix: string): Promise<void> {
  const { stdout } = await ip(ns, ["-j", "addr", "show", "dev", bridge]);
  const addrs = (JSON.parse(stdout || "[]") as Array<{ addr_info?: Array<{ local?: string; prefixlen?: number }> }>).flatMap((l) => l.addr_info ?? []);
  if (!addrs.some((a) => `${a.local}/${a.prefixlen}` === gatewayWithPrefix)) await ip(ns, ["addr", "add", gatewayWithPrefix, "dev", bridge]);
  await ip(ns, ["link", "set", bridge, "up"]);
}

/**
 * Creates a persistent tap owned by uid/gid (the VM's jail, which opens it), with a vnet header, enslaved to
 * `bridge` and up. An existing tap of that name is kept (re-enslaved, brought up): attach is idempotent. A
 * failure after the tap was created by this call removes it.
 */
export async function createTap(ns: HostNetns, tap: string, bridge: string, uid: number, gid: number, existing: LinkInfo | undefined): Promise<void> {
  if (existing && (existing.kind !== "tun" || existing.owner !== uid)) {
    throw new VigilError("VIGIL_HOST", `Cannot plug tap ${q(tap)}: a device of that name exists in ${ns.name} and is not a tap owned by uid ${uid}`);
  }
  if (!existing) await ip(ns, ["tuntap", "add", "dev", tap, "mode", "tap", "user", String(uid), "group", String(gid), "vnet_hdr"]);
  try {
    await inNetns(ns, "sysctl", ["-q", "-w", `net.ipv6.conf.${tap}.disable_ipv6=1`]);
    await ip(ns, ["link", "set", tap, "master", bridge]);
    await ip(ns, ["link", "set", tap, "up"]);
  } catch (err) {
    if (!existing) await deleteLink(ns, tap).catch(() => undefined);
    throw err;
  }
}

/** Deletes a device; a device that is not there is fine. */
export async function deleteLink(ns: HostNetns, name: string): Promise<void> {
  try {
    await ip(ns, ["link", "delete", name]);
  } catch (err) {
    const links = await listLinks(ns).catch(() => undefined);
    if (links && !links.some((l) => l.name === name)) return;
    throw err;
  }
}

/** The VXLAN UDP port (IANA). */
export const VXLAN_PORT = 4789;

/**
 * A spanned network's VXLAN device (docs/cluster.md "Networks across hosts (VXLAN)"): created in the daemon's own
 * netns, where the underlay address `local` is (its UDP socket stays in the netns it was created in), then moved
 * into vigil's netns, enslaved to `bridge`, given one all-zeros FDB entry per peer (head-end replication for
 * broadcast and unknown unicast; no learning from the underlay) and brought up. MTU 1500 like the taps: the
 * kernel fragments the outer packets on a 1500-byte underlay rather than the bridge dropping full-size frames.
 * An existing device of that name is replaced. A failure removes the device.
 */
export async function createVxlan(ns: HostNetns, device: string, o: { vni: number; local: string; peers: readonly string[]; bridge: string; underlay?: HostNetns | undefined }): Promise<void> {
  // Where the underlay address is: the daemon's own netns, or (tests) a netns of the test's own.
  const outer = (args: string[]) => (o.underlay ? inNetns(o.underlay, "ip", args) : runCommand("ip", args, { what: `ip ${args.slice(0, 3).join(" ")}` }));
  await deleteLink(ns, device);
  // A leftover of ours in the daemon's netns (a crash between add and move) would make "add" fail: remove it.
  await outer(["link", "delete", device, "type", "vxlan"]).catch(() => undefined);
  await outer(["link", "add", device, "mtu", "1500", "type", "vxlan", "id", String(o.vni), "local", o.local, "dstport", String(VXLAN_PORT), "nolearning"]);
  try {
    await outer(["link", "set", device, "netns", ns.name]);
  } catch (err) {
    await outer(["link", "delete", device]).catch(() => undefined);
    throw err;
  }
  try {
    await inNetns(ns, "sysctl", ["-q", "-w", `net.ipv6.conf.${device}.disable_ipv6=1`]);
    for (const peer of o.peers) await inNetns(ns, "bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", device, "dst", peer]);
    await ip(ns, ["link", "set", device, "master", o.bridge]);
    await ip(ns, ["link", "set", device, "up"]);
  } catch (err) {
    await deleteLink(ns, device).catch(() => undefined);
    throw err;
  }
}

/** The all-zeros FDB entries' destinations of a VXLAN device (its peers), as the kernel has them. */
export async function vxlanPeers(ns: HostNetns, device: string): Promise<string[]> {
  const { stdout } = await inNetns(ns, "bridge", ["-j", "fdb", "show", "dev", device]);
  return (JSON.parse(stdout || "[]") as Array<{ mac?: string; dst?: string }>).filter((e) => e.mac === "00:00:00:00:00:00" && e.dst !== undefined).map((e) => e.dst!).sort();
}
