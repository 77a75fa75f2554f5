/**
 * How far behind a scan is (behindOf, the one rule for the report and the rescans), and the scheduler against fake
 * deps: it rescans only dormant, previously scanned VMs that are behind, oldest first, at most maxPerRun, reports
 * failures, does nothing (not even load the advisory data) when nothing was ever scanned, and a change of the
 * advisory data or rules starts a run at the next check.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { silentLogger } from "../log.ts";
import type { PostureRow, ScanRecord } from "./posture-repository.ts";
import { behindOf, RescanScheduler, type Current, type RescanDeps } from "./rescan.ts";

const NOW = new Date("2026-12-08T12:00:00Z");
const daysAgo = (n: number) => new Date(NOW.getTime() - n * 86_400_000).toISOString();
const scan = (o: Partial<ScanRecord> = {}): ScanRecord => ({ scannedAt: daysAgo(1), how: "offline", advisoriesSha256: "adv1", rulesSha256: "rules1", complete: true, packages: [], pending: [], findings: [], notes: [], elapsedMs: 1, ...o });
const row = (vmId: string, s: ScanRecord | null, lastRunningAt: string | null = null): PostureRow => ({ vmId, scan: s, lastRunningAt, lastPatchedAt: null, updatedAt: NOW.toISOString() });
const policy = { maxScanAgeDays: 7 };
const cur: Current = { advisoriesSha256: "adv1", rulesSha256: "rules1" };

test("behindOf: new advisories, new rules, a run after an offline scan, or an age past the policy; never scanned is not behind", () => {
  assert.deepEqual(behindOf(undefined, cur, policy, NOW), { scannedAt: null, ageDays: null, advisoriesChanged: null, rulesChanged: null, ranSince: false, overdue: false, pending: 0, worstSeverity: null, findings: 0, behind: false });
  const fresh = behindOf(row("a", scan({ pending: [{ package: "p", installed: "1", candidate: "2", severity: "low", cves: [] }, { package: "q", installed: "1", candidate: "2", severity: "high", cves: [] }] })), cur, policy, NOW);
  assert.deepEqual([fresh.behind, fresh.ageDays, fresh.pending, fresh.worstSeverity], [false, 1, 2, "high"]);
  assert.equal(behindOf(row("a", scan()), { ...cur, advisoriesSha256: "adv2" }, policy, NOW).advisoriesChanged, true);
  assert.equal(behindOf(row("a", scan()), { ...cur, rulesSha256: "rules2" }, policy, NOW).behind, true);
  assert.equal(behindOf(row("a", scan(), daysAgo(0)), cur, policy, NOW).ranSince, true);
  assert.equal(behindOf(row("a", scan({ how: "in-band" }), daysAgo(0)), cur, policy, NOW).ranSince, false, "an in-band scan saw it running");
  assert.equal(behindOf(row("a", scan({ scannedAt: daysAgo(8) })), cur, policy, NOW).overdue, true);
  assert.equal(behindOf(row("a", scan({ scannedAt: "not a time" })), cur, policy, NOW).overdue, true, "an unreadable time is overdue, not current");
  // Without current data the changes are unknown (null), not assumed.
  assert.deepEqual([behindOf(row("a", scan()), {}, policy, NOW).advisoriesChanged, behindOf(row("a", scan()), {}, policy, NOW).behind], [null, false]);
});

function fake(o: { rows: PostureRow[]; states?: Record<string, string>; failOn?: string; current?: () => Current }) {
  const vms = o.rows.map((r) => ({ id: r.vmId, name: `vm-${r.vmId}`, labels: {}, state: (o.states?.[r.vmId] ?? "stopped") as "stopped" }));
  const scanned: string[] = [];
  let currentCalls = 0;
  let rowReads = 0;
  const deps: RescanDeps = {
    all: async () => vms,
    rows: async () => {
      rowReads++;
      return o.rows;
    },
    anyScanned: async () => o.rows.some((r) => r.scan),
    policyOf: async () => ({ gate: false, maxScanAgeDays: 7, vulnerableAt: "high" }),
    current: async () => {
      currentCalls++;
      return o.current?.() ?? cur;
    },
    scan: async (name) => {
      if (name === o.failOn) throw new Error("disk unreadable");
      scanned.push(name);
    },
    log: silentLogger(),
    now: () => NOW,
  };
  return { deps, scanned, currentCalls: () => currentCalls, rowReads: () => rowReads };
}

test("a run rescans the dormant, scanned VMs that are behind, oldest first, capped; failures are reported", async () => {
  const f = fake({
    rows: [row("old", scan({ scannedAt: daysAgo(30) })), row("mid", scan({ scannedAt: daysAgo(10) })), row("ok", scan()), row("never", null), row("busy", scan({ scannedAt: daysAgo(40) })), row("bad", scan({ scannedAt: daysAgo(20) }))],
    states: { busy: "running" },
    failOn: "vm-bad",
  });
  const s = new RescanScheduler(f.deps, { maxPerRun: 3 });
  assert.deepEqual(await s.runOnce("test"), { scanned: ["vm-old", "vm-mid"], failed: [{ vm: "vm-bad", error: "disk unreadable" }] });
  assert.deepEqual(f.scanned, ["vm-old", "vm-mid"], "not the current one, the never-scanned one or the running one");
  const capped = fake({ rows: [row("a", scan({ scannedAt: daysAgo(9) })), row("b", scan({ scannedAt: daysAgo(10) }))] });
  assert.deepEqual((await new RescanScheduler(capped.deps, { maxPerRun: 1 }).runOnce("test")).scanned, ["vm-b"]);
});

test("the checks: nothing ever scanned costs no advisory load; a change of the data starts a run", async (t) => {
  const none = fake({ rows: [row("never", null)] });
  const idle = new RescanScheduler(none.deps, { checkMs: 20 });
  idle.start();
  t.after(() => idle.stop());
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(none.currentCalls(), 0);
  assert.equal(none.rowReads(), 0, "the minute's check reads no scan rows");

  let data: Current = { ...cur };
  const f = fake({ rows: [row("a", scan())], current: () => data });
  const s = new RescanScheduler(f.deps, { checkMs: 20, periodMs: 3600_000 });
  s.start();
  t.after(() => s.stop());
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(f.scanned, [], "current: nothing to do");
  data = { ...cur, advisoriesSha256: "adv2" };
  const until = Date.now() + 3000;
  while (f.scanned.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(f.scanned, ["vm-a"], "new advisories: rescanned at the next check");
});
