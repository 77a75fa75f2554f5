import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { MAX_RAW_READ_BYTES, RawImage } from "./block-reader.ts";

test("a raw image reads its file's bytes, within its size and the read limit", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-raw-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "d.raw");
  const bytes = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i & 0xff));
  writeFileSync(path, bytes);
  const img = RawImage.open(path);
  t.after(() => img.close());
  assert.equal(img.virtualSize, 10_000n);
  assert.ok(img.read(0n, 10_000).equals(bytes));
  assert.ok(img.read(9_990n, 10).equals(bytes.subarray(9_990)));
  assert.equal(img.read(10_000n, 0).length, 0);
  const bad = (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST";
  assert.throws(() => img.read(9_991n, 10), bad);
  assert.throws(() => img.read(-1n, 1), bad);
  assert.throws(() => img.read(0n, MAX_RAW_READ_BYTES + 1), bad);
  assert.throws(() => RawImage.open(join(dir, "missing")), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_NOT_FOUND");
  mkdirSync(join(dir, "sub"));
  assert.throws(() => RawImage.open(join(dir, "sub")), (e: unknown) => e instanceof VigilError && /not a regular file/.test(e.message));
});
