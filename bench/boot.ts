/**
 * Boot benchmark: from nothing to the guest agent's first answer.
 *  (a) baseline: raw qemu-system-x86_64 with exactly the argv vigil generates (`vm showcmd`), driven by a
 *      minimal QMP `cont` and a minimal agent ping written here;
 *  (b) vigil: the CLI `vigil vm start NAME --wait`, end to end (process start, API, QEMU, agent).
 * Rounds alternate a/b. Goal: median(b)/median(a) ≤ 1.03.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import { connect } from "node:net";
import { benchDaemon, machineLine, report } from "./lib.ts";

function connectWhenReady(path: string, deadline: number): Promise<import("node:net").Socket> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = connect(path);
      s.once("connect", () => resolve(s));
      s.once("error", () => {
        if (Date.now() > deadline) reject(new Error(`cannot connect to ${path}`));
        else setTimeout(attempt, 5);
      });
    };
    attempt();
  });
}

/** Waits until a line matching `pred` arrives on the socket. */
function lineMatching(s: import("node:net").Socket, pred: (line: string) => boolean): Promise<void> {
  return new Promise((resolve) => {
    let buf = "";
    const onData = (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (pred(line)) {
          s.off("data", onData);
          return resolve();
        }
      }
    };
    s.on("data", onData);
  });
}

/** Raw QEMU until the agent's first pong. Returns milliseconds. */
async function rawBoot(binary: string, argv: string[], sockets: { qmp: string; agent: string; ram: string }): Promise<number> {
  rmSync(sockets.ram, { force: true });
  for (const p of [sockets.qmp, sockets.ram]) mkdirSync(dirname(p), { recursive: true, mode: 0o700 });
  const t0 = performance.now();
  const qemu = spawn(binary, argv, { stdio: "ignore" });
  const deadline = Date.now() + 120_000;
  const qmp = await connectWhenReady(sockets.qmp, deadline);
  qmp.write('{"execute":"qmp_capabilities"}\n{"execute":"cont"}\n');
  const agent = await connectWhenReady(sockets.agent, deadline);
  const pong = lineMatching(agent, (l) => l.includes('"pong":true'));
  const ping = () => agent.write('{"id":1,"cmd":"ping"}\n');
  ping();
  const timer = setInterval(ping, 1000);
  void lineMatching(agent, (l) => l.includes('"event":"ready"')).then(ping);
  await pong;
  const ms = performance.now() - t0;
  clearInterval(timer);
  qmp.write('{"execute":"quit"}\n');
  await new Promise((r) => qemu.once("exit", r));
  agent.destroy();
  qmp.destroy();
  return ms;
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const d = await benchDaemon();
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`boot benchmark, ${rounds} rounds; ${machineLine(host.accelerator)}\n`);
    await d.api("POST", "/v1/vms", { name: "bench", memoryMiB: 256, vcpus: 1 });
    const cmd = await d.api<{ binary: string; argv: string[] }>("GET", "/v1/vms/bench/qemu-command");
    const vm = await d.api<{ paths: { qmpSocket: string; agentSocket: string; ramFile: string; pidFile: string } }>("GET", "/v1/vms/bench");
    const sockets = { qmp: vm.paths.qmpSocket, agent: vm.paths.agentSocket, ram: vm.paths.ramFile };
    const raw: number[] = [];
    const vigil: number[] = [];
    for (let i = 0; i < rounds; i++) {
      for (const which of i % 2 === 0 ? ["raw", "vigil"] : ["vigil", "raw"]) {
        if (which === "raw") {
          for (const p of [sockets.qmp, sockets.agent, vm.paths.pidFile]) if (existsSync(p)) rmSync(p);
          raw.push(await rawBoot(cmd.binary, cmd.argv, sockets));
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
