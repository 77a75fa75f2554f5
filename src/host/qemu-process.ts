/**
 * Starting and recognising QEMU processes. QEMU runs detached in its own session, so it outlives vigil: a
 * daemon crash or restart never takes a VM down. Recognition after a restart needs three agreeing facts — the
 * pid file, a live process whose executable is QEMU, and the VM's uuid on its command line — so a recycled pid
 * is never mistaken for a VM.
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { basename } from "node:path";
import { VigilError, messageOf } from "../errors.ts";

export const QEMU_BINARY = process.env.VIGIL_QEMU ?? "qemu-system-x86_64";

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
  for (const s of [...files.sockets, files.pidFile]) rmSync(s, { force: true });
  const logFd = openSync(files.qemuLog, "a", 0o600);
  let child;
  try {
    child = spawn(QEMU_BINARY, argv, { detached: true, stdio: ["ignore", logFd, logFd] });
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
      try {
        process.kill(child.pid!, "SIGKILL");
      } catch {
        /* already gone */
      }
      throw new VigilError("VIGIL_TIMEOUT", `QEMU did not open its QMP socket within ${timeoutMs} ms: ${tail(files.qemuLog)}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return { pid: child.pid!, exited };
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
  // A zombie (exited, not yet reaped) is not alive for our purposes.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** Is `pid` a live QEMU started for the VM with this uuid? */
export function isQemuOf(pid: number, uuid: string): boolean {
  if (!processAlive(pid)) return false;
  try {
    const exe = basename(readlinkSync(`/proc/${pid}/exe`));
    if (!exe.startsWith("qemu-system-")) return false;
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
