import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import type { HostLoad } from "./types.ts";
import { memorySpread, placeVm, recommendBalance, recommendConsolidate, requirePlacement, spreadOf } from "./placement.ts";

const host = (name: string, memTotalMiB: number, vms: HostLoad["vms"] = [], extra: Partial<HostLoad> = {}): HostLoad => ({
  name,
  memTotalMiB,
  memReservedMiB: 0,
  cpus: 4,
  vms,
  ready: true,
  ...extra,
});
const vm = (name: string, memoryMiB: number, vcpus = 1, pinned?: boolean) => (pinned === undefined ? { name, memoryMiB, vcpus } : { name, memoryMiB, vcpus, pinned });

// ---------------------------------------------------------------------------------------------------------
// Examples with exact output.

test("placeVm picks the ready host with the most free memory, and says why", () => {
  const hosts = [
    host("a", 4096, [vm("a1", 3072)]),
    host("b", 4096, [vm("b1", 1024)], { memReservedMiB: 512 }),
    host("c", 8192, [], { ready: false }),
  ];
  assert.deepEqual(placeVm(hosts, { memoryMiB: 512, vcpus: 2 }), {
    ok: true,
    host: "b",
    reasons: [
      '"b" has the most free memory of the 2 hosts that fit: 2560 MiB free of 3584 MiB allowed, 2048 MiB after',
      "vCPUs: 1 + 2 of 16 allowed (4 CPUs × 4)",
      'also fit: "a" (1024 MiB free)',
      'not "c": host is not ready',
    ],
  });
});

test("placeVm refuses with every host's reason: memory, vCPU overcommit, not ready", () => {
  const hosts = [
    host("a", 4096, [vm("a1", 3584)]),
    host("b", 8192, [vm("b1", 1024, 7)], { cpus: 2 }),
    host("c", 8192, [], { ready: false }),
  ];
  const p = placeVm(hosts, { memoryMiB: 1024, vcpus: 2 }, { vcpuRatio: 4 });
  assert.deepEqual(p, {
    ok: false,
    refusals: [
      { host: "a", reasons: ["memory: needs 1024 MiB, 512 MiB free of 4096 MiB allowed"] },
      { host: "b", reasons: ["vCPUs: 7 + 2 would exceed 8 allowed (2 CPUs × 4)"] },
      { host: "c", reasons: ["host is not ready"] },
    ],
    message:
      'No host fits 1024 MiB and 2 vCPUs. "a": memory: needs 1024 MiB, 512 MiB free of 4096 MiB allowed. "b": vCPUs: 7 + 2 would exceed 8 allowed (2 CPUs × 4). "c": host is not ready',
  });
  assert.throws(() => requirePlacement(hosts, { memoryMiB: 1024, vcpus: 2 }), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT" && /"b": vCPUs/.test(e.message));
  // A lower ratio refuses what a higher one allows.
  assert.equal(placeVm([host("x", 8192, [vm("x1", 512, 4)])], { memoryMiB: 512, vcpus: 1 }, { vcpuRatio: 1 }).ok, false);
  assert.equal(placeVm([host("x", 8192, [vm("x1", 512, 4)])], { memoryMiB: 512, vcpus: 1 }, { vcpuRatio: 2 }).ok, true);
});

test("placeVm ties: lower vCPU commitment, then name; maxMemoryLoad keeps headroom", () => {
  assert.equal((placeVm([host("b", 4096), host("a", 4096)], { memoryMiB: 256, vcpus: 1 }) as { host: string }).host, "a");
  assert.equal((placeVm([host("a", 4096, [vm("a1", 0 + 1, 3)]), host("b", 4097, [vm("b1", 2, 1)])], { memoryMiB: 256, vcpus: 1 }) as { host: string }).host, "b");
  const p = placeVm([host("a", 1000, [vm("a1", 700)])], { memoryMiB: 200, vcpus: 1 }, { maxMemoryLoad: 0.8 });
  assert.deepEqual(p.ok ? [] : p.refusals, [{ host: "a", reasons: ["memory: needs 200 MiB, 100 MiB free of 800 MiB allowed"] }]);
});

test("bad input is a VigilError naming the field and what is allowed", () => {
  const cases: [() => unknown, string, RegExp][] = [
    [() => placeVm([host("a", 1024)], { memoryMiB: 0, vcpus: 1 }), "vm.memoryMiB", /above 0/],
    [() => placeVm([host("a", 1024)], { memoryMiB: 1.5, vcpus: 1 }), "vm.memoryMiB", /whole number/],
    [() => placeVm([host("a", 1024)], { memoryMiB: 1, vcpus: 0 }), "vm.vcpus", /above 0/],
    [() => placeVm([host("a", 1024), host("a", 1024)], { memoryMiB: 1, vcpus: 1 }), "hosts.1.name", /listed twice/],
    [() => placeVm([host("a", 1024, [], { memReservedMiB: 1024 })], { memoryMiB: 1, vcpus: 1 }), "hosts.0.memReservedMiB", /below memTotalMiB/],
    [() => placeVm([host("a", 1024, [], { cpus: 0 })], { memoryMiB: 1, vcpus: 1 }), "hosts.0.cpus", /above 0/],
    [() => placeVm([host("a", 1024, [vm("x", 1)]), host("b", 1024, [vm("x", 1)])], { memoryMiB: 1, vcpus: 1 }), "hosts.1.vms.0.name", /more than one host/],
    [() => placeVm([host("a", 1024, [vm("x", -4)])], { memoryMiB: 1, vcpus: 1 }), "hosts.0.vms.0.memoryMiB", /above 0/],
    [() => placeVm([host("a", 1024)], { memoryMiB: 1, vcpus: 1 }, { vcpuRatio: 0 }), "options.vcpuRatio", /above 0/],
    [() => placeVm([host("a", 1024)], { memoryMiB: 1, vcpus: 1 }, { maxMemoryLoad: 1.5 }), "options.maxMemoryLoad", /at most 1/],
    [() => recommendBalance([host("a", 1024)], { maxMoves: -1 }), "options.maxMoves", /from 0/],
    [() => recommendBalance([host("a", 1024)], { minGain: Number.NaN }), "options.minGain", /from 0/],
    [() => recommendConsolidate([host("a", 1024)], { minHosts: 0 }), "options.minHosts", /above 0/],
  ];
  for (const [run, field, message] of cases) {
    assert.throws(run, (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && e.field === field && message.test(e.message), field);
  }
});

test("balance: the exact plan for an uneven cluster, pinned VMs and a host that is not ready left alone", () => {
  const hosts = [
    host("a", 4096, [vm("big", 2048), vm("db", 1024, 1, true), vm("small", 512)]),
    host("b", 4096, [vm("b1", 512)]),
    host("c", 4096, []),
    host("d", 4096, [vm("d1", 3072)], { ready: false }),
  ];
  const plan = recommendBalance(hosts, { maxMoves: 5, minGain: 0.01 });
  assert.deepEqual(plan.moves.map((m) => m.reason), [
    'move "big" (2048 MiB) from "a" (memory 87.5% → 37.5%) to "c" (0% → 50%): spread 38.6 points → 15.6 points',
    'move "small" (512 MiB) from "a" (memory 37.5% → 25%) to "b" (12.5% → 25%): spread 15.6 points → 11.8 points',
  ]);
  assert.deepEqual(plan.moves.map((m) => [m.vm, m.from, m.to, m.memoryMiB, m.vcpus]), [["big", "a", "c", 2048, 1], ["small", "a", "b", 512, 1]]);
  assert.deepEqual(plan.notes, [
    '"d" is not ready: its VMs stay and it takes none',
    'pinned, never moved: "db" (on "a")',
    "no further move lowers the spread by at least 1 point",
  ]);
  // Loads 7/8, 1/8, 0 → 1/4, 1/4, 1/2 (d is not ready, so not counted).
  assert.equal(plan.spreadBefore, spreadOf([7 / 8, 1 / 8, 0]));
  assert.equal(plan.spreadAfter, spreadOf([1 / 4, 1 / 4, 1 / 2]));
  assert.equal(plan.moves[0]!.spreadAfter, plan.moves[1]!.spreadBefore);
  assert.deepEqual(plan.after.map((h) => [h.host, h.memUsedMiB, h.vms]), [["a", 1024, 1], ["b", 1024, 2], ["c", 2048, 1], ["d", 3072, 1]]);
  assert.equal(memorySpread(hosts), plan.spreadBefore);
});

test("balance: maxMoves bounds the plan, minGain stops small moves, a balanced cluster gets no moves", () => {
  const hosts = [host("a", 4096, [vm("v1", 1024), vm("v2", 1024), vm("v3", 1024)]), host("b", 4096), host("c", 4096)];
  const one = recommendBalance(hosts, { maxMoves: 1 });
  assert.equal(one.moves.length, 1);
  assert.equal(one.notes.at(-1), "stopped at the limit of 1 move");
  const all = recommendBalance(hosts, { maxMoves: 10 });
  assert.deepEqual(all.moves.map((m) => `${m.vm}:${m.to}`), ["v1:b", "v2:c"]);
  assert.equal(all.spreadAfter, 0);
  const picky = recommendBalance(hosts, { minGain: 0.5 });
  assert.deepEqual(picky.moves, []);
  assert.equal(picky.notes.at(-1), "already balanced: no move lowers the spread (35.4 points) by at least 50 points");
  assert.equal(recommendBalance([host("a", 4096, [vm("x", 1024)])]).notes.at(-1), "fewer than 2 ready hosts: nothing to balance");
});

test("balance: a move never overcommits the target, even when it would even things out", () => {
  const cluster = (bVcpus: number) => [host("a", 4096, [vm("v", 2048, 2), vm("w", 1024)]), host("b", 4096, [vm("bb", 256, bVcpus)])];
  // b has the memory but its 4 CPUs × 4 = 16 vCPUs are all committed: nothing may go there.
  const full = recommendBalance(cluster(16));
  assert.deepEqual(full.moves, []);
  assert.equal(full.notes.at(-1), "already balanced: no move lowers the spread (34.4 points) by at least 1 point");
  // The same cluster with vCPU room on b gets the move.
  assert.deepEqual(recommendBalance(cluster(1)).moves.map((m) => `${m.vm}:${m.from}→${m.to}`), ["w:a→b"]);
  // And the memory limit: with 60% allowed, b (256 + 1024 = 1280 of 2457 MiB) still takes w; with 25% it cannot.
  assert.equal(recommendBalance(cluster(1), { maxMemoryLoad: 0.6 }).moves.length, 1);
  assert.deepEqual(recommendBalance(cluster(1), { maxMemoryLoad: 0.25 }).moves, []);
});

test("consolidate: the exact plan, with a reason for every host kept", () => {
  const hosts = [
    host("a", 4096, [vm("a1", 512), vm("a2", 256)]),
    host("b", 4096, [vm("b1", 1024)]),
    host("c", 4096, [vm("c1", 3072)]),
    host("d", 4096, [vm("pin", 128, 1, true)]),
    host("e", 2048, []),
    host("f", 4096, [vm("f1", 512)], { ready: false }),
  ];
  const plan = recommendConsolidate(hosts);
  assert.deepEqual(plan.emptied, [
    { host: "e", moves: [], reason: "already empty: can be powered down" },
    {
      host: "a",
      moves: [
        { vm: "a1", to: "d", memoryMiB: 512, vcpus: 1 },
        { vm: "a2", to: "d", memoryMiB: 256, vcpus: 1 },
      ],
      reason: 'its 2 VMs (768 MiB) fit on "d" (memory → 21.9%)',
    },
    { host: "b", moves: [{ vm: "b1", to: "d", memoryMiB: 1024, vcpus: 1 }], reason: 'its VM (1024 MiB) fits on "d" (memory → 46.9%)' },
  ]);
  assert.deepEqual(plan.kept, [
    { host: "c", reason: 'kept: "c1" (3072 MiB, 1 vCPU) fits on no other host ("d": memory: needs 3072 MiB, 2176 MiB free of 4096 MiB allowed)' },
    { host: "d", reason: 'kept: "pin" is pinned here' },
  ]);
  assert.deepEqual(plan.notes, ['"f" is not ready: neither emptied nor given VMs']);
  assert.deepEqual(plan.after.map((h) => [h.host, h.memUsedMiB]), [["a", 0], ["b", 0], ["c", 3072], ["d", 1920], ["e", 0], ["f", 512]]);
});

test("consolidate: a host that receives VMs stays, and so do the last minHosts", () => {
  const hosts = [host("x", 4096, [vm("x1", 512)]), host("y", 4096, [vm("y1", 1024)]), host("z", 4096, [vm("z1", 3500)])];
  const plan = recommendConsolidate(hosts);
  assert.deepEqual(plan.emptied, [{ host: "x", moves: [{ vm: "x1", to: "y", memoryMiB: 512, vcpus: 1 }], reason: 'its VM (512 MiB) fits on "y" (memory → 37.5%)' }]);
  assert.deepEqual(plan.kept, [
    { host: "y", reason: 'kept: receives VMs from "x"' },
    { host: "z", reason: 'kept: "z1" (3500 MiB, 1 vCPU) fits on no other host ("y": memory: needs 3500 MiB, 2560 MiB free of 4096 MiB allowed)' },
  ]);
  const two = recommendConsolidate([host("p", 4096), host("q", 4096), host("r", 4096)], { minHosts: 2 });
  assert.deepEqual(two.emptied.map((e) => e.host), ["p"]);
  assert.deepEqual(two.kept, [
    { host: "q", reason: "kept: at least 2 ready hosts stay powered on" },
    { host: "r", reason: "kept: at least 2 ready hosts stay powered on" },
  ]);
});

test("consolidate: a host that cannot be emptied leaves no trace of its half-planned moves", () => {
  // p1 would go to q, but p2 (16 vCPUs) fits nowhere: p stays, and q is then judged on its own VMs only.
  const hosts = [
    host("p", 4096, [vm("p1", 1500), vm("p2", 100, 16)], { cpus: 8 }),
    host("q", 4096, [vm("q1", 2000)]),
    host("r", 4096, [vm("r1", 2096)]),
  ];
  const plan = recommendConsolidate(hosts);
  assert.deepEqual(plan.emptied, [{ host: "q", moves: [{ vm: "q1", to: "p", memoryMiB: 2000, vcpus: 1 }], reason: 'its VM (2000 MiB) fits on "p" (memory → 87.9%)' }]);
  assert.deepEqual(plan.after.map((h) => [h.host, h.memUsedMiB, h.vcpusUsed]), [["p", 3600, 18], ["q", 0, 0], ["r", 2096, 1]]);
  assert.match(plan.kept.find((k) => k.host === "p")!.reason, /^kept: "p2" \(100 MiB, 16 vCPUs\) fits on no other host/);
});

// ---------------------------------------------------------------------------------------------------------
// Properties.

const arbCluster = fc
  .array(
    fc.record({
      memTotalMiB: fc.integer({ min: 512, max: 16384 }),
      memReservedMiB: fc.integer({ min: 0, max: 256 }),
      cpus: fc.integer({ min: 1, max: 8 }),
      ready: fc.integer({ min: 0, max: 4 }).map((n) => n > 0),
      vms: fc.array(fc.record({ memoryMiB: fc.integer({ min: 64, max: 4096 }), vcpus: fc.integer({ min: 1, max: 4 }), pinned: fc.boolean() }), { maxLength: 6 }),
    }),
    { minLength: 1, maxLength: 6 },
  )
  .map((hs) =>
    hs.map((h, i): HostLoad => ({
      name: `h${i}`,
      memTotalMiB: h.memTotalMiB,
      memReservedMiB: h.memReservedMiB,
      cpus: h.cpus,
      ready: h.ready,
      vms: h.vms.map((v, j) => ({ name: `v${i}-${j}`, memoryMiB: v.memoryMiB, vcpus: v.vcpus, pinned: v.pinned })),
    })),
  );
const arbLimits = fc.record({ vcpuRatio: fc.constantFrom(1, 2, 4), maxMemoryLoad: fc.constantFrom(0.75, 0.9, 1) });

type Loads = Map<string, { mem: number; vcpus: number; vms: Set<string> }>;
function loadsOf(hosts: HostLoad[]): Loads {
  return new Map(hosts.map((h) => [h.name, { mem: h.vms.reduce((s, v) => s + v.memoryMiB, 0), vcpus: h.vms.reduce((s, v) => s + v.vcpus, 0), vms: new Set(h.vms.map((v) => v.name)) }]));
}
/** Whether a host is within its limits, checked independently of placement.ts's own arithmetic. */
function within(h: HostLoad, load: { mem: number; vcpus: number }, l: { vcpuRatio: number; maxMemoryLoad: number }): boolean {
  return load.mem <= (h.memTotalMiB - h.memReservedMiB) * l.maxMemoryLoad && load.vcpus <= h.cpus * l.vcpuRatio;
}
const vmOf = (hosts: HostLoad[], name: string) => hosts.flatMap((h) => h.vms).find((v) => v.name === name)!;

test("property: placeVm chooses a ready host that stays within its limits, and refuses only when none would", () => {
  fc.assert(
    fc.property(arbCluster, arbLimits, fc.integer({ min: 64, max: 8192 }), fc.integer({ min: 1, max: 8 }), (hosts, l, memoryMiB, vcpus) => {
      const p = placeVm(hosts, { memoryMiB, vcpus }, l);
      const loads = loadsOf(hosts);
      const fitsOn = (h: HostLoad) => h.ready && within(h, { mem: loads.get(h.name)!.mem + memoryMiB, vcpus: loads.get(h.name)!.vcpus + vcpus }, l);
      if (p.ok) {
        const h = hosts.find((x) => x.name === p.host)!;
        assert.ok(fitsOn(h));
      } else {
        assert.ok(!hosts.some(fitsOn));
        assert.equal(p.refusals.length, hosts.length);
      }
    }),
    { numRuns: 300 },
  );
});

test("property: balance never overcommits a host, never raises the spread, never moves pinned VMs or touches hosts that are not ready", () => {
  fc.assert(
    fc.property(arbCluster, arbLimits, fc.integer({ min: 0, max: 6 }), fc.constantFrom(0, 0.01, 0.05), (hosts, l, maxMoves, minGain) => {
      const plan = recommendBalance(hosts, { ...l, maxMoves, minGain });
      assert.ok(plan.moves.length <= maxMoves);
      const loads = loadsOf(hosts);
      const readyLoads = () => hosts.filter((h) => h.ready).map((h) => loads.get(h.name)!.mem / (h.memTotalMiB - h.memReservedMiB));
      const start = spreadOf(readyLoads());
      let prev = start;
      const seen = new Set<string>();
      for (const m of plan.moves) {
        const v = vmOf(hosts, m.vm);
        const from = hosts.find((h) => h.name === m.from)!;
        const to = hosts.find((h) => h.name === m.to)!;
        assert.ok(!v.pinned, `pinned ${m.vm} moved`);
        assert.ok(from.ready && to.ready && from !== to);
        assert.ok(!seen.has(m.vm), "a VM moves at most once");
        seen.add(m.vm);
        assert.ok(loads.get(from.name)!.vms.delete(m.vm), `${m.vm} is on ${m.from} when it moves`);
        loads.get(from.name)!.mem -= v.memoryMiB;
        loads.get(from.name)!.vcpus -= v.vcpus;
        const t = loads.get(to.name)!;
        t.mem += v.memoryMiB;
        t.vcpus += v.vcpus;
        t.vms.add(m.vm);
        assert.ok(within(to, t, l), `${m.to} overcommitted by ${m.vm}`);
        const now = spreadOf(readyLoads());
        assert.ok(now < prev - 1e-12, "every move lowers the spread");
        assert.ok(prev - now >= minGain - 1e-12, "every move gains at least minGain");
        prev = now;
      }
      assert.ok(plan.spreadAfter <= plan.spreadBefore + 1e-12);
      assert.ok(Math.abs(plan.spreadBefore - start) < 1e-12);
      assert.ok(Math.abs(plan.spreadAfter - prev) < 1e-12);
    }),
    { numRuns: 300 },
  );
});

test("property: a consolidation plan's moves all fit at once and empty exactly the hosts it names", () => {
  fc.assert(
    fc.property(arbCluster, arbLimits, fc.integer({ min: 1, max: 3 }), (hosts, l, minHosts) => {
      const plan = recommendConsolidate(hosts, { ...l, minHosts });
      const loads = loadsOf(hosts);
      const emptied = new Set(plan.emptied.map((e) => e.host));
      for (const e of plan.emptied) {
        const h = hosts.find((x) => x.name === e.host)!;
        assert.ok(h.ready, "only ready hosts are emptied");
        assert.deepEqual(e.moves.map((m) => m.vm).sort(), h.vms.map((v) => v.name).sort(), "every VM of an emptied host has a destination");
        for (const m of e.moves) {
          assert.ok(!emptied.has(m.to), "nothing goes to a host being emptied");
          const to = hosts.find((x) => x.name === m.to)!;
          assert.ok(to.ready);
          const v = vmOf(hosts, m.vm);
          assert.ok(!v.pinned);
          const t = loads.get(m.to)!;
          t.mem += v.memoryMiB;
          t.vcpus += v.vcpus;
        }
      }
      // All moves applied at once: every receiver is within its limits.
      const receivers = new Set(plan.emptied.flatMap((e) => e.moves.map((m) => m.to)));
      for (const r of receivers) assert.ok(within(hosts.find((x) => x.name === r)!, loads.get(r)!, l), `${r} overcommitted`);
      const ready = hosts.filter((h) => h.ready);
      assert.ok(ready.length - emptied.size >= Math.min(minHosts, ready.length), "at least minHosts ready hosts stay");
      assert.deepEqual([...plan.kept.map((k) => k.host), ...emptied].sort(), ready.map((h) => h.name).sort(), "every ready host is either kept or emptied");
    }),
    { numRuns: 300 },
  );
});
