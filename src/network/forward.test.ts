import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { VigilError } from "../errors.ts";
import { ForwardManager, parseListen } from "./forward.ts";
import { VisFixture, echoServer } from "./vis-fixture.ts";

test("parseListen accepts only host loopback and names the field", () => {
  assert.deepEqual(parseListen("127.0.0.1:8080"), { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(parseListen("127.9.8.7:1"), { host: "127.9.8.7", port: 1 });
  for (const [v, why] of [
    ["0.0.0.0:80", /not on host loopback/],
    ["10.0.0.1:80", /not on host loopback/],
    ["192.168.1.1:22", /not on host loopback/],
    ["127.0.0.1:0", /not 1-65535/],
    ["127.0.0.1:70000", /not 1-65535/],
    ["localhost:80", /not IPV4:PORT/],
    ["[::1]:80", /not IPV4:PORT/],
    ["127.0.0.300:80", /not IPV4:PORT/],
  ] as const) assert.throws(() => parseListen(v), (e: VigilError) => e.field === "listen" && why.test(e.message), v);
});

async function freePort(host: string): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, host, () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function exchange(host: string, port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = connect(port, host);
    let got = "";
    const timer = setTimeout(() => (c.destroy(), resolve(got)), 3000);
    c.on("data", (d) => {
      got += d.toString();
      if (got.length >= text.length) {
        clearTimeout(timer);
        c.end();
        resolve(got);
      }
    });
    c.on("error", (e) => (clearTimeout(timer), reject(e)));
    c.write(text);
  });
}

test("a forward on 127.x relays connections to the guest's port through the relay inside the netns", async (t) => {
  const f = await VisFixture.create(1);
  t.after(() => f.close());
  const vm = f.vm("vm0");
  const server = await echoServer(vm, 5006);
  t.after(() => server.kill("SIGKILL"));
  const run = mkdtempSync(join(tmpdir(), "vt-fwd-"));
  t.after(() => rmSync(run, { recursive: true, force: true }));
  const m = new ForwardManager(() => f.netns(), run);
  t.after(() => m.closeAll());
  const host = "127.0.0.1";
  const port = await freePort(host);
  const spec = { id: "f1", vmId: vm.nic.vmId, vmName: "vm0", guestIp: vm.nic.ip, guestPort: 5006, listenHost: host, listenPort: port };
  await m.open(spec);
  assert.deepEqual(m.list(), [spec]);
  // Two connections at once, each gets its own echo.
  const [e1, e2] = await Promise.all([exchange(host, port, "hello-one\n"), exchange(host, port, "x".repeat(100_000))]);
  assert.equal(e1, "hello-one\n");
  assert.equal(e2.length, 100_000);

  await assert.rejects(m.open(spec), /already open/);
  // A port in use is refused and leaves nothing behind (no relay socket file).
  await assert.rejects(m.open({ ...spec, id: "f2" }), (e: VigilError) => e.code === "VIGIL_CONFLICT" && e.field === "listen");
  assert.equal(existsSync(join(run, "fwd-f2.sock")), false);
  await assert.rejects(m.open({ ...spec, id: "f3", listenHost: "0.0.0.0" }), (e: VigilError) => e.field === "listen");
  await assert.rejects(m.open({ ...spec, id: "f4", guestPort: 0 }), (e: VigilError) => e.field === "guestPort");

  const pid = m.relayPid("f1")!;
  await m.close("f1");
  assert.deepEqual(m.list(), []);
  await assert.rejects(exchange(host, port, "gone\n"), /ECONNREFUSED/);
  assert.equal(existsSync(join(run, "fwd-f1.sock")), false);
  await new Promise((r) => setTimeout(r, 300));
  assert.throws(() => process.kill(pid, 0), /ESRCH/, "the relay process is gone");
});
