/** The console log cap (copytruncate into console.log.1) and the bounded tail read. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConsoleLogCap, consoleBackup, readConsoleTail, rotateConsoleLog } from "./console-log.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-console-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
const sizeOf = (p: string): number => (existsSync(p) ? statSync(p).size : 0);

test("a guest writing 20 MiB to its console leaves at most cap + one check's worth in console.log and cap in console.log.1", async (t) => {
  const path = join(tempDir(t), "console.log");
  writeFileSync(path, "", { mode: 0o600 });
  const cap = new ConsoleLogCap(path, 1 * MiB).start();
  t.after(() => cap.stop());
  // The writer is QEMU's side: O_APPEND, 64 KiB at a time, ~12 MiB/s, never waiting for the daemon.
  const w = await open(path, "a");
  let line = 0;
  let maxLog = 0;
  let maxBackup = 0;
  let last = "";
  for (let written = 0; written < 20 * MiB; ) {
    let chunk = "";
    while (chunk.length < 64 * KiB) chunk += `line ${String(line++).padStart(9, "0")} ${"x".repeat(40)}\n`;
    await w.write(chunk);
    written += chunk.length;
    last = chunk;
    maxLog = Math.max(maxLog, sizeOf(path));
    maxBackup = Math.max(maxBackup, sizeOf(consoleBackup(path)));
    await new Promise((r) => setTimeout(r, 5));
  }
  await w.close();
  cap.stop();
  assert.ok(cap.rotations >= 15, `rotated ${cap.rotations} times`);
  assert.ok(maxBackup <= 1 * MiB, `console.log.1 peaked at ${maxBackup}`);
  assert.ok(maxLog <= 1 * MiB + 512 * KiB, `console.log peaked at ${maxLog} (cap 1 MiB)`);
  assert.ok(sizeOf(path) + sizeOf(consoleBackup(path)) <= 2 * MiB);
  // The newest output is what the tail read returns, in order.
  const tail = readConsoleTail(path, 256 * KiB).toString();
  assert.ok(tail.endsWith(last), "the tail ends with the last chunk written");
  assert.equal(tail.length, 256 * KiB);
});

test("the tail read spans console.log.1 and console.log and never reads more than asked", (t) => {
  const dir = tempDir(t);
  const path = join(dir, "console.log");
  writeFileSync(consoleBackup(path), "old-".repeat(1000));
  writeFileSync(path, "new!");
  assert.equal(readConsoleTail(path, 12).toString(), "old-old-new!");
  assert.equal(readConsoleTail(path, 3).toString(), "ew!");
  assert.equal(readConsoleTail(path, 10 * MiB).length, 4004);
  assert.equal(readConsoleTail(join(dir, "none.log"), 100).length, 0, "no log yet: empty");
});

test("a 3 GiB (sparse) console.log is tailed and rotated by positioned reads, not read whole", (t) => {
  const path = join(tempDir(t), "console.log");
  const fd = openSync(path, "w", 0o600);
  ftruncateSync(fd, 3 * 1024 * MiB);
  const marker = Buffer.from("the very end\n");
  writeSync(fd, marker, 0, marker.length, 3 * 1024 * MiB);
  closeSync(fd);
  const rss = process.memoryUsage().rss;
  const tail = readConsoleTail(path, 64 * KiB);
  assert.equal(tail.length, 64 * KiB);
  assert.ok(tail.subarray(-marker.length).equals(marker));
  assert.equal(rotateConsoleLog(path, 1 * MiB), true);
  assert.ok(process.memoryUsage().rss - rss < 256 * MiB, "memory use stays far below the file's size");
  assert.equal(statSync(path).size, 0, "truncated");
  assert.equal(statSync(consoleBackup(path)).size, 1 * MiB);
  assert.ok(readConsoleTail(path, 100).subarray(-marker.length).equals(marker), "the end moved to console.log.1");
  assert.equal(statSync(consoleBackup(path)).mode & 0o777, 0o600, "the backup is guest data: 0600");
});

test("a cap started on a log already over the limit (vigil found the VM again) rotates at once", (t) => {
  const path = join(tempDir(t), "console.log");
  writeFileSync(path, Buffer.alloc(300 * KiB, 0x41));
  const cap = new ConsoleLogCap(path, 100 * KiB).start();
  t.after(() => cap.stop());
  assert.equal(cap.rotations, 1);
  assert.deepEqual([sizeOf(path), sizeOf(consoleBackup(path))], [0, 100 * KiB]);
});
