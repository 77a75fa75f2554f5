/**
 * The console forwarding of the manager (daemon/stream-forward.ts) against a fake agent peer: an mTLS server of
 * the vigil CA that upgrades `/v1/vms/NAME/console`. Bytes go both ways for the user the manager authenticated,
 * refusals come back as the API's errors, either end closing closes the other, and a client that does not read
 * stalls the agent (back-pressure) instead of filling the manager's memory.
 */
import { strict as assert } from "node:assert";
import { createServer, request, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Duplex } from "node:stream";
import { after, before, test } from "node:test";
import type { Actor } from "../auth/permissions.ts";
import { AgentClient } from "../cluster/agent-client.ts";
import { forwardConsoleUpgrade, type ConsoleForwardDeps } from "./stream-forward.ts";
import { makePki, mtlsServer, type Pki, type TestServer } from "../cluster/testing/pki.ts";

let pki: Pki;
let agent: TestServer;
/** What the fake agent does with each upgraded console (set per test). */
let onConsole: (socket: Duplex, req: IncomingMessage) => void;
const upgrades: IncomingMessage[] = [];

const alice: Actor = { userId: "u1", name: "alice", roles: ["owner"], groups: ["dev"], introspect: false, via: "token" };

before(async () => {
  pki = await makePki();
  agent = await mtlsServer(pki.agentA, (_req, res) => {
    res.statusCode = 404;
    res.end();
  });
  agent.server.on("upgrade", (req: IncomingMessage, socket: Socket) => {
    upgrades.push(req);
    if (req.url === "/v1/vms/refused/console") {
      const body = JSON.stringify({ error: { code: "VIGIL_FORBIDDEN", message: "Permission denied: user alice may not vm.console on vm refused" } });
      socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    socket.write("HTTP/1.1 101 Switching Protocols\r\nupgrade: vigil-console\r\nconnection: Upgrade\r\n\r\n");
    onConsole(socket, req);
  });
});
after(async () => {
  await agent.close();
  pki.close();
});

/** A manager-like HTTP server on 127.0.0.1 whose upgrades go through forwardConsoleUpgrade to the fake agent. */
async function manager(): Promise<{ server: Server; port: number; client: AgentClient; close(): Promise<void> }> {
  const client = new AgentClient({ address: agent.address, agentName: "a", bundle: pki.manager });
  const deps: ConsoleForwardDeps = {
    authenticate: async (req) => (req.headers.authorization === "Bearer good" ? alice : undefined),
    holder: async (vm) => {
      if (vm === "nowhere") throw new (await import("../errors.ts")).VigilError("VIGIL_VM_NOT_FOUND", `VM "${vm}" does not exist in this cluster`);
      return "a";
    },
    open: (_host, path, actor) => client.upgrade(path, "vigil-console", { actor, epoch: 7 }),
  };
  const server = createServer((_req, res) => res.end());
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => void forwardConsoleUpgrade(deps, req, socket, head));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    client,
    close: async () => {
      client.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Opens the console upgrade on the manager: the raw socket, or the refusal's status and body. */
function openConsole(port: number, vm: string, token = "good"): Promise<{ socket: Socket } | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: `/v1/vms/${vm}/console`, headers: { connection: "Upgrade", upgrade: "vigil-console", authorization: `Bearer ${token}` } });
    req.on("upgrade", (_res, socket, head) => {
      if (head.length > 0) socket.unshift(head);
      resolve({ socket });
    });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const closed = (s: Duplex) => new Promise<void>((r) => (s.destroyed ? r() : s.once("close", () => r())));

test("bytes go both ways through the manager, for the user it authenticated, over the manager's mTLS", async () => {
  const m = await manager();
  try {
    onConsole = (socket) => socket.on("data", (d: Buffer) => socket.write(d.toString().toUpperCase()));
    const before = upgrades.length;
    const r = await openConsole(m.port, "web");
    assert.ok("socket" in r, JSON.stringify(r));
    r.socket.write("echo hello\n");
    const got = await new Promise<string>((resolve) => {
      let s = "";
      r.socket.on("data", (d: Buffer) => {
        s += d.toString();
        if (s.includes("\n")) resolve(s);
      });
    });
    assert.equal(got, "ECHO HELLO\n");
    const seen = upgrades[before]!;
    assert.equal(seen.url, "/v1/vms/web/console");
    assert.deepEqual(JSON.parse(String(seen.headers["x-vigil-actor"])), { name: "alice", roles: ["owner"], groups: ["dev"], introspect: false });
    assert.equal(seen.headers["x-vigil-epoch"], "7");
    assert.equal(seen.headers.authorization, undefined, "the user's token never goes to the agent");
    r.socket.destroy();
  } finally {
    await m.close();
  }
});

test("refusals: no token (the agent is never asked), a VM nobody holds, and the agent's own 403 come back as API errors", async () => {
  const m = await manager();
  try {
    const before = upgrades.length;
    const anon = await openConsole(m.port, "web", "bad");
    assert.ok("status" in anon);
    assert.equal(anon.status, 401);
    assert.equal(JSON.parse(anon.body).error.code, "VIGIL_UNAUTHENTICATED");
    const missing = await openConsole(m.port, "nowhere");
    assert.ok("status" in missing);
    assert.equal(missing.status, 404);
    assert.equal(upgrades.length, before, "nothing reached the agent");
    const refused = await openConsole(m.port, "refused");
    assert.ok("status" in refused);
    assert.equal(refused.status, 403);
    assert.match(JSON.parse(refused.body).error.message, /may not vm\.console/);
  } finally {
    await m.close();
  }
});

test("either end closing closes the other", async () => {
  const m = await manager();
  try {
    let agentSide: Duplex | undefined;
    onConsole = (socket) => (agentSide = socket);
    // The user leaves: the agent's side of the console is closed.
    const r1 = await openConsole(m.port, "web");
    assert.ok("socket" in r1);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(agentSide);
    r1.socket.destroy();
    await closed(agentSide);
    // The agent goes (the VM stopped, the agent died): the user's side is closed.
    agentSide = undefined;
    const r2 = await openConsole(m.port, "web");
    assert.ok("socket" in r2);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(agentSide);
    (agentSide as Duplex).destroy();
    await closed(r2.socket);
  } finally {
    await m.close();
  }
});

test("back-pressure: a client that does not read stalls the agent's writes; the bytes all arrive once it reads", { timeout: 60_000 }, async () => {
  const m = await manager();
  const total = 64 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let flushed = 0;
  let finished!: () => void;
  const allFlushed = new Promise<void>((r) => (finished = r));
  let socket: Socket | undefined;
  try {
    onConsole = (socket) => {
      // Writes as fast as the manager takes them, and counts what it took (each write's callback).
      let queued = 0;
      const pump = () => {
        while (queued < total) {
          queued += chunk.length;
          const ok = socket.write(chunk, () => {
            flushed += chunk.length;
            if (flushed >= total) finished();
          });
          if (!ok) return void socket.once("drain", pump);
        }
      };
      pump();
    };
    const r = await openConsole(m.port, "web");
    assert.ok("socket" in r);
    socket = r.socket;
    r.socket.pause();
    await new Promise((res) => setTimeout(res, 1500));
    const stalled = flushed;
    await new Promise((res) => setTimeout(res, 500));
    assert.ok(flushed < total / 2, `the agent was held back while nobody read (${flushed} of ${total} bytes taken)`);
    assert.ok(flushed - stalled < 4 * 1024 * 1024, `and stays held (${stalled} → ${flushed})`);
    let received = 0;
    r.socket.on("data", (d: Buffer) => (received += d.length));
    r.socket.resume();
    await allFlushed;
    while (received < total) await new Promise((res) => setTimeout(res, 20));
    assert.equal(received, total);
  } finally {
    socket?.destroy();
    await m.close();
  }
});
