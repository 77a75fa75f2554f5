/** The per-window summary of guest changes (change-audit.ts): what it lists and what it only counts. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { silentLogger } from "../log.ts";
import { MAX_NAMES, VtimeChangeAudit } from "./change-audit.ts";

test("names past the listed ones are counted once each, however often they change", async () => {
  const written: Array<{ action: string; details: Record<string, unknown> }> = [];
  const audit = { append: async (r: { action: string; details?: Record<string, unknown> }) => void written.push({ action: r.action, details: r.details ?? {} }) };
  const changes = new VtimeChangeAudit(audit as never, { vmId: "vm1", vmName: "g" }, silentLogger(), 60_000);
  await changes.note("incr", "first", {});
  const names = Array.from({ length: MAX_NAMES + 8 }, (_, i) => `c${String(i).padStart(3, "0")}`);
  for (let round = 0; round < 3; round++) for (const n of names) await changes.note("incr", n, {});
  await changes.close();
  const summary = written.find((w) => w.action === "vtime.changes")!.details as { names: string[]; moreNames?: number; total: number };
  assert.equal(summary.total, names.length * 3);
  assert.equal(summary.names.length, MAX_NAMES);
  assert.equal(summary.moreNames, 8, "8 further names, not 8 × 3 changes");
});
