/**
 * The browser's console socket over a real TCP listener, bridged to a fake serial port (a unix socket that greets
 * and echoes, standing in for QEMU's): Origin first (missing or foreign is 403 before any upgrade), then the cookie
 * or a bearer token, then vm.console; bytes both ways, either end closing closes the other, 64 KiB messages at most,
 * the open audited as vm.console — and the CLI's raw vigil-console upgrade unchanged beside it.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import { webFixture, type WebFixture } from "../api/testing/web-fixture.ts";

interface Serial {
  path: string;
  /** Connections the fake guest saw, and whether each is closed. */
  conns: Array<{ socket: Socket; closed: Promise<void> }>;
}

async function fakeSerial(t: TestContext): Promise<Serial> {
  const dir = mkdtempSync(join(tmpdir(), "vigil-serial-"));
  const path = join(dir, "serial.sock");
  const conns: Serial["conns"] = [];
  const server = createServer((socket) => {
    const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
    conns.push({ socket, closed });
    socket.on("error", () => socket.destroy());
    socket.write("login: ");
    socket.on("data", (d) => socket.write(d));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(async () => {
    for (const c of conns) c.socket.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, conns };
}

async function setup(t: TestContext): Promise<{ f: WebFixture; serial: Serial; base: string; host: string }> {
  const f = await webFixture(t, { listen: "127.0.0.1:0" });
  const serial = await fakeSerial(t);
  const id = await f.addVm("con", "user:bob", "running");
  f.daemon.deps.vms.setConsoleRelay(id, serial.path);
  const host = `127.0.0.1:${f.daemon.tcpAddress!.port}`;
  return { f, serial, base: `ws://${host}/v1/vms/con/console/ws`, host };
}

type Opened = { ws: WebSocket; first: Buffer } | { status: number; body: string };

function open(url: string, headers: Record<string, string>): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.once("message", (data: Buffer) => resolve({ ws, first: data }));
    ws.once("error", (err) => {
      if (!String(err.message).includes("Unexpected server response")) reject(err);
    });
  });
}

const nextMessage = (ws: WebSocket): Promise<{ data: Buffer; binary: boolean }> => new Promise((resolve) => ws.once("message", (data: Buffer, binary: boolean) => resolve({ data, binary })));
const closed = (ws: WebSocket): Promise<number> => new Promise((resolve) => (ws.readyState === ws.CLOSED ? resolve(-1) : ws.once("close", (code: number) => resolve(code))));

test("a missing or foreign Origin is refused 403 before the upgrade; no credential 401; a VM one may not read 404", async (t) => {
  const { f, serial, base, host } = await setup(t);
  const cookie = `vigil_session=${f.tokens.bob}`;
  for (const origin of [undefined, "http://evil.example", `https://${host}`, `http://${host}.evil.example`, "null"]) {
    const r = await open(base, { cookie, ...(origin !== undefined ? { origin } : {}) });
    assert.ok("status" in r, `origin ${origin} was let in`);
    assert.equal(r.status, 403, `origin ${origin}`);
    assert.match(JSON.parse(r.body).error.message, /Origin .* is not this server's/);
  }
  const anon = await open(base, { origin: `http://${host}` });
  assert.ok("status" in anon && anon.status === 401);
  const forged = await open(base, { origin: `http://${host}`, cookie: "vigil_session=vgl_forged" });
  assert.ok("status" in forged && forged.status === 401);
  const carol = await open(base, { origin: `http://${host}`, cookie: `vigil_session=${f.tokens.carol}` });
  assert.ok("status" in carol && carol.status === 404);
  const auditor = await open(base, { origin: `http://${host}`, authorization: `Bearer ${f.tokens.auditor}` });
  assert.ok("status" in auditor && auditor.status === 403, "an auditor reads the VM but has no vm.console");
  assert.equal(serial.conns.length, 0, "nothing reached the serial port");
});

test("the bridge: guest bytes arrive as binary messages, text and binary messages reach the guest, either end closing closes the other", async (t) => {
  const { f, serial, base, host } = await setup(t);
  const r = await open(base, { origin: `http://${host}`, cookie: `theme=dark; vigil_session=${f.tokens.bob}` });
  assert.ok("ws" in r, JSON.stringify(r));
  const { ws } = r;
  assert.equal(r.first.toString(), "login: ");
  const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
  assert.deepEqual([last?.action, last?.actor, last?.result, last?.target.name], ["vm.console", "bob", "ok", "con"]);

  ws.send("root\n");
  const echoed = await nextMessage(ws);
  assert.equal(echoed.data.toString(), "root\n");
  assert.equal(echoed.binary, true);
  ws.send(Buffer.from([0x03, 0xff, 0x00]));
  assert.deepEqual([...(await nextMessage(ws)).data], [0x03, 0xff, 0x00]);
  ws.send("ünïcode");
  assert.equal((await nextMessage(ws)).data.toString("utf8"), "ünïcode");

  ws.close();
  await serial.conns[0]!.closed; // the browser left: the serial connection is closed

  // The guest side going away closes the socket.
  const again = await open(base, { origin: `http://${host}`, authorization: `Bearer ${f.tokens.bob}` });
  assert.ok("ws" in again);
  serial.conns[1]!.socket.destroy();
  assert.equal(await closed(again.ws), 1000);
});

test("a message over 64 KiB closes the socket (1009) and the serial connection with it", async (t) => {
  const { f, serial, base, host } = await setup(t);
  const r = await open(base, { origin: `http://${host}`, cookie: `vigil_session=${f.tokens.bob}` });
  assert.ok("ws" in r);
  const code = closed(r.ws);
  r.ws.send(Buffer.alloc(64 * 1024 + 1, 0x61));
  assert.equal(await code, 1009);
  await serial.conns[0]!.closed;
});

test("the CLI's raw vigil-console upgrade works as before beside the WebSocket", async (t) => {
  const { f, host } = await setup(t);
  const [h, p] = host.split(":") as [string, string];
  const socket = connect(Number(p), h);
  let got = "";
  const saw = (s: string) => new Promise<void>((resolve) => {
    const check = () => (got.includes(s) ? resolve() : undefined);
    socket.on("data", (d: Buffer) => {
      got += d.toString();
      check();
    });
    check();
  });
  socket.write(`GET /v1/vms/con/console HTTP/1.1\r\nHost: ${host}\r\nUpgrade: vigil-console\r\nConnection: Upgrade\r\nAuthorization: Bearer ${f.tokens.bob}\r\n\r\n`);
  await saw("login: ");
  assert.match(got, /^HTTP\/1\.1 101 /);
  socket.write("echo-me");
  await saw("echo-me");
  socket.destroy();
});

test("the daemon's shutdown ends an open console socket instead of waiting for the browser", async (t) => {
  const { f, serial, base, host } = await setup(t);
  const r = await open(base, { origin: `http://${host}`, cookie: `vigil_session=${f.tokens.bob}` });
  assert.ok("ws" in r);
  const code = closed(r.ws);
  await f.daemon.close();
  assert.equal(await code, 1006);
  await serial.conns[0]!.closed;
});
