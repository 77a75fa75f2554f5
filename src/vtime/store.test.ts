import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite } from "../inventory/db.ts";
import { MonotonicStore } from "./store.ts";

async function store(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), "vtime-"));
  const db = await openSqlite(join(dir, "v.db"));
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return new MonotonicStore(db);
}

test("counters only move forward; a retried request is applied once", async (t) => {
  const s = await store(t);
  assert.equal(await s.read("ns1", "c"), 0);
  assert.equal(await s.incr("ns1", "c", 1, "rid-00000001"), 1);
  assert.equal(await s.incr("ns1", "c", 1, "rid-00000001"), 1, "same rid: not doubled");
  assert.equal(await s.incr("ns1", "c", 5, "rid-00000002"), 6);
  await assert.rejects(s.incr("ns1", "c", 0, "rid-00000003"), /only move forward/);
  await assert.rejects(s.incr("ns1", "c", -1, "rid-00000003"), /only move forward/);
  assert.deepEqual(await s.cas("ns1", "c", 5, 9, "rid-00000004"), { ok: false, value: 6 });
  assert.deepEqual(await s.cas("ns1", "c", 6, 9, "rid-00000005"), { ok: true, value: 9 });
  assert.deepEqual(await s.cas("ns1", "c", 6, 9, "rid-00000005"), { ok: true, value: 9 }, "a retried cas succeeds again, idempotently");
  await assert.rejects(s.cas("ns1", "c", 9, 3, "rid-00000006"), /only move forward/);
});

test("namespaces do not see each other", async (t) => {
  const s = await store(t);
  await s.incr("parent", "otp", 3, "rid-aaaaaaaa");
  assert.equal(await s.read("clone", "otp"), 0);
  await s.incr("clone", "otp", 1, "rid-bbbbbbbb");
  assert.equal(await s.read("parent", "otp"), 3);
});

test("records are append-only with gapless sequence numbers, idempotent per rid", async (t) => {
  const s = await store(t);
  assert.equal(await s.append("n", "log", "a", "rid-00000001"), 1);
  assert.equal(await s.append("n", "log", "b", "rid-00000002"), 2);
  assert.equal(await s.append("n", "log", "b", "rid-00000002"), 2);
  assert.deepEqual((await s.records("n", "log", 0, 10)).map((r) => [r.seq, r.data]), [[1, "a"], [2, "b"]]);
  assert.deepEqual((await s.records("n", "log", 1, 10)).map((r) => r.seq), [2]);
});

test("the clock never goes backwards", async (t) => {
  const s = await store(t);
  let last = 0;
  for (let i = 0; i < 1000; i++) {
    const now = s.clock();
    assert.ok(now > last);
    last = now;
  }
});
