import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PACE_MS, PacedPipe } from "./paced-pipe.ts";

test("the agent pipe hands a request to the guest one byte per PACE_MS, intact, and passes replies straight back", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-pace-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const arrivals: Array<{ at: number; bytes: number }> = [];
  let got = Buffer.alloc(0);
  let guestSide: Socket | undefined;
  const guest = createServer((s) => {
    guestSide = s;
    s.on("data", (d: Buffer) => {
      arrivals.push({ at: performance.now(), bytes: d.length });
      got = Buffer.concat([got, d]);
    });
  });
  await new Promise<void>((r) => guest.listen(join(dir, "qemu.sock"), r));
  t.after(() => guest.close());
  const pipe = await PacedPipe.listen(join(dir, "agent.sock"), join(dir, "qemu.sock"));
  t.after(() => pipe.close());
  assert.equal(statSync(join(dir, "agent.sock")).mode & 0o777, 0o600);

  const client = connect(join(dir, "agent.sock"));
  t.after(() => client.destroy());
  await new Promise((r) => client.once("connect", r));
  const request = Buffer.from('{"id":1,"cmd":"ping"}\n');
  client.write(request);
  const deadline = Date.now() + 5000;
  while (got.length < request.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(got, request);
  assert.ok(arrivals.every((a) => a.bytes === 1), "one byte at a time");
  const span = arrivals.at(-1)!.at - arrivals[0]!.at;
  assert.ok(span >= (request.length - 1) * PACE_MS * 0.8, `${request.length} bytes over ${span.toFixed(0)} ms`);

  // Replies are not paced: one write arrives as written.
  let reply = "";
  client.on("data", (d: Buffer) => (reply += d.toString()));
  guestSide!.write('{"id":1,"ok":true,"result":{"pong":true}}\n');
  while (!reply.endsWith("\n") && Date.now() < deadline + 2000) await new Promise((r) => setTimeout(r, 5));
  assert.equal(reply, '{"id":1,"ok":true,"result":{"pong":true}}\n');
});
