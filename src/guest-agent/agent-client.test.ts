/**
 * The agent client against a scripted (and hostile) guest: malformed, oversized, mistyped and unsolicited
 * messages must be rejected cleanly, never crash the host or leave a request hanging.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { AgentClient } from "./agent-client.ts";

async function fakeGuest(t: TestContext, onRequest: (req: Record<string, unknown>, sock: Socket) => void) {
  const dir = mkdtempSync(join(tmpdir(), "agent-test-"));
  const path = join(dir, "agent.sock");
  const socks: Socket[] = [];
  const server = createServer((sock) => {
    socks.push(sock);
    sock.on("error", () => {});
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        onRequest(JSON.parse(line) as Record<string, unknown>, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  const client = await AgentClient.connect(path);
  t.after(() => {
    client.close();
    for (const s of socks) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { client, socks };
}

const send = (sock: Socket, obj: unknown) => sock.write((typeof obj === "string" ? obj : JSON.stringify(obj)) + "\n");

test("ping, info, ps and exec round trips with validated results", async (t) => {
  const { client } = await fakeGuest(t, (req, sock) => {
    const results: Record<string, unknown> = {
      ping: { pong: true },
      info: { kernel: "6.12.0", uptime: 3.5, hostname: "demo", agent: "vigil-agent", protocol: 1, bootId: "abc" },
      ps: { processes: [{ pid: 1, ppid: 0, state: "S", comm: "init" }] },
      exec: { exitCode: 0, stdout: Buffer.from("hi\n").toString("base64"), stderr: "", truncated: false },
    };
    send(sock, { id: req.id, ok: true, result: results[req.cmd as string] });
  });
  assert.deepEqual(await client.ping(), { pong: true });
  assert.equal((await client.info()).kernel, "6.12.0");
  assert.equal((await client.ps()).processes[0]?.comm, "init");
  const ex = await client.exec(["uname", "-r"]);
  assert.equal(Buffer.from(ex.stdout, "base64").toString(), "hi\n");
});

test("a reply of the wrong shape is an error naming the command, not a crash", async (t) => {
  const { client } = await fakeGuest(t, (req, sock) => send(sock, { id: req.id, ok: true, result: { processes: [{ pid: "1; rm -rf /", comm: 5 }] } }));
  await assert.rejects(client.ps(), /answer to "ps" is malformed/);
  assert.equal(client.isOpen, true);
});

test("the guest's refusal is reported with its message", async (t) => {
  const { client } = await fakeGuest(t, (req, sock) => send(sock, { id: req.id, ok: false, error: 'command "rm" is not allowed' }));
  await assert.rejects(client.exec(["rm"]), /refused "exec": command "rm" is not allowed/);
});

test("arguments the shell agent could misparse are refused before sending", async (t) => {
  let sent = 0;
  const { client } = await fakeGuest(t, () => sent++);
  await assert.rejects(client.exec(["sh", "-c", "echo \"x\""]), /Invalid agent argument/);
  assert.equal(sent, 0);
});

test("silence times out; a late answer is ignored", async (t) => {
  const held: Array<() => void> = [];
  const { client } = await fakeGuest(t, (req, sock) => held.push(() => send(sock, { id: req.id, ok: true, result: { pong: true } })));
  await assert.rejects(client.ping(50), /did not answer "ping" within 50 ms/);
  held.forEach((f) => f());
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(client.isOpen, true);
});

test("an oversized line is dropped and the channel keeps working", async (t) => {
  let n = 0;
  const { client } = await fakeGuest(t, (req, sock) => {
    if (n++ === 0) sock.write("x".repeat(300 * 1024) + "\n");
    send(sock, { id: req.id, ok: true, result: { pong: true } });
  });
  assert.deepEqual(await client.ping(), { pong: true });
  assert.ok(client.problems.some((p) => /over-long/.test(p)));
});

test("a flood of junk disconnects the guest and fails pending requests", async (t) => {
  const { client } = await fakeGuest(t, (_req, sock) => {
    for (let i = 0; i < 1000; i++) sock.write("{not json\n");
  });
  await assert.rejects(client.ping(5000), /flooded the agent channel/);
  assert.equal(client.isOpen, false);
});

test("waitUntilAnswering pings again when the agent announces itself", async (t) => {
  let answered = false;
  const { client, socks } = await fakeGuest(t, (req, sock) => {
    if (answered) send(sock, { id: req.id, ok: true, result: { pong: true } });
  });
  const waiting = client.waitUntilAnswering(5000, 10_000);
  await new Promise((r) => setTimeout(r, 50));
  answered = true;
  send(socks[0]!, { event: "ready", agent: "vigil-agent", protocol: 1 });
  await waiting;
});

test("property: arbitrary guest lines never throw out of the client", async (t) => {
  const { client, socks } = await fakeGuest(t, () => {});
  await fc.assert(
    fc.asyncProperty(fc.array(fc.oneof(fc.json(), fc.string(), fc.constant('{"id":1,"ok":true}')), { maxLength: 5 }), async (lines) => {
      for (const l of lines) socks[0]!.write(l.replaceAll("\n", " ") + "\n");
      await new Promise((r) => setImmediate(r));
    }),
    { numRuns: 30 },
  );
  // The channel may have been cut for flooding; either way the client must still answer calls cleanly.
  await assert.rejects(client.ping(100));
});

/**
 * A guest that, as soon as the host connects, writes `line` up to `max` times (respecting backpressure) and
 * stops when the host hangs up. Returns the client and how many lines the guest got written.
 */
async function streamingGuest(t: TestContext, line: string, max: number) {
  const dir = mkdtempSync(join(tmpdir(), "agent-test-"));
  const path = join(dir, "agent.sock");
  let written = 0;
  let cut: () => void = () => {};
  const hungUp = new Promise<void>((r) => (cut = r));
  const socks: Socket[] = [];
  const server = createServer((sock) => {
    socks.push(sock);
    sock.on("error", () => {});
    sock.on("close", () => cut());
    const pump = () => {
      while (written < max && !sock.destroyed) {
        written++;
        if (!sock.write(line)) return void sock.once("drain", pump);
      }
    };
    pump();
  });
  await new Promise<void>((r) => server.listen(path, r));
  const client = await AgentClient.connect(path);
  t.after(() => {
    client.close();
    for (const s of socks) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { client, hungUp, written: () => written };
}

test("a stream of padded 200 KiB ready lines is a flood: the guest is disconnected quickly (review F5)", async (t) => {
  const ready = JSON.stringify({ event: "ready", agent: "x", protocol: 1, pad: "x".repeat(200 * 1024) }) + "\n";
  const { client, hungUp, written } = await streamingGuest(t, ready, 600);
  let readies = 0;
  client.onReady(() => readies++);
  const started = Date.now();
  const outcome = await Promise.race([hungUp.then(() => "disconnected"), new Promise((r) => setTimeout(() => r("still connected"), 5000).unref())]);
  assert.equal(outcome, "disconnected", `after ${written()} lines`);
  assert.equal(client.isOpen, false);
  assert.ok(Date.now() - started < 5000);
  assert.ok(written() < 600, `the guest could write only part of its flood (${written()} lines)`);
  assert.equal(readies, 0, "a ready event with a field the protocol does not define is not a ready event");
  assert.ok(client.problems.some((p) => /guest sent more than \d+ (lines|bytes) in a second/.test(p)), client.problems.join("; "));
});

test("small valid ready lines count too: more than the per-second limit disconnects", async (t) => {
  const ready = JSON.stringify({ event: "ready", agent: "vigil-agent", protocol: 1 }) + "\n";
  const { client, hungUp } = await streamingGuest(t, ready, 5000);
  let readies = 0;
  client.onReady(() => readies++);
  await Promise.race([hungUp, new Promise((r) => setTimeout(r, 5000).unref())]);
  assert.equal(client.isOpen, false);
  assert.ok(readies > 0 && readies <= 200, `ready events delivered before the cut: ${readies}`);
});

test("strict guest messages: an answer or result with an extra field is refused", async (t) => {
  const { client } = await fakeGuest(t, (req, sock) => {
    if (req.cmd === "ping") send(sock, { id: req.id, ok: true, result: { pong: true }, extra: 1 });
    else send(sock, { id: req.id, ok: true, result: { frozen: false, mounted: true, also: "x" } });
  });
  await assert.rejects(client.ping(300), /did not answer "ping" within 300 ms/);
  assert.ok(client.problems.some((p) => /unknown shape/.test(p)));
  await assert.rejects(client.fsfreeze("thaw"), /answer to "fsfreeze" is malformed/);
});

test("waitUntilAnswering keeps at most one ping outstanding however many ready events arrive", async (t) => {
  let pings = 0;
  let answer = false;
  const { client, socks } = await fakeGuest(t, (req, sock) => {
    pings++;
    if (answer) send(sock, { id: req.id, ok: true, result: { pong: true } });
  });
  const waiting = client.waitUntilAnswering(10_000, 60_000);
  let maxPending = 0;
  for (let i = 0; i < 100; i++) {
    send(socks[0]!, { event: "ready", agent: "vigil-agent", protocol: 1 });
    await new Promise((r) => setTimeout(r, 2));
    maxPending = Math.max(maxPending, client.pendingCount);
  }
  assert.equal(maxPending, 1, "one ping outstanding at a time");
  assert.ok(pings > 1, "ready events still trigger a fresh ping");
  answer = true;
  send(socks[0]!, { event: "ready", agent: "vigil-agent", protocol: 1 });
  await waiting;
  assert.equal(client.pendingCount, 0);
  assert.equal(client.isOpen, true, "100 ready lines over ~0.2 s are under the limit");
});
