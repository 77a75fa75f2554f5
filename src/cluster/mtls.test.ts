import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:https";
import { connect, type TLSSocket } from "node:tls";
import { VigilError } from "../errors.ts";
import { fingerprintOf } from "./ca.ts";
import { peerIdentity, requirePeerRole } from "./mtls.ts";
import { makePki, mtlsServer, type Pki, type TestServer } from "./testing/pki.ts";
import type { CertBundle } from "./types.ts";

let pki: Pki;
let agent: TestServer;

before(async () => {
  pki = await makePki();
  // The agent's listener as the agent part will run it: identity from the verified certificate, manager only.
  agent = await mtlsServer(pki.agentA, (req, res) => {
    try {
      const who = requirePeerRole(peerIdentity(req.socket as TLSSocket), "manager");
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(who));
    } catch (err) {
      const e = err as VigilError;
      res.writeHead(e.status, { "content-type": "application/json" }).end(JSON.stringify({ error: { code: e.code, message: e.message } }));
    }
  });
});
after(async () => {
  await agent?.close();
  pki?.close();
});

/** A request with `bundle` as the client certificate (or none), trusting the vigil CA for the server. */
function call(client: CertBundle | undefined, options: { maxVersion?: "TLSv1.2" } = {}): Promise<{ status: number; body: Record<string, unknown> }> {
  const [host, port] = agent.address.split(":");
  return new Promise((resolve, reject) => {
    const req = request(
      { host, port: Number(port), path: "/", agent: false, ca: [pki.ca.certPem], ...(client ? { cert: client.certPem, key: client.keyPem } : {}), ...options },
      (res) => {
        let text = "";
        res.on("data", (d: Buffer) => (text += d.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

test("the manager's certificate is accepted and peerIdentity names it from the verified certificate", async () => {
  const { status, body } = await call(pki.manager);
  assert.equal(status, 200);
  assert.deepEqual(body, { role: "manager", name: "manager", fingerprint: fingerprintOf(pki.manager.certPem) });
});

test("a valid certificate of another role (an agent's) gets through the handshake and is refused with 403", async () => {
  const { status, body } = await call(pki.agentB);
  assert.equal(status, 403);
  assert.equal((body.error as { code: string }).code, "VIGIL_FORBIDDEN");
  assert.match((body.error as { message: string }).message, /OU=agent, CN=b/);
});

test("a certificate from a foreign CA, an expired one and none at all fail the handshake: no request is served", async () => {
  const before = agent.requests;
  const refused = agent.refused.length;
  await assert.rejects(call(pki.foreignManager));
  await assert.rejects(call(pki.expiredManager));
  await assert.rejects(call(undefined));
  assert.equal(agent.requests, before, "nothing reached the handler");
  // The server's own reasons, in order (with TLS 1.3 the client learns only that the server hung up).
  const reasons = agent.refused.slice(refused);
  assert.equal(reasons.length, 3, reasons.join(" | "));
  assert.equal(reasons[0], "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  assert.equal(reasons[1], "CERT_HAS_EXPIRED");
  assert.match(reasons[2]!, /peer did not return a certificate/);
});

test("TLS 1.2 is refused", async () => {
  await assert.rejects(call(pki.manager, { maxVersion: "TLSv1.2" }), /version|protocol/i);
});

test("the server presents only the vigil CA's chain: a client trusting the system roots refuses it", async () => {
  const [host, port] = agent.address.split(":");
  await assert.rejects(
    new Promise((resolve, reject) => {
      const s = connect({ host: host!, port: Number(port), cert: pki.manager.certPem, key: pki.manager.keyPem }, () => resolve(s));
      s.on("error", reject);
    }),
    /self.signed|unable to (get|verify)/i,
  );
});

test("peerIdentity is undefined for an unverified socket; requirePeerRole says 401 then", () => {
  assert.equal(peerIdentity(undefined), undefined);
  assert.equal(peerIdentity({ authorized: false }), undefined);
  assert.throws(() => requirePeerRole(undefined, "manager"), (err: unknown) => err instanceof VigilError && err.status === 401);
  assert.throws(() => requirePeerRole({ role: "migration", name: "m-src", fingerprint: "AA" }, "manager"), (err: unknown) => err instanceof VigilError && err.status === 403);
  assert.equal(requirePeerRole({ role: "manager", name: "manager", fingerprint: "AA" }, "manager").name, "manager");
});
