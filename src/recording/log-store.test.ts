import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { VigilError } from "../errors.ts";
import { LogCompressor, expandLog } from "./log-store.ts";
import { summarizeReplayLog } from "./replay-log.ts";

const real = execFileSync("zstd", ["-q", "-d", "-c", join(import.meta.dirname, "testdata", "tiny-boot-3s.rr.zst")], { maxBuffer: 64 << 20 });

/**
 * A writer shaped like QEMU's: opens the file, writes the body from offset 12 in paced chunks (buffered stdio
 * flushes), then the 12-byte header at offset 0 last, then exits.
 */
function fakeQemu(path: string, body: Buffer, header: Buffer, chunk: number, everyMs: number): Promise<number> {
  const src = join(path + ".src");
  writeFileSync(src, Buffer.concat([header, body]));
  const script = `
    const fs = require("node:fs");
    const all = fs.readFileSync(${JSON.stringify(src)});
    const fd = fs.openSync(${JSON.stringify(path)}, "w");
    let pos = 12;
    const step = () => {
      if (pos >= all.length) { fs.writeSync(fd, all, 0, 12, 0); fs.closeSync(fd); return; }
      const n = Math.min(${chunk}, all.length - pos);
      fs.writeSync(fd, all, pos, n, pos); pos += n;
      setTimeout(step, ${everyMs});
    };
    step();`;
  const child = spawn(process.execPath, ["-e", script], { stdio: "inherit" });
  return new Promise((resolve) => child.on("close", (code) => resolve(code ?? 1)));
}

function tmp(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-logstore-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("compresses a log while its writer appends, frees the raw blocks behind it, and expands it back byte for byte", async (t) => {
  const dir = tmp(t);
  const raw = join(dir, "log.bin");
  const stored = join(dir, "log.zst");
  const c = LogCompressor.start(raw, stored, { pollMs: 20 });
  // 20 MiB at 512 KiB per 10 ms: the compressor must keep up while the file grows.
  const writer = fakeQemu(raw, real.subarray(12), real.subarray(0, 12), 512 * 1024, 10);
  let liveRaw = 0;
  while (statSync(raw, { throwIfNoEntry: false }) === undefined || liveRaw === 0) {
    await sleep(20);
    liveRaw = c.stats().rawBytes;
  }
  assert.equal(await writer, 0);
  assert.ok(liveRaw > 0 && liveRaw < real.length, `live stats during the recording (${liveRaw})`);
  const res = await c.finish();
  assert.equal(res.rawBytes, real.length);
  assert.equal(res.header, real.subarray(0, 12).toString("hex"));
  assert.equal(res.header.slice(0, 8), "00e0200c");
  const storedBytes = readFileSync(stored);
  assert.equal(res.storedBytes, storedBytes.length);
  assert.equal(res.sha256, createHash("sha256").update(storedBytes).digest("hex"));
  assert.equal(statSync(stored).mode & 0o777, 0o600);
  assert.ok(res.storedBytes * 50 < res.rawBytes, `the log compresses well (${res.storedBytes} of ${res.rawBytes})`);
  // The raw file keeps its size but no longer its blocks (only the header block, rewritten by QEMU at exit).
  const st = statSync(raw);
  assert.equal(st.size, real.length);
  assert.ok(st.blocks * 512 <= 64 * 1024, `raw file holds ${st.blocks * 512} bytes after punching`);
  assert.ok(c.stats().punchedBytes > real.length - 8192);

  const out = join(dir, "replay.bin");
  await expandLog(stored, res, out, "rec1");
  assert.ok(readFileSync(out).equals(real));
  assert.equal(statSync(out).mode & 0o777, 0o600);
  assert.equal((await summarizeReplayLog(out)).endedCleanly, true);
});

test("without hole punching the raw file keeps its blocks", async (t) => {
  const dir = tmp(t);
  const raw = join(dir, "log.bin");
  const c = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 10, punchHoles: false });
  assert.equal(await fakeQemu(raw, real.subarray(12, 1 << 20), real.subarray(0, 12), 1 << 18, 5), 0);
  const res = await c.finish();
  assert.equal(res.rawBytes, 1 << 20);
  assert.ok(statSync(raw).blocks * 512 >= 1 << 20);
});

test("a log QEMU never finished (no header) is an error, not a stored log", async (t) => {
  const dir = tmp(t);
  const raw = join(dir, "log.bin");
  const c = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 10 });
  assert.equal(await fakeQemu(raw, real.subarray(12, 4096), Buffer.alloc(12), 4096, 1), 0);
  await assert.rejects(c.finish(), /no finished header \(version 0x0\)/);
});

test("one flipped byte in the stored log is refused before decompressing, and a log larger than recorded is cut off", async (t) => {
  const dir = tmp(t);
  const raw = join(dir, "log.bin");
  const stored = join(dir, "log.zst");
  writeFileSync(raw, real);
  const c = LogCompressor.start(raw, stored, { pollMs: 5, punchHoles: false });
  const res = await c.finish();
  const out = join(dir, "out.bin");

  const good = readFileSync(stored);
  const bad = Buffer.from(good);
  bad[bad.length >> 1]! ^= 0x01;
  writeFileSync(stored, bad);
  await assert.rejects(expandLog(stored, res, out, "rec-7"), (e: unknown) =>
    e instanceof VigilError && /Cannot replay "rec-7": the recording's log was changed/.test(e.message) && e.message.includes(stored));
  assert.equal(existsSync(out), false);

  writeFileSync(stored, good);
  await assert.rejects(expandLog(stored, { ...res, rawBytes: res.rawBytes - 1 }, out), /decompresses to more than/);
  assert.equal(existsSync(out), false, "a failed expansion leaves no file");
  await assert.rejects(expandLog(stored, { ...res, header: "zz" }, out), (e: unknown) => e instanceof VigilError && e.field === "log.header");
  await expandLog(stored, res, out);
  assert.ok(readFileSync(out).equals(real));
});

test("punching at finish (after QEMU wrote its header) keeps the header block", async (t) => {
  const dir = tmp(t);
  const raw = join(dir, "log.bin");
  const c = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 10 });
  // Less than one punch interval: the only punch happens in finish(), after the header is written.
  assert.equal(await fakeQemu(raw, real.subarray(12, 1 << 20), real.subarray(0, 12), 1 << 18, 5), 0);
  const res = await c.finish();
  assert.equal(res.header.slice(0, 8), "00e0200c");
  assert.ok(readFileSync(raw).subarray(0, 12).equals(real.subarray(0, 12)));
  assert.ok(c.stats().punchedBytes >= (1 << 20) - 8192);
});
