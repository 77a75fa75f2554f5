import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fakeQemuPipe } from "../host/testing/fake-qemu-pipe.ts";
import { PACE_MS, PacedPipe } from "./paced-pipe.ts";

async function connected(path: string): Promise<Socket> {
  const c = connect(path);
  await new Promise((r) => c.once("connect", r));
  return c;
}

const until = async (cond: () => boolean, ms: number) => {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
};

test("the agent pipe hands a request to the guest one byte per PACE_MS, intact, and passes replies straight back", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-pace-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await fakeQemuPipe(t, join(dir, "agent-rr"));
  const arrivals: Array<{ at: number; bytes: number }> = [];
  let got = Buffer.alloc(0);
  qemu.input.on("data", (d: Buffer) => {
    arrivals.push({ at: performance.now(), bytes: d.length });
    got = Buffer.concat([got, d]);
  });
  const pipe = await PacedPipe.listen(join(dir, "agent.sock"), join(dir, "agent-rr"));
  t.after(() => pipe.close());
  assert.equal(statSync(join(dir, "agent.sock")).mode & 0o777, 0o600);

  const client = await connected(join(dir, "agent.sock"));
  t.after(() => client.destroy());
  const request = Buffer.from('{"id":1,"cmd":"ping"}\n');
  client.write(request);
  await until(() => got.length >= request.length, 5000);
  assert.deepEqual(got, request);
  assert.ok(arrivals.every((a) => a.bytes === 1), "one byte at a time");
  const span = arrivals.at(-1)!.at - arrivals[0]!.at;
  assert.ok(span >= (request.length - 1) * PACE_MS * 0.8, `${request.length} bytes over ${span.toFixed(0)} ms`);

  // Replies are not paced: one write arrives as written.
  let reply = "";
  client.on("data", (d: Buffer) => (reply += d.toString()));
  qemu.output.write('{"id":1,"ok":true,"result":{"pong":true}}\n');
  await until(() => reply.endsWith("\n"), 2000);
  assert.equal(reply, '{"id":1,"ok":true,"result":{"pong":true}}\n');
});

test("the agent pipe serves one client at a time and drops what the guest writes while none is connected", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-pace-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await fakeQemuPipe(t, join(dir, "agent-rr"));
  const pipe = await PacedPipe.listen(join(dir, "agent.sock"), join(dir, "agent-rr"));
  t.after(() => pipe.close());

  const first = await connected(join(dir, "agent.sock"));
  let firstGot = "";
  first.on("data", (d: Buffer) => (firstGot += d.toString()));
  const second = connect(join(dir, "agent.sock"));
  second.on("error", () => undefined);
  await new Promise((r) => second.once("close", r));
  assert.ok(second.destroyed, "a second client is turned away");

  qemu.output.write("for the first\n");
  await until(() => firstGot.length > 0, 2000);
  assert.equal(firstGot, "for the first\n");
  first.destroy();
  await new Promise((r) => setTimeout(r, 50));
  qemu.output.write("nobody hears this\n");
  await new Promise((r) => setTimeout(r, 100));

  const third = await connected(join(dir, "agent.sock"));
  t.after(() => third.destroy());
  let thirdGot = "";
  third.on("data", (d: Buffer) => (thirdGot += d.toString()));
  qemu.output.write("for the third\n");
  await until(() => thirdGot.length > 0, 2000);
  assert.equal(thirdGot, "for the third\n");
});
