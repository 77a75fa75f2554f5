/**
 * The web console's server side with a real QEMU: a browser's login over TCP, the serial console as a WebSocket
 * (type into the guest's shell, see it answer), and the VM's metrics from its live QEMU (/proc and query-blockstats).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { userInfo } from "node:os";
import { WebSocket } from "ws";
import { requireTinyImage, startDaemon, waitFor } from "../harness.ts";

test("log in over TCP, type into the console WebSocket and see the guest answer; the VM's metrics are its live QEMU's", { timeout: 180_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t, { listen: "127.0.0.1:0" });
  await waitFor(() => d.httpAddress() !== undefined, 10_000, "the TCP listener");
  const host = d.httpAddress()!;
  const { token } = await d.api<{ token: string }>("POST", `/v1/users/${userInfo().username}/tokens`, { name: "browser" });
  await d.api("POST", "/v1/vms", { name: "webcon", memoryMiB: 128 });
  await d.api("POST", "/v1/vms/webcon/start", { wait: true });

  const login = await fetch(`http://${host}/v1/session`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) });
  assert.equal(login.status, 200);
  const cookie = (login.headers.get("set-cookie") ?? "").split(";")[0]!;
  assert.equal(cookie, `vigil_session=${token}`);

  const ws = new WebSocket(`ws://${host}/v1/vms/webcon/console/ws`, { headers: { origin: `http://${host}`, cookie } });
  t.after(() => ws.terminate());
  let seen = "";
  ws.on("message", (data: Buffer, binary: boolean) => {
    assert.equal(binary, true);
    seen += data.toString();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  const marker = `web-${process.pid}`;
  await waitFor(() => {
    ws.send(`echo ${marker}-$((6*7))\n`);
    return seen.includes(`${marker}-42`);
  }, 30_000, "the guest to answer on the console WebSocket");

  const m = (await (await fetch(`http://${host}/v1/vms/webcon/metrics`, { headers: { cookie } })).json()) as Record<string, number | boolean | null>;
  assert.equal(m.running, true);
  assert.ok(typeof m.cpuSeconds === "number" && m.cpuSeconds > 0, JSON.stringify(m));
  assert.ok(typeof m.rssBytes === "number" && m.rssBytes > 16 * 1024 * 1024, JSON.stringify(m));
  assert.equal(m.memoryBytes, 128 * 1024 * 1024);
  assert.equal(typeof m.diskReadBytes, "number", `query-blockstats answered: ${JSON.stringify(m)}`);
  assert.equal(typeof m.diskWrittenBytes, "number");
  const text = await (await fetch(`http://${host}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
  assert.match(text, /^vigil_vm_running\{vm="webcon",host="[^"]+"\} 1$/m);
  assert.match(text, /^vigil_vm_cpu_seconds_total\{vm="webcon",host="[^"]+"\} [0-9.]+$/m);
  assert.match(text, /^vigil_host_vms\{host="[^"]+",state="running"\} 1$/m);
});
