/**
 * The bounded decompressor against a slow disk: zstd's output must wait for the file (backpressure), so the
 * bytes Node holds in memory stay bounded however compressible the layer is (review finding 20).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { boundedDecompressor, compressFile } from "./zstd.ts";

test("decompressing a highly compressible layer into a slow writable keeps the buffered bytes bounded", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-zstd-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const RAW = 32 * 1024 * 1024;
  const raw = join(dir, "zeros.raw");
  writeFileSync(raw, "");
  truncateSync(raw, RAW); // 32 MiB of zeros: a few KiB of zstd
  const { size } = await compressFile(raw, join(dir, "zeros.zst"));
  assert.ok(size < 64 * 1024, `compressed to ${size} bytes`);

  let peak = 0;
  let received = 0;
  const slow = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _enc, done) {
      received += chunk.length;
      setTimeout(done, 1); // a disk far slower than zstd
    },
  });
  const origWrite = slow.write.bind(slow);
  slow.write = ((chunk: Buffer, ...rest: never[]) => {
    const r = origWrite(chunk, ...rest);
    peak = Math.max(peak, slow.writableLength);
    return r;
  }) as typeof slow.write;

  const dec = boundedDecompressor(join(dir, "unused"), { rawSize: RAW }, "layer zeros", slow);
  await dec.write(readFileSync(join(dir, "zeros.zst")));
  await dec.finish();
  assert.equal(received, RAW);
  assert.ok(peak <= 1024 * 1024, `peak buffered ${peak} bytes (of ${RAW})`);
});
