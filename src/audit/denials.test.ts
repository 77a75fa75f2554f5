/**
 * Anonymous denials (review finding 11): one record per source per interval plus one count at its end, and a
 * bounded table of sources however many addresses knock.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { AuditEntry } from "./audit-log.ts";
import { DenialAggregator, MAX_SOURCES } from "./denials.ts";

test("sources beyond MAX_SOURCES share one bucket: the records and the table stay bounded", async () => {
  const appended: AuditEntry[] = [];
  let now = 0;
  const agg = new DenialAggregator(async (e) => void appended.push(e), 60_000, () => now);
  const sources = MAX_SOURCES + 500;
  for (let i = 0; i < sources; i++) await agg.deny(`10.0.${Math.floor(i / 256)}.${i % 256}`, "POST", "/v1/vms", `r${i}`);
  // One immediate record per tracked source, one for the shared bucket; the other 499 are counted in it.
  assert.equal(appended.length, MAX_SOURCES + 1);
  assert.equal(appended.at(-1)!.details!.source, "other");
  now = 60_000;
  await agg.flush(false);
  const counts = appended.slice(MAX_SOURCES + 1);
  assert.deepEqual(counts.map((e) => [e.details!.source, e.details!.count]), [["other", sources - MAX_SOURCES - 1]]);
  // The interval has ended: the table is empty again, so a known source is recorded at once once more.
  await agg.deny("10.0.0.0", "POST", "/v1/vms", "again");
  assert.deepEqual([appended.length, appended.at(-1)!.details!.source, appended.at(-1)!.details!.count], [MAX_SOURCES + 3, "10.0.0.0", 1]);
  await agg.close();
});
