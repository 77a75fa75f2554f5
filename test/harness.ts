/**
 * Integration-test harness: a real `vigil serve` in a subprocess with its own VIGIL_HOME (so tests never see each
 * other), the real CLI, and cleanup that leaves no QEMU, socket or temp dir behind even when a test fails.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { call, type Target } from "../src/cli/client.ts";

export const ROOT = join(import.meta.dirname, "..");
export const BIN = join(ROOT, "bin", "vigil.js");

export interface DaemonHandle {
  home: string;
  env: NodeJS.ProcessEnv;
  target: Target;
  process: ChildProcess;
  /** API call over the daemon's unix socket (as the local admin). */
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  /** Runs the real CLI against this daemon. */
  cli(...args: string[]): { status: number; stdout: string; stderr: string };
  /** Kills the daemon with SIGKILL (QEMUs keep running). */
  kill9(): Promise<void>;
  /** Starts a new daemon process on the same home. */
  restart(): Promise<void>;
  log(): string;
  /** "127.0.0.1:PORT" when started with a TCP listener. */
  httpAddress(): string | undefined;
}

function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 25);
    };
    tick();
  });
}

/** Every QEMU started for VMs under `home` (from their pid files), for cleanup. */
function qemuPids(home: string): number[] {
  const vms = join(home, "vms");
  if (!existsSync(vms)) return [];
  const pids: number[] = [];
  for (const id of readdirSync(vms)) {
    try {
      pids.push(Number.parseInt(readFileSync(join(vms, id, "run", "qemu.pid"), "utf8"), 10));
    } catch {
      /* not running */
    }
    try {
      // a jailed QEMU's host pid (its own pid file says 1, its pid in its namespace)
      pids.push(Number.parseInt(readFileSync(join(vms, id, "jail.pid"), "utf8"), 10));
    } catch {
      /* not jailed or not running */
    }
  }
  // Replicas of recordings (src/recording/replica.ts) replaying when the test ended.
  const rp = join(home, "rp");
  if (existsSync(rp)) {
    for (const id of readdirSync(rp)) {
      try {
        pids.push(Number.parseInt(readFileSync(join(rp, id, "jail.pid"), "utf8"), 10));
      } catch {
        /* gone */
      }
    }
  }
  return pids.filter((p) => Number.isSafeInteger(p) && p > 1);
}

/**
 * `wrap`: a command the daemon is started under, e.g. `["nsenter", "--net=/run/netns/vt-x", "--"]` (the NAT test
 * runs the daemon in a netns of its own that plays the host). It must exec, not fork: the handle's pid is the daemon.
 */
export async function startDaemon(t: TestContext, options: { config?: unknown; listen?: string; wrap?: readonly string[]; command?: readonly string[]; env?: NodeJS.ProcessEnv; home?: string } = {}): Promise<DaemonHandle> {
  const home = options.home ?? mkdtempSync(join(tmpdir(), "vigil-it-"));
  if (options.config) {
    const { writeFileSync } = await import("node:fs");
    writeFileSync(join(home, "config.json"), JSON.stringify(options.config));
  }
  const env: NodeJS.ProcessEnv = { ...process.env, VIGIL_HOME: home, VIGIL_LOG_LEVEL: "info", ...options.env };
  delete env.VIGIL_URL;
  const socket = join(home, "run", "vigil.sock");
  let logText = "";
  const spawnDaemon = async () => {
    // `command`: what runs instead of `serve` (e.g. `agent …` or `serve --cluster …`).
    const argv = [process.execPath, BIN, ...(options.command ?? ["serve", "--listen", options.listen ?? "none"])];
    const [file, ...args] = options.wrap && options.wrap.length > 0 ? [...options.wrap, ...argv] : argv;
    const child = spawn(file!, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => (logText += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (logText += d.toString()));
    await waitFor(() => existsSync(socket) || child.exitCode !== null, 20_000, "the daemon's socket");
    if (child.exitCode !== null) throw new Error(`vigil serve exited: ${logText}`);
    return child;
  };
  const handle: DaemonHandle = {
    home,
    env,
    target: { socketPath: socket },
    process: await spawnDaemon(),
    api: (method, path, body) => call(method, path, body, { socketPath: socket }),
    cli: (...args) => {
      const r = spawnSync(process.execPath, [BIN, ...args], { env, encoding: "utf8", timeout: 300_000 });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    kill9: async () => {
      handle.process.kill("SIGKILL");
      await waitFor(() => handle.process.exitCode !== null || handle.process.signalCode !== null, 10_000, "the daemon to die");
      rmSync(socket, { force: true });
    },
    restart: async () => {
      handle.process = await spawnDaemon();
    },
    log: () => logText,
    httpAddress: () => /"http":"([^"]+)"/.exec(logText)?.[1],
  };
  t.after(async () => {
    handle.process.kill("SIGTERM");
    await waitFor(() => handle.process.exitCode !== null || handle.process.signalCode !== null, 10_000, "the daemon to stop").catch(() => handle.process.kill("SIGKILL"));
    for (const pid of qemuPids(home)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
    rmSync(home, { recursive: true, force: true });
  });
  return handle;
}

/** Fails the test (not skips it) if set-up did not build the guest image. */
export function requireTinyImage(): void {
  const r = spawnSync("bash", [join(ROOT, "guest", "build-tiny.sh"), "--print-dir"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("The tiny guest image is not built: set-up (npm test) must build it with guest/build-tiny.sh");
}

export { waitFor };

/** Polls an async probe until it gives a value (a probe that throws counts as "not yet"). */
export async function pollFor<T>(fn: () => Promise<T | undefined>, timeoutMs: number, what: string, everyMs = 200): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Runs an allow-listed command through the guest agent; stdout/stderr decoded and trimmed. */
export async function guestExec(d: DaemonHandle, vm: string, argv: string[]): Promise<{ exitCode: number; out: string; err: string }> {
  const r = await d.api<{ exitCode: number; stdout: string; stderr: string }>("POST", `/v1/vms/${vm}/guest/exec`, { argv });
  return { exitCode: r.exitCode, out: Buffer.from(r.stdout, "base64").toString().trim(), err: Buffer.from(r.stderr, "base64").toString().trim() };
}

/** Polls the guest's `net-addr` until its DHCP client has set an IPv4 address on eth0. */
export async function guestAddr(d: DaemonHandle, vm: string, timeoutMs = 60_000): Promise<string> {
  let last = "";
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await guestExec(d, vm, ["net-addr"]);
    if (r.exitCode === 0 && /^\d+\.\d+\.\d+\.\d+$/.test(r.out)) return r.out;
    last = `${r.exitCode} ${r.out} ${r.err}`;
    await new Promise((res) => setTimeout(res, 1000));
  }
  throw new Error(`no DHCP address in ${vm} after ${timeoutMs} ms (${last})`);
}
