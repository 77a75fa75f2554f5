import { test } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as tick } from "node:timers/promises";
import fc from "fast-check";
import { openSqlite } from "../inventory/db.ts";
import type { Db } from "../inventory/db.ts";
import { VigilError } from "../errors.ts";
import type { HostLoad } from "./types.ts";
import { EpochGate, LeaseStore, SelfFence, isExpired, planHaRestarts, type Lease, type Timers } from "./leases.ts";

const T0 = Date.parse("2026-12-07T00:00:00.000Z");

/** A fake clock with timers: advance() runs due timers in time order, letting promises settle between them. */
class FakeTime implements Timers {
  now = T0;
  private next = 1;
  private queue: { id: number; at: number; fn: () => void }[] = [];
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.queue.push({ id, at: this.now + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.queue = this.queue.filter((t) => t.id !== handle);
  }
  pending(): number {
    return this.queue.length;
  }
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      await settle();
      const due = this.queue.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.queue = this.queue.filter((t) => t !== due);
      this.now = due.at;
      due.fn();
    }
    this.now = end;
    await settle();
  }
}
const settle = async () => {
  for (let i = 0; i < 10; i++) await tick();
};

const conflict = (re: RegExp) => (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT" && re.test(e.message);
const badField = (field: string) => (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && e.field === field;

async function setup(t: { after: (fn: () => Promise<void>) => void }): Promise<{ db: Db; time: FakeTime; store: LeaseStore }> {
  const db = await openSqlite(":memory:");
  t.after(() => db.destroy());
  const time = new FakeTime();
  return { db, time, store: new LeaseStore(db, { ttlMs: 3000, now: () => time.now }) };
}

test("leases: epoch 1 for a new host, a live lease is not taken, an expired one is taken with epoch + 1", async (t) => {
  const { time, store } = await setup(t);
  const a = await store.acquire("h1", "agent-h1");
  assert.deepEqual(a, { host: "h1", epoch: 1, holder: "agent-h1", expiresAt: "2026-12-07T00:00:03.000Z", renewedAt: "2026-12-07T00:00:00.000Z" });
  assert.deepEqual(await store.get("h1"), a);
  await assert.rejects(store.acquire("h1", "intruder"), conflict(/"agent-h1" holds it \(epoch 1\) until 2026-12-07T00:00:03.000Z/));
  assert.deepEqual(await store.acquire("h1", "agent-h1"), a, "the holder asking again gets the same lease, same epoch");
  await time.advance(2999);
  assert.equal(isExpired(a, time.now), false);
  await assert.rejects(store.acquire("h1", "intruder"), conflict(/holds it/));
  await time.advance(1);
  assert.equal(isExpired(a, time.now), true, "at expires_at the lease is expired");
  const b = await store.acquire("h1", "agent-h1-restarted");
  assert.equal(b.epoch, 2);
  assert.equal(b.holder, "agent-h1-restarted");
  await store.acquire("h2", "agent-h2");
  assert.deepEqual((await store.list()).map((l) => [l.host, l.epoch]), [["h1", 2], ["h2", 1]]);
  assert.equal(await store.get("nope"), undefined);
});

test("leases: renew is a compare-and-set on the epoch, and an expired lease is never renewed", async (t) => {
  const { time, store } = await setup(t);
  await store.acquire("h1", "x");
  await time.advance(1000);
  const r = await store.renew("h1", 1);
  assert.equal(r.expiresAt, "2026-12-07T00:00:04.000Z");
  assert.equal(r.renewedAt, "2026-12-07T00:00:01.000Z");
  assert.deepEqual(await store.get("h1"), r);
  await time.advance(3000);
  await assert.rejects(store.renew("h1", 1), conflict(/at epoch 1: it expired at 2026-12-07T00:00:04.000Z/));
  assert.equal((await store.get("h1"))!.expiresAt, "2026-12-07T00:00:04.000Z", "a refused renewal changes nothing");
  await store.acquire("h1", "y");
  await assert.rejects(store.renew("h1", 1), conflict(/the epoch moved on to 2 \(holder "y"\)/));
  assert.equal((await store.renew("h1", 2)).epoch, 2);
  await assert.rejects(store.renew("ghost", 1), conflict(/has no lease/));
});

test("leases: two holders racing for an expired lease: exactly one gets the next epoch", async (t) => {
  const { db, time, store } = await setup(t);
  await store.acquire("h1", "old");
  await time.advance(5000);
  const other = new LeaseStore(db, { ttlMs: 3000, now: () => time.now });
  const results = await Promise.allSettled([store.acquire("h1", "p"), other.acquire("h1", "q")]);
  const won = results.filter((r) => r.status === "fulfilled").map((r) => (r as PromiseFulfilledResult<Lease>).value);
  assert.equal(won.length, 1, JSON.stringify(results));
  assert.equal(won[0]!.epoch, 2);
  assert.ok(results.some((r) => r.status === "rejected" && conflict(/holds it \(epoch 2\)/)(r.reason)));
  assert.deepEqual(await store.get("h1"), won[0]);
  // And two holders racing for a host never seen: one insert wins.
  const fresh = await Promise.allSettled([store.acquire("h9", "p"), other.acquire("h9", "q")]);
  assert.equal(fresh.filter((r) => r.status === "fulfilled").length, 1);
});

test("leases: bad input names the field", async (t) => {
  const { db, store } = await setup(t);
  assert.throws(() => new LeaseStore(db, { ttlMs: 0 }), badField("ttlMs"));
  await assert.rejects(store.acquire("", "x"), badField("host"));
  await assert.rejects(store.acquire("h", ""), badField("holder"));
  await assert.rejects(store.renew("h", 0), badField("epoch"));
  await assert.rejects(store.renew("h", 1.5), badField("epoch"));
});

test("epoch gate: accepts the newest epoch or newer, refuses older with a stale-epoch conflict", () => {
  const gate = new EpochGate();
  assert.equal(gate.admit(3), 3);
  assert.equal(gate.admit("3"), 3, "the same epoch again is fine");
  assert.equal(gate.admit("5"), 5);
  assert.throws(() => gate.admit(4), conflict(/^Cannot run the command: stale epoch 4 \(this host has accepted epoch 5\)$/));
  assert.equal(gate.newest, 5, "a refused command does not move the gate");
  for (const v of ["abc", "-1", "1.5", "0", "", 0, -2, 2.5, undefined, null]) assert.throws(() => gate.admit(v), badField("x-vigil-epoch"), String(v));
  assert.equal(new EpochGate(7).admit("8"), 8);
  assert.throws(() => new EpochGate(7).admit("6"), conflict(/stale epoch 6/));
});

async function fenceSetup(t: { after: (fn: () => Promise<void>) => void }, renew?: (store: LeaseStore) => (host: string, epoch: number) => Promise<Lease>) {
  const { db, time, store } = await setup(t);
  const lease = await store.acquire("h1", "agent");
  const stops: number[] = [];
  const reports: unknown[] = [];
  const fence = new SelfFence({
    lease,
    ttlMs: 3000,
    marginMs: 500,
    renew: renew ? renew(store) : (h, e) => store.renew(h, e),
    stopVms: async () => void stops.push(time.now),
    now: () => time.now,
    timers: time,
    onFenced: (r) => reports.push(r),
  });
  t.after(async () => fence.close());
  return { db, time, store, fence, stops, reports };
}

test("self-fence: renews every ttl/3 and keeps holding while renewals succeed", async (t) => {
  const { time, store, fence, stops } = await fenceSetup(t);
  await time.advance(1000);
  assert.equal((await store.get("h1"))!.renewedAt, "2026-12-07T00:00:01.000Z");
  await time.advance(29_000);
  assert.equal(fence.state, "holding");
  assert.deepEqual(stops, []);
  assert.equal((await store.get("h1"))!.expiresAt, "2026-12-07T00:00:33.000Z");
  assert.equal(fence.expiresAt, "2026-12-07T00:00:33.000Z");
  fence.close();
  assert.equal(time.pending(), 0, "close() leaves no timer");
});

test("self-fence: when renewals fail it stops the VMs once, at expires_at − margin, before the lease expires", async (t) => {
  let down = false;
  const { time, store, fence, stops, reports } = await fenceSetup(t, (s) => async (h, e) => {
    if (down) throw new Error("connect ECONNREFUSED 10.0.0.1:5432");
    return s.renew(h, e);
  });
  await time.advance(2000); // renewed at 1 s and 2 s: expires at 5 s
  down = true;
  await time.advance(2499); // 4.499 s: renewals at 3 s and 4 s failed, the deadline (4.5 s) not reached
  assert.equal(fence.state, "holding");
  assert.match(fence.lastError!, /ECONNREFUSED/);
  assert.deepEqual(stops, []);
  await time.advance(1);
  assert.equal(fence.state, "fenced");
  assert.deepEqual(stops, [T0 + 4500], "stopVms() once, at expires_at − margin");
  const lease = (await store.get("h1"))!;
  assert.equal(isExpired(lease, time.now), false, "the VMs are stopped while the lease is still live");
  down = false;
  await time.advance(60_000);
  assert.deepEqual(stops, [T0 + 4500], "never a second stop, no more renewals");
  assert.equal((await store.get("h1"))!.renewedAt, "2026-12-07T00:00:02.000Z");
  assert.deepEqual(reports, [
    { host: "h1", epoch: 1, at: "2026-12-07T00:00:04.500Z", reason: "lease not renewed by 2026-12-07T00:00:04.500Z, 500 ms before it expires: connect ECONNREFUSED 10.0.0.1:5432" },
  ]);
  assert.deepEqual(await fence.whenFenced(), reports[0]);
  assert.equal(time.pending(), 0);
});

test("self-fence: a renewal that says the lease is lost fences at once", async (t) => {
  const { db, time, fence, stops, reports } = await fenceSetup(t);
  await time.advance(1500);
  await db.updateTable("host_leases").set({ epoch: 9, holder: "someone" }).where("host", "=", "h1").execute();
  await time.advance(500); // the renewal at 2 s meets epoch 9
  assert.equal(fence.state, "fenced");
  assert.deepEqual(stops, [T0 + 2000]);
  assert.match((reports[0] as { reason: string }).reason, /^lease lost: Cannot renew the lease of host "h1" at epoch 1: the epoch moved on to 9/);
});

test("self-fence: a renewal that hangs does not hold off the fence; its late answer is ignored", async (t) => {
  let release: ((l: Lease) => void) | undefined;
  const { time, fence, stops } = await fenceSetup(t, () => () => new Promise<Lease>((resolve) => (release = resolve)));
  await time.advance(2500); // renewal at 1 s hangs; 2 s skipped (still pending); deadline at 2.5 s
  assert.equal(fence.state, "fenced");
  assert.deepEqual(stops, [T0 + 2500]);
  assert.match(fence.report!.reason, /renewal still pending/);
  release!({ host: "h1", epoch: 1, holder: "agent", expiresAt: new Date(T0 + 9000).toISOString(), renewedAt: new Date(T0 + 2600).toISOString() });
  await time.advance(10_000);
  assert.equal(fence.state, "fenced");
  assert.equal(stops.length, 1);
});

test("self-fence: a failing stopVms is reported, not retried; bad timing options are refused", async (t) => {
  const { store, time } = await setup(t);
  const lease = await store.acquire("h1", "a");
  let calls = 0;
  const fence = new SelfFence({
    lease,
    ttlMs: 3000,
    marginMs: 500,
    renew: async () => {
      throw new Error("down");
    },
    stopVms: async () => {
      calls++;
      throw new Error("qemu did not quit");
    },
    now: () => time.now,
    timers: time,
  });
  await time.advance(10_000);
  assert.equal(calls, 1);
  assert.equal(fence.report!.stopError, "qemu did not quit");
  const base = { lease, ttlMs: 3000, renew: async () => lease, stopVms: async () => {}, now: () => time.now, timers: time };
  assert.throws(() => new SelfFence({ ...base, marginMs: 2000 }), badField("marginMs"));
  assert.throws(() => new SelfFence({ ...base, marginMs: -1 }), badField("marginMs"));
  assert.throws(() => new SelfFence({ ...base, ttlMs: 0, marginMs: 0 }), badField("ttlMs"));
});

const load = (name: string, memTotalMiB: number, vms: HostLoad["vms"] = [], ready = true): HostLoad => ({ name, memTotalMiB, memReservedMiB: 0, cpus: 4, vms, ready });

test("HA: VMs of an unreachable host wait while its lease lives; after it expires they are restarted, once per lost epoch", async (t) => {
  const { time, store } = await setup(t);
  for (const h of ["a", "b", "c"]) await store.acquire(h, `agent-${h}`);
  const vms = [
    { name: "db", host: "a", ha: true, memoryMiB: 2048, vcpus: 2 },
    { name: "web", host: "a", ha: true, memoryMiB: 1024, vcpus: 1 },
    { name: "batch", host: "a", ha: false, memoryMiB: 512, vcpus: 1 },
    { name: "cache", host: "b", ha: true, memoryMiB: 512, vcpus: 1 },
  ];
  const hosts = (aReady: boolean) => [load("a", 8192, [], aReady), load("b", 4096, [{ name: "cache", memoryMiB: 512, vcpus: 1 }]), load("c", 4096)];
  // a stops answering at 1 s; b and c keep renewing.
  await time.advance(1000);
  for (const h of ["b", "c"]) await store.renew(h, 1);
  let plan = planHaRestarts({ hosts: hosts(false), leases: await store.list(), vms, restarts: [], now: time.now });
  assert.deepEqual(plan.restarts, [], "unreachable alone is not enough");
  assert.deepEqual(plan.waiting, [
    { vm: "db", host: "a", reason: 'host "a" is not ready but its lease (epoch 1) is valid until 2026-12-07T00:00:03.000Z: not fenced, not restarted' },
    { vm: "web", host: "a", reason: 'host "a" is not ready but its lease (epoch 1) is valid until 2026-12-07T00:00:03.000Z: not fenced, not restarted' },
  ]);
  await time.advance(2000);
  for (const h of ["b", "c"]) await store.renew(h, 1);
  // a's lease expired at 3 s. Even were a marked ready (a stale heartbeat), it takes nothing.
  plan = planHaRestarts({ hosts: hosts(true), leases: await store.list(), vms, restarts: [], now: time.now });
  assert.deepEqual(plan, {
    restarts: [
      {
        vm: "db",
        from: "a",
        lostEpoch: 1,
        to: "c",
        reasons: [
          'host "a" lost its lease (epoch 1 expired at 2026-12-07T00:00:03.000Z)',
          '"c" has the most free memory of the 2 hosts that fit: 4096 MiB free of 4096 MiB allowed, 2048 MiB after',
          "vCPUs: 0 + 2 of 16 allowed (4 CPUs × 4)",
          'also fit: "b" (3584 MiB free)',
        ],
      },
      {
        vm: "web",
        from: "a",
        lostEpoch: 1,
        to: "b",
        reasons: [
          'host "a" lost its lease (epoch 1 expired at 2026-12-07T00:00:03.000Z)',
          '"b" has the most free memory of the 2 hosts that fit: 3584 MiB free of 4096 MiB allowed, 2560 MiB after',
          "vCPUs: 1 + 1 of 16 allowed (4 CPUs × 4)",
          'also fit: "c" (2048 MiB free)',
        ],
      },
    ],
    waiting: [],
    unplaced: [],
    done: [],
  });
  // The manager restarted db but crashed before recording web: the next plan restarts web only.
  plan = planHaRestarts({ hosts: hosts(true), leases: await store.list(), vms, restarts: [{ vm: "db", epoch: 1 }], now: time.now });
  assert.deepEqual(plan.restarts.map((r) => [r.vm, r.to]), [["web", "c"]]);
  assert.deepEqual(plan.done, [{ vm: "db", from: "a", lostEpoch: 1 }]);
  // a comes back (epoch 2), gets web back, and is lost again: web may be restarted for epoch 2.
  await store.acquire("a", "agent-a");
  const back = vms.map((v) => (v.name === "db" ? { ...v, host: "c" } : v));
  assert.deepEqual(planHaRestarts({ hosts: hosts(true), leases: await store.list(), vms: back, restarts: [{ vm: "db", epoch: 1 }, { vm: "web", epoch: 1 }], now: time.now }).restarts, []);
  await time.advance(2000);
  for (const h of ["b", "c"]) await store.renew(h, 1);
  await time.advance(1000); // a's epoch 2 expired at 6 s
  plan = planHaRestarts({ hosts: hosts(false), leases: await store.list(), vms: back, restarts: [{ vm: "db", epoch: 1 }, { vm: "web", epoch: 1 }], now: time.now });
  assert.deepEqual(plan.restarts.map((r) => [r.vm, r.lostEpoch]), [["web", 2]]);
});

test("HA: restarts planned together never overcommit a host; what does not fit is reported with why", async (t) => {
  const { time, store } = await setup(t);
  await store.acquire("a", "x");
  await store.acquire("b", "y");
  await time.advance(2000);
  await store.renew("b", 1);
  await time.advance(1500); // a expired at 3 s; b lives until 5 s
  const vms = [
    { name: "v1", host: "a", ha: true, memoryMiB: 1536, vcpus: 1 },
    { name: "v2", host: "a", ha: true, memoryMiB: 1536, vcpus: 1 },
    { name: "v3", host: "a", ha: true, memoryMiB: 512, vcpus: 1 },
  ];
  const plan = planHaRestarts({ hosts: [load("a", 4096), load("b", 2048), load("c", 8192, [], false)], leases: await store.list(), vms, restarts: [], now: time.now });
  assert.deepEqual(plan.restarts.map((r) => [r.vm, r.to]), [["v1", "b"], ["v3", "b"]]);
  assert.deepEqual(plan.unplaced, [
    {
      vm: "v2",
      from: "a",
      lostEpoch: 1,
      reasons: [
        'host "a" lost its lease (epoch 1 expired at 2026-12-07T00:00:03.000Z)',
        'No host fits 1536 MiB and 1 vCPU. "b": memory: needs 1536 MiB, 512 MiB free of 2048 MiB allowed',
        'not considered: "a" (lease expired), "c" (not ready)',
      ],
    },
  ]);
  // c is not ready and has no lease: its HA VMs wait, not restarted.
  const waiting = planHaRestarts({ hosts: [load("b", 2048), load("c", 8192, [], false)], leases: await store.list(), vms: [{ name: "w", host: "c", ha: true, memoryMiB: 64, vcpus: 1 }], restarts: [], now: time.now });
  assert.deepEqual(waiting.waiting, [{ vm: "w", host: "c", reason: 'host "c" is not ready and has no lease: it cannot be known to be fenced, not restarted' }]);
  assert.throws(() => planHaRestarts({ hosts: [], leases: [], vms: [vms[0]!, vms[0]!], restarts: [], now: time.now }), badField("vms.1.name"));
  assert.throws(() => planHaRestarts({ hosts: [], leases: [], vms: [{ ...vms[0]!, memoryMiB: 0 }], restarts: [], now: time.now }), badField("vms.0.memoryMiB"));
});

test("property: HA restarts only VMs of expired leases, never a (VM, epoch) twice, never onto a host it overcommits", () => {
  const now = T0 + 10_000;
  fc.assert(
    fc.property(
      fc.array(fc.record({ mem: fc.integer({ min: 1024, max: 8192 }), ready: fc.boolean(), lease: fc.constantFrom("live", "expired", "none"), epoch: fc.integer({ min: 1, max: 5 }) }), { minLength: 1, maxLength: 5 }),
      fc.array(fc.record({ host: fc.nat(), ha: fc.boolean(), memoryMiB: fc.integer({ min: 64, max: 4096 }), vcpus: fc.integer({ min: 1, max: 8 }), done: fc.boolean() }), { maxLength: 10 }),
      (hs, vs) => {
        const hosts = hs.map((h, i) => load(`h${i}`, h.mem, [], h.ready));
        const leases: Lease[] = hs.flatMap((h, i) =>
          h.lease === "none" ? [] : [{ host: `h${i}`, epoch: h.epoch, holder: "x", expiresAt: new Date(h.lease === "live" ? now + 1 : now).toISOString(), renewedAt: new Date(T0).toISOString() }],
        );
        const vms = vs.map((v, j) => ({ name: `v${j}`, host: `h${v.host % hs.length}`, ha: v.ha, memoryMiB: v.memoryMiB, vcpus: v.vcpus }));
        const restarts = vs.flatMap((v, j) => (v.done ? [{ vm: `v${j}`, epoch: hs[v.host % hs.length]!.epoch }] : []));
        const plan = planHaRestarts({ hosts, leases, vms, restarts, now });
        const lease = (h: string) => leases.find((l) => l.host === h);
        const used = new Map<string, { mem: number; vcpus: number }>();
        for (const r of plan.restarts) {
          const v = vms.find((x) => x.name === r.vm)!;
          assert.ok(v.ha);
          assert.ok(lease(r.from) && isExpired(lease(r.from)!, now), "only after the lease expired");
          assert.equal(r.lostEpoch, lease(r.from)!.epoch);
          assert.ok(!restarts.some((d) => d.vm === r.vm && d.epoch === r.lostEpoch), "never twice for one lost epoch");
          const to = hosts.find((h) => h.name === r.to)!;
          assert.ok(to.ready && lease(r.to) && !isExpired(lease(r.to)!, now), "onto a ready host with a live lease");
          const u = used.get(r.to) ?? { mem: 0, vcpus: 0 };
          u.mem += v.memoryMiB;
          u.vcpus += v.vcpus;
          used.set(r.to, u);
          assert.ok(u.mem <= to.memTotalMiB && u.vcpus <= to.cpus * 4, `${r.to} overcommitted`);
        }
        assert.equal(new Set(plan.restarts.map((r) => r.vm)).size, plan.restarts.length);
      },
    ),
    { numRuns: 300 },
  );
});
