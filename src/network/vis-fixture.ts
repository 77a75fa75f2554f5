/**
 * A throw-away switch for the visibility tests: a bridge in its own netns ("vt-vis-<rand>-sw") and per test "VM"
 * a netns whose veth's bridge-side end is named like a tap ("vt-" + 10 hex). Everything lives in namespaces this
 * fixture creates and `close()` deletes (the hard rule on test traffic). Not used by the daemon.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { runCommand } from "../util/run-command.ts";
import type { AttachedNic, HostNetns, NetworkInfo, SwitchView } from "./types.ts";

export interface FixtureVm {
  name: string;
  /** The VM's own netns (its "guest"). */
  ns: HostNetns;
  nic: AttachedNic;
}

export class VisFixture implements SwitchView {
  readonly id = randomBytes(4).toString("hex");
  readonly sw: HostNetns = { name: `vt-vis-${this.id}-sw`, path: `/run/netns/vt-vis-${this.id}-sw` };
  readonly vms: FixtureVm[] = [];
  private readonly created: string[] = [];
  private readonly network: NetworkInfo = { name: "visnet", cidr: "10.99.0.0/24", gateway: "10.99.0.1", bridge: "vb-visnet", dhcp: false, createdAt: new Date().toISOString() };

  static async create(vmCount: number): Promise<VisFixture> {
    const f = new VisFixture();
    try {
      await f.netnsAdd(f.sw.name);
      await f.ip(f.sw, "link", "add", "vb-visnet", "type", "bridge");
      await f.ip(f.sw, "addr", "add", "10.99.0.1/24", "dev", "vb-visnet");
      await f.ip(f.sw, "link", "set", "vb-visnet", "up");
      await f.ip(f.sw, "link", "set", "lo", "up");
      for (let i = 0; i < vmCount; i++) await f.addVm(`vm${i}`, `10.99.0.${10 + i}`);
    } catch (err) {
      await f.close();
      throw err;
    }
    return f;
  }

  private async netnsAdd(name: string): Promise<void> {
    await runCommand("ip", ["netns", "add", name]);
    this.created.push(name);
  }

  ip(ns: HostNetns, ...args: string[]): Promise<{ stdout: string; stderr: string }> {
    return runCommand("ip", ["-n", ns.name, ...args]);
  }

  private async addVm(name: string, ip: string): Promise<void> {
    const nsName = `vt-vis-${this.id}-${name}`;
    const ns: HostNetns = { name: nsName, path: `/run/netns/${nsName}` };
    await this.netnsAdd(nsName);
    const tap = `vt-${randomBytes(5).toString("hex")}`;
    await runCommand("ip", ["link", "add", "eth0", "netns", nsName, "type", "veth", "peer", "name", tap, "netns", this.sw.name]);
    await this.ip(ns, "addr", "add", `${ip}/24`, "dev", "eth0");
    await this.ip(ns, "link", "set", "eth0", "up");
    await this.ip(ns, "link", "set", "lo", "up");
    await this.ip(this.sw, "link", "set", tap, "master", "vb-visnet");
    await this.ip(this.sw, "link", "set", tap, "up");
    const link = JSON.parse((await this.ip(ns, "-j", "link", "show", "dev", "eth0")).stdout) as Array<{ address: string }>;
    const nic: AttachedNic = { vmId: `id-${name}`, vmName: name, nic: "net0", network: "visnet", bridge: "vb-visnet", tap, mac: link[0]?.address ?? "", ip, labels: {} };
    this.vms.push({ name, ns, nic });
  }

  vm(name: string): FixtureVm {
    const v = this.vms.find((x) => x.name === name);
    if (!v) throw new Error(`no fixture VM ${name}`);
    return v;
  }

  netns(): HostNetns {
    return this.sw;
  }

  networks(): Promise<NetworkInfo[]> {
    return Promise.resolve([this.network]);
  }

  attached(): Promise<AttachedNic[]> {
    return Promise.resolve(this.vms.map((v) => v.nic));
  }

  /** Deletes every namespace this fixture made (their veths and processes' net go with them). */
  async close(): Promise<void> {
    for (const name of this.created.reverse()) await runCommand("ip", ["netns", "del", name]).catch(() => undefined);
    this.created.length = 0;
  }
}

/** Runs a command inside a fixture VM's netns. */
export function inVm(vm: FixtureVm, args: string[], input?: string, timeoutMs = 15_000): Promise<{ stdout: string; stderr: string }> {
  return runCommand("ip", ["netns", "exec", vm.ns.name, ...args], { input, timeoutMs });
}

/** Starts `busybox nc -ll -p PORT -e /bin/cat` (an echo server) in a fixture VM; the returned child must be killed. */
export async function echoServer(vm: FixtureVm, port: number): Promise<ChildProcess> {
  const child = spawn("ip", ["netns", "exec", vm.ns.name, "busybox", "nc", "-ll", "-p", String(port), "-e", "/bin/cat"], { stdio: "ignore" });
  // Wait until it listens (busybox nc binds at once; poll the socket table of that netns).
  for (let i = 0; i < 50; i++) {
    const ss = await runCommand("ip", ["netns", "exec", vm.ns.name, "ss", "-ltnH"]);
    if (ss.stdout.includes(`:${port} `)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`echo server on port ${port} did not start`);
}
