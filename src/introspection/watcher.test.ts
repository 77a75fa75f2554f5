import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import type { ControlRegisters } from "./page-walk.ts";
import type { Finding } from "./sweep.ts";
import { locateTask, overwriteSyscall, relinkListNode, unlinkTask } from "./testing/attacker.ts";
import { buildSyntheticKernel, type SyntheticKernel } from "./testing/synthetic-kernel.ts";
import { FindingTracker, VmWatcher, boundEvidence, errorFinding, findingKey, parseProcModules, type GuestAccess, type GuestView } from "./watcher.ts";
import { IntrospectionError } from "./errors.ts";

/** A synthetic guest behind the same interface QMP and the agent give the service. */
function access(g: SyntheticKernel, view?: () => GuestView | undefined, regs?: () => ControlRegisters[]): GuestAccess & { opened: number } {
  const a = {
    opened: 0,
    openMemory: async () => {
      a.opened++;
      return g.mem;
    },
    registers: async () => (regs ? regs() : g.regs),
    guestView: async () => view?.(),
  };
  return a;
}

const ps = (g: SyntheticKernel) => g.tasks.filter((t) => t.pid !== 0 && t.pid === t.tgid).map((t) => ({ pid: t.pid, ppid: 1, comm: t.comm }));
const sym = (g: SyntheticKernel, n: string): bigint => g.symbols.get(n) as bigint;
const f = (check: Finding["check"], address: string, severity: Finding["severity"] = "critical"): Finding => ({ check, severity, message: `${check} at ${address}`, evidence: { address } });

test("the tracker reports a finding once while it stays, and again only after it was gone for clearAfter sweeps", () => {
  const t = new FindingTracker(3);
  const a = f("syscall-table", "0x1");
  assert.deepEqual(t.update([a]).fresh, [a]);
  assert.deepEqual(t.update([a, f("findings-truncated", "x", "info")]).fresh, [], "info findings are not alarms");
  assert.equal(t.update([]).active.length, 1, "gone for one sweep: still active (hysteresis)");
  assert.deepEqual(t.update([a]).fresh, [], "back within clearAfter: not new");
  t.update([]);
  t.update([]);
  assert.equal(t.update([]).active.length, 0);
  assert.deepEqual(t.update([a]).fresh, [a], "after clearAfter sweeps away, it is new again");
  const b = f("syscall-table", "0x2");
  assert.deepEqual(t.update([a, b, b]).fresh, [b], "same check elsewhere is another finding; duplicates count once");
  const capped = new FindingTracker(3, 2);
  assert.equal(capped.update([f("idt-gate", "1"), f("idt-gate", "2"), f("idt-gate", "3")]).fresh.length, 2, "memory is bounded");
});

test("the tracker keeps active and cleared alarms apart, with every change of an active alarm in its history", () => {
  const t = new FindingTracker(2);
  const a = f("syscall-table", "0x1", "medium");
  let u = t.update([a], 1);
  assert.deepEqual([u.fresh, u.changed, u.cleared], [[a], [], []]);
  // Same alarm, same detail: nothing new. New detail: a change. Higher severity: a change naming it.
  assert.deepEqual(t.update([a], 2).changed, []);
  const detail = { ...a, evidence: { ...a.evidence, found: "0xffffffffc0000010" } };
  u = t.update([detail], 3);
  assert.deepEqual([u.fresh, u.changed], [[], [detail]]);
  const worse = { ...detail, severity: "critical" as const, message: "now worse" };
  assert.deepEqual(t.update([worse], 4).changed, [worse]);
  let [alarm] = t.list();
  assert.equal(alarm?.state, "active");
  assert.deepEqual(alarm?.history.map((h) => [h.sweep, h.change, h.severity, h.what ?? []]), [
    [1, "raised", "medium", []],
    [3, "changed", "medium", ["evidence"]],
    [4, "changed", "critical", ["severity medium → critical", "message"]],
  ]);
  // Gone for clearAfter sweeps: cleared, and shown as such (not forgotten).
  t.update([], 5);
  u = t.update([], 6);
  assert.deepEqual(u.cleared, [worse]);
  assert.deepEqual(u.active, []);
  [alarm] = t.list();
  assert.deepEqual([alarm?.state, alarm?.clearedAt !== null, alarm?.history.at(-1)?.change], ["cleared", true, "cleared"]);
  // Back again: raised again on the same alarm.
  u = t.update([a], 7);
  assert.deepEqual(u.fresh, [a]);
  [alarm] = t.list();
  assert.deepEqual([alarm?.state, alarm?.firstSweep, alarm?.history.map((h) => h.change)], ["active", 1, ["raised", "changed", "changed", "cleared", "raised"]]);
  // A guest that changes a finding every sweep cannot grow the history without bound.
  for (let i = 0; i < 100; i++) t.update([{ ...a, evidence: { address: "0x1", found: String(i) } }], 8 + i);
  [alarm] = t.list();
  assert.equal(alarm?.history.length, 32);
  assert.equal(alarm?.history[0]?.change, "raised");
  assert.ok((alarm?.omittedChanges ?? 0) > 0);
});

test("a watch under no-new-modules raises a module load, records its change of severity, and clears it once gone", async () => {
  const g = buildSyntheticKernel();
  const w = new VmWatcher(access(g), { cache: new Map() });
  await w.establish("start");
  assert.deepEqual((await w.runSweep({ guestView: false, track: true, noNewModules: true })).fresh, []);
  const m = g.loadModule("evil", { taints: 1n << 12n, sigOk: true });
  let out = await w.runSweep({ guestView: false, track: true });
  assert.deepEqual(out.fresh.map((x) => [x.check, x.severity]), [["module-untrusted", "medium"]]);
  out = await w.runSweep({ guestView: false, track: true, noNewModules: true });
  assert.deepEqual(out.fresh.map((x) => [x.check, x.severity]), [["module-loaded", "high"]]);
  // Unloaded: both alarms clear after the hysteresis, and stay listed as cleared.
  const ptr = Buffer.alloc(8);
  ptr.writeBigUInt64LE(g.symbols.get("modules") as bigint);
  const prev = g.readVa(m.address + 16n, 8).readBigUInt64LE(0);
  const head = g.symbols.get("modules") as bigint;
  g.writeVa(prev, ptr); // prev->next = head
  const p = Buffer.alloc(8);
  p.writeBigUInt64LE(prev);
  g.writeVa(head + 8n, p); // head->prev = prev
  const ksetOnly = await w.runSweep({ guestView: false, track: true, noNewModules: true });
  assert.deepEqual(ksetOnly.fresh, [], "not on the list any more: no module-loaded (the kset copy is the hidden-module check's)");
  for (let i = 0; i < 3; i++) out = await w.runSweep({ guestView: false, track: true, noNewModules: true });
  const alarms = w.tracker.list().filter((a) => a.finding.check === "module-loaded" || a.finding.check === "module-untrusted");
  assert.deepEqual(alarms.map((a) => [a.finding.check, a.state, a.history.map((h) => h.change)]), [
    ["module-loaded", "cleared", ["raised", "cleared"]],
    ["module-untrusted", "cleared", ["raised", "cleared"]],
  ]);
});

test("finding keys locate the finding, not its wording", () => {
  assert.equal(findingKey({ ...f("idt-gate", "0x10"), message: "one" }), findingKey({ ...f("idt-gate", "0x10"), message: "two" }));
  assert.notEqual(findingKey(f("idt-gate", "0x10")), findingKey(f("idt-gate", "0x20")));
  assert.notEqual(findingKey({ check: "hidden-process", severity: "critical", message: "m", evidence: { pid: 5 } }), findingKey({ check: "hidden-process", severity: "critical", message: "m", evidence: { pid: 6 } }));
});

test("evidence is bounded for the audit log; errors become findings", () => {
  const e = boundEvidence({ address: "0x1", long: "x".repeat(10_000), list: Array.from({ length: 100 }, (_, i) => i), deep: { a: { b: { c: { d: 1 } } } }, big: 5n } as never);
  assert.equal(e.address, "0x1");
  assert.ok((e.long as string).length < 600);
  assert.equal((e.list as unknown[]).length, 17);
  assert.equal(JSON.stringify(e).length < 2000, true);
  assert.equal(e.big, "0x5");
  assert.equal(errorFinding(new IntrospectionError("malformed", "bad list"), "Sweep 3").check, "structure-unreadable");
  assert.equal(errorFinding(new IntrospectionError("host-input", "bad baseline"), "Sweep 3").check, "model-disagreement");
  assert.match(errorFinding(new TypeError("boom"), "Sweep 3").message, /unexpectedly.*boom/);
});

test("/proc/modules: names only, and a line that is not a module line voids the list", () => {
  assert.deepEqual(parseProcModules("button 24576 0 - Live 0x0000000000000000\nvirtio_blk 20480 1 - Live 0x0\n"), ["button", "virtio_blk"]);
  assert.deepEqual(parseProcModules(""), []);
  assert.equal(parseProcModules("ok 1\n../../etc 2\n"), undefined);
  assert.equal(parseProcModules("a 1\n".repeat(10), 5), undefined);
});

test("a watcher baselines, sweeps incrementally, and reports a rootkit once", async () => {
  const g = buildSyntheticKernel();
  const acc = access(g);
  const w = new VmWatcher(acc, { cache: new Map() });
  await assert.rejects(w.runSweep({ guestView: false, track: true }), /no baseline/);
  const est = await w.establish("start");
  assert.equal(est.source, "start");
  assert.equal(est.mismatch, undefined);
  assert.equal(w.ready, true);
  const clean = await w.runSweep({ guestView: false, track: true });
  assert.equal(clean.sweep, 1);
  assert.deepEqual(clean.fresh, []);
  assert.ok(clean.report && clean.report.coverage.textPagesHashed > 0);
  const old = overwriteSyscall(w.kernel!, g.writer, 15, sym(g, "__x64_sys_getpid"));
  const hit = await w.runSweep({ guestView: false, track: true });
  // The table lives in rodata: its page hash changes too.
  assert.deepEqual(hit.fresh.map((x) => x.check).sort(), ["kernel-rodata", "syscall-table"]);
  assert.equal(hit.fresh[0]?.evidence.address !== undefined, true);
  const again = await w.runSweep({ guestView: false, track: true });
  assert.deepEqual(again.fresh, [], "still there: not new");
  assert.deepEqual(again.active.map((x) => x.check).sort(), ["kernel-rodata", "syscall-table"]);
  // A one-off sweep does not consume the watch's news.
  overwriteSyscall(w.kernel!, g.writer, 15, old);
  for (let i = 0; i < 3; i++) await w.runSweep({ guestView: false, track: true });
  overwriteSyscall(w.kernel!, g.writer, 16, sym(g, "__x64_sys_getpid"));
  const oneOff = await w.runSweep({ guestView: false, track: false });
  assert.deepEqual(oneOff.fresh, []);
  assert.equal(oneOff.findings.some((x) => x.check === "syscall-table"), true);
  assert.deepEqual((await w.runSweep({ guestView: false, track: true })).fresh.map((x) => x.check).sort(), ["kernel-rodata", "syscall-table"]);
  assert.equal(acc.opened, 1, "guest RAM is opened once per watcher");
  w.close();
  await assert.rejects(w.runSweep({ guestView: false, track: true }));
});

test("the guest's view is taken between sweeps; a lying or failing agent cannot stop the sweep", async () => {
  const g = buildSyntheticKernel();
  let mode: "honest" | "liar" | "throw" = "honest";
  const w = new VmWatcher(
    access(g, () => {
      if (mode === "throw") throw new Error("agent gone");
      return { processes: ps(g).filter((p) => mode === "honest" || p.pid !== 12), modules: g.modules.map((m) => m.name) };
    }),
    { cache: new Map() },
  );
  await w.establish("start");
  assert.deepEqual((await w.runSweep({ guestView: true, track: true })).fresh, []);
  mode = "liar";
  const lie = await w.runSweep({ guestView: true, track: true });
  assert.deepEqual(lie.fresh.map((x) => [x.check, x.evidence.pid]), [["process-hidden-from-guest", 12]]);
  mode = "throw";
  const blind = await w.runSweep({ guestView: true, track: true });
  assert.equal(blind.guestView, null);
  assert.ok(blind.report, "no view, but a sweep");
});

test("DKOM: an unlinked process is a fresh finding on the second sweep", async () => {
  const g = buildSyntheticKernel();
  const w = new VmWatcher(access(g), { cache: new Map() });
  await w.establish("start");
  await w.runSweep({ guestView: false, track: true });
  const task = locateTask(w.kernel!, 12);
  assert.ok(task);
  const u = unlinkTask(w.kernel!, g.writer, task);
  assert.deepEqual((await w.runSweep({ guestView: false, track: true })).fresh, [], "first sighting: pending confirmation");
  assert.deepEqual((await w.runSweep({ guestView: false, track: true })).fresh.map((x) => x.check), ["hidden-process"]);
  assert.equal(relinkListNode(w.kernel!, g.writer, u), true);
});

test("a stored baseline is reused only for the same kernel and boot, and checked before it is trusted", async () => {
  const g = buildSyntheticKernel();
  const first = new VmWatcher(access(g), { cache: new Map() });
  const est = await first.establish("start");
  const stored = JSON.parse(JSON.stringify({ baseline: est.baseline, source: "stored", takenAt: est.takenAt }));
  const again = new VmWatcher(access(g), { cache: new Map() });
  const r = await again.establish("start", stored);
  assert.equal(r.source, "stored");
  assert.equal(r.mismatch, undefined);
  // A change made while nobody watched is still a change from the stored baseline.
  overwriteSyscall(again.kernel!, g.writer, 15, sym(g, "__x64_sys_getpid"));
  assert.ok((await again.runSweep({ guestView: false, track: true })).fresh.some((x) => x.check === "syscall-table"));

  const rebooted = buildSyntheticKernel({ shift: 0x1e00_0000n });
  const w3 = new VmWatcher(access(rebooted), { cache: new Map() });
  const r3 = await w3.establish("start", stored);
  assert.equal(r3.source, "reattach");
  assert.equal(r3.mismatch?.check, "baseline-mismatch");
  assert.deepEqual((await w3.runSweep({ guestView: false, track: true })).fresh, [], "the new baseline is of this kernel");

  const w4 = new VmWatcher(access(buildSyntheticKernel()), { cache: new Map() });
  const r4 = await w4.establish("start", { ...stored, baseline: { ...stored.baseline, syscalls: { table: "not hex", entries: [] } } });
  assert.equal(r4.source, "reattach");
  assert.match(r4.mismatch?.message ?? "", /unusable/);
  const w5 = new VmWatcher(access(buildSyntheticKernel()), { cache: new Map() });
  assert.equal((await w5.establish("start", { ...stored, baseline: null })).mismatch?.check, "baseline-mismatch", "garbage from storage");
});

test("a reset while a baseline is being taken voids it", async () => {
  const g = buildSyntheticKernel();
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const acc = access(g);
  const slow: GuestAccess = { ...acc, registers: async () => (await gate, g.regs) };
  const w = new VmWatcher(slow, { cache: new Map() });
  const pending = w.establish("start");
  w.invalidate();
  release();
  await assert.rejects(pending, /reset/);
  assert.equal(w.ready, false);
  assert.equal((await w.establish("reset")).source, "reset");
});

test("hostile guest memory or registers never make a sweep throw: a finding says why there is no report", async () => {
  const g = buildSyntheticKernel();
  const hot = g.hotspots;
  let regs: ControlRegisters[] = g.regs;
  const bugs: unknown[] = [];
  const w = new VmWatcher(
    access(g, undefined, () => regs),
    { cache: new Map(), onBug: (e) => bugs.push(e) },
  );
  await w.establish("start");
  const saved = Buffer.from(g.ram);
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ spot: fc.nat(hot.length - 1), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }), { minLength: 1, maxLength: 8 }),
      fc.option(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { nil: undefined }),
      async (writes, cr3) => {
        g.ram.set(saved);
        for (const x of writes) {
          const h = hot[x.spot]!;
          g.ram.set(x.bytes.subarray(0, Math.max(0, Math.min(x.bytes.length, h.length))), h.start + (x.at % Math.max(1, h.length)));
        }
        regs = cr3 === undefined ? g.regs : g.regs.map((r) => ({ ...r, cr3 }));
        const out = await w.runSweep({ guestView: false, track: true });
        assert.ok(out.report || out.error);
        assert.ok(out.findings.length <= 201);
      },
    ),
    { numRuns: 60 },
  );
  assert.deepEqual(bugs, [], "guest memory found no engine bug");
  g.ram.set(saved);
  regs = g.regs;
});

test("a reset during a sweep's guest view voids that sweep instead of comparing the new kernel with the old baseline", async () => {
  const g = buildSyntheticKernel();
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const inView = new Promise<void>((r) => (entered = r));
  const w = new VmWatcher(access(g), { cache: new Map() });
  await w.establish("start");
  const slow = new VmWatcher(
    {
      openMemory: async () => g.mem,
      registers: async () => g.regs,
      guestView: async () => {
        entered();
        await gate;
        return { processes: ps(g), modules: undefined };
      },
    },
    { cache: new Map() },
  );
  await slow.establish("start");
  const pending = slow.runSweep({ guestView: true, track: true });
  await inView;
  slow.invalidate();
  // Meanwhile the "new kernel" looks nothing like the old one.
  overwriteSyscall(w.kernel!, g.writer, 15, sym(g, "__x64_sys_getpid"));
  release();
  const out = await pending;
  assert.deepEqual(out.findings, []);
  assert.match(out.error ?? "", /reset/);
  assert.equal(slow.ready, false);
});

test("a resumed memory state is checked against the baseline of the boot it was saved in, not baselined as it is", async () => {
  const g = buildSyntheticKernel();
  const boot = await new VmWatcher(access(g), { cache: new Map() }).establish("start");
  const kept = JSON.parse(JSON.stringify({ baseline: boot.baseline, source: "restored", takenAt: boot.takenAt }));
  // The state was saved after a rootkit went in; then it is resumed in a fresh QEMU.
  const compromised = buildSyntheticKernel();
  const probe = new VmWatcher(access(compromised), { cache: new Map() });
  await probe.establish("start");
  overwriteSyscall(probe.kernel!, compromised.writer, 15, sym(compromised, "__x64_sys_getpid"));
  const other = buildSyntheticKernel({ shift: 0x1e00_0000n });
  const otherBoot = await new VmWatcher(access(other), { cache: new Map() }).establish("start");
  const candidates = [JSON.parse(JSON.stringify({ baseline: otherBoot.baseline, source: "restored", takenAt: otherBoot.takenAt })), { ...kept, baseline: null }, kept];

  const resumed = new VmWatcher(access(compromised), { cache: new Map() });
  const r = await resumed.establish("restored-untrusted", undefined, candidates);
  assert.equal(r.source, "restored");
  assert.equal(r.takenAt, boot.takenAt);
  assert.equal(r.mismatch, undefined);
  assert.ok((await resumed.runSweep({ guestView: false, track: true })).fresh.some((x) => x.check === "syscall-table"), "the rootkit is still a change");

  // No kept baseline of that boot: the state's own, marked as such.
  const blind = new VmWatcher(access(compromised), { cache: new Map() });
  const r2 = await blind.establish("restored-untrusted", undefined, [candidates[0]]);
  assert.equal(r2.source, "restored-untrusted");
  assert.deepEqual((await blind.runSweep({ guestView: false, track: true })).fresh, []);
});
