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
