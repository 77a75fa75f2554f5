import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { call } from "./client.ts";

// The daemon, on its own thread: it closes the idle socket while this thread is blocked. Raw HTTP, so that no
// keep-alive hint lets the client's pool drop the socket first.
const DAEMON = `
const { createServer } = require("node:net");
const { workerData, parentPort } = require("node:worker_threads");
let served = 0;
const server = createServer((sock) => {
  let buf = "";
  sock.on("data", (d) => {
    buf += d.toString();
    const end = buf.indexOf("\\r\\n\\r\\n");
    if (end < 0) return;
    const len = Number(/content-length: *(\\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
    if (buf.length < end + 4 + len) return;
    buf = "";
    const body = JSON.stringify({ n: ++served });
    sock.write("HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\nconnection: keep-alive\\r\\ncontent-length: " + body.length + "\\r\\n\\r\\n" + body);
    setTimeout(() => sock.destroy(), 100);
  });
  sock.on("error", () => {});
});
server.listen(workerData, () => parentPort.postMessage("listening"));
`;

test("a request on a pooled socket the daemon closed while this process was blocked is sent again, once, on a fresh one", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-client-"));
  const socketPath = join(dir, "d.sock");
  const daemon = new Worker(DAEMON, { eval: true, workerData: socketPath });
  await new Promise((r) => daemon.once("message", r));
  t.after(async () => {
    await daemon.terminate();
    rmSync(dir, { recursive: true, force: true });
  });
  assert.deepEqual(await call("GET", "/a", undefined, { socketPath }), { n: 1 });
  // Blocked (as by a spawnSync of the CLI) past the daemon's keep-alive timeout: the pool's own timer to drop the
  // socket has not run, the daemon has closed it, and the next request goes out on it.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 400);
  assert.deepEqual(await call("POST", "/b", { x: 1 }, { socketPath }), { n: 2 }, "answered once, not an EPIPE");
});
