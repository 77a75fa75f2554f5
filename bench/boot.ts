/**
 * Boot benchmark: from nothing to the guest agent's first answer.
 *  (a) baseline: raw qemu-system-x86_64 with exactly the argv vigil generates (`vm showcmd`), spawned here and
 *      driven by the same QMP and agent client classes vigil uses (cont, then ping until the agent answers);
 *  (b) vigil: the CLI `vigil vm start NAME --wait`, end to end (process start, API, QEMU, agent).
 * Rounds alternate a/b. Goal: median(b)/median(a) ≤ 1.03. The daemon runs with VIGIL_JAIL=off, so (a) and (b)
 * run the same QEMU the same way; what the jail costs on top is `npm run bench -- jail`.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import { QmpClient } from "../src/qemu/qmp-client.ts";
import { AgentClient } from "../src/guest-agent/agent-client.ts";
import { benchDaemon, machineLine, report } from "./lib.ts";

/** Raw QEMU until the agent's first pong, driven by the same QMP and agent clients vigil uses. Milliseconds. */
async function rawBoot(binary: string, argv: string[], paths: { qmp: string; agent: string; pidFile: string }): Promise<number> {
  for (const p of [paths.qmp, paths.agent, paths.pidFile]) rmSync(p, { force: true });
  mkdirSync(dirname(paths.qmp), { recursive: true, mode: 0o700 });
  const t0 = performance.now();
  const qemu = spawn(binary, argv, { stdio: "ignore" });
  const exited = new Promise((r) => qemu.once("exit", r));
  while (!existsSync(paths.qmp)) await new Promise((r) => setTimeout(r, 5));
  const qmp = await QmpClient.connect(paths.qmp);
  await qmp.execute("cont");
  const agent = await AgentClient.connect(paths.agent);
  await agent.waitUntilAnswering(120_000);
  const ms = performance.now() - t0;
  agent.close();
  await qmp.execute("quit").catch(() => undefined);
  await exited;
  await qmp.close();
  return ms;
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const d = await benchDaemon({ VIGIL_JAIL: "off" });
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`boot benchmark, ${rounds} rounds; ${machineLine(host.accelerator)}\n`);
    await d.api("POST", "/v1/vms", { name: "bench", memoryMiB: 256, vcpus: 1 });
    const cmd = await d.api<{ binary: string; argv: string[] }>("GET", "/v1/vms/bench/qemu-command");
    const vm = await d.api<{ paths: { qmpSocket: string; agentSocket: string; pidFile: string } }>("GET", "/v1/vms/bench");
    const paths = { qmp: vm.paths.qmpSocket, agent: vm.paths.agentSocket, pidFile: vm.paths.pidFile };
    const raw: number[] = [];
    const vigil: number[] = [];
    for (let i = 0; i < rounds; i++) {
      for (const which of i % 2 === 0 ? ["raw", "vigil"] : ["vigil", "raw"]) {
        if (which === "raw") {
          raw.push(await rawBoot(cmd.binary, cmd.argv, paths));
        } else {
          const t0 = performance.now();
          const r = d.cli(["vm", "start", "bench", "--wait"]);
          vigil.push(performance.now() - t0);
          if (r.status !== 0) throw new Error(`vigil vm start failed: ${r.stderr}`);
          d.cli(["vm", "kill", "bench"]);
        }
        process.stderr.write(`  round ${i + 1}/${rounds} ${which}: ${(which === "raw" ? raw : vigil).at(-1)!.toFixed(0)} ms\n`);
      }
    }
    report("boot to first agent answer (256 MiB, 1 vCPU, tiny image)", "ms", { label: "raw qemu-system-x86_64 (same argv)", values: raw }, { label: "vigil vm start --wait (CLI, end to end)", values: vigil }, "≤ 1.03");
  } finally {
    await d.close();
  }
}
