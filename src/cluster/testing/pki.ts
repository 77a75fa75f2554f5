/**
 * Test support: a vigil CA with the certificates the mutual-TLS tests need (agents a and b, an expired manager,
 * a foreign CA's look-alikes), and an mTLS https server on 127.0.0.1 with an ephemeral port.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initCa, issueCertificate, type Ca } from "../ca.ts";
import { mtlsServerOptions } from "../mtls.ts";
import type { CertBundle } from "../types.ts";

export interface Pki {
  ca: Ca;
  manager: CertBundle;
  agentA: CertBundle;
  agentB: CertBundle;
  expiredManager: CertBundle;
  /** A different CA's manager and agent "a": right subjects, wrong issuer. */
  foreignManager: CertBundle;
  foreignAgentA: CertBundle;
  close(): void;
}

export async function makePki(): Promise<Pki> {
  const dir = mkdtempSync(join(tmpdir(), "vt-pki-"));
  const ca = await initCa(join(dir, "ca"));
  const foreign = await initCa(join(dir, "foreign"));
  const ips = ["127.0.0.1"];
  return {
    ca,
    manager: ca.manager,
    agentA: await issueCertificate(ca, { role: "agent", name: "a", ips }),
    agentB: await issueCertificate(ca, { role: "agent", name: "b", ips }),
    expiredManager: await issueCertificate(ca, { role: "manager", name: "manager", notBefore: new Date(Date.now() - 2 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) }),
    foreignManager: foreign.manager,
    foreignAgentA: await issueCertificate(foreign, { role: "agent", name: "a", ips }),
    close: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface TestServer {
  server: Server;
  address: string;
  /** Why the server refused each handshake (the verification error code, or the error's message). */
  refused: string[];
  /** How many requests reached the handler. */
  requests: number;
  close(): Promise<void>;
}

/** An mTLS server presenting `bundle`, answering with `handler`, on 127.0.0.1:<ephemeral>. */
export async function mtlsServer(bundle: CertBundle, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TestServer> {
  const state: TestServer = {
    server: undefined as unknown as Server,
    address: "",
    refused: [],
    requests: 0,
    close: () =>
      new Promise<void>((resolve) => {
        state.server.closeAllConnections();
        state.server.close(() => resolve());
      }),
  };
  state.server = createServer(mtlsServerOptions(bundle), (req, res) => {
    state.requests++;
    handler(req, res);
  });
  // Node ends a handshake whose client certificate did not verify without saying why in the error; the socket's
  // authorizationError (CERT_HAS_EXPIRED, …) does.
  state.server.on("tlsClientError", (err, socket) => state.refused.push(String(socket.authorizationError ?? err.message)));
  await new Promise<void>((resolve) => state.server.listen(0, "127.0.0.1", resolve));
  state.address = `127.0.0.1:${(state.server.address() as AddressInfo).port}`;
  return state;
}
