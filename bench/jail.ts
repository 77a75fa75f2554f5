/**
 * Jail benchmark: what running QEMU in its jail (docs/jail.md) costs at start-up. Two daemons in the same run,
 * identical but for VIGIL_JAIL: (a) `VIGIL_JAIL=off`, QEMU spawned directly; (b) the default, QEMU through
 * native/vigil-jail (cgroups, namespaces, tmpfs root, privilege drop). Each round: `vigil vm start NAME --wait`
 * (to the guest agent's first answer), then `vm kill`. Rounds alternate a/b. Goal: median(b)/median(a) ≤ 1.03.
 */
import { benchDaemon, machineLine, report } from "./lib.ts";

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const off = await benchDaemon({ VIGIL_JAIL: "off" });
  const on = await benchDaemon({ VIGIL_JAIL: "on" });
  try {
    const host = await on.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`jail benchmark, ${rounds} rounds; ${machineLine(host.accelerator)}\n`);
    for (const d of [off, on]) await d.api("POST", "/v1/vms", { name: "bench", memoryMiB: 256, vcpus: 1 });
    const times = { off: [] as number[], on: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      for (const which of i % 2 === 0 ? (["off", "on"] as const) : (["on", "off"] as const)) {
        const d = which === "on" ? on : off;
        const t0 = performance.now();
        const r = d.cli(["vm", "start", "bench", "--wait"]);
        times[which].push(performance.now() - t0);
        if (r.status !== 0) throw new Error(`vigil vm start (jail ${which}) failed: ${r.stderr}`);
        d.cli(["vm", "kill", "bench"]);
        process.stderr.write(`  round ${i + 1}/${rounds} jail ${which}: ${times[which].at(-1)!.toFixed(0)} ms\n`);
      }
    }
    report("vm start --wait to first agent answer (256 MiB, 1 vCPU, tiny image)", "ms", { label: "VIGIL_JAIL=off (QEMU spawned directly)", values: times.off }, { label: "jailed (vigil-jail, default)", values: times.on }, "≤ 1.03");
  } finally {
    await Promise.all([off.close(), on.close()]);
  }
}
