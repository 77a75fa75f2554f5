/**
 * Starting and recognising QEMU processes. QEMU runs detached in its own session, so it outlives vigil: a
 * daemon crash or restart never takes a VM down. Recognition after a restart needs three agreeing facts — the
 * pid file, a live process whose executable is QEMU, and the VM's uuid on its command line — so a recycled pid
 * is never mistaken for a VM.
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { connect } from "node:net";
import { delimiter, isAbsolute, join } from "node:path";
import { VigilError, messageOf } from "../errors.ts";

export const QEMU_BINARY = process.env.VIGIL_QEMU ?? "qemu-system-x86_64";

/** `name` found on PATH (as spawn would), or itself when it is a path. */
export function resolveBinary(name: string): string {
  if (isAbsolute(name) || name.includes("/")) return name;
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter)) {
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  return name;
}

export interface StartedQemu {
  pid: number;
  /** Resolves with the exit code/signal if this process (our child) exits while vigil runs. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface QemuFiles {
  qmpSocket: string;
  pidFile: string;
  qemuLog: string;
  /** Stale sockets from a previous run are removed before start. */
  sockets: string[];
  /**
   * Start QEMU through the jail helper: `binary argv` is run instead (with an empty environment), and QEMU's host
   * pid is read from `pidFile`, which the helper (root) writes — never from the pid file QEMU writes itself.
   */
  jail?: { binary: string; argv: readonly string[]; pidFile: string } | undefined;
}

function tail(path: string, lines = 5): string {
  try {
    return readFileSync(path, "utf8").trim().split("\n").slice(-lines).join(" | ");
  } catch {
    return "";
  }
}

/** True once something accepts connections on the unix socket at `path`. */
function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Spawns QEMU with `argv` and waits until its QMP socket accepts connections. If QEMU exits first, the error
 * carries the last lines it printed (a bad option, a missing file).
 */
export async function startQemu(argv: readonly string[], files: QemuFiles, timeoutMs = 30_000): Promise<StartedQemu> {
  for (const s of [...files.sockets, files.pidFile, ...(files.jail ? [files.jail.pidFile] : [])]) rmSync(s, { force: true });
  const logFd = openSync(files.qemuLog, "a", 0o600);
  let child;
  try {
    child = files.jail
      ? spawn(files.jail.binary, files.jail.argv, { detached: true, stdio: ["ignore", logFd, logFd], env: {} })
      : spawn(QEMU_BINARY, argv, { detached: true, stdio: ["ignore", logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
  child.unref();

  const deadline = Date.now() + timeoutMs;
  let failure: Error | undefined;
  void spawnError.then((e) => (failure = e));
  for (;;) {
    if (failure) {
      throw new VigilError("VIGIL_HOST", `Cannot start QEMU (${QEMU_BINARY}): ${messageOf(failure)}`, { cause: failure });
    }
    if (exitInfo) {
      throw new VigilError("VIGIL_QEMU", `QEMU exited during start-up (${exitInfo.signal ?? `code ${exitInfo.code}`}): ${tail(files.qemuLog) || "no output"}`);
    }
    if (existsSync(files.qmpSocket) && (await socketAccepts(files.qmpSocket))) break;
    if (Date.now() > deadline) {
      const qemuPid = files.jail ? readPidFile(files.jail.pidFile) : undefined;
      for (const p of [qemuPid, child.pid]) if (p !== undefined) signal(p, "SIGKILL");
      throw new VigilError("VIGIL_TIMEOUT", `QEMU did not open its QMP socket within ${timeoutMs} ms: ${tail(files.qemuLog)}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  if (!files.jail) return { pid: child.pid!, exited };
  // The helper wrote the pid file before QEMU could open its socket.
  const pid = readPidFile(files.jail.pidFile);
  if (pid === undefined) {
    signal(child.pid!, "SIGKILL");
    throw new VigilError("VIGIL_HOST", `The jail helper did not write QEMU's pid to ${JSON.stringify(files.jail.pidFile)}`);
  }
  return { pid, exited };
}

export function readPidFile(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
    return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  // A zombie (exited, not yet reaped) is not alive for our purposes — but a multi-threaded process's leader turns
  // zombie before its other threads are gone, and until the last one is, its files stay open: a killed QEMU still
  // holds its disk's lock then (measured: qemu-img convert right after a kill failed on the lock, 3 of 3).
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state !== "Z" && state !== "X") return true;
    return readdirSync(`/proc/${pid}/task`).length > 1;
  } catch {
    return false;
  }
}

/**
 * Is `pid` a live QEMU started for the VM with this uuid? Its executable is compared by (device, inode) with the
 * QEMU binary, not by name: a jailed QEMU's /proc/<pid>/exe names a path inside its own mount namespace.
 */
export function isQemuOf(pid: number, uuid: string): boolean {
  if (!processAlive(pid)) return false;
  try {
    const exe = statSync(`/proc/${pid}/exe`);
    const qemu = statSync(resolveBinary(QEMU_BINARY));
    if (exe.dev !== qemu.dev || exe.ino !== qemu.ino) return false;
    const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const i = args.indexOf("-uuid");
    return i >= 0 && args[i + 1] === uuid;
  } catch {
    return false;
  }
}

/** Waits until `pid` is gone; true if it went within the time. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (processAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}
