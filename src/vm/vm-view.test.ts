/**
 * The inventory summary as JSON text (vmSummaryJson) is exactly vmSummary plus the posture, whatever the record
 * holds (property test over hostile strings and labels); the kept text of a frozen record never outlives it, and
 * `expired` follows the time of each request.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { vmSummary, vmSummaryJson } from "./vm-view.ts";
import type { VmRecord } from "./vm-repository.ts";

function record(over: Partial<VmRecord> = {}): VmRecord {
  return {
    id: "00000000-0000-4000-8000-000000000001",
    name: "web",
    spec: { vcpus: 2, memoryMiB: 512 } as VmRecord["spec"],
    state: "stopped",
    host: "h1",
    accelerator: null,
    vmgenid: "11111111-2222-4333-8444-555555555555",
    generation: 3,
    pid: null,
    owner: "user:ada",
    approver: null,
    purpose: null,
    expiresAt: null,
    labels: {},
    lineage: { kind: "image", image: "tiny" },
    isTemplate: false,
    createdBy: "ada",
    createdAt: "2026-12-07T00:00:00.000Z",
    updatedAt: "2026-12-07T00:00:00.000Z",
    stateChangedAt: "2026-12-07T00:00:00.000Z",
    currentSnapshotId: null,
    resumeSnapshotId: null,
    baseVmId: null,
    vtimeNs: "x",
    securityFloor: {},
    ...over,
  };
}

test("vmSummaryJson is vmSummary plus the posture, for any text a record holds", () => {
  fc.assert(
    fc.property(fc.string(), fc.option(fc.string(), { nil: null }), fc.dictionary(fc.string(), fc.string()), fc.constantFrom("unknown", "current", "infected"), (name, purpose, labels, posture) => {
      const vm = Object.freeze(record({ name, purpose, labels }));
      const now = Date.parse("2026-12-07T12:00:00Z");
      assert.deepEqual(JSON.parse(vmSummaryJson(vm, now, posture)), JSON.parse(JSON.stringify({ ...vmSummary(vm, now), posture })));
    }),
  );
});

test("the kept text is per record; expired is the request's", () => {
  const vm = Object.freeze(record({ expiresAt: "2026-12-08T00:00:00.000Z" }));
  const before = JSON.parse(vmSummaryJson(vm, Date.parse("2026-12-07T00:00:00Z"), "unknown")) as { expired: boolean };
  const after = JSON.parse(vmSummaryJson(vm, Date.parse("2026-12-09T00:00:00Z"), "unknown")) as { expired: boolean };
  assert.deepEqual([before.expired, after.expired], [false, true]);
  const changed = Object.freeze({ ...vm, state: "running" as const });
  assert.equal((JSON.parse(vmSummaryJson(changed, 0, "unknown")) as { state: string }).state, "running", "a new record, a new text");
  const open = record();
  vmSummaryJson(open, 0, "unknown");
  open.state = "running"; // a record that is not frozen may change: its text is not kept
  assert.equal((JSON.parse(vmSummaryJson(open, 0, "unknown")) as { state: string }).state, "running");
});
