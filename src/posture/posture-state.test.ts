import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { computePosture, SEVERITIES, type PostureInputs, type ScanSummary } from "./posture-state.ts";

const now = new Date("2026-12-07T12:00:00Z");
const scan = (o: Partial<ScanSummary> = {}): ScanSummary => ({ scannedAt: "2026-12-06T12:00:00Z", advisoriesSha256: "a1", rulesSha256: "r1", complete: true, pending: [], findings: [], ...o });
const inputs = (o: Partial<PostureInputs> = {}): PostureInputs => ({ lastScan: scan(), running: false, currentAdvisoriesSha256: "a1", currentRulesSha256: "r1", now, ...o });

test("posture: unknown, current, and each reason for stale", () => {
  assert.deepEqual(computePosture({ running: false, now }), { state: "unknown", reasons: ["never scanned"] });
  assert.equal(computePosture(inputs()).state, "current");
  const stale = (o: Partial<PostureInputs>) => computePosture(inputs(o));
  assert.match(stale({ lastScan: scan({ scannedAt: "2026-11-20T12:00:00Z" }) }).reasons[0]!, /last scanned 17 days ago \(policy: 7\)/);
  assert.match(stale({ lastScan: scan({ scannedAt: "not a date" }) }).reasons[0]!, /last scanned \? days ago/);
  assert.match(stale({ running: true }).reasons[0]!, /running since the scan/);
  assert.match(stale({ lastRunningAt: "2026-12-07T00:00:00Z" }).reasons[0]!, /ran at .* after the scan/);
  assert.equal(stale({ lastRunningAt: "2026-12-05T00:00:00Z" }).state, "current", "running before the scan does not matter");
  assert.match(stale({ currentAdvisoriesSha256: "a2" }).reasons[0]!, /advisory data changed/);
  assert.match(stale({ currentRulesSha256: "r2" }).reasons[0]!, /rules changed/);
  assert.match(stale({ lastScan: scan({ complete: false }) }).reasons[0]!, /did not finish/);
  for (const o of [{ running: true }, { currentRulesSha256: "r2" }, { lastScan: scan({ complete: false }) }]) assert.equal(stale(o).state, "stale");
});

test("posture: vulnerable by the policy's severity; infected above everything", () => {
  const pending = [{ package: "openssl", severity: "medium" as const }];
  assert.equal(computePosture(inputs({ lastScan: scan({ pending }) })).state, "vulnerable", "the default threshold is unknown: any security update not called unimportant");
  assert.equal(computePosture(inputs({ lastScan: scan({ pending: [{ package: "x", severity: "unimportant" }] }) })).state, "current");
  assert.equal(computePosture(inputs({ lastScan: scan({ pending }) }), { maxScanAgeDays: 7, vulnerableAt: "high" }).state, "current", "medium is below a high threshold");
  const v = computePosture(inputs({ lastScan: scan({ pending }) }), { maxScanAgeDays: 7, vulnerableAt: "medium" });
  assert.deepEqual(v, { state: "vulnerable", reasons: ["pending medium security update for openssl"] });
  const i = computePosture(inputs({ running: true, lastScan: scan({ pending: [{ package: "x", severity: "critical" }], findings: [{ path: "/opt/p", rule: "r" }] }) }));
  assert.equal(i.state, "infected");
  assert.deepEqual(i.reasons, ["signature r in /opt/p", "pending critical security update for x", "running since the scan (its disk is changing)"]);
});

test("property: the state is the worst reason that applies, and a finding always means infected", () => {
  const sev = fc.constantFrom(...SEVERITIES);
  fc.assert(
    fc.property(
      fc.array(fc.record({ package: fc.string(), severity: sev }), { maxLength: 4 }),
      fc.array(fc.record({ path: fc.string(), rule: fc.string() }), { maxLength: 2 }),
      fc.boolean(),
      fc.boolean(),
      sev,
      (pending, findings, running, complete, vulnerableAt) => {
        const p = computePosture(inputs({ running, lastScan: scan({ pending, findings, complete }) }), { maxScanAgeDays: 7, vulnerableAt });
        const rank = (s: string) => SEVERITIES.indexOf(s as never);
        const expected = findings.length > 0 ? "infected" : pending.some((x) => rank(x.severity) >= rank(vulnerableAt)) ? "vulnerable" : running || !complete ? "stale" : "current";
        assert.equal(p.state, expected);
        assert.ok(p.reasons.length > 0);
      },
    ),
  );
});
