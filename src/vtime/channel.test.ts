/**
 * The vtime channel against a scripted hostile guest (a fake QEMU socket): malformed, oversized, mistyped and
 * flooding input is answered or cut off; valid requests keep working; nothing throws out of the channel.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite } from "../inventory/db.ts";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { silentLogger } from "../log.ts";
import { MonotonicStore, type StoreQuotas } from "./store.ts";
import { VtimeChannel } from "./channel.ts";

async function setup(t: TestContext, options: { auditWindowMs?: number; quotas?: StoreQuotas; clock?: () => number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "vtime-ch-"));
  const db = await openSqlite(join(dir, "v.db"));
  const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), "h", join(dir, "head.json"));
  const store = new MonotonicStore(db, options.quotas);
  const path = join(dir, "vtime.sock");
  let guest!: Socket;
  const connected = new Promise<void>((resolve) => {
    const server = createServer((s) => {
      guest = s;
      s.on("error", () => undefined);
      resolve();
    });
    server.listen(path);
    t.after(() => server.close());
  });
  const channel = new VtimeChannel(path, { vmId: "vm1", vmName: "g", namespace: async () => "ns" }, store, audit, silentLogger(), { ...(options.auditWindowMs !== undefined ? { auditWindowMs: options.auditWindowMs } : {}), ...(options.clock ? { clock: options.clock } : {}) });
  await new Promise((r) => setTimeout(r, 20));
  channel.open();
  await connected;
  t.after(async () => {
    await channel.close();
    guest.destroy();
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const lines: string[] = [];
  let buf = "";
  guest.on("data", (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  const ask = async (line: string, expectReplies = 1) => {
    const before = lines.length;
    guest.write(line + "\n");
    const deadline = Date.now() + 3000;
    while (lines.length < before + expectReplies && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    return lines.slice(before).map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  return { ask, guest, channel, store, audit, lines };
}

test("valid requests are answered and changes are audited as the guest", async (t) => {
  const { ask, audit } = await setup(t);
  assert.deepEqual(await ask('{"rid":"r-00000001","op":"incr","name":"otp"}'), [{ rid: "r-00000001", ok: true, value: 1 }]);
  assert.deepEqual(await ask('{"rid":"r-00000002","op":"read","name":"otp"}'), [{ rid: "r-00000002", ok: true, value: 1 }]);
  const [last] = await audit.list({ tail: true, limit: 1 });
  assert.equal(last?.actor, "vm:g");
  assert.equal(last?.action, "vtime.incr");
});

test("malformed and mistyped requests get an error answer, the channel stays up", async (t) => {
  const { ask } = await setup(t);
  for (const bad of ["not json", "[]", '{"op":"incr"}', '{"rid":"r-00000003","op":"incr","name":"../../x"}', '{"rid":"r-00000004","op":"incr","name":"a","by":-5}', '{"rid":"r-00000005","op":"drop-table"}', '{"rid":"r-00000006","op":"read","name":"a","extra":1}']) {
    const [r] = await ask(bad);
    assert.equal(r?.ok, false, bad);
  }
  assert.deepEqual(await ask('{"rid":"r-00000007","op":"ping"}'), [{ rid: "r-00000007", ok: true }]);
});

test("an oversized line is dropped without an answer and without buffering it", async (t) => {
  const { ask, guest, channel } = await setup(t);
  guest.write("x".repeat(100_000) + "\n");
  assert.deepEqual(await ask('{"rid":"r-00000008","op":"ping"}'), [{ rid: "r-00000008", ok: true }]);
  assert.ok(channel.problems.some((p) => p.includes("over-long")));
});

test("a flood cuts the channel off; the store is untouched", async (t) => {
  const { guest, channel, store } = await setup(t);
  let junk = "";
  for (let i = 0; i < 2000; i++) junk += '{"rid":"x"}\n';
  guest.write(junk);
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(channel.problems.some((p) => p.includes("flood")));
  assert.equal(await store.read("ns", "otp"), 0);
});

test("changes are rate limited per VM", async (t) => {
  // A frozen clock: all 70 changes fall in one second however slowly this machine answers.
  const { ask } = await setup(t, { clock: () => 1_000_000 });
  let limited = 0;
  for (let i = 0; i < 70; i++) {
    const [r] = await ask(`{"rid":"r-${String(i).padStart(8, "0")}","op":"incr","name":"c"}`);
    if (r?.ok === false && String(r.error).includes("rate limited")) limited++;
  }
  assert.ok(limited > 0, "more than 50 changes in a second are refused");
});

const rid = (i: number) => `r-${String(i).padStart(8, "0")}`;
const byVm = async (audit: AuditLog) => (await audit.list({ targetId: "vm1" })).filter((r) => r.actor === "vm:g");

test("changes are audited in aggregate: the first of a window as itself, the rest as one summary with counts", async (t) => {
  const { ask, audit, channel } = await setup(t);
  for (let i = 0; i < 20; i++) assert.equal((await ask(`{"rid":"${rid(i)}","op":"incr","name":"c"}`))[0]?.ok, true);
  for (let i = 20; i < 25; i++) assert.equal((await ask(`{"rid":"${rid(i)}","op":"append","stream":"log","data":"x${i}"}`))[0]?.ok, true);
  assert.equal((await ask(`{"rid":"${rid(30)}","op":"cas","name":"d","expect":0,"value":3}`))[0]?.ok, true);
  const during = await byVm(audit);
  assert.deepEqual(during.map((r) => r.action), ["vtime.incr"], "26 changes, one record so far: the first");
  assert.equal((during[0]?.details as { value?: number }).value, 1);
  await channel.close(); // the VM stopped: the window is written
  const after = await byVm(audit);
  assert.deepEqual(after.map((r) => r.action), ["vtime.incr", "vtime.changes"]);
  const summary = after[1]?.details as { counts: Record<string, number>; total: number; names: string[] };
  assert.deepEqual(summary.counts, { incr: 19, cas: 1, append: 5 });
  assert.equal(summary.total, 25);
  assert.deepEqual(summary.names, ["c", "d", "log"]);
});

test("each window starts with its first change recorded; a quiet window writes nothing", async (t) => {
  const { ask, audit } = await setup(t, { auditWindowMs: 150 });
  await ask(`{"rid":"${rid(1)}","op":"incr","name":"a"}`);
  await ask(`{"rid":"${rid(2)}","op":"incr","name":"b"}`);
  await new Promise((r) => setTimeout(r, 400)); // the window ends on its own timer: one summary (b)
  await ask(`{"rid":"${rid(3)}","op":"incr","name":"a"}`);
  await new Promise((r) => setTimeout(r, 400)); // a window with only its first change: no summary
  const actions = (await byVm(audit)).map((r) => `${r.action}:${JSON.stringify((r.details as { name?: string; names?: string[] }).name ?? (r.details as { names?: string[] }).names)}`);
  assert.deepEqual(actions, ['vtime.incr:"a"', 'vtime.changes:["b"]', 'vtime.incr:"a"']);
});

test("a guest past its store quota gets an error answer naming the quota; nothing is stored", async (t) => {
  const { ask, store } = await setup(t, { quotas: { counters: 1, records: 2, recordBytes: 4096 } });
  assert.equal((await ask(`{"rid":"${rid(1)}","op":"append","stream":"s","data":"a"}`))[0]?.ok, true);
  assert.equal((await ask(`{"rid":"${rid(2)}","op":"append","stream":"s","data":"b"}`))[0]?.ok, true);
  const [refused] = await ask(`{"rid":"${rid(3)}","op":"append","stream":"s","data":"c"}`);
  assert.equal(refused?.ok, false);
  assert.match(String(refused?.error), /quota exceeded, the store already holds 2 records \(at most 2\)/);
  assert.equal((await ask(`{"rid":"${rid(4)}","op":"incr","name":"x"}`))[0]?.ok, true);
  const [noCounter] = await ask(`{"rid":"${rid(5)}","op":"incr","name":"y"}`);
  assert.match(String(noCounter?.error), /Cannot create counter "y": quota exceeded/);
  assert.deepEqual((await store.dump("ns")).streams, [{ stream: "s", records: 2 }]);
});
