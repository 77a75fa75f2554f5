/**
 * The web console on the cluster manager (docs/web.md "On a cluster"), on a one-machine trial manager (SQLite, no
 * hosts, HTTPS on 127.0.0.1 with the site certificate): its files are served publicly with the CSP, a token becomes
 * the HttpOnly/SameSite=Strict/Secure cookie, a cookie-authenticated change needs the CSRF header (403 VIGIL_CSRF
 * without it, audited), login takes JSON only and not on the unix socket, and the summary list asks the agents'
 * summary view. The console WebSocket bridge is checked against a fake agent stream: Origin first, then the user,
 * then the agent's first bytes and an echo both ways. (Through a real agent to a booted guest:
 * test/integration/cluster-access.test.ts.)
 */
import { strict as assert } from "node:assert";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { request as httpsRequest } from "node:https";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createNetServer, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { call, type Target } from "../cli/client.ts";
import { caDir, initCa } from "../cluster/ca.ts";
import { openSqlite } from "../inventory/db.ts";
import { UserStore } from "../auth/users.ts";
import { csrfFor } from "../auth/session.ts";
import { createLogger } from "../log.ts";
import { homeLayout } from "../paths.ts";
import { startManager, type Manager } from "./manager.ts";
import { createManagerWebConsole } from "./manager-web.ts";
import type { DelegatedActor } from "../cluster/types.ts";

let dir: string;
let manager: Manager;
let local: Target;
let ca: string;
const tokens: Record<string, string> = {};
const savedWebDir = process.env.VIGIL_WEB_DIR;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "vt-mgrweb-"));
  const web = join(dir, "web");
  mkdirSync(join(web, "assets"), { recursive: true });
  writeFileSync(join(web, "index.html"), "<!doctype html><title>vigil</title>");
  process.env.VIGIL_WEB_DIR = web;
  const home = join(dir, "home");
  await initCa(caDir(homeLayout(home).keysDir));
  manager = await startManager({ home, db: join(dir, "inventory.sqlite"), listen: "127.0.0.1:0", tls: "auto", log: createLogger({ level: "silent" }), heartbeatMs: 60_000 });
  local = { socketPath: homeLayout(home).socket };
  ca = readFileSync(join(homeLayout(home).keysDir, "tls-cert.pem"), "utf8");
  for (const [name, roles] of [["ada", ["admin"]], ["audrey", ["auditor"]]] as const) tokens[name] = (await call<{ token: string }>("POST", "/v1/users", { name, roles }, local)).token;
});
after(async () => {
  await manager?.close();
  if (savedWebDir === undefined) delete process.env.VIGIL_WEB_DIR;
  else process.env.VIGIL_WEB_DIR = savedWebDir;
  rmSync(dir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  headers: IncomingMessage["headers"];
  body: string;
}

/** One HTTPS request to the manager's TCP listener, trusting its certificate. */
function https(method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: "127.0.0.1", port: manager.tcpAddress!.port, method, path, headers, ca, servername: "localhost", checkServerIdentity: () => undefined }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}
const json = (a: Answer) => JSON.parse(a.body) as Record<string, unknown> & { error?: { code: string; field?: string } };
const login = (token: string) => https("POST", "/v1/session", { "content-type": "application/json" }, JSON.stringify({ token }));

test("the manager serves the web console's files publicly, with the CSP; the API stays behind authentication", async () => {
  const page = await https("GET", "/");
  assert.equal(page.status, 200);
  assert.match(page.body, /<title>vigil<\/title>/);
  assert.match(String(page.headers["content-security-policy"]), /default-src 'self'/);
  assert.equal(page.headers["x-frame-options"], "DENY");
  assert.equal((await https("GET", "/vms/web1?tab=console")).status, 200, "a page route is the app");
  assert.equal((await https("GET", "/v1/vms")).status, 401, "the API is not public");
});

test("sign-in on the manager: the token becomes an HttpOnly, SameSite=Strict, Secure cookie; a change it authenticates needs the CSRF header", async () => {
  const ok = await login(tokens.ada!);
  assert.equal(ok.status, 200);
  const cookie = String(ok.headers["set-cookie"]);
  assert.match(cookie, /^vigil_session=[^;]+; HttpOnly; SameSite=Strict; Path=\/; Secure$/);
  const session = json(ok) as unknown as { server: string; user: { name: string }; csrf: string; can: string[] };
  assert.equal(session.user.name, "ada");
  assert.equal(session.server, "manager", "the page learns it talks to a cluster manager");
  assert.equal(session.csrf, csrfFor(tokens.ada!));
  assert.ok(session.can.includes("cluster.manage"));
  const jar = { cookie: cookie.split(";")[0]! };

  assert.equal(json(await https("GET", "/v1/whoami", jar)).name, "ada", "the cookie authenticates reads");
  assert.equal((json(await https("GET", "/v1/session", jar)) as { csrf: string }).csrf, session.csrf, "a reload gets the CSRF value again");
  const summary = await https("GET", "/v1/vms?view=summary", jar);
  assert.deepEqual(json(summary), { vms: [] }, summary.body);

  const add = JSON.stringify({ name: "carol", roles: ["auditor"] });
  const refused = await https("POST", "/v1/users", { ...jar, "content-type": "application/json" }, add);
  assert.equal(refused.status, 403);
  assert.equal(json(refused).error?.code, "VIGIL_CSRF");
  const wrong = await https("POST", "/v1/users", { ...jar, "content-type": "application/json", "x-vigil-csrf": csrfFor(tokens.audrey!) }, add);
  assert.equal(wrong.status, 403, "another token's CSRF value is no good");
  const made = await https("POST", "/v1/users", { ...jar, "content-type": "application/json", "x-vigil-csrf": session.csrf }, add);
  assert.equal(made.status, 201, made.body);
  // A bearer request needs no CSRF header (no browser sends it on its own).
  assert.equal((await https("POST", "/v1/users", { authorization: `Bearer ${tokens.ada}`, "content-type": "application/json" }, JSON.stringify({ name: "dave", roles: [] }))).status, 201);
  assert.equal((await login("vgt_not-a-token")).status, 401);
  assert.equal((await https("POST", "/v1/session", { "content-type": "text/plain" }, tokens.ada)).status, 415, "no form login (login CSRF)");
  const out = await https("DELETE", "/v1/session", { ...jar, "x-vigil-csrf": session.csrf });
  assert.match(String(out.headers["set-cookie"]), /Max-Age=0/);

  // The first refusal from an address is recorded at once (the rest are counted: audit/denials.ts).
  const { records } = await call<{ records: { action: string; result: string; target: { name: string }; details: { source?: string } }[] }>("GET", "/v1/audit?limit=1000", undefined, local);
  assert.ok(records.some((r) => r.action === "auth.denied" && r.target.name === "/v1/users" && r.details.source === "127.0.0.1"), "the CSRF refusal is audited as a denial from its address");
  await assert.rejects(call("POST", "/v1/session", { token: tokens.ada }, local), /only on the TCP listener/, "no sessions on the unix socket");
});

test("the manager's console WebSocket: Origin first, then the user, then the holding agent's stream, bridged both ways", async (t) => {
  const db = await openSqlite(":memory:");
  t.after(() => db.destroy());
  const users = new UserStore(db);
  await users.create({ name: "olga", roles: ["owner"], introspect: false }, "test");
  const token = (await users.issueToken("olga", "web")).token;
  // The "agent": an echo server on a unix socket; it greets first, as a console's backlog would.
  const sock = join(dir, "agent.sock");
  const agent = createNetServer((s) => s.pipe(s));
  await new Promise<void>((r) => agent.listen(sock, r));
  t.after(() => agent.close());
  const opened: { host: string; path: string; actor: DelegatedActor }[] = [];
  const web = createManagerWebConsole({
    users,
    localUser: "root",
    secure: false,
    holder: async (vm) => {
      if (vm !== "con") throw Object.assign(new (await import("../errors.ts")).VigilError("VIGIL_VM_NOT_FOUND", `VM "${vm}" does not exist in this cluster`));
      return "h1";
    },
    open: async (host, path, actor) => {
      opened.push({ host, path, actor });
      const s: Socket = connect(sock);
      await new Promise((r) => s.once("connect", r));
      return { socket: s, head: Buffer.from("login: ") };
    },
    onError: (err) => assert.fail(String(err)),
  });
  const server: Server = createServer();
  server.on("upgrade", (req, socket, head) => void web.upgrade(req, socket, head));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => {
    web.close();
    server.close();
  });
  const host = `127.0.0.1:${(server.address() as { port: number }).port}`;
  const open = (path: string, headers: Record<string, string>) =>
    new Promise<{ ws: WebSocket; first: string } | { status: number; body: string }>((resolve, reject) => {
      const ws = new WebSocket(`ws://${host}${path}`, { headers });
      ws.once("unexpected-response", (_q, res) => {
        let body = "";
        res.on("data", (c: Buffer) => (body += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      ws.once("message", (data: Buffer) => resolve({ ws, first: data.toString() }));
      ws.once("error", (err) => (String(err.message).includes("Unexpected server response") ? undefined : reject(err)));
    });
  const cookie = `vigil_session=${token}`;
  const foreign = await open("/v1/vms/con/console/ws", { origin: "https://evil.example", cookie });
  assert.ok("status" in foreign && foreign.status === 403 && /Origin/.test(foreign.body), JSON.stringify(foreign));
  const anonymous = await open("/v1/vms/con/console/ws", { origin: `http://${host}` });
  assert.ok("status" in anonymous && anonymous.status === 401, JSON.stringify(anonymous));
  const missing = await open("/v1/vms/nope/console/ws", { origin: `http://${host}`, cookie });
  assert.ok("status" in missing && missing.status === 404, JSON.stringify(missing));
  assert.equal(opened.length, 0, "nothing reached an agent for a refused socket");

  const ok = await open("/v1/vms/con/console/ws", { origin: `http://${host}`, cookie });
  assert.ok("ws" in ok, JSON.stringify(ok));
  assert.equal(ok.first, "login: ", "the agent's first bytes come first");
  assert.deepEqual(opened, [{ host: "h1", path: "/v1/vms/con/console", actor: { name: "olga", roles: ["owner"], groups: [], introspect: false } }]);
  const echoed = new Promise<string>((r) => ok.ws.once("message", (d: Buffer) => r(d.toString())));
  ok.ws.send(Buffer.from("echo hi\n"));
  assert.equal(await echoed, "echo hi\n");
  ok.ws.close();
});
