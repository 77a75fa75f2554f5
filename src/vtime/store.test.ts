import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { openSqlite } from "../inventory/db.ts";
import { MonotonicStore, type StoreQuotas } from "./store.ts";

async function store(t: TestContext, quotas?: StoreQuotas) {
  const dir = mkdtempSync(join(tmpdir(), "vtime-"));
  const db = await openSqlite(join(dir, "v.db"));
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return new MonotonicStore(db, quotas);
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

test("quotas per namespace: records, record bytes and counters; refused with a clear error, retries still answered, other namespaces unaffected", async (t) => {
  const s = await store(t, { counters: 2, records: 3, recordBytes: 10 });
  assert.equal(await s.append("ns1", "a", "1234", "rid-a0000001"), 1);
  assert.equal(await s.append("ns1", "b", "1234", "rid-a0000002"), 1);
  await assert.rejects(s.append("ns1", "a", "12345", "rid-a0000003"), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_POLICY_DENIED" && /quota exceeded, the records would hold 13 bytes \(at most 10\)/.test(err.message));
  assert.equal(await s.append("ns1", "a", "12", "rid-a0000004"), 2, "a record that fits the bytes left is taken");
  await assert.rejects(s.append("ns1", "a", "", "rid-a0000005"), /quota exceeded, the store already holds 3 records \(at most 3\)/);
  assert.equal(await s.append("ns1", "a", "1234", "rid-a0000001"), 1, "a retry of an applied append is answered");
  assert.equal(await s.append("ns2", "a", "1234", "rid-a0000006"), 1, "another namespace has its own quota");
  assert.deepEqual((await s.dump("ns1")).streams, [{ stream: "a", records: 2 }, { stream: "b", records: 1 }], "nothing half-written");

  assert.equal(await s.incr("ns1", "c1", 1, "rid-c0000001"), 1);
  assert.deepEqual(await s.cas("ns1", "c2", 0, 5, "rid-c0000002"), { ok: true, value: 5 });
  await assert.rejects(s.incr("ns1", "c3", 1, "rid-c0000003"), /Cannot create counter "c3": quota exceeded, the store already holds 2 counters \(at most 2\)/);
  await assert.rejects(s.cas("ns1", "c3", 0, 1, "rid-c0000004"), /quota exceeded/);
  assert.equal(await s.incr("ns1", "c1", 1, "rid-c0000005"), 2, "existing counters keep moving");
  assert.equal(await s.read("ns1", "c3"), 0);
});
