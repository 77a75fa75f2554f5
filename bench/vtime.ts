/**
 * The monotonic store's round trip from inside the guest (`vtime bench`: N reads on one open port, timed in
 * the guest with nanosecond resolution) against the guest agent's ping round trip measured by the host, in the
 * same run on the same VM. p50 and p99 of each. Goal: store p50 ≤ 1.2 × ping p50.
 */
import { benchDaemon, machineLine, percentile } from "./lib.ts";

export async function run(args: string[]): Promise<void> {
  const n = Number(args[0] ?? 200);
  const d = await benchDaemon();
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`vtime benchmark, ${n} round trips each; ${machineLine(host.accelerator)}\n`);
    await d.api("POST", "/v1/vms", { name: "vt", memoryMiB: 256 });
    await d.api("POST", "/v1/vms/vt/start", { wait: true });
    // The store side: in the guest.
    const r = await d.api<{ exitCode: number; stdout: string }>("POST", "/v1/vms/vt/guest/exec", { argv: ["vtime", "bench", String(n)] });
    // Each line: the round trip and the cost of taking one timestamp in the guest, both in µs; the latter is
    // subtracted so the guest's clock reading is not counted as store latency.
    const lines = Buffer.from(r.stdout, "base64").toString().trim().split("\n").map((l) => l.split(" ").map(Number) as [number, number]);
    const overhead = percentile(lines.map((l) => l[1]), 50) / 1000;
    const store = lines.map((l) => Math.max(0, l[0] / 1000 - overhead));
    process.stdout.write(`  (guest timestamp cost, subtracted: ${overhead.toFixed(2)} ms)\n`);
    // The agent side: the daemon pings the agent and reports each round trip.
    const { rttMs: ping } = await d.api<{ rttMs: number[] }>("POST", "/v1/vms/vt/guest/ping", { count: n });
    const line = (label: string, xs: number[]) => process.stdout.write(`  ${label.padEnd(44)} p50 ${percentile(xs, 50).toFixed(2)} ms  p99 ${percentile(xs, 99).toFixed(2)} ms  (n=${xs.length})\n`);
    process.stdout.write("\n## round trip\n");
    line("agent ping (daemon → guest agent → daemon)", ping);
    line("vtime read (guest → host store → guest)", store);
    process.stdout.write(`  ratio store/ping p50 = ${(percentile(store, 50) / percentile(ping, 50)).toFixed(3)}, p99 = ${(percentile(store, 99) / percentile(ping, 99)).toFixed(3)}   (goal: p50 ≤ 1.2)\n`);
  } finally {
    await d.close();
  }
}
