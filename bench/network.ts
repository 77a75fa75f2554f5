/**
 * Network benchmark (issue 11): guest-to-guest throughput and latency through vigil's switch, (a) with vigil's
 * firewall as it installs it — the L2 anti-spoofing table and the stateful inet table, B's inbound policy allowing
 * the benchmark's port and ICMP — and (b) on the very same path (same bridge, taps and running guests) with vigil's
 * two nftables tables removed, i.e. no firewall rules at all. Rounds alternate (b)/(a) so drift hits both.
 *
 * Throughput: A sends MIB MiB of zeros to B's discard service with busybox nc; the guest times it (net-bulk).
 * Latency: 20 pings 0.2 s apart from A to B (net-rtt), the average per round. Goal: (a)/(b) ≥ 0.95 for throughput.
 *
 *   npm run bench -- network [ROUNDS=5] [MIB=16]
 */
import { benchDaemon, machineLine, report } from "./lib.ts";
import { runCommand } from "../src/util/run-command.ts";

const PORT = 5001;
const TABLES = [
  ["bridge", "vigil_l2"],
  ["inet", "vigil_fw"],
] as const;

type Exec = { exitCode: number; stdout: string; stderr: string };

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const mib = Number(args[1] ?? 16);
  const netns = `vt-bench-net-${process.pid}`;
  const d = await benchDaemon({ VIGIL_NETNS: netns });
  const nft = (a: string[], input?: string) => runCommand("nsenter", [`--net=/run/netns/${netns}`, "--", "nft", ...a], { input, what: "nft" });
  const exec = async (vm: string, argv: string[]): Promise<string> => {
    const r = await d.api<Exec>("POST", `/v1/vms/${vm}/guest/exec`, { argv });
    const out = Buffer.from(r.stdout, "base64").toString("utf8").trim();
    if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} in ${vm} failed (${r.exitCode}): ${Buffer.from(r.stderr, "base64").toString("utf8").trim()}`);
    return out;
  };
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`network benchmark, ${rounds} rounds, ${mib} MiB per transfer; ${machineLine(host.accelerator)}\n`);
    must(d.cli(["net", "create", "bench", "--cidr", "10.199.0.0/24"]));
    for (const vm of ["a", "b"]) {
      must(d.cli(["vm", "create", vm, "--memory", "256", "--vcpus", "1", "--net", "bench"]));
      must(d.cli(["vm", "start", vm, "--wait"]));
    }
    must(d.cli(["fw", "add", "b", "--dir", "in", "--proto", "tcp", "--port", String(PORT)]));
    must(d.cli(["fw", "add", "b", "--dir", "in", "--proto", "icmp"]));
    const ipOf = async (vm: string) => {
      for (let i = 0; i < 60; i++) {
        const ip = await exec(vm, ["net-addr"]).catch(() => "");
        if (ip) return ip.split("/")[0]!;
        await new Promise((r) => setTimeout(r, 500));
      }
      throw new Error(`${vm} got no DHCP address`);
    };
    const ipB = await ipOf("b");
    await ipOf("a");
    await exec("b", ["net-sink", String(PORT)]);
    const saved = (await Promise.all(TABLES.map(([f, t]) => nft(["list", "table", f, t])))).map((r) => r.stdout).join("\n");
    const throughput = { on: [] as number[], off: [] as number[] };
    const latency = { on: [] as number[], off: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      for (const which of i % 2 === 0 ? (["off", "on"] as const) : (["on", "off"] as const)) {
        if (which === "off") for (const [f, t] of TABLES) await nft(["delete", "table", f, t]);
        try {
          const ms = Number(await exec("a", ["net-bulk", ipB, String(PORT), String(mib)]));
          throughput[which].push((mib * 8 * 1.048576) / (ms / 1000));
          latency[which].push(Number((await exec("a", ["net-rtt", ipB, "20"])).split("/")[1]));
        } finally {
          if (which === "off") await nft(["-f", "-"], saved);
        }
        process.stderr.write(`  round ${i + 1}/${rounds} firewall ${which}: ${throughput[which].at(-1)!.toFixed(1)} Mbit/s, rtt ${latency[which].at(-1)!.toFixed(3)} ms\n`);
      }
    }
    report(`guest-to-guest TCP throughput, ${mib} MiB (higher is better)`, "Mbit/s", { label: "same switch, no firewall rules", values: throughput.off }, { label: "vigil switch + firewall", values: throughput.on }, "≥ 0.95");
    report("guest-to-guest ping round trip, avg of 20 (lower is better)", "ms", { label: "same switch, no firewall rules", values: latency.off }, { label: "vigil switch + firewall", values: latency.on });
  } finally {
    for (const vm of ["a", "b"]) d.cli(["vm", "kill", vm]);
    await d.close();
    // The network's dnsmasq outlives a daemon by design (docs/network.md): end it with the namespace.
    const pids = await runCommand("ip", ["netns", "pids", netns]).catch(() => ({ stdout: "" }));
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) process.kill(Number(pid), "SIGKILL");
    await runCommand("ip", ["netns", "delete", netns]).catch(() => undefined);
  }
}

function must(r: { status: number; stdout: string; stderr: string }): void {
  if (r.status !== 0) throw new Error(`vigil failed: ${r.stderr || r.stdout}`);
}
