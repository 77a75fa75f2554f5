import { strict as assert } from "node:assert";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { tcpToUnix, unixToTcp } from "./relay.ts";

const dir = mkdtempSync(join(tmpdir(), "vigil-relay-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function echoServer(path: string): Promise<Server> {
  const s = createServer((c) => c.pipe(c));
  return new Promise((r) => s.listen(path, () => r(s)));
}

function roundTrip(path: string, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const c = connect(path);
    c.on("connect", () => c.write(payload));
    c.on("data", (b: Buffer) => {
      chunks.push(b);
      got += b.length;
      if (got >= payload.length) {
        c.end();
        resolve(Buffer.concat(chunks));
      }
    });
    c.on("error", reject);
  });
}

test("source unix socket → target TCP port → target unix socket carries the bytes both ways, and counts them", async () => {
  const echo = await echoServer(join(dir, "qemu-in.sock"));
  const target = await tcpToUnix("127.0.0.1", join(dir, "qemu-in.sock"), "127.0.0.1");
  const source = await unixToTcp(join(dir, "qemu-out.sock"), undefined, "127.0.0.1", target.port);
  assert.equal(statSync(join(dir, "qemu-out.sock")).mode & 0o777, 0o600, "only the VM's uid may connect");
  const payload = Buffer.alloc(3 * 1024 * 1024, 7);
  const back = await roundTrip(join(dir, "qemu-out.sock"), payload);
  assert.equal(Buffer.compare(back, payload), 0);
  assert.equal(source.bytes(), payload.length);
  await source.close();
  await target.close();
  assert.throws(() => statSync(join(dir, "qemu-out.sock")), "the source socket is removed with its relay");
  echo.close();
});

test("the target relay refuses a peer other than the source agent", async () => {
  const echo = await echoServer(join(dir, "qemu-in2.sock"));
  const target = await tcpToUnix("127.0.0.1", join(dir, "qemu-in2.sock"), "127.0.0.2");
  const closed = await new Promise<string>((resolve) => {
    const c = connect(target.port, "127.0.0.1");
    c.on("data", () => resolve("data"));
    c.on("close", () => resolve("closed"));
    c.on("connect", () => c.write("hello"));
  });
  assert.equal(closed, "closed");
  await target.close();
  echo.close();
});

test("closing a relay ends the connections it carries", async () => {
  const echo = await echoServer(join(dir, "qemu-in3.sock"));
  const target = await tcpToUnix("127.0.0.1", join(dir, "qemu-in3.sock"));
  const source = await unixToTcp(join(dir, "qemu-out3.sock"), undefined, "127.0.0.1", target.port);
  const ended = new Promise<void>((resolve) => {
    const c = connect(join(dir, "qemu-out3.sock"));
    c.on("connect", () => {
      c.write("x");
      c.once("data", () => void source.close());
    });
    c.on("close", () => resolve());
  });
  await ended;
  await target.close();
  echo.close();
});

test("a bad target port is refused before anything listens", async () => {
  await assert.rejects(unixToTcp(join(dir, "never.sock"), undefined, "127.0.0.1", 70000), /Invalid migration port/);
  assert.throws(() => statSync(join(dir, "never.sock")));
});
