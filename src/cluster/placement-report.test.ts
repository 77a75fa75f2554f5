import { test } from "node:test";
import assert from "node:assert/strict";
import type { HostLoad } from "./types.ts";
import { recommendBalance, recommendConsolidate } from "./placement.ts";
import { balanceJson, consolidateJson, formatBalance, formatConsolidate } from "./placement-report.ts";

const host = (name: string, memTotalMiB: number, vms: HostLoad["vms"] = [], ready = true): HostLoad => ({ name, memTotalMiB, memReservedMiB: 0, cpus: 4, vms, ready });

const uneven = [
  host("a", 4096, [{ name: "big", memoryMiB: 2048, vcpus: 1 }, { name: "db", memoryMiB: 1024, vcpus: 1, pinned: true }, { name: "small", memoryMiB: 512, vcpus: 1 }]),
  host("b", 4096, [{ name: "b1", memoryMiB: 512, vcpus: 1 }]),
  host("c", 4096),
  host("d", 4096, [{ name: "d1", memoryMiB: 3072, vcpus: 1 }], false),
];

test("balance report: the moves, the hosts before and after, and the reasoning", () => {
  assert.equal(
    formatBalance(recommendBalance(uneven)),
    `2 migrations recommended: memory load spread 38.6 points → 11.8 points.

#  VM     FROM  TO  MEMORY    VCPUS  SPREAD AFTER
1  big    a     c   2048 MiB  1      15.6 points
2  small  a     b   512 MiB   1      11.8 points

HOST  READY  USED BEFORE    LOAD BEFORE  LOAD AFTER  VMS
a     yes    3584/4096 MiB  87.5%        25%         3 → 1
b     yes    512/4096 MiB   12.5%        25%         1 → 2
c     yes    0/4096 MiB     0%           50%         0 → 1
d     no     3072/4096 MiB  75%          75%         1

Reasoning:
  1. move "big" (2048 MiB) from "a" (memory 87.5% → 37.5%) to "c" (0% → 50%): spread 38.6 points → 15.6 points
  2. move "small" (512 MiB) from "a" (memory 37.5% → 25%) to "b" (12.5% → 25%): spread 15.6 points → 11.8 points
  - "d" is not ready: its VMs stay and it takes none
  - pinned, never moved: "db" (on "a")
  - no further move lowers the spread by at least 1 point
`,
  );
  assert.equal(
    formatBalance(recommendBalance([host("a", 4096, [{ name: "x", memoryMiB: 1024, vcpus: 1 }]), host("b", 4096, [{ name: "y", memoryMiB: 1024, vcpus: 1 }])])),
    `No migration recommended: memory load spread 0 points.

HOST  READY  USED BEFORE    LOAD BEFORE  LOAD AFTER  VMS
a     yes    1024/4096 MiB  25%          25%         1
b     yes    1024/4096 MiB  25%          25%         1

Reasoning:
  - already balanced: no move lowers the spread (0 points) by at least 1 point
`,
  );
});

test("balance --json: moves with reasons, hosts before/after, notes", () => {
  const json = balanceJson(recommendBalance(uneven, { maxMoves: 1 }));
  assert.deepEqual(Object.keys(json), ["kind", "spreadBefore", "spreadAfter", "moves", "hosts", "notes"]);
  assert.equal(json.kind, "balance");
  assert.deepEqual(json.moves.map(({ spreadAfter, ...m }) => ({ ...m, spreadAfter: Math.round(spreadAfter * 1e4) / 1e4 })), [
    { vm: "big", from: "a", to: "c", memoryMiB: 2048, vcpus: 1, spreadAfter: 0.1559, reason: 'move "big" (2048 MiB) from "a" (memory 87.5% → 37.5%) to "c" (0% → 50%): spread 38.6 points → 15.6 points' },
  ]);
  assert.equal(json.spreadAfter, json.moves[0]!.spreadAfter);
  assert.deepEqual(json.hosts[0], { host: "a", ready: true, memUsableMiB: 4096, memUsedBeforeMiB: 3584, memUsedAfterMiB: 1536, loadBefore: 0.875, loadAfter: 0.375, vmsBefore: 3, vmsAfter: 2 });
  assert.equal(json.notes.at(-1), "stopped at the limit of 1 move");
  assert.deepEqual(JSON.parse(JSON.stringify(json)), json, "plain JSON");
});

test("consolidate report and --json", () => {
  const plan = recommendConsolidate([
    host("x", 4096, [{ name: "x1", memoryMiB: 512, vcpus: 1 }]),
    host("y", 4096, [{ name: "y1", memoryMiB: 1024, vcpus: 1 }]),
    host("z", 4096, [{ name: "z1", memoryMiB: 3500, vcpus: 1 }]),
    host("e", 2048),
    host("off", 4096, [], false),
  ]);
  assert.equal(
    formatConsolidate(plan),
    `2 hosts can be emptied: "e", "x" (1 migration).

EMPTY  VM  TO  MEMORY           VCPUS
e      -   -   (already empty)  -
x      x1  y   512 MiB          1

HOST  READY  USED BEFORE    LOAD BEFORE  LOAD AFTER  VMS
e     yes    0/2048 MiB     0%           0%          0
off   no     0/4096 MiB     0%           0%          0
x     yes    512/4096 MiB   12.5%        0%          1 → 0
y     yes    1024/4096 MiB  25%          37.5%       1 → 2
z     yes    3500/4096 MiB  85.4%        85.4%       1

Reasoning:
  "e": already empty: can be powered down
  "x": its VM (512 MiB) fits on "y" (memory → 37.5%)
  "y": kept: receives VMs from "x"
  "z": kept: "z1" (3500 MiB, 1 vCPU) fits on no other host ("y": memory: needs 3500 MiB, 2560 MiB free of 4096 MiB allowed)
  - "off" is not ready: neither emptied nor given VMs
`,
  );
  assert.deepEqual(consolidateJson(plan), {
    kind: "consolidate",
    emptied: [
      { host: "e", reason: "already empty: can be powered down", moves: [] },
      { host: "x", reason: 'its VM (512 MiB) fits on "y" (memory → 37.5%)', moves: [{ vm: "x1", to: "y", memoryMiB: 512, vcpus: 1 }] },
    ],
    kept: [
      { host: "y", reason: 'kept: receives VMs from "x"' },
      { host: "z", reason: 'kept: "z1" (3500 MiB, 1 vCPU) fits on no other host ("y": memory: needs 3500 MiB, 2560 MiB free of 4096 MiB allowed)' },
    ],
    hosts: [
      { host: "e", ready: true, memUsableMiB: 2048, memUsedBeforeMiB: 0, memUsedAfterMiB: 0, loadBefore: 0, loadAfter: 0, vmsBefore: 0, vmsAfter: 0 },
      { host: "off", ready: false, memUsableMiB: 4096, memUsedBeforeMiB: 0, memUsedAfterMiB: 0, loadBefore: 0, loadAfter: 0, vmsBefore: 0, vmsAfter: 0 },
      { host: "x", ready: true, memUsableMiB: 4096, memUsedBeforeMiB: 512, memUsedAfterMiB: 0, loadBefore: 0.125, loadAfter: 0, vmsBefore: 1, vmsAfter: 0 },
      { host: "y", ready: true, memUsableMiB: 4096, memUsedBeforeMiB: 1024, memUsedAfterMiB: 1536, loadBefore: 0.25, loadAfter: 0.375, vmsBefore: 1, vmsAfter: 2 },
      { host: "z", ready: true, memUsableMiB: 4096, memUsedBeforeMiB: 3500, memUsedAfterMiB: 3500, loadBefore: 3500 / 4096, loadAfter: 3500 / 4096, vmsBefore: 1, vmsAfter: 1 },
    ],
    notes: ['"off" is not ready: neither emptied nor given VMs'],
  });
  assert.equal(formatConsolidate(recommendConsolidate([host("solo", 4096, [{ name: "v", memoryMiB: 64, vcpus: 1 }])])).split("\n")[0], "No host can be emptied.");
});
