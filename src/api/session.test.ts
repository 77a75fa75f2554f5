/**
 * A browser's session: POST/GET/DELETE /v1/session, the cookie's attributes, cookie authentication on the TCP
 * listener only, and the CSRF rule for every cookie-authenticated change (docs/web.md).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { csrfFor } from "../auth/session.ts";
import { webFixture, type WebFixture } from "./testing/web-fixture.ts";

type Transport = "tcp" | "unix";

function call(f: WebFixture, method: string, path: string, o: { cookie?: string; bearer?: string; csrf?: string; body?: unknown; transport?: Transport; secure?: boolean } = {}): Promise<Response> {
  const headers: Record<string, string> = {};
  if (o.cookie !== undefined) headers.cookie = `other=1; vigil_session=${o.cookie}; theme=dark`;
  if (o.bearer !== undefined) headers.authorization = `Bearer ${o.bearer}`;
  if (o.csrf !== undefined) headers["x-vigil-csrf"] = o.csrf;
  if (o.body !== undefined) headers["content-type"] = "application/json";
  return Promise.resolve(f.daemon.app.request(path, { method, headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) }, { transport: o.transport ?? "tcp", remoteAddress: "192.0.2.7", secure: o.secure ?? false }));
}

interface SessionBody {
  server: string;
  user: { name: string; roles: string[]; groups: string[] };
  csrf: string;
  can: string[];
  ownedCan: string[];
}

test("csrf(token) is base64url(sha256(\"vigil-csrf\\0\" + token)): stable, and different per token", async () => {
  const { createHash } = await import("node:crypto");
  const want = createHash("sha256").update("vigil-csrf\0vgl_abc").digest("base64url");
  assert.equal(csrfFor("vgl_abc"), want);
  assert.notEqual(csrfFor("vgl_abd"), want);
});

test("login sets the HttpOnly SameSite=Strict cookie (Secure on TLS) and answers user, csrf and permissions; logout clears it", async (t) => {
  const f = await webFixture(t);
  const res = await call(f, "POST", "/v1/session", { body: { token: f.tokens.bob } });
  assert.equal(res.status, 200);
  const cookie = res.headers.get("set-cookie") ?? "";
  assert.equal(cookie, `vigil_session=${f.tokens.bob}; HttpOnly; SameSite=Strict; Path=/`);
  const body = (await res.json()) as SessionBody;
  assert.deepEqual(body.user, { name: "bob", roles: ["owner"], groups: [] });
  assert.equal(body.server, "host");
  assert.equal(body.csrf, csrfFor(f.tokens.bob));
  assert.ok(body.can.includes("vm.create") && !body.can.includes("vm.control"), JSON.stringify(body.can));
  assert.ok(body.ownedCan.includes("vm.control") && body.ownedCan.includes("vm.console") && !body.ownedCan.includes("user.manage"), JSON.stringify(body.ownedCan));
  assert.ok(!JSON.stringify(body).includes(f.tokens.bob), "the token is not in the body");

  const secure = await call(f, "POST", "/v1/session", { body: { token: f.tokens.admin }, secure: true });
  assert.match(secure.headers.get("set-cookie") ?? "", /; HttpOnly; SameSite=Strict; Path=\/; Secure$/);
  const admin = (await secure.json()) as SessionBody;
  assert.ok(admin.can.includes("user.manage") && !admin.can.includes("vm.introspect"));

  // A reloaded page learns who it is and its csrf again, from the cookie alone.
  const again = await call(f, "GET", "/v1/session", { cookie: f.tokens.bob });
  assert.equal(again.status, 200);
  assert.deepEqual(await again.json(), body);

  const out = await call(f, "DELETE", "/v1/session", { cookie: f.tokens.bob, csrf: body.csrf });
  assert.equal(out.status, 200);
  assert.deepEqual(await out.json(), {});
  assert.equal(out.headers.get("set-cookie"), "vigil_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
});

test("a bad token is 401 VIGIL_UNAUTHENTICATED at login and is audited as a denial; no cookie is set", async (t) => {
  const f = await webFixture(t);
  const res = await call(f, "POST", "/v1/session", { body: { token: "vgl_forged" } });
  assert.equal(res.status, 401);
  assert.equal(((await res.json()) as { error: { code: string } }).error.code, "VIGIL_UNAUTHENTICATED");
  assert.equal(res.headers.get("set-cookie"), null);
  const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
  assert.equal(last?.result, "denied");
  assert.equal(last?.action, "auth.denied");
  assert.ok(!JSON.stringify(last).includes("vgl_forged"), "the token is not in the audit record");
});

test("the cookie authenticates GETs; a cookie change needs x-vigil-csrf = csrf(token) (else 403 VIGIL_CSRF); bearer needs none", async (t) => {
  const f = await webFixture(t);
  await f.addVm("web1", "user:bob");
  const list = await call(f, "GET", "/v1/vms", { cookie: f.tokens.bob });
  assert.equal(list.status, 200);
  assert.deepEqual(((await list.json()) as { vms: Array<{ name: string }> }).vms.map((v) => v.name), ["web1"]);
  assert.equal((await call(f, "GET", "/v1/whoami", { cookie: "vgl_forged" })).status, 401);

  // chown is a change that succeeds on a stopped VM: it shows the request got through.
  const chown = { owner: "user:bob", approver: "carol" };
  for (const csrf of [undefined, "", "wrong", csrfFor(f.tokens.carol)]) {
    const res = await call(f, "POST", "/v1/vms/web1/chown", { cookie: f.tokens.bob, body: chown, ...(csrf !== undefined ? { csrf } : {}) });
    assert.equal(res.status, 403, `csrf ${JSON.stringify(csrf)}`);
    const err = ((await res.json()) as { error: { code: string; message: string } }).error;
    assert.equal(err.code, "VIGIL_CSRF");
    assert.equal(err.message, "A request authenticated by the session cookie needs the x-vigil-csrf header from POST /v1/session");
  }
  const ok = await call(f, "POST", "/v1/vms/web1/chown", { cookie: f.tokens.bob, body: chown, csrf: csrfFor(f.tokens.bob) });
  assert.equal(ok.status, 200, JSON.stringify(await ok.clone().json()));
  const bearer = await call(f, "POST", "/v1/vms/web1/chown", { bearer: f.tokens.bob, body: chown });
  assert.equal(bearer.status, 200);
  // A bearer header wins over a cookie: no ambient credential is used, so no csrf is asked for.
  const both = await call(f, "POST", "/v1/vms/web1/chown", { bearer: f.tokens.bob, cookie: f.tokens.admin, body: chown });
  assert.equal(both.status, 200);
});

test("the unix socket ignores the cookie: the local user, no csrf asked, and no sessions there", async (t) => {
  const f = await webFixture(t);
  const who = await call(f, "GET", "/v1/whoami", { cookie: f.tokens.nobody, transport: "unix" });
  assert.equal(who.status, 200);
  assert.equal(((await who.json()) as { name: string }).name, f.daemon.deps.localUser);
  await f.addVm("web2", `user:${f.daemon.deps.localUser}`);
  const change = await call(f, "POST", "/v1/vms/web2/chown", { cookie: f.tokens.nobody, transport: "unix", body: { owner: "user:bob" } });
  assert.notEqual(change.status, 403, "no csrf is asked on the unix socket");
  const login = await call(f, "POST", "/v1/session", { body: { token: f.tokens.bob }, transport: "unix" });
  assert.equal(login.status, 400);
  assert.equal(login.headers.get("set-cookie"), null);
});

test("login takes only a JSON body: a form or text/plain post from another site (no preflight) sets no cookie", async (t) => {
  const f = await webFixture(t);
  for (const [type, body] of [["text/plain", JSON.stringify({ token: f.tokens.bob })], ["application/x-www-form-urlencoded", `token=${f.tokens.bob}`]] as const) {
    const res = await f.daemon.app.request("/v1/session", { method: "POST", headers: { "content-type": type }, body }, { transport: "tcp" });
    assert.equal(res.status, 415, type);
    assert.equal(res.headers.get("set-cookie"), null, type);
  }
});
