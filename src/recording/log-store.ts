/**
 * A recording's log, stored compressed while it is written (docs/recording.md, "The log"). QEMU writes its
 * record/replay log with buffered stdio from offset 12 on and fills the 12-byte header (REPLAY_VERSION + a u64)
 * only when it exits, so the log cannot be a pipe: QEMU writes a file in its run dir, and the compressor follows
 * that file as it grows, streaming the body (from offset 12) into zstd and hashing the compressed bytes. The header
 * is kept in the recording's record. Expanding writes header + body back for a replaying QEMU, after checking the
 * stored file's digest: a changed log is refused before QEMU reads a byte of it.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, createReadStream, createWriteStream, existsSync, fstatSync, openSync, readSync, writeFileSync } from "node:fs";
import { VigilError, messageOf, q } from "../errors.ts";
import { ZSTD, boundedDecompressor } from "../storage/bundle/zstd.ts";

export const HEADER_BYTES = 12;
const POLL_MS = 250;
const CHUNK = 1 << 20;

export interface StoredLog {
  /** The 12-byte header QEMU wrote last, hex. */
  header: string;
  /** Bytes of the raw log, header included. */
  rawBytes: number;
  storedBytes: number;
  /** sha256 of the stored (compressed) file. */
  sha256: string;
}

export class LogCompressor {
  private child: ChildProcessWithoutNullStreams | undefined;
  private offset = HEADER_BYTES;
  private timer: NodeJS.Timeout | undefined;
  private readonly hash = createHash("sha256");
  private stored = 0;
  private failure: Error | undefined;
  private exited: Promise<number> | undefined;
  private reading = false;

  constructor(
    readonly rawPath: string,
    readonly outPath: string,
  ) {}

  /** Bytes of raw log compressed so far, and what they became (for a live bit rate). */
  get progress(): { rawBytes: number; storedBytes: number } {
    return { rawBytes: this.offset, storedBytes: this.stored };
  }

  start(): void {
    const child = spawn(ZSTD, ["-q", "-3", "--check", "-c"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    const out = createWriteStream(this.outPath, { mode: 0o600 });
    out.on("error", (err) => (this.failure ??= err));
    child.stdout.on("data", (d: Buffer) => {
      this.hash.update(d);
      this.stored += d.length;
    });
    child.stdout.pipe(out);
    child.stdin.on("error", (err) => (this.failure ??= err));
    child.on("error", (err) => (this.failure ??= err));
    this.exited = new Promise((resolve) => child.on("close", (code) => out.end(() => resolve(code ?? 1))));
    this.timer = setInterval(() => void this.pump(), POLL_MS);
  }

  /** Feeds zstd what the raw log has gained since the last look (one pump at a time, back-pressured). */
  private async pump(): Promise<void> {
    if (this.reading || !this.child || !existsSync(this.rawPath)) return;
    this.reading = true;
    try {
      const fd = openSync(this.rawPath, "r");
      try {
        const size = fstatSync(fd).size;
        const buf = Buffer.alloc(CHUNK);
        while (this.offset < size) {
          const n = readSync(fd, buf, 0, Math.min(CHUNK, size - this.offset), this.offset);
          if (n === 0) break;
          this.offset += n;
          const chunk = Buffer.from(buf.subarray(0, n));
          if (!this.child.stdin.write(chunk)) await new Promise((r) => this.child!.stdin.once("drain", r));
        }
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      this.failure ??= err as Error;
    } finally {
      this.reading = false;
    }
  }

  /** After QEMU exited: the last bytes, the header, and the stored file's digest. */
  async finish(): Promise<StoredLog> {
    clearInterval(this.timer);
    while (this.reading) await new Promise((r) => setTimeout(r, 10));
    await this.pump();
    const header = Buffer.alloc(HEADER_BYTES);
    if (existsSync(this.rawPath)) {
      const fd = openSync(this.rawPath, "r");
      try {
        readSync(fd, header, 0, HEADER_BYTES, 0);
      } finally {
        closeSync(fd);
      }
    }
    this.child?.stdin.end();
    const code = (await this.exited) ?? 1;
    if (this.failure) throw new VigilError("VIGIL_HOST", `Cannot compress the recording log ${q(this.rawPath)}: ${messageOf(this.failure)}`);
    if (code !== 0) throw new VigilError("VIGIL_HOST", `zstd failed compressing ${q(this.rawPath)} (exit ${code})`);
    if (header.every((b) => b === 0)) throw new VigilError("VIGIL_QEMU", `QEMU did not finish its recording log ${q(this.rawPath)} (no header: it did not exit cleanly)`);
    return { header: header.toString("hex"), rawBytes: this.offset, storedBytes: this.stored, sha256: this.hash.digest("hex") };
  }

  abort(): void {
    clearInterval(this.timer);
    this.child?.kill("SIGKILL");
  }
}

function sha256Of(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (d) => h.update(d))
      .on("error", reject)
      .on("end", () => resolve(h.digest("hex")));
  });
}

/**
 * Writes the log for a replaying QEMU to `outPath`: the stored file's sha256 is checked first (a mismatch is a
 * changed log, refused), then the header and the body, bounded by the recorded raw size.
 */
export async function expandLog(storedPath: string, expected: { sha256: string; rawBytes: number; header: string }, outPath: string, label = q(storedPath)): Promise<void> {
  if (!existsSync(storedPath)) throw new VigilError("VIGIL_INVALID_STATE", `The log of ${label} is missing (${q(storedPath)})`, { field: "recording" });
  const got = await sha256Of(storedPath);
  if (got !== expected.sha256) throw new VigilError("VIGIL_INVALID_STATE", `The log of ${label} was changed since it was recorded: ${q(storedPath)} has sha256 ${got.slice(0, 16)}…, the recording says ${expected.sha256.slice(0, 16)}…; it is not replayed`, { field: "recording" });
  const header = Buffer.from(expected.header, "hex");
  if (header.length !== HEADER_BYTES) throw new VigilError("VIGIL_INVALID_STATE", `The recorded header of ${label} is not ${HEADER_BYTES} bytes`, { field: "recording" });
  writeFileSync(outPath, header, { mode: 0o600 });
  const dec = boundedDecompressor(outPath, { rawSize: expected.rawBytes - HEADER_BYTES }, `the log of ${label}`, createWriteStream(outPath, { flags: "a", mode: 0o600 }));
  for await (const chunk of createReadStream(storedPath)) await dec.write(chunk as Buffer);
  await dec.finish();
}
