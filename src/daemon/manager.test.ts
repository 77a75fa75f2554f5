/**
 * The cluster manager's users' door (a one-machine trial: SQLite inventory, no hosts): `--listen` serves HTTPS
 * with the site certificate and bearer tokens exactly as a single host does (the CLI's client reaches it with a
 * pinned certificate), plain HTTP off loopback is refused before anything starts, the read routes are authorized
 * per route (403, audited), and `GET /v1/events` streams the durable events with Last-Event-ID catch-up.
 */
import { strict as assert } from "node:assert";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { X509Certificate } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { call, sseSplitter, type Target } from "../cli/client.ts";
import { caDir, initCa } from "../cluster/ca.ts";
import { ClusterRepository } from "../cluster/cluster-repository.ts";
import { openInventory, type Db } from "../inventory/db.ts";
import { createLogger } from "../log.ts";
import { homeLayout } from "../paths.ts";
import { startManager, type Manager } from "./manager.ts";

let dir: string;
let manager: Manager;
let db: Db;
let repo: ClusterRepository;
let local: Target;
const tokens: Record<string, string> = {};
let pin: { cert: string; fingerprint: string };
const as = (who: string): Target => ({ url: new URL(`https://127.0.0.1:${manager.tcpAddress!.port}`), token: tokens[who]!, pin });

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "vt-mgrnet-"));
  const home = join(dir, "home");
  await initCa(caDir(homeLayout(home).keysDir));
  const dbPath = join(dir, "inventory.sqlite");
  manager = await startManager({ home, db: dbPath, listen: "127.0.0.1:0", tls: "auto", log: createLogger({ level: "silent" }), heartbeatMs: 60_000 });
  db = await openInventory(dbPath);
  repo = new ClusterRepository(db);
  local = { socketPath: homeLayout(home).socket };
  const cert = readFileSync(join(homeLayout(home).keysDir, "tls-cert.pem"), "utf8");
  pin = { cert, fingerprint: new X509Certificate(cert).fingerprint256 };
  for (const [name, roles] of [["ada", ["admin"]], ["olga", ["owner"]], ["nobody", []]] as const) {
    tokens[name] = (await call<{ token: string }>("POST", "/v1/users", { name, roles }, local)).token;
  }
});
after(async () => {
  await manager?.close();
  await db?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

test("the manager serves HTTPS with the site certificate and tokens, like a single host", async () => {
  assert.equal(manager.tlsFingerprint, pin.fingerprint);
  assert.equal((await call<{ name: string; via: string }>("GET", "/v1/whoami", undefined, as("olga"))).name, "olga");
  await assert.rejects(call("GET", "/v1/whoami", undefined, { url: as("olga").url!, pin }), /valid token/);
  await assert.rejects(call("GET", "/v1/whoami", undefined, { ...as("olga"), token: "vgt_not-a-token" }), /valid token/);
  // Plain HTTP on that port gets no API (the listener is TLS only).
  await assert.rejects(call("GET", "/v1/whoami", undefined, { url: new URL(`http://127.0.0.1:${manager.tcpAddress!.port}`), token: tokens.olga! }));
  // The user list and tokens live in the same inventory: an admin over TCP sees them, the owner may not.
  assert.ok((await call<{ users: { name: string }[] }>("GET", "/v1/users", undefined, as("ada"))).users.some((u) => u.name === "nobody"));
  await assert.rejects(call("GET", "/v1/users", undefined, as("olga")), /Permission denied/);
});

test("plain HTTP off loopback is refused before the manager creates anything", async () => {
  const home = join(dir, "refused");
  await assert.rejects(startManager({ home, db: join(dir, "never.sqlite"), listen: "10.0.0.1:7450", tls: "off", log: createLogger({ level: "silent" }) }), (err: Error & { field?: string }) => {
    assert.match(err.message, /without TLS/);
    assert.equal(err.field, "listen");
    return true;
  });
  assert.equal(existsSync(join(dir, "never.sqlite")), false, "no inventory was made");
  assert.equal(existsSync(homeLayout(home).pidFile), false, "no pid file was claimed");
});

const READS = ["/v1/hosts", "/v1/migrations", "/v1/cluster/balance", "/v1/cluster/consolidate", "/v1/events?after=0"];

test("read routes: a token with no role gets 403 on each (audited denied), an owner on the host-wide ones, an admin gets them all", async () => {
  for (const path of READS) {
    await assert.rejects(call("GET", path, undefined, as("nobody")), (e: { status?: number }) => e.status === 403, `nobody: ${path}`);
  }
  for (const path of ["/v1/hosts", "/v1/cluster/balance", "/v1/cluster/consolidate"]) {
    await assert.rejects(call("GET", path, undefined, as("olga")), (e: { status?: number }) => e.status === 403, `owner: ${path}`);
  }
  assert.deepEqual(await call("GET", "/v1/migrations", undefined, as("olga")), []);
  for (const path of READS) await call("GET", path, undefined, as("ada"));
  const { records } = await call<{ records: { actor: string; action: string; result: string }[] }>("GET", "/v1/audit?limit=1000", undefined, local);
  const denied = records.filter((r) => r.result === "denied").map((r) => `${r.actor} ${r.action}`);
  for (const d of ["nobody host.list", "nobody migration.list", "nobody cluster.balance", "nobody cluster.consolidate", "nobody cluster.events", "olga host.list", "olga cluster.balance"]) {
    assert.ok(denied.includes(d), `audited: ${d} (${denied.join(", ")})`);
  }
});

test("migrations and events: a user sees those of VMs they may read, an admin all", async () => {
  await repo.setPlacement({ vmId: "00000000-0000-4000-8000-00000000000a", vmName: "olgas", host: "h1", owner: "user:olga" });
  await repo.setPlacement({ vmId: "00000000-0000-4000-8000-00000000000b", vmName: "others", host: "h1", owner: "user:ada" });
  const limits = { maxDowntimeMs: 300, timeoutMs: 60_000, maxBandwidth: 0 } as never;
  const mine = await repo.createMigration({ vmId: "00000000-0000-4000-8000-00000000000a", vmName: "olgas", source: "h1", target: "h2", requestedBy: "olga", options: limits });
  const theirs = await repo.createMigration({ vmId: "00000000-0000-4000-8000-00000000000b", vmName: "others", source: "h1", target: "h2", requestedBy: "ada", options: limits });
  await repo.appendEvent({ kind: "migration.started", subject: "olgas", payload: { id: mine.id } });
  await repo.appendEvent({ kind: "migration.started", subject: "others", payload: { id: theirs.id } });
  await repo.appendEvent({ kind: "host.unreachable", subject: "h1", payload: {} });
  const ids = (ms: { id: string }[]) => ms.map((m) => m.id).sort();
  assert.deepEqual(ids(await call<{ id: string }[]>("GET", "/v1/migrations", undefined, as("olga"))), [mine.id]);
  assert.deepEqual(ids(await call<{ id: string }[]>("GET", "/v1/migrations", undefined, as("ada"))), [mine.id, theirs.id].sort());
  assert.equal((await call<{ id: string }>("GET", `/v1/migrations/${mine.id}`, undefined, as("olga"))).id, mine.id);
  await assert.rejects(call("GET", `/v1/migrations/${theirs.id}`, undefined, as("olga")), (e: { status?: number }) => e.status === 403);
  const subjects = async (who: string) => (await call<{ subject: string }[]>("GET", "/v1/events?after=0", undefined, as(who))).map((e) => e.subject);
  assert.deepEqual(await subjects("olga"), ["olgas"], "an owner sees its VM's events, not another's nor the hosts'");
  assert.deepEqual((await subjects("ada")).filter((s) => ["olgas", "others", "h1"].includes(s)), ["olgas", "others", "h1"]);
  await assert.rejects(call("GET", "/v1/events?after=x", undefined, as("ada")), /Invalid after/);
});

/** Reads an SSE stream until `until` is true of the events so far (or the time is up); then closes it. */
function sse(who: string, path: string, headers: Record<string, string>, until: (events: { event: string; id?: string; data: string }[]) => boolean): Promise<{ event: string; id?: string; data: string }[]> {
  return new Promise((resolve, reject) => {
    const events: { event: string; id?: string; data: string }[] = [];
    const req = httpsRequest({ host: "127.0.0.1", port: manager.tcpAddress!.port, path, ca: pin.cert, headers: { accept: "text/event-stream", authorization: `Bearer ${tokens[who]}`, ...headers } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
      const split = sseSplitter();
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        events.push(...split(chunk));
        if (until(events)) {
          req.destroy();
          resolve(events);
        }
      });
    });
    req.on("error", (err) => (events.length > 0 ? resolve(events) : reject(err)));
    req.setTimeout(15_000, () => {
      req.destroy();
      resolve(events);
    });
    req.end();
  });
}

test("GET /v1/events streams: catch-up after Last-Event-ID from the durable table, then new events as they are committed", { timeout: 30_000 }, async () => {
  const base = await repo.appendEvent({ kind: "host.ready", subject: "h9", payload: {} });
  const catchUp = await repo.appendEvent({ kind: "migration.started", subject: "olgas", payload: { n: 1 } });
  const got = sse("ada", "/v1/events", { "last-event-id": String(base.seq) }, (es) => es.some((e) => e.event === "cluster" && JSON.parse(e.data).payload.n === 2));
  // Appended while the stream is open (by another writer of the inventory, as an agent-side manager restart would).
  setTimeout(() => void repo.appendEvent({ kind: "migration.started", subject: "olgas", payload: { n: 2 } }), 700);
  const events = await got;
  assert.equal(events[0]!.event, "hello");
  const cluster = events.filter((e) => e.event === "cluster");
  assert.deepEqual(cluster.map((e) => Number(e.id)).slice(0, 1), [catchUp.seq], "the first event is the one after Last-Event-ID");
  assert.deepEqual(cluster.map((e) => JSON.parse(e.data).payload.n), [1, 2]);
  // after= works the same; an owner's stream leaves out what it may not read.
  const owner = await sse("olga", `/v1/events?after=${base.seq - 1}`, {}, (es) => es.filter((e) => e.event === "cluster").length >= 2);
  assert.deepEqual(owner.filter((e) => e.event === "cluster").map((e) => JSON.parse(e.data).subject), ["olgas", "olgas"], "not h9's host event");
  await assert.rejects(sse("nobody", "/v1/events", {}, () => true), /status 403/);
});
