/**
 * Running the `vigil` command from source in a subprocess against an in-process daemon: what the CLI tests share.
 */
import type { TestContext } from "node:test";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../../daemon/daemon.ts";
import { silentLogger } from "../../log.ts";

export const SRC = join(import.meta.dirname, "..", "..");
export const ENTRY = `import { main } from ${JSON.stringify(join(SRC, "cli", "main.ts"))};
await main([process.argv[0], "vigil", ...process.argv.slice(1)], { loadDaemon: () => import(${JSON.stringify(join(SRC, "daemon", "daemon.ts"))}) });`;

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI from source; `shell` pipes its stdout into a shell command (e.g. `head -1`). */
export function cli(env: NodeJS.ProcessEnv, args: string[], options: { timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ENTRY, ...args], { env: { ...process.env, VIGIL_LOG_LEVEL: "silent", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`vigil ${args.join(" ")} did not exit within ${options.timeoutMs ?? 20_000} ms; stderr: ${stderr}`));
    }, options.timeoutMs ?? 20_000);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

export function tempHome(t: TestContext): string {
  const home = mkdtempSync(join(tmpdir(), "vigil-cli-"));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  return home;
}

/** A daemon in this process on a fresh home; the CLI reaches it through VIGIL_HOME's socket. */
export async function daemon(t: TestContext): Promise<{ d: Daemon; env: NodeJS.ProcessEnv }> {
  const home = tempHome(t);
  const d = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(() => d.close());
  return { d, env: { VIGIL_HOME: home, VIGIL_URL: "" } };
}
