/**
 * The events stream: a slow client is told when it falls too far behind (an `overflow` event, then the end)
 * instead of silently missing audit records, and only a request's own actor (or an admin) follows its progress.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import { serveEvents, type EventSink } from "./event-stream.ts";

async function daemon(t: TestContext): Promise<Daemon> {
  const home = mkdtempSync(join(tmpdir(), "vigil-events-"));
  const d = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await d.close();
    rmSync(home, { recursive: true, force: true });
  });
  return d;
}

/** A sink that records events; while `gate` is closed every audit event waits (a client that reads slowly). */
function slowSink() {
  const events: Array<{ event: string; data: string; id?: string }> = [];
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const aborts: Array<() => void> = [];
  let aborted = false;
  const sink: EventSink = {
    get aborted() {
      return aborted;
    },
    onAbort: (l) => aborts.push(l),
    event: async (e) => {
      events.push(e);
      if (e.event === "audit") await gate;
    },
    keepAlive: async () => undefined,
  };
  return { sink, events, release: open, abort: () => ((aborted = true), aborts.forEach((l) => l())) };
}

const admin = { actor: { userId: "u0", name: "root", roles: ["admin" as const], introspect: false, groups: [], via: "unix" as const }, requestId: "r-test" };
const record = (d: Daemon, i: number) => d.deps.audit.append({ actor: "root", action: `test.${i}`, target: { kind: "host", name: "h" }, result: "ok" });

test("a client that falls more than maxQueue events behind gets an overflow event naming the last record it got, then the stream ends", async (t) => {
  const d = await daemon(t);
  const { sink, events, release, abort } = slowSink();
  t.after(abort);
  const served = serveEvents(d.deps, admin, sink, { maxQueue: 5 });
  const first = await record(d, 0); // taken off the queue; its write blocks
  await new Promise((r) => setImmediate(r));
  for (let i = 1; i <= 8; i++) await record(d, i); // 5 fit in the queue, the 6th overflows it
  release();
  await served; // ends by itself
  assert.deepEqual(events.map((e) => e.event), ["hello", "audit", "overflow"]);
  const overflow = JSON.parse(events[2]!.data) as { lastSeq: number; queued: number };
  assert.equal(overflow.lastSeq, first.seq, "the client can resume after the last record it was sent");
  assert.equal(overflow.queued, 5);
});

test("a client that keeps up gets every record and no overflow", async (t) => {
  const d = await daemon(t);
  const { sink, events, release, abort } = slowSink();
  release();
  const served = serveEvents(d.deps, admin, sink, { maxQueue: 5 });
  for (let i = 0; i < 12; i++) {
    await record(d, i);
    await new Promise((r) => setImmediate(r));
  }
  abort();
  await served;
  assert.equal(events.filter((e) => e.event === "audit").length, 12);
  assert.equal(events.some((e) => e.event === "overflow"), false);
});

/** Reads SSE from a response until `until` matches the text so far or `ms` pass; returns the text. */
async function readSse(res: Response, until: RegExp, ms: number): Promise<string> {
  const reader = res.body!.getReader();
  let text = "";
  const deadline = Date.now() + ms;
  while (!until.test(text) && Date.now() < deadline) {
    const chunk = await Promise.race([reader.read(), new Promise<undefined>((r) => setTimeout(() => r(undefined), Math.max(1, deadline - Date.now())))]);
    if (!chunk || chunk.done) continue;
    text += new TextDecoder().decode(chunk.value);
  }
  await reader.cancel();
  return text;
}

test("?progress=<request id> shows progress only to the actor who sent that request (or an admin)", async (t) => {
  const d = await daemon(t);
  const tokens: Record<string, string> = {};
  for (const name of ["bob", "carol"]) {
    await d.deps.users.create({ name, roles: ["owner"], introspect: false }, "test");
    tokens[name] = (await d.deps.users.issueToken(name, "t")).token;
  }
  const rid = "carols-request-1";
  const follow = (who: string | "unix") =>
    who === "unix" ? d.app.request(`/v1/events?progress=${rid}`, {}, { transport: "unix" }) : d.app.request(`/v1/events?progress=${rid}`, { headers: { authorization: `Bearer ${tokens[who]}` } }, { transport: "tcp" });
  const [bob, carol, root] = [await follow("bob"), await follow("carol"), await follow("unix")];
  // carol sends the request with that id (the CLI picks it, follows it, then sends the request)
  const mine = await d.app.request("/v1/whoami", { headers: { authorization: `Bearer ${tokens.carol}`, "x-request-id": rid } }, { transport: "tcp" });
  assert.equal(mine.status, 200);
  d.deps.progress.emit({ requestId: rid, what: "copy", current: 1, total: 2 });
  const [b, c, r] = await Promise.all([readSse(bob, /event: progress/, 500), readSse(carol, /event: progress/, 2000), readSse(root, /event: progress/, 2000)]);
  assert.match(c, /event: progress/, "the request's own actor follows it");
  assert.match(r, /event: progress/, "an admin may follow any request");
  assert.doesNotMatch(b, /event: progress/, "another user does not see it");
  assert.match(b, /event: hello/);
});

test("the events query is strict: an unknown parameter is refused naming it", async (t) => {
  const d = await daemon(t);
  const res = await d.app.request("/v1/events?progres=abc", {}, { transport: "unix" });
  assert.equal(res.status, 400);
  assert.equal(((await res.json()) as { error: { field: string } }).error.field, "progres");
});

test("an owner following /v1/events sees exactly the records GET /v1/audit shows it (one rule: mayReadRecord)", async (t) => {
  const d = await daemon(t);
  const tokens: Record<string, string> = {};
  for (const name of ["bob", "carol"]) {
    await d.deps.users.create({ name, roles: ["owner"], introspect: false }, "test");
    tokens[name] = (await d.deps.users.issueToken(name, "t")).token;
  }
  const as = (who: string, path: string) => d.app.request(path, { headers: { authorization: `Bearer ${tokens[who]}` } }, { transport: "tcp" });
  const vm = async (name: string, owner: string) => {
    const spec = resolveSpec(createVmRequestSchema.parse({ name }), { name: "blank", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
    const id = crypto.randomUUID();
    await d.repo.insert({ id, name, spec, state: "stopped", host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: "test", createdAt: new Date().toISOString() });
    return id;
  };
  const mine = await vm("mine", "user:bob");
  const theirs = await vm("theirs", "user:carol");
  const start = (await d.deps.audit.list({ tail: true, limit: 1 }))[0]?.seq ?? 0;
  const stream = await as("bob", "/v1/events");
  assert.equal(stream.status, 200);
  // Records about bob's VM, carol's VM, a VM that no longer exists, a user, and the host.
  for (const target of [
    { kind: "vm", id: mine, name: "mine" },
    { kind: "vm", id: theirs, name: "theirs" },
    { kind: "vm", id: "gone-vm-id", name: "gone" },
    { kind: "user", id: "u-carol", name: "carol" },
    { kind: "host", name: "h" },
    { kind: "snapshot", id: mine, name: "s1" },
  ]) {
    await d.deps.audit.append({ actor: "test", action: "test.visibility", target, result: "ok" });
  }
  await d.deps.audit.append({ actor: "test", action: "test.last", target: { kind: "vm", id: mine, name: "mine" }, result: "ok" });
  const text = await readSse(stream, /"action":"test\.last"/, 3000);
  const streamed = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1])).filter((s) => s > start);
  const listed = (await (await as("bob", `/v1/audit?after=${start}`)).json()) as { records: Array<{ seq: number; target: { id: string | null } }> };
  assert.deepEqual(streamed, listed.records.map((r) => r.seq), "the stream and the list show the same records");
  assert.deepEqual(listed.records.map((r) => r.target.id), [mine, mine, mine], "only records about bob's VM");
  // An auditor lists everything; a user with no role may read no record and is refused (audited denied).
  await d.deps.users.create({ name: "nobody", roles: [], introspect: false }, "test");
  const nobody = (await d.deps.users.issueToken("nobody", "t")).token;
  const refused = await d.app.request("/v1/audit", { headers: { authorization: `Bearer ${nobody}` } }, { transport: "tcp" });
  assert.equal(refused.status, 403);
  const all = (await (await d.app.request(`/v1/audit?after=${start}`, {}, { transport: "unix" })).json()) as { records: unknown[] };
  assert.ok(all.records.length >= 7);
});

test("following a request another user sent is refused and the refusal is audited denied", async (t) => {
  const d = await daemon(t);
  const tokens: Record<string, string> = {};
  for (const name of ["bob", "carol"]) {
    await d.deps.users.create({ name, roles: ["owner"], introspect: false }, "test");
    tokens[name] = (await d.deps.users.issueToken(name, "t")).token;
  }
  const rid = "carols-request-2";
  const sent = await d.app.request("/v1/whoami", { headers: { authorization: `Bearer ${tokens.carol}`, "x-request-id": rid } }, { transport: "tcp" });
  assert.equal(sent.status, 200);
  const bob = await d.app.request(`/v1/events?progress=${rid}`, { headers: { authorization: `Bearer ${tokens.bob}` } }, { transport: "tcp" });
  assert.equal(bob.status, 200);
  d.deps.progress.emit({ requestId: rid, what: "copy", current: 1, total: 2 });
  const text = await readSse(bob, /event: hello/, 2000);
  assert.doesNotMatch(text, /event: progress/);
  const denied = (await d.deps.audit.list({ limit: 1000 })).filter((r) => r.action === "events.progress");
  assert.equal(denied.length, 1, "one denied record for the refused subscription");
  assert.deepEqual([denied[0]!.actor, denied[0]!.result, denied[0]!.target.name], ["bob", "denied", rid]);
});

test("a subscriber with audit.read gets every record without an owner lookup per record", async (t) => {
  const d = await daemon(t);
  const { sink, events, release, abort } = slowSink();
  release();
  let lookups = 0;
  const vms = { ownerOf: (id: string) => ((lookups += 1), d.deps.vms.ownerOf(id)) };
  const served = serveEvents({ ...d.deps, vms }, admin, sink);
  for (let i = 0; i < 3; i++) {
    await d.deps.audit.append({ actor: "root", action: `test.vm.${i}`, target: { kind: "vm", id: `vm-${i}`, name: `v${i}` }, result: "ok" });
    await new Promise((r) => setImmediate(r));
  }
  abort();
  await served;
  assert.equal(events.filter((e) => e.event === "audit").length, 3);
  assert.equal(lookups, 0);
});
