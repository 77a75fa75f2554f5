import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../log.ts";
import type { Baseline, Finding } from "../introspection/sweep.ts";
import { HEADER_SIZE } from "./replay-log.ts";
import { Shadow, type ShadowTarget } from "./shadow.ts";

/** `n` instruction events of `each` instructions (kind 0, u32 count), as QEMU appends them while recording. */
function events(n: number, each: number): Buffer {
  const body = Buffer.alloc(n * 5);
  for (let i = 0; i < n; i++) body.writeUInt32BE(each, i * 5 + 1);
  return body;
}

const finding = (check: Finding["check"], severity: Finding["severity"] = "critical"): Finding => ({ check, severity, message: `${check} changed`, evidence: {} });

test("the shadow stays on its leash, takes a new baseline after a premature one instead of reporting it, and reports a real finding once", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-shadow-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const raw = join(dir, "rr.log");
  // The recording's header is not written yet; it grows by 5 M instructions every 100 ms.
  writeFileSync(raw, Buffer.concat([Buffer.alloc(HEADER_SIZE), events(10, 1_000_000)]));
  let recorded = 10_000_000;
  const grow = setInterval(() => {
    appendFileSync(raw, events(5, 1_000_000));
    recorded += 5_000_000;
  }, 100);
  t.after(() => clearInterval(grow));
  let at = 0;
  const breaks: number[] = [];
  const replica: ShadowTarget = {
    pid: 0,
    ramBytes: 0,
    qmp: { hmp: async () => "" },
    icount: async () => at,
    runTo: async (icount) => {
      assert.ok(icount <= recorded - 2_000_000, `break ${icount} stays behind the copied log (${recorded}) by the margin`);
      breaks.push(icount);
      at = icount;
      return at;
    },
    onReset: () => undefined,
    serial: () => Buffer.alloc(0),
    close: async () => undefined,
  };
  // The first baseline is premature: the next sweep says it is not this kernel's; then a real change, seen twice.
  const script: Finding[][] = [[finding("baseline-mismatch", "high")], [], [finding("syscall-table")], [finding("syscall-table")]];
  let baselines = 0;
  const inspect = async (_t: unknown, baseline: Baseline | undefined) => {
    if (!baseline) return { baseline: { n: ++baselines } as unknown as Baseline, findings: [] };
    return { baseline, findings: script.shift() ?? [] };
  };
  const reported: Array<{ check: string; icount: number }> = [];
  const shadow = Shadow.start({
    rawLog: raw,
    launch: async (follow) => {
      await follow(join(dir, "replay.log"));
      return replica;
    },
    liveIcount: async () => recorded,
    onFinding: async (f, icount) => void reported.push({ check: f.check, icount }),
    log: silentLogger(),
    inspect,
  });
  const deadline = Date.now() + 10_000;
  while (shadow.status().sweeps < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const s = await shadow.stop();
  assert.equal(s.state, "ended");
  assert.ok(breaks.length >= 4 && breaks.every((b, i) => i === 0 || b > breaks[i - 1]!), `steps forward: ${breaks.join(", ")}`);
  assert.equal(s.rebaselines, 1, "the premature baseline was replaced, not reported");
  assert.equal(baselines, 2);
  assert.deepEqual(reported.map((r) => r.check), ["syscall-table"], "reported once");
  assert.deepEqual(s.findings.map((f) => f.check), ["syscall-table"]);
});
