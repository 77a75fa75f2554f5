/**
 * zstd through Debian's `zstd` binary (Node 20's zlib has no zstd), streamed: compressing hashes the compressed
 * bytes on the way (those are what the signed manifest vouches for; they determine the output, and every zstd
 * frame carries its own content checksum, which `zstd -d` verifies); decompressing stops the moment the output
 * would exceed the size the manifest declared, so a decompression bomb costs nothing.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream, statSync } from "node:fs";
import type { Writable } from "node:stream";
import { VigilError, q } from "../../errors.ts";

export const ZSTD = process.env.VIGIL_ZSTD ?? "zstd";

export interface CompressResult {
  size: number;
  sha256: string;
  rawSize: number;
}

/** Compresses `src` into `dst` (level 1, all cores); zstd reads the file itself, Node only hashes its output. */
export function compressFile(src: string, dst: string, onBytes?: (storedBytes: number) => void): Promise<CompressResult> {
  return new Promise((resolve, reject) => {
    // Level 1 on all cores: most of the gain of zstd at a fraction of the CPU (this runs on small hosts too).
    const child = spawn(ZSTD, ["-q", "-1", "-T0", "--check", "-c", "--", src], { stdio: ["ignore", "pipe", "pipe"] });
    const outHash = createHash("sha256");
    let size = 0;
    let stderr = "";
    const out = createWriteStream(dst, { mode: 0o600 });
    out.on("error", (err) => {
      child.kill("SIGKILL");
      reject(new VigilError("VIGIL_HOST", `Cannot write ${q(dst)}: ${err.message}`));
    });
    child.stdout.on("data", (d: Buffer) => {
      outHash.update(d);
      size += d.length;
      onBytes?.(size);
    });
    child.stdout.pipe(out);
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot run ${q(ZSTD)}: ${err.message}`, { cause: err })));
    let exitCode: number | null = null;
    let outClosed = false;
    const finish = () => {
      if (exitCode === null || !outClosed) return;
      if (exitCode !== 0) return reject(new VigilError("VIGIL_HOST", `zstd failed compressing ${q(src)}: ${stderr.trim()}`));
      resolve({ size, sha256: outHash.digest("hex"), rawSize: statSync(src).size });
    };
    out.on("close", () => {
      outClosed = true;
      finish();
    });
    child.on("close", (code) => {
      exitCode = code ?? 1;
      finish();
    });
  });
}

/**
 * A decompressor for one file: write compressed chunks in, and it writes at most `rawSize` bytes to `dst`,
 * hashing them. `finish()` resolves once everything is out and checks size and hash. zstd's output is paused
 * while the file is behind (until `drain`): a highly compressible layer decompresses far faster than a disk
 * writes, and without backpressure Node would buffer the difference in memory. `out` replaces the file (tests).
 */
export function boundedDecompressor(dst: string, expected: { rawSize: number }, label: string, out: Writable = createWriteStream(dst, { mode: 0o600 })) {
  const child = spawn(ZSTD, ["-q", "-d", "-c"], { stdio: ["pipe", "pipe", "pipe"] });
  let written = 0;
  let failure: VigilError | undefined;
  // The staging directory may vanish under an aborted import: a write error is a failure, never a crash.
  out.on("error", (err) => fail(new VigilError("VIGIL_HOST", `Cannot write ${label}: ${err.message}`)));
  let stderr = "";
  const fail = (err: VigilError) => {
    if (failure) return;
    failure = err;
    child.kill("SIGKILL");
  };
  child.stdout.on("data", (d: Buffer) => {
    if (failure) return;
    if (written + d.length > expected.rawSize) return fail(new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} decompresses to more than the ${expected.rawSize} bytes its manifest declares`));
    written += d.length;
    if (!out.write(d)) {
      child.stdout.pause();
      out.once("drain", () => child.stdout.resume());
    }
  });
  child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-1000)));
  child.stdin.on("error", () => undefined); // the child may be killed while we still write
  const exited = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? 1)));
  child.on("error", (err) => fail(new VigilError("VIGIL_HOST", `Cannot run ${q(ZSTD)}: ${err.message}`)));
  return {
    write(chunk: Buffer): Promise<void> {
      if (failure) return Promise.reject(failure);
      return new Promise((resolve) => (child.stdin.write(chunk) ? resolve() : child.stdin.once("drain", resolve)));
    },
    async finish(): Promise<void> {
      child.stdin.end();
      const code = await exited;
      if (!out.destroyed) await new Promise<void>((resolve) => out.end(resolve));
      if (failure) throw failure;
      if (code !== 0) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} is not valid zstd data or fails its checksum (${stderr.trim().split("\n").pop() ?? ""})`);
      if (written !== expected.rawSize) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} decompresses to ${written} bytes, its manifest declares ${expected.rawSize}`);
    },
    abort(): void {
      fail(new VigilError("VIGIL_BAD_REQUEST", "aborted"));
      out.destroy();
    },
  };
}
