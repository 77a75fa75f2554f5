import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer as createNetServer, isIP, type AddressInfo } from "node:net";
import fc from "fast-check";
import { Readable } from "node:stream";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import { VigilError } from "../errors.ts";
import { AgentClient, parseAddress } from "./agent-client.ts";
import { fingerprintOf, issueCertificate } from "./ca.ts";
import { peerIdentity, requirePeerRole } from "./mtls.ts";
import { makePki, mtlsServer, type Pki, type TestServer } from "./testing/pki.ts";
import { ACTOR_HEADER, EPOCH_HEADER, type CertBundle, type DelegatedActor } from "./types.ts";

let pki: Pki;
const servers: TestServer[] = [];
const clients: AgentClient[] = [];

before(async () => {
  pki = await makePki();
});
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
  pki?.close();
});

async function serve(bundle: CertBundle, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TestServer> {
  const s = await mtlsServer(bundle, handler);
  servers.push(s);
  return s;
}

function client(address: string, agentName = "a", extra: { timeoutMs?: number; maxBodyBytes?: number } = {}): AgentClient {
  const c = new AgentClient({ address, agentName, bundle: pki.manager, ...extra });
  clients.push(c);
  return c;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

const hostError = (pattern: RegExp) => (err: unknown) => err instanceof VigilError && err.code === "VIGIL_HOST" && pattern.test(err.message);

test("a request carries the manager's certificate, the actor and the epoch, and gets the agent's JSON", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      const peer = requirePeerRole(peerIdentity(req.socket as TLSSocket), "manager");
      json(res, 200, { peer: peer.name, method: req.method, url: req.url, actor: JSON.parse(String(req.headers[ACTOR_HEADER])), epoch: req.headers[EPOCH_HEADER], body: JSON.parse(body) });
    });
  });
  const actor: DelegatedActor = { name: "alice", roles: ["operator"], groups: ["web"], introspect: false };
  const got = await client(s.address).request<Record<string, unknown>>("POST", "/v1/vms/web1/start", { body: { wait: true }, actor, epoch: 7 });
  assert.deepEqual(got, { peer: "manager", method: "POST", url: "/v1/vms/web1/start", actor, epoch: "7", body: { wait: true } });
});

test("a server with another agent's valid certificate is refused: nothing is sent to it", async () => {
  const s = await serve(pki.agentB, (_req, res) => json(res, 200, { ok: true }));
  await assert.rejects(client(s.address, "a").request("GET", "/v1/host"), hostError(/Cannot trust agent a at .*: its certificate is OU=agent, CN=b, not OU=agent, CN=a/));
  assert.equal(s.requests, 0);
  // The same server is fine for the client that expects b.
  assert.deepEqual(await client(s.address, "b").request("GET", "/v1/host"), { ok: true });
});

test("with the host's recorded fingerprint, only that certificate answers: one issued again under its name is refused", async () => {
  const s = await serve(pki.agentA, (_req, res) => json(res, 200, { ok: true }));
  const other = await issueCertificate(pki.ca, { role: "agent", name: "a", ips: ["127.0.0.1"] });
  const pinned = (fp: string) => {
    const c = new AgentClient({ address: s.address, agentName: "a", bundle: pki.manager, certFingerprint: fp });
    clients.push(c);
    return c;
  };
  assert.deepEqual(await pinned(fingerprintOf(pki.agentA.certPem)).request("GET", "/"), { ok: true });
  await assert.rejects(pinned(fingerprintOf(other.certPem)).request("GET", "/"), hostError(/Cannot trust agent a .*is not the one issued to it/));
});

test("a server whose certificate says agent a but comes from a foreign CA is refused", async () => {
  const s = await serve(pki.foreignAgentA, (_req, res) => json(res, 200, { ok: true }));
  await assert.rejects(client(s.address, "a").request("GET", "/v1/host"), hostError(/Cannot trust agent a .*does not verify against the vigil CA/));
  assert.equal(s.requests, 0);
});

test("a server with a manager's (client-only) certificate is refused", async () => {
  const s = await serve({ ...pki.manager }, (_req, res) => json(res, 200, { ok: true }));
  await assert.rejects(client(s.address, "manager").request("GET", "/v1/host"), hostError(/Cannot trust agent manager/));
  assert.equal(s.requests, 0);
});

test("an agent's error body becomes the same VigilError; anything else is VIGIL_HOST naming the agent", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    if (req.url === "/catalogue") json(res, 409, { error: { code: "VIGIL_INVALID_STATE", message: 'Cannot start VM "web1": it is running', field: "state" } });
    else if (req.url === "/unknown-code") json(res, 500, { error: { code: "NOT_OURS", message: "x" } });
    else res.writeHead(502).end("<html>bad gateway</html>");
  });
  const c = client(s.address);
  await assert.rejects(c.request("POST", "/catalogue"), (err: unknown) => {
    assert.ok(err instanceof VigilError);
    assert.equal(err.code, "VIGIL_INVALID_STATE");
    assert.equal(err.status, 409);
    assert.equal(err.message, 'Cannot start VM "web1": it is running');
    assert.equal(err.field, "state");
    return true;
  });
  await assert.rejects(c.request("GET", "/unknown-code"), hostError(/Agent "a" at .* answered 500/));
  await assert.rejects(c.request("GET", "/html"), hostError(/answered 502: <html>bad gateway<\/html>/));
});

test("an agent that does not answer in time, or not at all, is VIGIL_HOST 'not answering'", async () => {
  const s = await serve(pki.agentA, () => undefined); // accepts, never answers
  const started = Date.now();
  await assert.rejects(client(s.address, "a", { timeoutMs: 300 }).request("GET", "/v1/host"), hostError(/^agent a at 127\.0\.0\.1:\d+ is not answering: no answer within 300 ms$/));
  assert.ok(Date.now() - started < 5000);
  // A port nobody listens on: bind one, note it, close it.
  const probe = createNetServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  await assert.rejects(client(`127.0.0.1:${port}`).request("GET", "/v1/host"), hostError(/is not answering: ECONNREFUSED/));
});

test("the caller's AbortSignal cancels a request", async () => {
  const s = await serve(pki.agentA, () => undefined);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(client(s.address).request("GET", "/slow", { signal: ac.signal }), (err: unknown) => (err as Error).name === "AbortError");
  await assert.rejects(client(s.address).request("GET", "/slow", { signal: AbortSignal.abort() }), (err: unknown) => (err as Error).name === "AbortError");
});

test("an answer larger than the bound is refused", async () => {
  const s = await serve(pki.agentA, (_req, res) => json(res, 200, { blob: "x".repeat(4096) }));
  await assert.rejects(client(s.address, "a", { maxBodyBytes: 1024 }).request("GET", "/big"), hostError(/larger than 1024 bytes/));
  assert.equal((await client(s.address, "a", { maxBodyBytes: 8192 }).request<{ blob: string }>("GET", "/big")).blob.length, 4096);
});

test("stream delivers lines in order across chunk boundaries, and refuses a line over the bound", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    if (req.url === "/long") {
      res.write("x".repeat(5000));
      return; // never ends the line
    }
    res.write('{"phase":"ram","n":1}\n{"pha');
    setTimeout(() => res.end('se":"completed","n":2}\r\n\ndata: last'), 50);
  });
  const lines: string[] = [];
  await client(s.address).stream("/progress", (l) => lines.push(l));
  assert.deepEqual(lines, ['{"phase":"ram","n":1}', '{"phase":"completed","n":2}', "", "data: last"]);
  await assert.rejects(client(s.address).stream("/long", () => undefined, { maxLineBytes: 1000 }), hostError(/line longer than 1000 bytes/));
});

test("stream can POST a body and carry the actor and epoch (a command answering with its progress)", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.end(`${JSON.stringify({ method: req.method, body: JSON.parse(body), actor: JSON.parse(String(req.headers[ACTOR_HEADER])).name, epoch: req.headers[EPOCH_HEADER] })}\n`);
    });
  });
  const lines: string[] = [];
  await client(s.address).stream("/v1/vms/web1/migrate", (l) => lines.push(l), { method: "POST", body: { to: "b" }, actor: { name: "alice", roles: [], groups: [], introspect: false }, epoch: 3 });
  assert.deepEqual(lines.map((l) => JSON.parse(l) as unknown), [{ method: "POST", body: { to: "b" }, actor: "alice", epoch: "3" }]);
});

test("an error thrown by onLine ends the stream with that error", async () => {
  const s = await serve(pki.agentA, (_req, res) => {
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    res.write("one\ntwo\n"); // and stays open
  });
  const seen: string[] = [];
  await assert.rejects(
    client(s.address).stream("/p", (l) => {
      seen.push(l);
      if (l === "one") throw new Error("stop here");
    }),
    /stop here/,
  );
  assert.deepEqual(seen, ["one"]);
});

test("a stream with an error status gives the agent's error; a silent stream times out", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    if (req.url === "/missing") return json(res, 404, { error: { code: "VIGIL_NOT_FOUND", message: 'Migration "m1" does not exist' } });
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    res.write("{}\n"); // then silence
  });
  await assert.rejects(client(s.address).stream("/missing", () => undefined), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_NOT_FOUND");
  const lines: string[] = [];
  await assert.rejects(client(s.address).stream("/silent", (l) => lines.push(l), { idleTimeoutMs: 300 }), hostError(/not answering: no answer within 300 ms/));
  assert.deepEqual(lines, ["{}"]);
});

test("relay streams a body to the agent with its headers, and gives back the answer's status, headers and bytes unread, errors included", async () => {
  const s = await serve(pki.agentA, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("end", () => {
      if (req.url === "/refuse") return json(res, 409, { error: { code: "VIGIL_CONFLICT", message: "no" } });
      const got = Buffer.concat(chunks);
      res.writeHead(201, { "content-type": "application/x-vigil-bundle", "x-seen": `${req.headers["content-type"]} ${req.headers["x-request-id"]} ${JSON.parse(String(req.headers[ACTOR_HEADER])).name} ${req.headers[EPOCH_HEADER]} ${got.length}` });
      // The answer in two parts, the second later: the caller has the head before the body is complete.
      res.write(got.subarray(0, 10));
      setTimeout(() => res.end(got.subarray(10)), 100);
    });
  });
  const payload = Buffer.alloc(300_000, 7);
  const actor: DelegatedActor = { name: "alice", roles: ["owner"], groups: [], introspect: false };
  // The caller may not smuggle the actor or the epoch through the passed-on headers: the options' win.
  const ans = await client(s.address).relay("POST", "/v1/vms/import", { body: Readable.from([payload.subarray(0, 1000), payload.subarray(1000)]), headers: { "content-type": "application/x-vigil-bundle", "x-request-id": "r1", [ACTOR_HEADER]: JSON.stringify({ ...actor, name: "root" }) }, actor, epoch: 4 });
  assert.equal(ans.status, 201);
  assert.equal(ans.headers["content-type"], "application/x-vigil-bundle");
  assert.equal(ans.headers["x-seen"], "application/x-vigil-bundle r1 alice 4 300000");
  const back: Buffer[] = [];
  for await (const c of ans.body) back.push(c as Buffer);
  assert.ok(Buffer.concat(back).equals(payload));
  // An agent's refusal is relayed as it is (status and body), not thrown.
  const refused = await client(s.address).relay("POST", "/refuse", { body: Readable.from([Buffer.from("x")]) });
  assert.equal(refused.status, 409);
  let text = "";
  for await (const c of refused.body) text += String(c);
  assert.equal(JSON.parse(text).error.code, "VIGIL_CONFLICT");
});

test("relay: an agent that goes silent mid-answer fails the body as 'not answering'; destroying the body ends the agent's answer", async () => {
  let closed = 0;
  const s = await serve(pki.agentA, (_req, res) => {
    res.on("close", () => closed++);
    res.writeHead(200, { "content-type": "application/x-tar" });
    res.write("part"); // then silence
  });
  const ans = await client(s.address).relay("GET", "/silent", { idleTimeoutMs: 300 });
  const seen: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const c of ans.body) seen.push(String(c));
    })(),
    hostError(/not answering: no answer within 300 ms/),
  );
  assert.deepEqual(seen, ["part"]);
  const other = await client(s.address).relay("GET", "/silent", { idleTimeoutMs: 30_000 });
  other.body.destroy();
  const until = Date.now() + 5000;
  while (closed < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.equal(closed, 2, "the agent saw both answers end");
});

test("a bad address is refused naming the field", () => {
  for (const bad of ["10.0.0.1", "host:7451", "10.0.0.1:0", "10.0.0.1:70000", "[zz]:1", "::1:7451"]) {
    assert.throws(() => parseAddress(bad), (err: unknown) => err instanceof VigilError && err.field === "address", bad);
  }
  assert.deepEqual(parseAddress("[fd00::2]:7451"), { host: "fd00::2", port: 7451 });
  assert.deepEqual(parseAddress("10.0.0.2:7451"), { host: "10.0.0.2", port: 7451 });
});

test("parseAddress, on any input: a valid IP and port back, or VIGIL_BAD_REQUEST naming address", () => {
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.tuple(fc.ipV4(), fc.integer({ min: -5, max: 70_000 })).map(([ip, p]) => `${ip}:${p}`), fc.tuple(fc.ipV6(), fc.integer({ min: 0, max: 65_535 })).map(([ip, p]) => `[${ip}]:${p}`)), (input) => {
      try {
        const { host, port } = parseAddress(input);
        assert.ok(isIP(host) !== 0 && Number.isInteger(port) && port >= 1 && port <= 65_535, input);
        assert.equal(input, isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`);
      } catch (err) {
        assert.ok(err instanceof VigilError && err.field === "address", `${input}: ${String(err)}`);
      }
    }),
    { numRuns: 2000 },
  );
});
