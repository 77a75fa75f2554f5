/**
 * zstd through Debian's `zstd` binary (Node 20's zlib has no zstd), streamed: compressing computes the sha256 of
 * both sides on the way; decompressing stops the moment the output would exceed the size the (signed) manifest
 * declared, so a decompression bomb costs nothing.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { VigilError, q } from "../../errors.ts";

export const ZSTD = process.env.VIGIL_ZSTD ?? "zstd";

export interface CompressResult {
  size: number;
  sha256: string;
  rawSize: number;
  rawSha256: string;
}

/** Compresses `src` into `dst` (level 3, all cores). */
export function compressFile(src: string, dst: string, onBytes?: (rawBytes: number) => void): Promise<CompressResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(ZSTD, ["-q", "-3", "-T0", "-c"], { stdio: ["pipe", "pipe", "pipe"] });
    const rawHash = createHash("sha256");
    const outHash = createHash("sha256");
    let rawSize = 0;
    let size = 0;
    let stderr = "";
    const input = createReadStream(src);
    input.on("data", (d) => {
      rawHash.update(d);
      rawSize += d.length;
      onBytes?.(rawSize);
    });
    input.on("error", reject);
    child.stdin.on("error", () => undefined); // zstd exiting early shows up as its exit code below
    input.pipe(child.stdin);
    const out = createWriteStream(dst, { mode: 0o600 });
    out.on("error", (err) => {
      child.kill("SIGKILL");
      reject(new VigilError("VIGIL_HOST", `Cannot write ${q(dst)}: ${err.message}`));
    });
    child.stdout.on("data", (d: Buffer) => {
      outHash.update(d);
      size += d.length;
    });
    child.stdout.pipe(out);
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot run ${q(ZSTD)}: ${err.message}`, { cause: err })));
    let exitCode: number | null = null;
    let outClosed = false;
    const finish = () => {
      if (exitCode === null || !outClosed) return;
      if (exitCode !== 0) return reject(new VigilError("VIGIL_HOST", `zstd failed compressing ${q(src)}: ${stderr.trim()}`));
      resolve({ size, sha256: outHash.digest("hex"), rawSize, rawSha256: rawHash.digest("hex") });
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
 * hashing them. `finish()` resolves once everything is out and checks size and hash.
 */
export function boundedDecompressor(dst: string, expected: { rawSize: number; rawSha256: string }, label: string) {
  const child = spawn(ZSTD, ["-q", "-d", "-c"], { stdio: ["pipe", "pipe", "pipe"] });
  const out = createWriteStream(dst, { mode: 0o600 });
  const hash = createHash("sha256");
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
    hash.update(d);
    out.write(d);
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
      if (code !== 0) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} is not valid zstd data (${stderr.trim().split("\n").pop() ?? ""})`);
      if (written !== expected.rawSize) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} decompresses to ${written} bytes, its manifest declares ${expected.rawSize}`);
      if (hash.digest("hex") !== expected.rawSha256) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} does not match its sha256 after decompression`);
    },
    abort(): void {
      fail(new VigilError("VIGIL_BAD_REQUEST", "aborted"));
      out.destroy();
    },
  };
}
