/**
 * The manager's relays (daemon/manager-forward.ts) against fake agents: a VM's request and its bytes go to the
 * holder and back as they are (an export's body, an agent's refusal with its status), an import goes to the pinned
 * or placed host and becomes a placement and a cluster event, recordings/captures/forwards are listed from every
 * ready host and a request about one reaches the host that has it, and /metrics merges the hosts' expositions.
 */
import { strict as assert } from "node:assert";
import { test } from "node:test";
import { Readable } from "node:stream";
import { Hono } from "hono";
import type { IncomingHttpHeaders } from "node:http";
import type { RelayedAnswer } from "../cluster/agent-client.ts";
import { VigilError } from "../errors.ts";
import { errorBody } from "../api/error-response.ts";
import { createLogger } from "../log.ts";
import { registerManagerForwarding, type RelayRequest } from "./manager-forward.ts";
import type { ManagerEnv } from "./manager-web.ts";

interface Seen {
  host: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  actor: string;
  body: string;
}

type Agent = (method: string, path: string, body: string) => { status: number; headers?: IncomingHttpHeaders; body: string | Buffer };

function fixture(agents: Record<string, Agent>, ready = Object.keys(agents)) {
  const seen: Seen[] = [];
  const placements = new Map<string, string>([["web", "h1"], ["db", "h2"]]);
  const events: { kind: string; subject: string; payload: Record<string, unknown> }[] = [];
  const app = new Hono<ManagerEnv>();
  app.use("*", async (c, next) => {
    c.set("ctx", { actor: { name: "olga", roles: ["owner"], groups: [], introspect: false, via: "token" } as never, requestId: "r" });
    await next();
  });
  app.onError((err, c) => (err instanceof VigilError ? c.json(errorBody(err), err.status as 400) : c.json({ error: String(err) }, 500)));
  registerManagerForwarding(app, {
    relay: async (host: string, method: string, path: string, r: RelayRequest): Promise<RelayedAnswer> => {
      const chunks: Buffer[] = [];
      if (r.body) for await (const c of r.body) chunks.push(c as Buffer);
      const body = Buffer.concat(chunks).toString("utf8");
      seen.push({ host, method, path, headers: r.headers, actor: r.actor.name, body });
      const a = agents[host]!(method, path, body);
      return { status: a.status, headers: { "content-type": "application/json", ...a.headers }, body: Readable.from([Buffer.from(a.body)]) };
    },
    holder: async (vm) => {
      const h = placements.get(vm);
      if (!h) throw new VigilError("VIGIL_VM_NOT_FOUND", `VM "${vm}" does not exist in this cluster`);
      return h;
    },
    readyHosts: () => ready,
    beforeImport: async () => void events.push({ kind: "trust-shared", subject: "", payload: {} }),
    place: () => "h2",
    setPlacement: async (p) => void placements.set(p.vmName, p.host),
    deletePlacement: async (name) => void placements.delete(name),
    event: async (kind, subject, payload) => void events.push({ kind, subject, payload }),
    toDelegated: (ctx) => ({ name: ctx.actor.name, roles: ctx.actor.roles, groups: [], introspect: false }),
    log: createLogger({ level: "silent" }),
  });
  return { app, seen, placements, events };
}

const ok = (body: unknown) => ({ status: 200, body: JSON.stringify(body) });

test("a VM's request goes to its holder as bytes, and the answer comes back as it is: a bundle, a refusal, a delete", async () => {
  const bundle = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
  const f = fixture({
    h1: (method, path) => {
      if (path === "/v1/vms/web/export") return { status: 200, headers: { "content-type": "application/x-vigil-bundle", "content-length": String(bundle.length) }, body: bundle };
      if (path === "/v1/vms/web/start") return { status: 409, body: JSON.stringify({ error: { code: "VIGIL_CONFLICT", message: "already running" } }) };
      return ok({ method, path });
    },
    h2: () => ok({}),
  });
  const exported = await f.app.request("/v1/vms/web/export", { method: "POST", headers: { "content-type": "application/json", "x-vigil-output": "/tmp/web.vigil", "x-request-id": "rq1", cookie: "never-passed" }, body: JSON.stringify({ memory: true }) });
  assert.equal(exported.status, 200);
  assert.equal(exported.headers.get("content-type"), "application/x-vigil-bundle");
  assert.ok(Buffer.from(await exported.arrayBuffer()).equals(bundle), "the bundle's bytes, unchanged");
  const sent = f.seen.at(-1)!;
  assert.deepEqual(sent.headers, { "content-type": "application/json", "x-request-id": "rq1", "x-vigil-output": "/tmp/web.vigil" }, "only the headers an agent needs");
  assert.equal(sent.body, '{"memory":true}');
  assert.equal(sent.actor, "olga");
  assert.equal(f.events.length, 0, "an export is no change");

  const refused = await f.app.request("/v1/vms/web/start", { method: "POST" });
  assert.equal(refused.status, 409);
  assert.equal(((await refused.json()) as { error: { code: string } }).error.code, "VIGIL_CONFLICT");
  assert.equal(f.events.length, 0, "a refused change is no event");

  assert.equal((await f.app.request("/v1/vms/web/snapshots?x=1")).status, 200);
  assert.equal(f.seen.at(-1)!.path, "/v1/vms/web/snapshots?x=1");
  assert.equal((await f.app.request("/v1/vms/db/purge", { method: "POST" })).status, 200);
  assert.equal(f.placements.has("db"), false, "a purged VM leaves the placements");
  assert.equal((await f.app.request("/v1/vms/web", { method: "DELETE" })).status, 200);
  assert.equal(f.placements.has("web"), false, "a deleted VM leaves the placements");
  assert.deepEqual(f.events.map((e) => `${e.kind} ${e.subject} ${String(e.payload.what)}`), ["vm.changed db purge", "vm.changed web vm"]);
  assert.equal((await f.app.request("/v1/vms/nope/start", { method: "POST" })).status, 404);
});

test("an import streams the bundle to the pinned host (or the placed one), then is a placement and a vm.created event", async () => {
  const agent: (host: string) => Agent = (host) => (_m, path, body) => (body === "bad" ? { status: 400, body: JSON.stringify({ error: { code: "VIGIL_BUNDLE_INVALID", message: "bad signature" } }) } : { status: 201, body: JSON.stringify({ id: `id-${host}`, name: new URL(path, "http://x").searchParams.get("name"), owner: "user:olga" }) });
  const f = fixture({ h1: agent("h1"), h2: agent("h2"), h3: agent("h3") }, ["h1", "h2"]);
  const pinned = await f.app.request("/v1/vms/import?name=copy&host=h1", { method: "POST", headers: { "content-type": "application/x-vigil-bundle" }, body: "bundle-bytes" });
  assert.equal(pinned.status, 201);
  assert.deepEqual(await pinned.json(), { id: "id-h1", name: "copy", owner: "user:olga", host: "h1" });
  assert.equal(f.seen.at(-1)!.path, "/v1/vms/import?name=copy", "host= is the manager's, not passed on");
  assert.equal(f.seen.at(-1)!.body, "bundle-bytes");
  assert.equal(f.placements.get("copy"), "h1");
  assert.equal((await f.app.request("/v1/vms/import?name=other", { method: "POST", body: "b" })).status, 201);
  assert.equal(f.placements.get("other"), "h2", "without host=, where placement puts it");
  assert.deepEqual(f.events.map((e) => `${e.kind} ${e.subject} ${String(e.payload.host)}`), ["trust-shared  undefined", "vm.created copy h1", "trust-shared  undefined", "vm.created other h2"], "the hosts' keys are shared before each import");
  const notReady = await f.app.request("/v1/vms/import?host=h3", { method: "POST", body: "b" });
  assert.equal(notReady.status, 409);
  assert.equal(((await notReady.json()) as { error: { field: string } }).error.field, "host");
  const bad = await f.app.request("/v1/vms/import?name=x&host=h2", { method: "POST", body: "bad" });
  assert.equal(bad.status, 400);
  assert.equal(f.placements.has("x"), false, "a refused import is no placement");
});

test("recordings, captures and forwards: lists from every ready host with their host; one item's request reaches the host that has it", async () => {
  const f = fixture({
    h1: (method, path) => (path.startsWith("/v1/recordings/rec-a/export") ? { status: 200, headers: { "content-type": "application/x-tar" }, body: "TAR" } : path.startsWith("/v1/recordings") ? ok({ recordings: [{ id: "rec-a", name: "web-1" }] }) : path === "/v1/captures" ? ok([{ id: "c1" }]) : path === "/v1/net/forwards" ? ok([]) : ok({ method, path })),
    h2: (_m, path) => (path.startsWith("/v1/recordings") ? ok({ recordings: [{ id: "rec-b", name: "db-1" }] }) : path === "/v1/captures" ? ok([{ id: "c1" }]) : path === "/v1/net/forwards" ? ok([{ id: "f9" }]) : ok({ removed: true })),
  });
  assert.deepEqual(await (await f.app.request("/v1/recordings?vm=web")).json(), { recordings: [{ id: "rec-a", name: "web-1", host: "h1" }, { id: "rec-b", name: "db-1", host: "h2" }] });
  assert.equal(f.seen.filter((s) => s.path === "/v1/recordings?vm=web").length, 2, "the query goes to every host");
  const tar = await f.app.request("/v1/recordings/rec-a/export", { method: "POST" });
  assert.equal(tar.status, 200);
  assert.equal(tar.headers.get("content-type"), "application/x-tar");
  assert.equal(await tar.text(), "TAR");
  assert.equal(f.seen.at(-1)!.host, "h1");
  // By name too (a recording's name is what the CLI shows).
  assert.equal((await f.app.request("/v1/recordings/db-1", { method: "DELETE" })).status, 200);
  assert.deepEqual([f.seen.at(-1)!.host, f.seen.at(-1)!.method, f.seen.at(-1)!.path], ["h2", "DELETE", "/v1/recordings/db-1"]);
  assert.equal((await f.app.request("/v1/recordings/none")).status, 404);
  // The same id on two hosts is refused rather than guessed.
  const both = await f.app.request("/v1/captures/c1");
  assert.equal(both.status, 409);
  assert.match(((await both.json()) as { error: { message: string } }).error.message, /h1, h2/);
  assert.equal((await f.app.request("/v1/net/forwards/f9", { method: "DELETE" })).status, 200);
  assert.equal(f.seen.at(-1)!.host, "h2");
});

test("the stale-fleet report is every host's; a fleet rescan asks every ready host and gives the outcomes together", async () => {
  const f = fixture({
    h1: (method, path) => (path === "/v1/posture/stale" ? ok({ vms: [{ vm: "web", state: "stale" }] }) : method === "POST" && path === "/v1/posture/rescan" ? ok({ scanned: ["web"], failed: [] }) : ok({})),
    h2: (method, path) => (path === "/v1/posture/stale" ? ok({ vms: [{ vm: "db", state: "unknown" }] }) : method === "POST" && path === "/v1/posture/rescan" ? ok({ scanned: [], failed: [{ vm: "db", error: "busy" }] }) : ok({})),
  });
  assert.deepEqual(await (await f.app.request("/v1/posture/stale")).json(), { vms: [{ vm: "web", state: "stale", host: "h1" }, { vm: "db", state: "unknown", host: "h2" }] });
  assert.deepEqual(await (await f.app.request("/v1/posture/rescan", { method: "POST" })).json(), { scanned: ["web"], failed: [{ vm: "db", error: "busy" }] });
  assert.deepEqual(f.seen.filter((s) => s.path === "/v1/posture/rescan").map((s) => [s.host, s.actor]), [["h1", "olga"], ["h2", "olga"]]);
});

test("a list: a host that does not answer at all is left out, the others still list", async () => {
  const f = fixture({ h1: () => ok([{ id: "c1" }]), h2: () => { throw new VigilError("VIGIL_HOST", "agent h2 is not answering"); } });
  assert.deepEqual(await (await f.app.request("/v1/captures")).json(), [{ id: "c1", host: "h1" }]);
});

test("a list no host answers: the agents' refusal, as they gave it", async () => {
  const denied = { status: 403, body: JSON.stringify({ error: { code: "VIGIL_FORBIDDEN", message: "Permission denied: network.read" } }) };
  const f = fixture({ h1: () => denied, h2: () => denied });
  const r = await f.app.request("/v1/captures");
  assert.equal(r.status, 403);
  assert.match(((await r.json()) as { error: { message: string } }).error.message, /network\.read/);
});

test("/metrics merges the ready hosts' expositions, each series labelled with its host's cluster name; a host that fails adds none", async () => {
  const text = (vm: string) => `# HELP vigil_vm_running 1 if running.\n# TYPE vigil_vm_running gauge\nvigil_vm_running{vm="${vm}",host="machine"} 1\n`;
  const f = fixture({
    h1: () => ({ status: 200, headers: { "content-type": "text/plain" }, body: text("web") }),
    h2: () => ({ status: 200, headers: { "content-type": "text/plain" }, body: text("db") }),
    h3: () => ({ status: 500, body: "{}" }),
  });
  const r = await f.app.request("/metrics");
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /version=0\.0\.4/);
  assert.equal(await r.text(), '# HELP vigil_vm_running 1 if running.\n# TYPE vigil_vm_running gauge\nvigil_vm_running{vm="web",host="h1"} 1\nvigil_vm_running{vm="db",host="h2"} 1\n');
});
