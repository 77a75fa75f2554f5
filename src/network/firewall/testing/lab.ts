/**
 * A throw-away switch for firewall tests: a netns "vt-fw-<rand>-sw" holding bridge "vb-t" (br_netfilter on,
 * ip_forward 0), and per "VM" a netns "vt-fw-<rand>-<n>" with a veth whose bridge-side end is named like a tap
 * and whose guest end has the VM's MAC and IP. Traffic never leaves these namespaces; `close()` deletes them all
 * (call it from t.after). Implements SwitchView over what it built.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { runCommand } from "../../../util/run-command.ts";
import type { AttachedNic, HostNetns, NetworkInfo, SwitchView } from "../../types.ts";

export interface LabVm {
  nic: AttachedNic;
  ns: string;
}

const run = (args: string[], input?: string) => runCommand(args[0]!, args.slice(1), { timeoutMs: 20_000, input });

export class Lab implements SwitchView {
  readonly id = randomBytes(3).toString("hex");
  readonly sw: HostNetns;
  readonly cidr = "10.99.0.0/24";
  readonly gateway = "10.99.0.1";
  readonly vms: LabVm[] = [];
  /** What attached() reports: tests may remove a NIC here to model a detach. */
  private readonly children = new Set<ChildProcess>();
  private readonly namespaces: string[] = [];

  constructor() {
    const name = `vt-fw-${this.id}-sw`;
    this.sw = { name, path: `/run/netns/${name}` };
  }

  async start(): Promise<this> {
    await this.addNs(this.sw.name);
    const n = this.sw.name;
    await run(["ip", "-n", n, "link", "set", "lo", "up"]);
    await run(["ip", "-n", n, "link", "add", "vb-t", "type", "bridge"]);
    await run(["ip", "-n", n, "addr", "add", `${this.gateway}/24`, "dev", "vb-t"]);
    await run(["ip", "-n", n, "link", "set", "vb-t", "up"]);
    await run(["ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
    await run(["ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]);
    return this;
  }

  private async addNs(name: string): Promise<void> {
    await run(["ip", "netns", "add", name]);
    this.namespaces.push(name);
  }

  /** A "VM" with one NIC on vb-t: id, name, labels; address 10.99.0.(10+n). */
  async addVm(vmName: string, labels: Record<string, string> = {}, vmId = `vm-${vmName}`): Promise<LabVm> {
    const i = this.vms.length;
    const ns = `vt-fw-${this.id}-${i}`;
    await this.addNs(ns);
    const tap = `vt-${randomBytes(5).toString("hex")}`;
    const mac = `52:54:00:${this.id.slice(0, 2)}:${this.id.slice(2, 4)}:${(16 + i).toString(16).padStart(2, "0")}`;
    const ip = `10.99.0.${10 + i}`;
    await run(["ip", "-n", this.sw.name, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    await run(["ip", "-n", this.sw.name, "link", "set", tap, "master", "vb-t", "up"]);
    await run(["ip", "-n", ns, "link", "set", "eth0", "address", mac]);
    await run(["ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", "eth0"]);
    await run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
    await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
    const vm: LabVm = { ns, nic: { vmId, vmName, nic: "net0", network: "t", bridge: "vb-t", tap, mac, ip, labels } };
    this.vms.push(vm);
    return vm;
  }

  netns(): HostNetns {
    return this.sw;
  }

  async networks(): Promise<NetworkInfo[]> {
    return [{ name: "t", cidr: this.cidr, gateway: this.gateway, bridge: "vb-t", dhcp: false, createdAt: "2026-01-01T00:00:00.000Z" }];
  }

  detached = new Set<string>();

  async attached(): Promise<AttachedNic[]> {
    return this.vms.filter((v) => !this.detached.has(v.nic.tap)).map((v) => v.nic);
  }

  /** `busybox nc -ll -p PORT -e /bin/cat` in the VM's netns (an echo server), killed at close. */
  async serve(vm: LabVm | string, port: number): Promise<void> {
    const ns = typeof vm === "string" ? vm : vm.ns;
    const child = spawn("ip", ["netns", "exec", ns, "busybox", "nc", "-ll", "-p", String(port), "-e", "/bin/cat"], { stdio: "ignore", detached: true });
    child.unref();
    this.children.add(child);
    // Until it listens: poll the socket table of the netns.
    for (let i = 0; i < 100; i++) {
      const { stdout } = await run(["ip", "netns", "exec", ns, "ss", "-Htln", `sport = :${port}`]);
      if (stdout.trim()) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`server on port ${port} in ${ns} did not start`);
  }

  /** True when an echo round trip from `from` to ip:port works within `waitS` seconds. */
  async reach(from: LabVm, ip: string, port: number, waitS = 1): Promise<boolean> {
    const token = `hello-${randomBytes(4).toString("hex")}`;
    try {
      // The client's stdin comes from echo inside the netns: nc may exit before reading it (refused, dropped).
      const { stdout } = await runCommand("ip", ["netns", "exec", from.ns, "sh", "-c", `echo ${token} | busybox nc -w ${waitS} ${ip} ${port}`], { timeoutMs: (waitS + 5) * 1000 });
      return stdout.includes(token);
    } catch {
      return false;
    }
  }

  /** A long-lived client from `from` to ip:port: `send(line)` and read what came back. */
  openSession(from: LabVm, ip: string, port: number): { send: (line: string) => Promise<boolean>; close: () => void } {
    const child = spawn("ip", ["netns", "exec", from.ns, "busybox", "nc", ip, String(port)], { stdio: ["pipe", "pipe", "ignore"], detached: true });
    child.unref();
    child.stdin!.on("error", () => undefined);
    this.children.add(child);
    let buf = "";
    child.stdout!.on("data", (b: Buffer) => (buf += b.toString()));
    return {
      send: async (line) => {
        if (child.exitCode !== null || !child.stdin!.writable) return false;
        child.stdin!.write(`${line}\n`);
        for (let i = 0; i < 100; i++) {
          if (buf.includes(line)) return true;
          if (child.exitCode !== null) return false;
          await new Promise((r) => setTimeout(r, 20));
        }
        return false;
      },
      close: () => this.kill(child),
    };
  }

  private kill(child: ChildProcess): void {
    if (child.pid !== undefined && child.exitCode === null) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    this.children.delete(child);
  }

  /** Runs a command inside a lab netns. */
  exec(ns: string, args: string[], input?: string) {
    return run(["ip", "netns", "exec", ns, ...args], input);
  }

  async close(): Promise<void> {
    for (const c of [...this.children]) this.kill(c);
    for (const ns of this.namespaces.reverse()) await run(["ip", "netns", "del", ns]).catch(() => undefined);
  }
}
