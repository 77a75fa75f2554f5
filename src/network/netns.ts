/**
 * vigil's network namespace on this host (docs/network.md): its name, and creating and deleting it. Inside it
 * IPv4 forwarding stays off (nothing routes between two networks), bridged IPv4 passes the inet hooks (the
 * firewall's conntrack needs `bridge-nf-call-iptables`), and IPv6 is off on every device vigil creates.
 */
import { createHash } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { inNetns } from "./netns-exec.ts";
import type { HostNetns } from "./types.ts";

const NETNS_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;

/** "vigil-" + 8 hex of sha-256 of the real path of VIGIL_HOME; `VIGIL_NETNS` overrides it (tests). */
export function netnsName(home: string, env: NodeJS.ProcessEnv = process.env): string {
  const override = env.VIGIL_NETNS;
  if (override !== undefined && override !== "") {
    if (!NETNS_NAME.test(override)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid VIGIL_NETNS ${q(override)}: use 1-32 letters, digits, ".", "_" or "-"`, { field: "VIGIL_NETNS" });
    return override;
  }
  const real = existsSync(home) ? realpathSync(home) : home;
  return `vigil-${createHash("sha256").update(real).digest("hex").slice(0, 8)}`;
}

export function hostNetns(name: string): HostNetns {
  return { name, path: `/run/netns/${name}` };
}

export function netnsExists(ns: HostNetns): boolean {
  return existsSync(ns.path);
}

/** Sysctls every new vigil netns gets; `default.disable_ipv6` makes each device created later IPv6-less. */
const NETNS_SYSCTLS = ["net.ipv4.ip_forward=0", "net.bridge.bridge-nf-call-iptables=1", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1"];

/** Creates the namespace if missing, brings its loopback up and (re)applies its sysctls. Idempotent. */
export async function ensureNetns(ns: HostNetns): Promise<void> {
  if (!netnsExists(ns)) await runCommand("ip", ["netns", "add", ns.name], { what: `ip netns add ${ns.name}` });
  await inNetns(ns, "ip", ["link", "set", "lo", "up"]);
  await inNetns(ns, "sysctl", ["-q", "-w", ...NETNS_SYSCTLS]);
}

/** Deletes the namespace (its remaining devices go with it). Idempotent. */
export async function deleteNetns(ns: HostNetns): Promise<void> {
  if (netnsExists(ns)) await runCommand("ip", ["netns", "delete", ns.name], { what: `ip netns delete ${ns.name}` });
}
