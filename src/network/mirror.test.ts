import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { startCapture } from "./mirror.ts";
import { parsePcap, summarize } from "./pcap.ts";
import { VisFixture, echoServer, inVm } from "./vis-fixture.ts";

const header = (le = true) => {
  const b = Buffer.alloc(24);
  if (le) {
    b.writeUInt32LE(0xa1b2c3d4, 0);
    b.writeUInt16LE(2, 4);
    b.writeUInt16LE(4, 6);
    b.writeUInt32LE(262144, 16);
    b.writeUInt32LE(1, 20);
  } else {
    b.writeUInt32BE(0xa1b2c3d4, 0);
    b.writeUInt16BE(2, 4);
    b.writeUInt16BE(4, 6);
    b.writeUInt32BE(262144, 16);
    b.writeUInt32BE(1, 20);
  }
  return b;
};

test("parsePcap reads both byte orders and refuses hostile or truncated files with the offset", () => {
  const rec = Buffer.alloc(16 + 3);
  rec.writeUInt32LE(7, 0);
  rec.writeUInt32LE(5, 4);
  rec.writeUInt32LE(3, 8);
  rec.writeUInt32LE(60, 12);
  const p = parsePcap(Buffer.concat([header(), rec]));
  assert.equal(p.packets.length, 1);
  assert.equal(p.packets[0]!.originalLength, 60);
  assert.equal(parsePcap(header(false)).littleEndian, false);
  assert.throws(() => parsePcap(Buffer.alloc(10)), /byte 0: the global header needs 24/);
  assert.throws(() => parsePcap(Buffer.alloc(24)), /not a pcap magic/);
  assert.throws(() => parsePcap(Buffer.concat([header(), rec.subarray(0, 17)])), /byte 40: the record claims 3 bytes, 1 remain/);
  assert.equal(parsePcap(Buffer.concat([header(), rec.subarray(0, 17)]), { allowTruncatedTail: true }).completeBytes, 24);
  const huge = Buffer.from(rec);
  huge.writeUInt32LE(0xffffffff, 8);
  assert.throws(() => parsePcap(Buffer.concat([header(), huge])), /byte 32: captured length 4294967295 exceeds/);
});

test("parsePcap and summarize on random bytes return or throw a VigilError, never loop or crash", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, withHeader) => {
      const buf = withHeader ? Buffer.concat([header(), bytes]) : Buffer.from(bytes);
      for (const allowTruncatedTail of [false, true]) {
        try {
          const p = parsePcap(buf, { allowTruncatedTail });
          assert.ok(p.completeBytes <= buf.length);
          for (const pkt of p.packets) summarize(pkt.data);
        } catch (err) {
          assert.ok(err instanceof VigilError, String(err));
        }
      }
      summarize(bytes);
    }),
    { numRuns: 1000 },
  );
});

test("a mirror of a NIC holds the test's own traffic, as tcpdump -r reads it, in a 0600 file; bounds stop it", async (t) => {
  const f = await VisFixture.create(2);
  t.after(() => f.close());
  const dir = mkdtempSync(join(tmpdir(), "vt-mirror-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [a, b] = [f.vm("vm0"), f.vm("vm1")];
  const server = await echoServer(b, 5004);
  t.after(() => server.kill("SIGKILL"));

  const file = join(dir, "c1.pcap");
  const cap = startCapture(f.netns(), a.nic.tap, file, { durationMs: 2500, maxBytes: 10_000_000, maxPackets: 100_000 });
  await cap.ready;
  const marker = `vigil-mirror-${f.id}`;
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5004"], `${marker}\n`);
  const started = Date.now();
  const res = await cap.done;
  assert.equal(res.stoppedBy, "duration");
  assert.ok(Date.now() - started < 4000);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const pcap = parsePcap(readFileSync(file));
  assert.equal(res.packets, pcap.packets.length);
  assert.equal(res.bytes, statSync(file).size);
  const sums = pcap.packets.map((p) => summarize(p.data, pcap.linktype));
  const toB = sums.filter((s) => s?.proto === "tcp" && s.src === a.nic.ip && s.dst === b.nic.ip && s.dport === 5004);
  assert.ok(toB.some((s) => Buffer.from(s!.payload).toString().includes(marker)), "the marker is in a packet vm0 sent to vm1:5004");
  const back = sums.filter((s) => s?.proto === "tcp" && s.src === b.nic.ip && s.sport === 5004 && Buffer.from(s.payload).toString().includes(marker));
  assert.ok(back.length >= 1, "and the echo came back through the same NIC");
  // Cross-check with tcpdump's own reader: same packet count, same count of vm0 → vm1:5004 packets.
  const lines = (await runCommand("tcpdump", ["-r", file, "-nn"])).stdout.trim().split("\n").filter(Boolean);
  assert.equal(lines.length, pcap.packets.length);
  assert.equal(lines.filter((l) => l.includes(`IP ${a.nic.ip}.`) && l.includes(`> ${b.nic.ip}.5004:`)).length, toB.length);

  // The size bound: traffic far beyond it stops the capture early; the file is whole records within the bound.
  const small = join(dir, "c2.pcap");
  const cap2 = startCapture(f.netns(), a.nic.tap, small, { durationMs: 20_000, maxBytes: 4096, maxPackets: 100_000 });
  await cap2.ready;
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5004"], "y".repeat(300_000));
  const r2 = await cap2.done;
  assert.equal(r2.stoppedBy, "bytes");
  assert.ok(r2.bytes <= 4096 && statSync(small).size === r2.bytes);
  assert.equal(parsePcap(readFileSync(small)).packets.length, r2.packets);

  // The packet bound: tcpdump -c.
  const few = join(dir, "c3.pcap");
  const cap3 = startCapture(f.netns(), a.nic.tap, few, { durationMs: 20_000, maxBytes: 10_000_000, maxPackets: 3 });
  await cap3.ready;
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5004"], "z".repeat(50_000));
  const r3 = await cap3.done;
  assert.deepEqual([r3.stoppedBy, r3.packets], ["packets", 3]);

  assert.throws(() => startCapture(f.netns(), a.nic.tap, join(dir, "x"), { durationMs: 10, maxBytes: 4096, maxPackets: 1 }), (e: VigilError) => e.field === "duration");
  assert.throws(() => startCapture(f.netns(), a.nic.tap, join(dir, "x"), { durationMs: 1000, maxBytes: 1, maxPackets: 1 }), (e: VigilError) => e.field === "maxBytes");
  assert.throws(() => startCapture(f.netns(), "eth0", join(dir, "x"), { durationMs: 1000, maxBytes: 4096, maxPackets: 1 }), (e: VigilError) => e.field === "nic");
  assert.throws(() => startCapture(f.netns(), a.nic.tap, file, { durationMs: 1000, maxBytes: 4096, maxPackets: 1 }), /EEXIST/, "never overwrites a file");
});
