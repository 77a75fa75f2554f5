import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QmpClient } from "./qmp-client.ts";
import { VigilError } from "../errors.ts";

/** A scripted QMP peer: greets, acknowledges capabilities, then answers with `respond`. */
async function fakeQemu(t: import("node:test").TestContext, respond: (msg: Record<string, unknown>, sock: Socket) => void) {
  const dir = mkdtempSync(join(tmpdir(), "qmp-test-"));
  const path = join(dir, "qmp.sock");
  const sockets: Socket[] = [];
  const server: Server = createServer((sock) => {
    sockets.push(sock);
    sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 } }, capabilities: [] } }) + "\r\n");
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if (msg.execute === "qmp_capabilities") sock.write(JSON.stringify({ return: {}, id: msg.id }) + "\r\n");
        else respond(msg, sock);
      }
    });
    sock.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(path, r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, sockets };
}

test("negotiates, correlates replies by id even out of order", async (t) => {
  const held: Array<() => void> = [];
  const { path } = await fakeQemu(t, (msg, sock) => {
    const reply = () => sock.write(JSON.stringify({ return: { echo: msg.execute }, id: msg.id }) + "\n");
    if (msg.execute === "slow") held.push(reply);
    else {
      reply();
      held.splice(0).forEach((f) => f());
    }
  });
  const qmp = await QmpClient.connect(path);
  t.after(() => qmp.close());
  const slow = qmp.execute<{ echo: string }>("slow");
  const fast = qmp.execute<{ echo: string }>("query-status");
  assert.deepEqual(await fast, { echo: "query-status" });
  assert.deepEqual(await slow, { echo: "slow" });
});

test("a QMP error becomes a VigilError naming the command", async (t) => {
  const { path } = await fakeQemu(t, (msg, sock) =>
    sock.write(JSON.stringify({ error: { class: "GenericError", desc: "no such thing" }, id: msg.id }) + "\n"),
  );
  const qmp = await QmpClient.connect(path);
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute("bogus"), (err: unknown) => {
    assert.ok(err instanceof VigilError);
    assert.equal(err.code, "VIGIL_QEMU");
    assert.match(err.message, /QEMU refused "bogus": no such thing/);
    return true;
  });
});

test("commands time out and late replies are ignored", async (t) => {
  const late: Array<() => void> = [];
  const { path } = await fakeQemu(t, (msg, sock) => late.push(() => sock.write(JSON.stringify({ return: {}, id: msg.id }) + "\n")));
  const qmp = await QmpClient.connect(path);
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute("stop", undefined, { timeoutMs: 50 }), /got no reply within 50 ms/);
  late.forEach((f) => f());
  assert.equal(qmp.isOpen, true);
});

test("events reach subscribers, waitEvent and the async stream", async (t) => {
  const { path, sockets } = await fakeQemu(t, () => {});
  const qmp = await QmpClient.connect(path);
  t.after(() => qmp.close());
  const seen: string[] = [];
  qmp.onEvent((e) => seen.push(e.event));
  const waited = qmp.waitEvent("STOP", { timeoutMs: 1000 });
  const stream = qmp.events();
  const first = stream.next();
  sockets[0]!.write(JSON.stringify({ event: "STOP", data: {}, timestamp: { seconds: 1, microseconds: 2 } }) + "\n");
  assert.equal((await waited).event, "STOP");
  assert.equal((await first).value?.event, "STOP");
  await stream.return(undefined);
  assert.deepEqual(seen, ["STOP"]);
});

test("pending commands fail clearly when QEMU dies", async (t) => {
  const { path, sockets } = await fakeQemu(t, () => {});
  const qmp = await QmpClient.connect(path);
  const pending = qmp.execute("query-status");
  sockets[0]!.destroy();
  await assert.rejects(pending, /QEMU closed the QMP connection/);
  assert.equal(qmp.isOpen, false);
  await assert.rejects(qmp.execute("cont"), /Cannot run QMP command "cont"/);
  await assert.rejects(qmp.waitEvent("STOP", { timeoutMs: 1000 }), /QEMU closed/);
});

test("an over-long line closes the connection instead of buffering forever", async (t) => {
  const { path, sockets } = await fakeQemu(t, () => {});
  const qmp = await QmpClient.connect(path);
  const pending = qmp.execute("query-status");
  const chunk = Buffer.alloc(1024 * 1024, 0x61);
  for (let i = 0; i < 17 && !sockets[0]!.destroyed; i++) sockets[0]!.write(chunk);
  await assert.rejects(pending, /over \d+ bytes/);
});

test("garbage instead of a greeting fails the connect with a clear error", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "qmp-test-"));
  const path = join(dir, "qmp.sock");
  const server = createServer((sock) => sock.end("hello, I am not QEMU\n"));
  await new Promise<void>((r) => server.listen(path, r));
  t.after(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await assert.rejects(QmpClient.connect(path, { timeoutMs: 500 }), /not JSON|closed/);
});
