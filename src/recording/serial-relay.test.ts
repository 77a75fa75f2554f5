import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fakeQemuPipe } from "../host/testing/fake-qemu-pipe.ts";
import { MAX_CLIENT_BACKLOG, SerialRelay } from "./serial-relay.ts";

test("the serial relay drains QEMU's FIFO whatever its console clients do: nothing QEMU writes ever waits, all of it is in the transcript", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-relay-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await fakeQemuPipe(t, join(dir, "serial-rr"));
  const relay = await SerialRelay.open(join(dir, "serial-rr"), join(dir, "console.sock"), join(dir, "serial.out"));
  t.after(() => relay.close());
  assert.equal(statSync(join(dir, "console.sock")).mode & 0o777, 0o600);

  // A console user who never reads.
  const lazy = connect(join(dir, "console.sock"));
  lazy.on("error", () => undefined);
  await new Promise((r) => lazy.once("connect", r));
  lazy.pause();
  t.after(() => lazy.destroy());
  await new Promise((r) => setTimeout(r, 50));

  // QEMU's writes are non-blocking: a full FIFO would be EAGAIN, the case that makes replays diverge.
  const chunk = Buffer.alloc(8192, 0x61);
  const total = 3 * MAX_CLIENT_BACKLOG;
  let eagain = 0;
  for (let sent = 0; sent < total; ) {
    try {
      sent += writeSync(qemu.outputFd, chunk);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN") throw err;
      eagain++;
    }
    await new Promise((r) => setImmediate(r));
  }
  const deadline = Date.now() + 5000;
  while (relay.bytes < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(eagain, 0, "QEMU never found the FIFO full");
  assert.equal(relay.bytes, total);
  assert.equal(statSync(join(dir, "serial.out")).size, total);
  // The client that did not read was cut off, not buffered for without bound.
  let received = 0;
  lazy.on("data", (d: Buffer) => (received += d.length));
  const closed = new Promise((r) => lazy.once("close", r));
  lazy.resume();
  await closed;
  assert.ok(received < total, `the lazy client got ${received} of ${total} bytes before it was cut off`);
});

test("the output gate shows console users the guest's output only once the shadow has checked past it, and shuts for good on a finding", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-gate-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await fakeQemuPipe(t, join(dir, "serial-rr"));
  const relay = await SerialRelay.open(join(dir, "serial-rr"), join(dir, "console.sock"), join(dir, "serial.out"));
  t.after(() => relay.close());
  let live = 1000;
  relay.gate(async () => live);
  const user = connect(join(dir, "console.sock"));
  await new Promise((r) => user.once("connect", r));
  t.after(() => user.destroy());
  let shown = "";
  user.on("data", (d: Buffer) => (shown += d.toString()));
  const settle = () => new Promise((r) => setTimeout(r, 100));

  qemu.output.write("first ");
  await settle();
  assert.equal(shown, "", "held until checked");
  assert.equal(relay.bytes, 6, "the transcript has it at once");
  relay.release(999);
  await settle();
  assert.equal(shown, "", "checked to just before it: still held");
  relay.release(1000);
  await settle();
  assert.equal(shown, "first ");

  live = 2000;
  qemu.output.write("second");
  await settle();
  relay.hold("the shadow found syscall-table at instruction 1500");
  relay.release(5000);
  await settle();
  assert.equal(shown, "first ", "a finding shuts the gate");
  assert.deepEqual(relay.gateStatus(), { heldBytes: 6, releasedIcount: 5000, shut: "the shadow found syscall-table at instruction 1500", droppedBytes: 0 });
});
