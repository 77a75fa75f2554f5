/** The TCP listener's TLS: refused plain HTTP off loopback, the site certificate, and a client that pins it. */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "./daemon.ts";
import { isLoopback } from "./tls.ts";
import { silentLogger } from "../log.ts";
import { VigilError } from "../errors.ts";
import { call } from "../cli/client.ts";

function tempHome(t: TestContext): string {
  const home = mkdtempSync(join(tmpdir(), "vigil-tls-"));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  return home;
}

test("plain HTTP on a non-loopback address is refused before anything starts", async (t) => {
  const home = tempHome(t);
  await assert.rejects(startDaemon({ home, cache: join(home, "c"), listen: "0.0.0.0:0", tls: "off", log: silentLogger() }), (err: unknown) => {
    assert.ok(err instanceof VigilError);
    assert.equal(err.field, "listen");
    assert.match(err.message, /^Refusing to serve the API on "0\.0\.0\.0" without TLS/);
    return true;
  });
  assert.equal(existsSync(join(home, "vigil.db")), false);
  assert.equal(existsSync(join(home, "run", "vigil.pid")), false);
  assert.deepEqual([isLoopback("127.0.0.2"), isLoopback("::1"), isLoopback("0.0.0.0"), isLoopback("10.0.0.1"), isLoopback("::")], [true, true, false, false, false]);
});

test("with TLS the listener speaks HTTPS with the site certificate (key 0600), and a pinned client reaches it", async (t) => {
  const home = tempHome(t);
  const d = await startDaemon({ home, cache: join(home, "c"), listen: "127.0.0.1:0", tls: "auto", log: silentLogger() });
  t.after(() => d.close());
  assert.match(d.tlsFingerprint ?? "", /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  assert.equal(statSync(join(home, "keys", "tls-key.pem")).mode & 0o777, 0o600);
  const port = d.tcpAddress!.port;

  // Plain HTTP gets no answer from the API.
  const plain = await new Promise<string>((resolve) => {
    const req = httpRequest({ host: "127.0.0.1", port, path: "/v1/health" }, (res) => resolve(`status ${res.statusCode}`));
    req.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    req.end();
  });
  assert.doesNotMatch(plain, /status 200/);

  // Default verification refuses the self-signed certificate; the client pinned to it gets through.
  const unpinned = await new Promise<string>((resolve) => {
    const req = httpsRequest({ host: "127.0.0.1", port, path: "/v1/health" }, () => resolve("answered"));
    req.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    req.end();
  });
  assert.equal(unpinned, "DEPTH_ZERO_SELF_SIGNED_CERT");
  const { readFileSync } = await import("node:fs");
  const cert = readFileSync(join(home, "keys", "tls-cert.pem"), "utf8");
  const token = (await d.deps.users.issueToken(d.deps.localUser, "t")).token;
  const url = new URL(`https://127.0.0.1:${port}`);
  const me = await call<{ name: string; via: string }>("GET", "/v1/whoami", undefined, { url, token, pin: { cert, fingerprint: d.tlsFingerprint! } });
  assert.deepEqual([me.name, me.via], [d.deps.localUser, "token"]);
  // A pin that does not match is refused before the token is sent.
  await assert.rejects(call("GET", "/v1/whoami", undefined, { url, token, pin: { cert, fingerprint: "00:11" } }), /not the one pinned at login/);

  // The certificate is made once and kept across restarts.
  await d.close();
  const again = await startDaemon({ home, cache: join(home, "c"), listen: "127.0.0.1:0", tls: "auto", log: silentLogger() });
  t.after(() => again.close());
  assert.equal(again.tlsFingerprint, d.tlsFingerprint);
});
