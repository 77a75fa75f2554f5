import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { join } from "node:path";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { ReplayLogParser, summarizeReplayLog, REPLAY_VERSION, HEADER_SIZE, MAX_ARRAY_BYTES } from "./replay-log.ts";

/** A real QEMU 7.2.22 recording: the tiny image booting ~3 s under TCG, 2 serial writes, then QMP quit. */
const REAL = join(import.meta.dirname, "testdata", "tiny-boot-3s.rr.zst");
const real = execFileSync("zstd", ["-q", "-d", "-c", REAL], { maxBuffer: 64 << 20 });

// A tiny encoder for the events the real log lacks (net, input, audio, read-all), written from the QEMU 7.2 source.
const u8 = (v: number) => Buffer.from([v]);
const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; };
const u64 = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(v); return b; };
const arr = (bytes: Buffer) => Buffer.concat([u32(bytes.length), bytes]);
const header = (version = REPLAY_VERSION) => Buffer.concat([u32(version), u64(0n)]);

function synthetic(): Buffer {
  return Buffer.concat([
    header(),
    u8(28), u64(123n), // clock host
    u8(0), u32(1000), // 1000 instructions
    u8(3), u64(7n), // async bh
    u8(3 + 4), u8(0), arr(Buffer.from("hello")), // char read on chardev 0
    u8(3 + 4), u8(1), arr(Buffer.from("xy")), // char read on chardev 1
    u8(3 + 6), u8(0), u32(0), arr(Buffer.alloc(60, 1)), // net packet of 60 bytes
    u8(3 + 6), u8(0), u32(0), arr(Buffer.alloc(1514, 2)),
    u8(3 + 5), u64(1n), // block
    u8(3 + 2), u32(0), u32(1), u32(30), u8(1), // input key qcode
    u8(3 + 2), u32(0), u32(0), u64(5n), u8(0), // input key number
    u8(3 + 2), u32(1), u32(2), u8(1), // input btn
    u8(3 + 2), u32(3), u32(0), u64(100n), // input abs
    u8(3 + 3), // input sync
    u8(22), u32(1), u32(0), // char write
    u8(23), arr(Buffer.from("abc")), // char read all
    u8(24), u32(0xfffffffe), // read all error
    u8(25), u64(44n), // audio out
    u8(26), u64(2n), u64(9n), u64(1n), u64(2n), u64(3n), u64(4n), // audio in, 2 samples
    u8(27), u32(16), arr(Buffer.alloc(16, 9)), // random
    u8(0), u32(0xffffffff),
    u8(37), // checkpoint init
    u8(1), u8(2), u8(14), // interrupt, exception, shutdown (host signal)
    u8(39), // end
  ]);
}

function parseAll(buf: Buffer, splits: number[] = []): ReturnType<ReplayLogParser["end"]> {
  const p = new ReplayLogParser({ label: "t" });
  let at = 0;
  for (const s of [...splits.filter((x) => x > 0 && x < buf.length)].sort((a, b) => a - b).concat(buf.length)) {
    p.feed(buf.subarray(at, s));
    assert.ok(p.bufferedBytes < 64, "the parser holds at most one event's fixed part");
    at = s;
  }
  return p.end();
}

test("a real QEMU 7.2 recording parses to EVENT_END, streamed from zstd", async () => {
  const child = spawn("zstd", ["-q", "-d", "-c", REAL], { stdio: ["ignore", "pipe", "inherit"] });
  const s = await summarizeReplayLog(child.stdout, { label: "tiny-boot" });
  assert.equal(s.version, 0xe0200c);
  assert.equal(s.endedCleanly, true);
  assert.equal(s.bytes, real.length);
  // QEMU writes SHUTDOWN(host-qmp-quit) then, in replay_finish, SHUTDOWN(host-signal) and END.
  assert.equal(s.events.shutdown, 2);
  assert.equal(s.events.end, 1);
  assert.equal(s.totalInstructions, 1190722305n);
  assert.deepEqual(s.charInput, { "0": { events: 2, bytes: 2 } });
  assert.equal(s.blockEvents, 1);
  assert.equal(s.clockReads, 3606);
  assert.deepEqual(s.network, { packets: 0, bytes: 0 });
  // Every instruction event is a kind byte + u32: the sum checks the framing of the whole file.
  assert.ok(s.events.instruction! > 1_000_000);
});

test("each event layout of QEMU 7.2 is read with its payload", () => {
  const s = parseAll(synthetic());
  assert.equal(s.totalInstructions, 1000n + 0xffffffffn);
  assert.deepEqual(s.charInput, { "0": { events: 1, bytes: 5 }, "1": { events: 1, bytes: 2 } });
  assert.deepEqual(s.network, { packets: 2, bytes: 1574 });
  assert.equal(s.blockEvents, 1);
  assert.equal(s.events["async-input"], 4);
  assert.equal(s.events["async-input-sync"], 1);
  assert.equal(s.events["audio-in"], 1);
  assert.equal(s.events.random, 1);
  assert.equal(s.events["char-read-all"], 1);
  assert.equal(s.events["char-read-all-error"], 1);
  assert.equal(s.checkpoints, 1);
  assert.equal(s.endedCleanly, true);
});

test("a log without EVENT_END at an event boundary is not clean; a cut inside an event is an error with its offset", () => {
  const full = synthetic();
  assert.equal(parseAll(full.subarray(0, full.length - 1)).endedCleanly, false);
  assert.throws(() => parseAll(full.subarray(0, HEADER_SIZE + 5)), (e: unknown) => e instanceof VigilError && /truncated at offset 12/.test(e.message));
  assert.throws(() => parseAll(full.subarray(0, 6)), /header is incomplete/);
  // cut inside the 5-byte payload of the first char read
  const cut = full.indexOf(Buffer.from("hello")) + 2;
  assert.throws(() => parseAll(full.subarray(0, cut)), /3 bytes of a char-read payload missing/);
});

test("an unknown kind, a wrong version, trailing bytes and an oversized length are errors naming the offset", () => {
  assert.throws(() => parseAll(Buffer.concat([header(), u8(0), u32(5), u8(40)])), /unknown event kind 40 at offset 17/);
  assert.throws(() => parseAll(Buffer.concat([header(0xe0200b), u8(39)])), /version 0xe0200b at offset 0/);
  assert.throws(() => parseAll(Buffer.concat([header(), u8(39), u8(1)])), /1 bytes after EVENT_END at offset 13/);
  assert.throws(() => parseAll(Buffer.concat([header(), u8(7), u8(0), u32(MAX_ARRAY_BYTES + 1)])), /char-read payload of 1048577 bytes at offset 14 exceeds/);
  assert.throws(() => parseAll(Buffer.concat([header(), u8(5), u32(4), u32(0)])), /unknown type 4/);
  assert.throws(() => parseAll(Buffer.concat([header(), u8(26), u64(1n << 40n), u64(0n)])), /claims 1099511627776 samples/);
  // a log still being recorded has no header yet: accepted only when asked for
  assert.throws(() => parseAll(Buffer.concat([header(0), u8(39)])), /version 0x0/);
  const p = new ReplayLogParser({ allowUnfinishedHeader: true });
  p.feed(Buffer.concat([header(0), u8(0), u32(3)]));
  assert.equal(p.end().totalInstructions, 3n);
});

const prefix = real.subarray(0, 256 * 1024);

test("property: any split of the input into chunks gives the same summary", () => {
  const whole = parseAll(synthetic());
  fc.assert(fc.property(fc.array(fc.nat(synthetic().length), { maxLength: 30 }), (splits) => {
    assert.deepEqual(parseAll(synthetic(), splits), whole);
  }), { numRuns: 300 });
  const realWhole = (() => { try { return parseAll(prefix); } catch (e) { return e; } })();
  fc.assert(fc.property(fc.array(fc.nat(prefix.length), { maxLength: 20 }), (splits) => {
    try {
      assert.deepEqual(parseAll(prefix, splits), realWhole);
    } catch (e) {
      assert.ok(e instanceof VigilError && realWhole instanceof VigilError && e.message === realWhole.message);
    }
  }), { numRuns: 40 });
});

/** Only VigilError, never anything else, and the parser's own buffer stays small (checked in parseAll). */
function onlyVigilErrors(buf: Buffer, splits: number[]): void {
  try {
    parseAll(buf, splits);
  } catch (e) {
    if (!(e instanceof VigilError)) throw e;
    assert.equal(e.code, "VIGIL_BAD_REQUEST");
  }
}

test("fuzz: random bytes, truncations and bit flips give a summary or a VigilError, in bounded time", () => {
  const base = synthetic();
  const t0 = Date.now();
  fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), fc.boolean(), fc.array(fc.nat(4096), { maxLength: 8 }), (bytes, withHeader, splits) => {
    onlyVigilErrors(withHeader ? Buffer.concat([header(), Buffer.from(bytes)]) : Buffer.from(bytes), splits);
  }), { numRuns: 500 });
  fc.assert(fc.property(fc.nat(prefix.length), fc.array(fc.tuple(fc.nat(prefix.length - 1), fc.nat(7)), { minLength: 1, maxLength: 8 }), (cut, flips) => {
    const b = Buffer.from(prefix.subarray(0, Math.max(cut, 1)));
    for (const [at, bit] of flips) if (at < b.length) b[at]! ^= 1 << bit;
    onlyVigilErrors(b, [cut >> 1]);
  }), { numRuns: 60 });
  fc.assert(fc.property(fc.nat(base.length), fc.nat(base.length - 1), fc.nat(7), (cut, at, bit) => {
    const b = Buffer.from(base.subarray(0, cut));
    if (at < b.length) b[at]! ^= 1 << bit;
    onlyVigilErrors(b, []);
  }), { numRuns: 1000 });
  assert.ok(Date.now() - t0 < 60_000);
});

test("summarizeReplayLog reads a path and names it in errors", async () => {
  await assert.rejects(summarizeReplayLog("/nonexistent/log.bin"), (e: unknown) => e instanceof VigilError && /"\/nonexistent\/log.bin"/.test(e.message));
});
