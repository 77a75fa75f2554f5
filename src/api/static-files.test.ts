/**
 * The web console's files: index, hashed assets (type, immutable cache), the SPA fallback, no path traversal (plain,
 * encoded, by symlink), the 503 of a missing build, and the security headers on every answer — through the app, as a
 * browser would ask, and over a real socket for the raw `..` a URL parser would otherwise fold away.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CONTENT_SECURITY_POLICY, isStaticRequest, serveStatic } from "./static-files.ts";
import { webFixture } from "./testing/web-fixture.ts";

function builtApp(t: { after(fn: () => void): void }): string {
  const base = mkdtempSync(join(tmpdir(), "vigil-webdir-"));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const dir = join(base, "web");
  mkdirSync(join(dir, "assets"), { recursive: true });
  writeFileSync(join(dir, "index.html"), "<!doctype html><title>vigil</title>");
  writeFileSync(join(dir, "assets", "index-abc123.js"), "console.log(1)");
  writeFileSync(join(dir, "assets", "index-abc123.css"), "body{}");
  writeFileSync(join(dir, "logo.svg"), "<svg/>");
  writeFileSync(join(base, "secret.txt"), "outside the web dir");
  symlinkSync(join(base, "secret.txt"), join(dir, "leak.txt"));
  return dir;
}

function assertSecurityHeaders(res: Response, what: string): void {
  assert.equal(res.headers.get("content-security-policy"), CONTENT_SECURITY_POLICY, what);
  assert.match(CONTENT_SECURITY_POLICY, /default-src 'self'; script-src 'self';.*frame-ancestors 'none'; base-uri 'none'; form-action 'self'$/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff", what);
  assert.equal(res.headers.get("referrer-policy"), "no-referrer", what);
}

test("which requests are the console's: GET/HEAD outside /v1, /openapi.json and /metrics", () => {
  assert.ok(isStaticRequest("GET", "/"));
  assert.ok(isStaticRequest("HEAD", "/vms/web1"));
  assert.ok(isStaticRequest("GET", "/v1x"));
  assert.ok(!isStaticRequest("GET", "/v1/vms"));
  assert.ok(!isStaticRequest("GET", "/v1"));
  assert.ok(!isStaticRequest("GET", "/openapi.json"));
  assert.ok(!isStaticRequest("GET", "/metrics"));
  assert.ok(!isStaticRequest("POST", "/"));
});

test("index, an asset with its type and immutable cache, the SPA fallback, 404 for a missing file, security headers on all", async (t) => {
  const dir = builtApp(t);
  const f = await webFixture(t);
  process.env.VIGIL_WEB_DIR = dir;
  t.after(() => delete process.env.VIGIL_WEB_DIR);
  const get = async (path: string) => f.daemon.app.request(path, {}, { transport: "tcp" });

  const index = await get("/");
  assert.equal(index.status, 200);
  assert.equal(index.headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal(index.headers.get("cache-control"), "no-cache");
  assert.equal(await index.text(), "<!doctype html><title>vigil</title>");
  assertSecurityHeaders(index, "/");

  const js = await get("/assets/index-abc123.js");
  assert.equal(js.status, 200);
  assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
  assert.equal(js.headers.get("cache-control"), "public, max-age=31536000, immutable");
  assert.equal(await js.text(), "console.log(1)");
  assertSecurityHeaders(js, "js");
  assert.equal((await get("/assets/index-abc123.css")).headers.get("content-type"), "text/css; charset=utf-8");
  const svg = await get("/logo.svg");
  assert.equal(svg.headers.get("content-type"), "image/svg+xml");
  assert.equal(svg.headers.get("cache-control"), "no-cache");

  // An SPA route (no extension) is the app; a missing file is not.
  const route = await get("/vms/web1/console");
  assert.equal(route.status, 200);
  assert.equal(await route.text(), "<!doctype html><title>vigil</title>");
  assert.equal(route.headers.get("cache-control"), "no-cache");
  const missing = await get("/assets/gone-123.js");
  assert.equal(missing.status, 404);
  assert.equal(((await missing.json()) as { error: { code: string } }).error.code, "VIGIL_NOT_FOUND");
  assertSecurityHeaders(missing, "404");

  // No token needed for the app; the API stays closed.
  assert.equal((await get("/v1/vms")).status, 401);
  assert.equal((await get("/metrics")).status, 401);
});

test("no path traversal: .. (encoded too), backslashes and symlinks out of the directory are refused", async (t) => {
  const dir = builtApp(t);
  for (const p of ["/%2e%2e/secret.txt", "/assets/%2E%2E/%2e%2e/secret.txt", "/assets%2F..%2F..%2Fsecret.txt", "/..%5csecret.txt", "/a/%00"]) {
    const res = serveStatic(dir, p, "GET");
    assert.equal(res.status, 400, p);
    assert.doesNotMatch(await res.text(), /outside the web dir/, p);
  }
  const link = serveStatic(dir, "/leak.txt", "GET");
  assert.equal(link.status, 404);
  assert.doesNotMatch(await link.text(), /outside the web dir/);

  // Over a real socket: the request line's raw ../ is the client's doing; nothing outside is ever served.
  const f = await webFixture(t, { listen: "127.0.0.1:0" });
  process.env.VIGIL_WEB_DIR = dir;
  t.after(() => delete process.env.VIGIL_WEB_DIR);
  for (const p of ["/../secret.txt", "/assets/../../secret.txt", "/assets/..%2f..%2fsecret.txt"]) {
    const body = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest({ host: "127.0.0.1", port: f.daemon.tcpAddress!.port, path: p, method: "GET" }, (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on("error", reject);
      req.end();
    });
    assert.doesNotMatch(body.text, /outside the web dir/, p);
    assert.ok(body.status === 400 || body.status === 404 || body.text.includes("<title>vigil</title>"), `${p}: ${body.status}`);
  }
});

test("without a build, / answers 503 VIGIL_UNAVAILABLE saying how to build it", async (t) => {
  const f = await webFixture(t);
  const empty = mkdtempSync(join(tmpdir(), "vigil-noweb-"));
  t.after(() => rmSync(empty, { recursive: true, force: true }));
  process.env.VIGIL_WEB_DIR = join(empty, "web");
  t.after(() => delete process.env.VIGIL_WEB_DIR);
  const res = await f.daemon.app.request("/", {}, { transport: "tcp" });
  assert.equal(res.status, 503);
  const err = ((await res.json()) as { error: { code: string; message: string } }).error;
  assert.equal(err.code, "VIGIL_UNAVAILABLE");
  assert.equal(err.message, "The web console is not built: run `npm run build`");
  assertSecurityHeaders(res, "503");
});
