/**
 * The serial console log, bounded like libvirt's virtlogd (max_size, max_backups=1). QEMU keeps writing
 * `console.log` itself (`logfile=…,logappend=on`: opened O_APPEND), and the daemon enforces a cap: a per-VM
 * watcher checks the size on every change notification (fs.watch) and at least once a second, and once the file
 * is larger than the cap it copies the last `cap` bytes to `console.log.1` (written over the old one in place)
 * and truncates `console.log` to 0 — copytruncate: an O_APPEND writer simply continues at the new end.
 *
 * The bound, honestly: `console.log.1` ≤ cap; `console.log` ≤ cap + what the guest writes between two checks
 * (about one second of output at worst, usually one event-loop turn). Bytes the guest writes between the copy
 * and the truncation (microseconds) are lost from the log; the guest never blocks on it.
 *
 * Reading is bounded too: `readConsoleTail` does positioned reads of at most `maxBytes` from the end of
 * `console.log.1` + `console.log`, never the whole file.
 */
import { closeSync, constants, existsSync, fstatSync, ftruncateSync, openSync, watch, writeSync, type FSWatcher } from "node:fs";
import { readFully } from "./read-fully.ts";

export const DEFAULT_CONSOLE_LOG_MAX_BYTES = 1024 * 1024;
/** How often the size is checked even if no change notification came (inotify may miss or coalesce). */
const CONSOLE_LOG_CHECK_MS = 1000;

/** The one backup `console.log` is rotated into. */
export const consoleBackup = (path: string): string => `${path}.1`;

/** Reads exactly `length` bytes at `position` of `fd` (fewer only at end of file). */
function readAt(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  return buf.subarray(0, readFully(fd, buf, BigInt(position)));
}

/**
 * If `path` is larger than `maxBytes`, moves its last `maxBytes` to `path.1` (replacing it) and truncates
 * `path` to 0. Returns whether it rotated. Never reads more than `maxBytes`.
 */
export function rotateConsoleLog(path: string, maxBytes: number): boolean {
  let fd: number;
  try {
    fd = openSync(path, "r+");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
  try {
    const size = fstatSync(fd).size;
    if (size <= maxBytes) return false;
    const tail = readAt(fd, maxBytes, size - maxBytes);
    // Written over the old backup in place (same blocks, always `maxBytes` long): the previous output is
    // overwritten, not left in freed blocks, and purge finds one file.
    const out = openSync(consoleBackup(path), constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    try {
      for (let off = 0; off < tail.length; ) off += writeSync(out, tail, off, tail.length - off, off);
      ftruncateSync(out, tail.length);
    } finally {
      closeSync(out);
    }
    ftruncateSync(fd, 0);
    return true;
  } finally {
    closeSync(fd);
  }
}

/** The last `maxBytes` of the console output: the end of `path.1` followed by `path`, by positioned reads. */
export function readConsoleTail(path: string, maxBytes: number): Buffer {
  const parts: Buffer[] = [];
  let want = maxBytes;
  for (const p of [path, consoleBackup(path)]) {
    if (want <= 0 || !existsSync(p)) continue;
    let fd: number;
    try {
      fd = openSync(p, "r");
    } catch {
      continue;
    }
    try {
      const size = fstatSync(fd).size;
      const n = Math.min(size, want);
      parts.unshift(readAt(fd, n, size - n));
      want -= n;
    } finally {
      closeSync(fd);
    }
  }
  return Buffer.concat(parts);
}

/** The per-VM cap: started with the VM (and re-armed when vigil finds it again), stopped when QEMU exits. */
export class ConsoleLogCap {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private pending = false;
  private stopped = false;
  /** How many times the log was rotated (tests, diagnostics). */
  rotations = 0;

  constructor(
    readonly path: string,
    readonly maxBytes: number,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {}

  start(): this {
    this.check();
    this.timer = setInterval(() => this.check(), CONSOLE_LOG_CHECK_MS);
    this.timer.unref();
    try {
      this.watcher = watch(this.path, { persistent: false }, () => this.schedule());
      this.watcher.on("error", () => this.watcher?.close());
    } catch (err) {
      this.onError(err); // the interval still bounds it
    }
    return this;
  }

  /** One check per event-loop turn however many notifications arrive. */
  private schedule(): void {
    if (this.pending || this.stopped) return;
    this.pending = true;
    setImmediate(() => {
      this.pending = false;
      this.check();
    });
  }

  check(): void {
    if (this.stopped) return;
    try {
      if (rotateConsoleLog(this.path, this.maxBytes)) this.rotations++;
    } catch (err) {
      this.onError(err);
    }
  }

  /** Stops watching, after a last check (the final output is bounded too). */
  stop(): void {
    if (this.stopped) return;
    this.check();
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.watcher?.close();
  }
}
