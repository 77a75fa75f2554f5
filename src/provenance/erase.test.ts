import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { overwriteAndUnlink } from "./erase.ts";

test("overwrites every byte before unlinking", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "erase-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "disk");
  writeFileSync(path, Buffer.alloc(3 * 1024 * 1024 + 17, 0xab));
  // Keep a second descriptor open so the inode's content can still be read after unlink.
  const fd = openSync(path, "r");
  const { bytes } = overwriteAndUnlink(path);
  assert.equal(bytes, 3 * 1024 * 1024 + 17);
  assert.equal(existsSync(path), false);
  const buf = Buffer.alloc(bytes);
  readSync(fd, buf, 0, bytes, 0);
  closeSync(fd);
  assert.equal(buf.indexOf(0xab), -1);
});
