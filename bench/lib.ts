/**
 * Benchmark plumbing: a throw-away daemon in its own VIGIL_HOME, medians, and the one output format every
 * benchmark prints (baseline and vigil side by side from the same run, and their ratio).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { call } from "../src/cli/client.ts";

export const ROOT = join(import.meta.dirname, "..");
export const BIN = join(ROOT, "bin", "vigil.js");

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

export interface BenchDaemon {
  home: string;
  env: NodeJS.ProcessEnv;
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  cli(args: string[]): { status: number; stdout: string; stderr: string };
  close(): Promise<void>;
}

export async function benchDaemon(extraEnv: NodeJS.ProcessEnv = {}, serveArgs: readonly string[] = ["--listen", "none"], config?: unknown): Promise<BenchDaemon> {
  const home = mkdtempSync(join(tmpdir(), "vigil-bench-"));
  if (config !== undefined) writeFileSync(join(home, "config.json"), JSON.stringify(config));
  const env: NodeJS.ProcessEnv = { ...process.env, VIGIL_HOME: home, VIGIL_LOG_LEVEL: "warn", ...extraEnv };
  delete env.VIGIL_URL;
  const child: ChildProcess = spawn(process.execPath, [BIN, "serve", ...serveArgs], { env, stdio: "inherit" });
  const socket = join(home, "run", "vigil.sock");
  const deadline = Date.now() + 20_000;
  while (!existsSync(socket)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error("the benchmark daemon did not start");
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    home,
    env,
    api: (method, path, body) => call(method, path, body, { socketPath: socket }),
    cli: (args) => {
      const r = spawnSync(process.execPath, [BIN, ...args], { env, encoding: "utf8" });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    close: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
      for (const id of existsSync(join(home, "vms")) ? readdirSync(join(home, "vms")) : []) {
        // jail.pid: a jailed QEMU's host pid; its own qemu.pid says 1 (its pid in its namespace): never signal that.
        for (const file of [join("run", "qemu.pid"), "jail.pid"]) {
          try {
            const pid = Number(readFileSync(join(home, "vms", id, file), "utf8"));
            if (Number.isSafeInteger(pid) && pid > 1) process.kill(pid, "SIGKILL");
          } catch {
            /* not running */
          }
        }
      }
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** One line per measured quantity: baseline, vigil, ratio — the format docs/benchmarks.md quotes. */
export function report(title: string, unit: string, baseline: { label: string; values: number[] }, subject: { label: string; values: number[] }, goal?: string): void {
  const b = median(baseline.values);
  const s = median(subject.values);
  const fmt = (v: number) => (unit === "ms" ? v.toFixed(1) : v.toFixed(3));
  process.stdout.write(`\n## ${title}\n`);
  process.stdout.write(`  ${baseline.label.padEnd(44)} median ${fmt(b)} ${unit}  (n=${baseline.values.length}: ${baseline.values.map(fmt).join(", ")})\n`);
  process.stdout.write(`  ${subject.label.padEnd(44)} median ${fmt(s)} ${unit}  (n=${subject.values.length}: ${subject.values.map(fmt).join(", ")})\n`);
  process.stdout.write(`  ratio vigil/baseline = ${(s / b).toFixed(3)}${goal ? `   (goal: ${goal})` : ""}\n`);
}

export function machineLine(accelerator: string): string {
  const cpu = (readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/) ?? [])[1] ?? "unknown CPU";
  const cores = readFileSync("/proc/cpuinfo", "utf8").split("\n").filter((l) => l.startsWith("processor")).length;
  const qemu = spawnSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).stdout.split("\n")[0];
  return `machine: ${cpu}, ${cores} cores; ${qemu}; accelerator ${accelerator}; node ${process.version}`;
}
