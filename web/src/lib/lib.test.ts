import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { visibleRange } from "./virtual-window.ts";
import { matchesFilter, sortVms } from "./filter.ts";
import { treeOrder } from "./tree.ts";
import { may } from "./permissions.ts";
import { parseRoute, routeHref } from "./router.ts";
import { bytes, rate, relative } from "./format.ts";
import type { Vm } from "./types.ts";
import { ApiError, api, download, setCsrf, upload } from "./api.ts";

test("visibleRange renders only the rows in view (plus overscan), for any list and scroll position", () => {
  const r = visibleRange(10_000, 36, 36 * 5000, 720, 8);
  assert.deepEqual([r.first, r.end, r.offset, r.total], [4992, 5028, 4992 * 36, 360_000]);
  fc.assert(
    fc.property(fc.nat(100_000), fc.integer({ min: 1, max: 200 }), fc.integer({ min: -1000, max: 10_000_000 }), fc.integer({ min: 0, max: 5000 }), (n, h, top, vp) => {
      const w = visibleRange(n, h, top, vp);
      assert.ok(w.first >= 0 && w.first <= w.end && w.end <= n);
      assert.equal(w.offset, w.first * h);
      assert.ok(w.end - w.first <= Math.ceil(vp / h) + 17, "never more than a screenful and the overscan");
      // every row inside the viewport is rendered
      const top2 = Math.max(0, Math.min(top, n * h));
      for (const row of [Math.floor(top2 / h), Math.min(n - 1, Math.floor((top2 + vp - 1) / h))]) if (row >= 0 && row < n && vp > 0) assert.ok(row >= w.first && row < w.end, `row ${row} in ${w.first}..${w.end}`);
    }),
  );
});

const vm = (o: Partial<Vm>): Vm => ({ id: o.name ?? "x", name: "x", state: "stopped", host: "h1", accelerator: null, vmgenid: "", generation: 0, pid: null, owner: "user:alice", approver: null, purpose: null, expiresAt: null, expired: false, labels: {}, lineage: {}, template: false, createdBy: "alice", createdAt: "", stateChangedAt: "", spec: { vcpus: 1, memoryMiB: 256 }, nics: [], ...o });

test("the inventory filter: every search word must match; state, host and badge filters", () => {
  const f = { text: "", state: "", host: "", badge: "" };
  const web = vm({ name: "web-1", purpose: "Shop front", labels: { tier: "prod" }, state: "running" });
  assert.ok(matchesFilter(web, { ...f, text: "shop prod" }));
  assert.ok(!matchesFilter(web, { ...f, text: "shop staging" }));
  assert.ok(matchesFilter(web, { ...f, text: "ALICE" }), "case-insensitive, owner included");
  assert.ok(!matchesFilter(web, { ...f, state: "stopped" }));
  assert.ok(!matchesFilter(web, { ...f, host: "h2" }));
  assert.ok(!matchesFilter(web, { ...f, badge: "expired" }));
  assert.ok(matchesFilter(vm({ posture: "infected" }), { ...f, badge: "alarm" }));
  assert.ok(!matchesFilter(vm({ posture: "current" }), { ...f, badge: "alarm" }));
  assert.deepEqual(sortVms([vm({ name: "b", owner: "z" }), vm({ name: "a", owner: "z" }), vm({ name: "c", owner: "a" })], "owner").map((v) => v.name), ["c", "a", "b"]);
});

test("treeOrder: depth-first with depths; orphans become roots; a cycle cannot loop", () => {
  const items = [
    { n: "a", p: null },
    { n: "b", p: "a" },
    { n: "c", p: "b" },
    { n: "d", p: "a" },
    { n: "o", p: "gone" },
  ];
  assert.deepEqual(treeOrder(items, (x) => x.n, (x) => x.p).map((r) => `${r.item.n}${r.depth}`), ["a0", "b1", "c2", "d1", "o0"]);
  const cycle = [
    { n: "x", p: "y" },
    { n: "y", p: "x" },
  ];
  assert.deepEqual(treeOrder(cycle, (x) => x.n, (x) => x.p).map((r) => r.item.n).sort(), ["x", "y"]);
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 30 }), fc.option(fc.integer({ min: 0, max: 30 }))), { maxLength: 40 }), (pairs) => {
      const uniq = [...new Map(pairs.map(([a, b]) => [a, { n: String(a), p: b === null ? null : String(b) }])).values()];
      const out = treeOrder(uniq, (x) => x.n, (x) => x.p);
      assert.equal(out.length, uniq.length, "each item exactly once");
    }),
  );
});

test("may: global grants, grants on owned VMs (directly or through a group), nothing without a session", () => {
  const s = { user: { name: "bob", roles: ["owner"], groups: ["dev"] }, can: ["vm.create"], ownedCan: ["vm.control", "vm.console"] };
  assert.ok(may(s, "vm.create"));
  assert.ok(may(s, "vm.control", "user:bob"));
  assert.ok(may(s, "vm.console", "group:dev"));
  assert.ok(!may(s, "vm.control", "user:alice"));
  assert.ok(!may(s, "vm.control"));
  assert.ok(!may(s, "vm.delete", "user:bob"));
  assert.ok(!may(null, "vm.read"));
});

test("routes: parse and format round-trip; an odd path is the inventory", () => {
  for (const r of [{ page: "inventory" as const }, { page: "inventory" as const, host: "h2" }, { page: "vm" as const, name: "web-1", tab: "console" }, { page: "vm" as const, name: "db", tab: "summary" }, { page: "audit" as const }, { page: "users" as const }, { page: "host" as const }, { page: "tokens" as const }, { page: "hosts" as const }, { page: "networks" as const }, { page: "posture" as const }, { page: "tasks" as const }]) {
    const u = new URL(routeHref(r), "http://x");
    assert.deepEqual(parseRoute(u.pathname, u.search), r);
  }
  assert.deepEqual(parseRoute("/vms/../etc", ""), { page: "inventory" });
  assert.deepEqual(parseRoute("/nothing", ""), { page: "inventory" });
});

test("format: bytes, rates of counters (a counter that went back is no rate), relative times", () => {
  assert.equal(bytes(0), "0 B");
  assert.equal(bytes(1536), "1.5 KiB");
  assert.equal(bytes(256 * 1024 * 1024), "256 MiB");
  assert.equal(bytes(null), "—");
  assert.equal(rate(100, 300, 2), 100);
  assert.equal(rate(300, 100, 2), null);
  assert.equal(rate(null, 1, 1), null);
  assert.equal(relative(new Date(Date.UTC(2026, 0, 3)).toISOString(), Date.UTC(2026, 0, 1)), "in 2 d");
  assert.equal(relative(new Date(Date.UTC(2026, 0, 1, 0, 0)).toISOString(), Date.UTC(2026, 0, 1, 3, 0)), "3 h ago");
});

/** Replaces fetch for one test with `answer`, recording what was asked. */
function fakeFetch(t: { after: (f: () => void) => void }, answer: (url: string, init: RequestInit) => Response) {
  const calls: { url: string; init: RequestInit }[] = [];
  const real = globalThis.fetch;
  globalThis.fetch = (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    return answer(url, init);
  }) as typeof fetch;
  t.after(() => {
    globalThis.fetch = real;
    setCsrf(null);
  });
  return calls;
}

test("api: the CSRF value on changes only, vigil's error body as an ApiError naming the field, other bodies too", async (t) => {
  const calls = fakeFetch(t, (url) => {
    if (url === "/v1/bad") return new Response(JSON.stringify({ error: { code: "VIGIL_BAD_REQUEST", message: "Invalid name", field: "name" } }), { status: 400 });
    if (url === "/v1/proxy") return new Response("<html>502 Bad Gateway</html>", { status: 502, statusText: "Bad Gateway" });
    if (url === "/v1/empty") return new Response(null, { status: 404, statusText: "Not Found" });
    return new Response(JSON.stringify({ ok: true }));
  });
  setCsrf("c1");
  assert.deepEqual(await api("GET", "/v1/x"), { ok: true });
  await api("POST", "/v1/x", { body: { a: 1 }, requestId: "web-1" });
  const [get, post] = calls.map((c) => c.init.headers as Record<string, string>);
  assert.equal(get?.["x-vigil-csrf"], undefined);
  assert.deepEqual([post?.["x-vigil-csrf"], post?.["content-type"], post?.["x-request-id"]], ["c1", "application/json", "web-1"]);
  assert.equal(calls[1]?.init.body, '{"a":1}');
  const bad = await api("POST", "/v1/bad").catch((e: unknown) => e);
  assert.ok(bad instanceof ApiError);
  assert.deepEqual([bad.status, bad.code, bad.message, bad.field], [400, "VIGIL_BAD_REQUEST", "Invalid name", "name"]);
  const proxy = await api("GET", "/v1/proxy").catch((e: unknown) => e as ApiError);
  assert.deepEqual([proxy.code, proxy.message], ["VIGIL_BAD_RESPONSE", "<html>502 Bad Gateway</html>"]);
  const empty = await api("GET", "/v1/empty").catch((e: unknown) => e as ApiError);
  assert.deepEqual([empty.code, empty.message], ["HTTP_404", "Not Found"]);
});

test("download reads the answer as it arrives and reports bytes of the Content-Length; upload sends the file as the body", async (t) => {
  const payload = new Uint8Array(200_000).map((_, i) => i % 251);
  const calls = fakeFetch(t, (url, init) => {
    if (url.startsWith("/v1/vms/import")) return new Response(JSON.stringify({ name: "copy", type: (init.headers as Record<string, string>)["content-type"] }), { status: 201 });
    return new Response(payload, { headers: { "content-length": String(payload.length), "content-type": "application/x-vigil-bundle" } });
  });
  setCsrf("c2");
  const seen: [number, number | null][] = [];
  const blob = await download("/v1/vms/web/export", { withSnapshots: true }, { onBytes: (d, total) => seen.push([d, total]) });
  assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), payload);
  assert.equal(blob.type, "application/x-vigil-bundle");
  assert.ok(seen.length >= 1 && seen.at(-1)?.[0] === payload.length && seen.every(([, total]) => total === payload.length), JSON.stringify(seen.slice(-2)));
  assert.ok(seen.every(([d], i) => i === 0 || d > seen[i - 1]![0]), "bytes only grow");
  assert.equal(calls[0]?.init.body, '{"withSnapshots":true}');
  const file = new Blob([payload]);
  assert.deepEqual(await upload("/v1/vms/import?name=copy", file, "application/x-vigil-bundle"), { name: "copy", type: "application/x-vigil-bundle" });
  assert.equal(calls[1]?.init.body, file, "the file itself is the body, not a copy read into the page");
  assert.equal((calls[1]?.init.headers as Record<string, string>)["x-vigil-csrf"], "c2");
});
