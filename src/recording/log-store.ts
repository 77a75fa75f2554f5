/**
 * Recording logs, stored compressed and streamed:
 * - `LogCompressor` tails the raw log QEMU is recording (it grows from offset 12; QEMU writes the 12-byte header
 *   only when it exits) into `zstd`, hashing the compressed bytes, and frees the raw file's blocks behind the tail
 *   (`fallocate --punch-hole`) so a long recording costs the compressed size on disk, not the raw size.
 * - `expandLog` checks a stored log's sha256 before anything else, then decompresses it, bounded by the recorded
 *   raw size, into header + body for `rr=replay`.
 * - `LogFollower` copies a growing raw log into a FIFO for a shadow replay that trails the recording.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, rmSync, writeFileSync, type WriteStream } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { VigilError, q } from "../errors.ts";
import { ZSTD, boundedDecompressor } from "../storage/bundle/zstd.ts";
import { runCommand } from "../util/run-command.ts";
import { HEADER_SIZE, REPLAY_VERSION, ReplayLogParser } from "./replay-log.ts";

const READ_CHUNK = 1 << 20;
/** Punch holes once this much raw log lies behind the tail: one `fallocate` per 16 MiB. */
const PUNCH_EVERY = 16 << 20;
const BLOCK = 4096;

export interface CompressorStats {
  /** Raw log bytes read so far, header excluded (it comes at the end). */
  rawBytes: number;
  /** Compressed bytes written to the stored log. */
  storedBytes: number;
  /** Bytes of the raw file freed by hole punching so far. */
  punchedBytes: number;
  elapsedMs: number;
  /** Compressed bits per second since the start: what a recording costs to keep. */
  storedBitsPerSecond: number;
  rawBitsPerSecond: number;
}

export interface StoredLog {
  /** The 12-byte header QEMU wrote at exit, hex (24 characters). */
  header: string;
  /** The raw log's full size, header included: what `expandLog` writes. */
  rawBytes: number;
  storedBytes: number;
  /** sha256 of the stored (compressed) file. */
  sha256: string;
}

export interface CompressorOptions {
  pollMs?: number;
  /** Free the raw file's blocks behind the tail (default true). */
  punchHoles?: boolean;
  /**
   * The raw offset below which blocks may be freed, besides the compressor's own tail: a `LogFollower` reading the
   * same raw file passes its `rawOffset`, or punching would hand it zeros.
   */
  punchLimit?: () => number;
  /** zstd level (default 3: the log is mostly tiny repetitive events, 3 costs little more CPU than 1). */
  level?: number;
}

/** Tails a raw log QEMU is recording into a zstd file. Start it before or after QEMU starts writing. */
export class LogCompressor {
  private readonly started = Date.now();
  private pos = HEADER_SIZE;
  /** Block 0 is never punched: it holds the header QEMU writes at exit (a punch after that would zero it). */
  private punchedTo = BLOCK;
  private raw = 0;
  private stored = 0;
  private punched = 0;
  private readonly hash = createHash("sha256");
  private failure: VigilError | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private fh: FileHandle | undefined;
  private readonly child: ChildProcess & { stdin: NonNullable<ChildProcess["stdin"]>; stdout: NonNullable<ChildProcess["stdout"]> };
  private readonly out: WriteStream;
  private readonly outClosed: Promise<void>;
  private readonly exited: Promise<number>;
  private stderr = "";

  private constructor(private readonly rawPath: string, private readonly storedPath: string, private readonly options: CompressorOptions) {
    this.child = spawn(ZSTD, ["-q", `-${options.level ?? 3}`, "--check", "-c"], { stdio: ["pipe", "pipe", "pipe"] }) as LogCompressor["child"];
    this.out = createWriteStream(storedPath, { mode: 0o600 });
    this.outClosed = new Promise((resolve) => this.out.on("close", () => resolve()));
    this.out.on("error", (err) => this.fail(new VigilError("VIGIL_HOST", `Cannot write ${q(storedPath)}: ${err.message}`)));
    this.child.stdout.on("data", (d: Buffer) => {
      this.hash.update(d);
      this.stored += d.length;
    });
    this.child.stdout.pipe(this.out);
    this.child.stderr?.on("data", (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-1000)));
    this.child.stdin.on("error", () => undefined); // reported through the exit status
    this.child.on("error", (err) => this.fail(new VigilError("VIGIL_HOST", `Cannot run ${q(ZSTD)}: ${err.message}`)));
    this.exited = new Promise((resolve) => this.child.on("close", (code) => resolve(code ?? 1)));
  }

  /** Starts tailing `rawPath` (which may not exist yet) into `storedPath` (created 0600). */
  static start(rawPath: string, storedPath: string, options: CompressorOptions = {}): LogCompressor {
    const c = new LogCompressor(rawPath, storedPath, options);
    c.loop = c.run();
    return c;
  }

  stats(): CompressorStats {
    const elapsedMs = Date.now() - this.started;
    const s = Math.max(elapsedMs, 1) / 1000;
    return { rawBytes: this.raw, storedBytes: this.stored, punchedBytes: this.punched, elapsedMs, storedBitsPerSecond: (this.stored * 8) / s, rawBitsPerSecond: (this.raw * 8) / s };
  }

  private fail(err: VigilError): void {
    this.failure ??= err;
    this.stopped = true;
    this.child.kill("SIGKILL");
  }

  private async openRaw(): Promise<FileHandle | undefined> {
    if (this.fh) return this.fh;
    try {
      this.fh = await open(this.rawPath, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    return this.fh;
  }

  /** Reads everything up to the file's current size into zstd; returns the bytes read. */
  private async drain(): Promise<number> {
    const fh = await this.openRaw();
    if (!fh) return 0;
    let total = 0;
    const buf = Buffer.alloc(READ_CHUNK);
    for (;;) {
      if (this.failure) return total;
      const { size } = await fh.stat();
      if (size <= this.pos) return total;
      const { bytesRead } = await fh.read(buf, 0, Math.min(READ_CHUNK, size - this.pos), this.pos);
      if (bytesRead === 0) return total;
      this.pos += bytesRead;
      this.raw += bytesRead;
      total += bytesRead;
      // Copy: zstd's stdin may hold the buffer after write returns.
      if (!this.child.stdin.write(Buffer.from(buf.subarray(0, bytesRead)))) {
        await new Promise<void>((resolve) => {
          this.child.stdin.once("drain", resolve);
          void this.exited.then(() => resolve());
        });
      }
      await this.punch(false);
    }
  }

  /** Frees whole blocks already compressed. QEMU writes only ahead of the tail; the header block comes back at exit. */
  private async punch(force: boolean): Promise<void> {
    if (this.options.punchHoles === false) return;
    const to = Math.floor(Math.min(this.pos, this.options.punchLimit?.() ?? Infinity) / BLOCK) * BLOCK;
    if (to <= this.punchedTo || (!force && to - this.punchedTo < PUNCH_EVERY)) return;
    await runCommand("fallocate", ["--punch-hole", "--keep-size", "--offset", String(this.punchedTo), "--length", String(to - this.punchedTo), this.rawPath], { what: "fallocate --punch-hole", timeoutMs: 30_000 });
    this.punched += to - this.punchedTo;
    this.punchedTo = to;
  }

  private async run(): Promise<void> {
    const poll = this.options.pollMs ?? 250;
    try {
      while (!this.stopped) {
        await this.drain();
        if (!this.stopped) await sleep(poll);
      }
    } catch (err) {
      this.fail(err instanceof VigilError ? err : new VigilError("VIGIL_HOST", `Cannot read the raw log ${q(this.rawPath)}: ${(err as Error).message}`, { cause: err }));
    }
  }

  /** After QEMU exited: reads the final tail and the header, closes zstd and returns what the recording keeps. */
  async finish(): Promise<StoredLog> {
    this.stopped = true;
    await this.loop;
    try {
      if (!this.failure) await this.drain();
      if (!this.failure) await this.punch(true);
    } catch (err) {
      this.fail(new VigilError("VIGIL_HOST", `Cannot read the raw log ${q(this.rawPath)}: ${(err as Error).message}`, { cause: err }));
    }
    const header = Buffer.alloc(HEADER_SIZE);
    if (!this.failure) {
      const fh = await this.openRaw();
      if (!fh) this.fail(new VigilError("VIGIL_HOST", `QEMU wrote no replay log at ${q(this.rawPath)}`));
      else await fh.read(header, 0, HEADER_SIZE, 0);
    }
    await this.fh?.close();
    this.child.stdin.end();
    const code = await this.exited;
    await this.outClosed;
    if (this.failure) throw this.failure;
    if (code !== 0) throw new VigilError("VIGIL_HOST", `zstd failed compressing ${q(this.rawPath)}: ${this.stderr.trim()}`);
    if (header.readUInt32BE(0) !== REPLAY_VERSION) {
      throw new VigilError("VIGIL_QEMU", `The replay log ${q(this.rawPath)} has no finished header (version 0x${header.readUInt32BE(0).toString(16)}): QEMU did not exit cleanly`);
    }
    return { header: header.toString("hex"), rawBytes: this.raw + HEADER_SIZE, storedBytes: this.stored, sha256: this.hash.digest("hex") };
  }

  /** Stops without a result (QEMU failed to start): kills zstd; the caller removes the files. */
  async abort(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.stopped = true;
    this.child.kill("SIGKILL");
    await this.loop;
    await this.fh?.close();
    await this.exited;
    await this.outClosed;
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

/**
 * Writes the raw log QEMU replays (`outPath`, 0600) from a stored one. The stored file's sha256 is checked before
 * anything is decompressed, and again over the bytes actually decompressed (the file could change in between);
 * the output is bounded by `expected.rawBytes`. On any failure `outPath` is removed.
 */
export async function expandLog(storedPath: string, expected: { sha256: string; rawBytes: number; header: string }, outPath: string, label = storedPath): Promise<void> {
  if (!/^[0-9a-f]{24}$/.test(expected.header)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid recording ${q(label)}: log header must be 24 hex digits`, { field: "log.header" });
  if (!Number.isSafeInteger(expected.rawBytes) || expected.rawBytes < HEADER_SIZE) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid recording ${q(label)}: log rawBytes must be an integer of at least ${HEADER_SIZE}`, { field: "log.rawBytes" });
  }
  let actual: string;
  try {
    actual = await sha256File(storedPath);
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `Cannot read the recording's log ${q(storedPath)}: ${(err as Error).message}`, { cause: err });
  }
  const changed = () => new VigilError("VIGIL_CONFLICT", `Cannot replay ${q(label)}: the recording's log was changed (${q(storedPath)} has sha256 ${actual}, the recording says ${expected.sha256})`, { field: "log.sha256" });
  if (actual !== expected.sha256) throw changed();
  try {
    writeFileSync(outPath, Buffer.from(expected.header, "hex"), { mode: 0o600 });
    const dec = boundedDecompressor(outPath, { rawSize: expected.rawBytes - HEADER_SIZE }, `the log of ${q(label)}`, createWriteStream(outPath, { flags: "a", mode: 0o600 }));
    const h = createHash("sha256");
    try {
      for await (const chunk of createReadStream(storedPath, { highWaterMark: 1 << 20 })) {
        h.update(chunk as Buffer);
        await dec.write(chunk as Buffer);
      }
    } catch (err) {
      dec.abort();
      throw err;
    }
    await dec.finish();
    actual = h.digest("hex");
    if (actual !== expected.sha256) throw changed();
  } catch (err) {
    rmSync(outPath, { force: true });
    if (err instanceof VigilError) throw err;
    throw new VigilError("VIGIL_HOST", `Cannot expand the log of ${q(label)}: ${(err as Error).message}`, { cause: err });
  }
}

export interface FollowerOptions {
  /** REPLAY_VERSION to announce (the replaying QEMU's). */
  version?: number;
  pollMs?: number;
}

/**
 * Feeds a replaying QEMU the log another QEMU is still recording, through a regular file of its own: a header with
 * the version (the recording's own header is written only when it ends), then the body copied from raw offset 12
 * as it grows. The replay must never reach the end of what is there — glibc's stdio keeps EOF once read, and QEMU
 * then stops ("replay file is over") — so whoever runs it keeps it on a leash behind `stats().icount` (shadow.ts).
 * A FIFO instead, which never ends, stalled the replay in 2 of 3 runs even on the leash (docs/recording.md).
 * The copy ends once the recording has finished (its header written) and everything is copied.
 */
export class LogFollower {
  private pos = HEADER_SIZE;
  private copied = 0;
  private stopped = false;
  private failure: VigilError | undefined;
  private loop: Promise<void> | undefined;
  private readonly parser = new ReplayLogParser({ allowUnfinishedHeader: true, label: "followed log" });
  private waiters: { icount: bigint; resolve: (t: number) => void }[] = [];

  private constructor(private readonly rawPath: string, private readonly outPath: string, private readonly options: FollowerOptions) {
    this.parser.feed(Buffer.alloc(HEADER_SIZE));
  }

  /** Writes the header of `outPath` (a new file, 0600) and starts copying the raw log's body into it. */
  static async start(rawPath: string, outPath: string, options: FollowerOptions = {}): Promise<LogFollower> {
    const header = Buffer.alloc(HEADER_SIZE);
    header.writeUInt32BE(options.version ?? REPLAY_VERSION);
    try {
      writeFileSync(outPath, header, { mode: 0o600, flag: "wx" });
    } catch (err) {
      throw new VigilError("VIGIL_HOST", `Cannot follow the log into ${q(outPath)}: ${(err as Error).message}`, { field: "follow" });
    }
    const f = new LogFollower(rawPath, outPath, options);
    f.loop = f.run();
    return f;
  }

  /** The raw file offset copied up to (a LogCompressor must not punch holes beyond it: `punchLimit`). */
  get rawOffset(): number {
    return this.pos;
  }

  stats(): { copiedBytes: number; icount: bigint } {
    return { copiedBytes: this.copied, icount: this.parser.instructions };
  }

  /** Resolves with Date.now() at the moment the copied log first reached `icount` instructions. */
  whenCopied(icount: bigint): Promise<number> {
    if (this.parser.instructions >= icount) return Promise.resolve(Date.now());
    return new Promise((resolve) => this.waiters.push({ icount, resolve }));
  }

  private async run(): Promise<void> {
    const poll = this.options.pollMs ?? 100;
    let out: FileHandle | undefined;
    let raw: FileHandle | undefined;
    try {
      out = await open(this.outPath, "a");
      const buf = Buffer.alloc(READ_CHUNK);
      while (!this.stopped) {
        raw ??= await open(this.rawPath, "r").catch((err: NodeJS.ErrnoException) => {
          if (err.code === "ENOENT") return undefined;
          throw err;
        });
        if (!raw) {
          await sleep(poll);
          continue;
        }
        const { size } = await raw.stat();
        if (size > this.pos) {
          const { bytesRead } = await raw.read(buf, 0, Math.min(READ_CHUNK, size - this.pos), this.pos);
          const data = buf.subarray(0, bytesRead);
          await out.write(data);
          this.pos += bytesRead;
          this.copied += bytesRead;
          this.parser.feed(data);
          const now = Date.now();
          this.waiters = this.waiters.filter((w) => (this.parser.instructions >= w.icount ? (w.resolve(now), false) : true));
          continue;
        }
        // Caught up: a written header means QEMU finished the log, so this is its end.
        const head = Buffer.alloc(4);
        await raw.read(head, 0, 4, 0);
        if (head.readUInt32BE(0) !== 0 && (await raw.stat()).size <= this.pos) break;
        await sleep(poll);
      }
    } catch (err) {
      if (err instanceof VigilError) this.failure = err;
      else this.failure = new VigilError("VIGIL_HOST", `Cannot follow the replay log ${q(this.rawPath)}: ${(err as Error).message}`, { cause: err });
    } finally {
      await raw?.close();
      await out?.close().catch(() => undefined);
    }
  }

  /** Resolves when the copy ended (the recording finished and is fully copied, or `close()`). */
  async done(): Promise<void> {
    await this.loop;
    if (this.failure) throw this.failure;
  }

  /** Stops copying now. */
  async close(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}
