/**
 * Snapshot with memory and revert of a 256 MiB guest under TCG. vigil's API (snapshot create --memory; revert,
 * which kills QEMU, starts a fresh one with a new vmgenid and loads the state) against the same QEMU work done
 * directly over QMP in the same run: a raw QEMU with vigil's argv, `snapshot-save` job; then kill, respawn,
 * `snapshot-load` job, `cont`. Goal: ≤ 1 s each.
 */
import { spawn } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { QmpClient } from "../src/qemu/qmp-client.ts";
import { runJob } from "../src/qemu/jobs.ts";
import { AgentClient } from "../src/guest-agent/agent-client.ts";
import { benchDaemon, machineLine, report } from "./lib.ts";

async function rawQemu(binary: string, argv: string[], qmpPath: string) {
  rmSync(qmpPath, { force: true });
  const p = spawn(binary, argv, { stdio: "ignore" });
  const exited = new Promise((r) => p.once("exit", r));
  while (!existsSync(qmpPath)) await new Promise((r) => setTimeout(r, 5));
  const qmp = await QmpClient.connect(qmpPath);
  return { qmp, kill: async () => { p.kill("SIGKILL"); await exited; await qmp.close(); } };
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const d = await benchDaemon();
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`snapshot benchmark, ${rounds} rounds, 256 MiB guest; ${machineLine(host.accelerator)}\n`);
    // The raw side gets its own VM (same image, same size) so the two never share a disk.
    for (const name of ["vb", "rb"]) await d.api("POST", "/v1/vms", { name, memoryMiB: 256 });
    await d.api("POST", "/v1/vms/vb/start", { wait: true });
    const cmd = await d.api<{ binary: string; argv: string[] }>("GET", "/v1/vms/rb/qemu-command");
    const rb = await d.api<{ paths: { qmpSocket: string; agentSocket: string } }>("GET", "/v1/vms/rb");
    // Boot the raw VM once to the same point (agent up), through vigil, then hand it over to raw QMP.
    await d.api("POST", "/v1/vms/rb/start", { wait: true });
    await d.api("POST", "/v1/vms/rb/kill");
    let raw = await rawQemu(cmd.binary, cmd.argv, rb.paths.qmpSocket);
    await raw.qmp.execute("cont");
    const agent = await AgentClient.connect(rb.paths.agentSocket);
    await agent.waitUntilAnswering(120_000);
    agent.close();
    const save = { raw: [] as number[], vigil: [] as number[] };
    const revert = { raw: [] as number[], vigil: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      let t0 = performance.now();
      await runJob(raw.qmp, "snapshot-save", { tag: `r${i}`, vmstate: "root", devices: ["root"] });
      save.raw.push(performance.now() - t0);
      t0 = performance.now();
      await d.api("POST", "/v1/vms/vb/snapshots", { name: `v${i}`, memory: true });
      save.vigil.push(performance.now() - t0);
      t0 = performance.now();
      await raw.kill();
      raw = await rawQemu(cmd.binary, cmd.argv, rb.paths.qmpSocket);
      await runJob(raw.qmp, "snapshot-load", { tag: `r${i}`, vmstate: "root", devices: ["root"] });
      await raw.qmp.execute("cont");
      revert.raw.push(performance.now() - t0);
      t0 = performance.now();
      await d.api("POST", `/v1/vms/vb/snapshots/v${i}/revert`, {});
      revert.vigil.push(performance.now() - t0);
      process.stderr.write(`  round ${i + 1}: save raw ${save.raw.at(-1)!.toFixed(0)} / vigil ${save.vigil.at(-1)!.toFixed(0)} ms; revert raw ${revert.raw.at(-1)!.toFixed(0)} / vigil ${revert.vigil.at(-1)!.toFixed(0)} ms\n`);
    }
    await raw.kill();
    report("snapshot with memory (256 MiB guest)", "ms", { label: "QMP snapshot-save job (raw QEMU)", values: save.raw }, { label: "POST /v1/vms/VM/snapshots {memory:true}", values: save.vigil }, "≤ 1000 ms");
    report("revert to a memory snapshot (fresh QEMU, new vmgenid)", "ms", { label: "kill, respawn, snapshot-load, cont (raw)", values: revert.raw }, { label: "POST .../snapshots/S/revert", values: revert.vigil }, "≤ 1000 ms");
  } finally {
    await d.close();
  }
}
