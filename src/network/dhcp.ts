/**
 * One dnsmasq per network inside vigil's netns (docs/network.md, "The switch"): DHCP only (no DNS: --port=0),
 * bound to that network's bridge, static leases only — an unknown MAC gets nothing. It daemonizes (a daemon
 * restart leaves it serving, like the VMs) and drops to `nobody` after binding.
 *
 * The static leases are given on its command line (`--dhcp-host=MAC,IP`) and a change restarts it, rather than a
 * `--dhcp-hostsfile` re-read on SIGHUP: dnsmasq re-reads that file as `nobody`, who cannot reach a file in the
 * daemon's 0700 run directory (measured: "cannot read …: Permission denied"), and putting the leases anywhere
 * readable by nobody would take them out of VIGIL_HOME. A restart takes milliseconds; a client whose request falls
 * in it retries. Pid file and lease file stay in the 0700 directory (opened as root before the drop).
 */
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { VigilError, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { netmask, type Cidr, formatIpv4 } from "./ipam.ts";
import { inNetns } from "./netns-exec.ts";
import type { HostNetns } from "./types.ts";

export interface DhcpLease {
  mac: string;
  ip: string;
}

export interface DhcpNetwork {
  name: string;
  bridge: string;
  cidr: Cidr;
  /** The router clients are told about: the gateway of a NAT network (docs/network.md, "## NAT"); none otherwise. */
  router?: string | undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether the process exists and is not a zombie (an exited dnsmasq nobody reaped yet no longer serves). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/s.test(stat);
  } catch {
    return false;
  }
}

export class DhcpServers {
  /** `dir`: a 0700 directory of the daemon (HOME/run/dhcp); one subdirectory per network. */
  constructor(
    private readonly ns: HostNetns,
    private readonly dir: string,
  ) {}

  private files(network: string) {
    const dir = join(this.dir, network);
    return { dir, pidFile: join(dir, "dnsmasq.pid"), leaseFile: join(dir, "dnsmasq.leases") };
  }

  /** The argv (after `dnsmasq`) that serves `leases` on `net`. */
  args(net: DhcpNetwork, leases: readonly DhcpLease[]): string[] {
    const f = this.files(net.name);
    return [
      "--conf-file=/dev/null",
      "--no-resolv",
      "--no-hosts",
      "--port=0",
      "--bind-interfaces",
      `--interface=${net.bridge}`,
      "--except-interface=lo",
      `--dhcp-range=${formatIpv4(net.cidr.network)},static,${netmask(net.cidr.prefix)}`,
      // A network without NAT has no way out: tell its clients there is no router (and DNS is off).
      net.router !== undefined && /^\d{1,3}(\.\d{1,3}){3}$/.test(net.router) ? `--dhcp-option=option:router,${net.router}` : "--dhcp-option=option:router",
      "--dhcp-authoritative",
      `--pid-file=${f.pidFile}`,
      `--dhcp-leasefile=${f.leaseFile}`,
      "--user=nobody",
      ...leases.map((l) => `--dhcp-host=${l.mac},${l.ip}`),
    ];
  }

  /** The pid of this network's dnsmasq when it runs (checked by its command line, not just the pid file). */
  pid(network: string): number | undefined {
    const f = this.files(network);
    let pid: number;
    try {
      pid = Number.parseInt(readFileSync(f.pidFile, "utf8"), 10);
    } catch {
      return undefined;
    }
    if (!Number.isSafeInteger(pid) || pid <= 1 || !alive(pid)) return undefined;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      return cmd.includes(`--pid-file=${f.pidFile}`) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** (Re)starts the network's dnsmasq with exactly `leases`. Resolves once it is bound and serving. */
  async start(net: DhcpNetwork, leases: readonly DhcpLease[]): Promise<void> {
    await this.stop(net.name, { keepDir: true });
    const f = this.files(net.name);
    ensurePrivateDir(this.dir);
    ensurePrivateDir(f.dir);
    // dnsmasq checks its configuration and binds before it forks; the parent's exit status is the outcome.
    await inNetns(this.ns, "dnsmasq", this.args(net, leases), { what: `dnsmasq for network ${q(net.name)}` });
    for (let i = 0; i < 50 && this.pid(net.name) === undefined; i++) await sleep(20);
    if (this.pid(net.name) === undefined) throw new VigilError("VIGIL_HOST", `dnsmasq for network ${q(net.name)} exited right after it started`);
  }

  /** Stops the network's dnsmasq (waits until it is gone) and removes its directory. Idempotent. */
  async stop(network: string, options: { keepDir?: boolean } = {}): Promise<void> {
    const pid = this.pid(network);
    if (pid !== undefined) {
      process.kill(pid, "SIGTERM");
      for (let i = 0; i < 250 && alive(pid); i++) await sleep(20);
      if (alive(pid)) process.kill(pid, "SIGKILL");
      for (let i = 0; i < 50 && alive(pid); i++) await sleep(20);
    }
    if (!options.keepDir) rmSync(this.files(network).dir, { recursive: true, force: true });
  }
}
