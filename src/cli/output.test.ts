/** The CLI's pure output helpers: start messages, numeric ordering, and the console filter. */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { isLive, VM_STATES } from "../vm/state-machine.ts";
import { accelCell, plural, sortNumerically, startedMessage, visibleControls } from "./output.ts";

test("vm start --wait on a VM without an agent does not claim the agent answers", () => {
  const vm = { name: "na", state: "running", pid: 42, accelerator: "tcg", spec: { agent: false } };
  assert.equal(startedMessage(vm, true, false), "VM na is running (it has no guest agent to wait for), pid 42, tcg\n");
  assert.equal(startedMessage({ ...vm, spec: { agent: true } }, true, false), "VM na is running and its agent answers (pid 42, tcg)\n");
  assert.doesNotMatch(startedMessage({ ...vm, state: "paused", spec: { agent: true } }, true, true), /agent answers/);
  assert.equal(startedMessage(vm, false, false), "VM na is running (pid 42, tcg)\n");
});

test("vm ps orders PIDs as numbers", () => {
  const rows = [1, 10, 11, 2, 100, 3].map((pid) => ({ pid, comm: `p${pid}` }));
  assert.deepEqual(sortNumerically(rows, "pid").map((r) => r.pid), [1, 2, 3, 10, 11, 100]);
});

test("the console filter shows escapes instead of sending them to the terminal", () => {
  assert.equal(visibleControls("login:\x1b[6n ok\r\n\tx"), "login:^[[6n ok\r\n\tx");
  assert.equal(visibleControls("\x07\x00\x7f\x9b2J"), "^G^@^?M-^[2J");
  assert.equal(visibleControls("héllo → ✓"), "héllo → ✓");
});

test("the console filter never lets a control character through but \\n, \\r and \\t", () => {
  fc.assert(
    fc.property(fc.string({ unit: "binary", maxLength: 200 }), (s) => {
      const out = visibleControls(s);
      assert.doesNotMatch(out, /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/);
      // Printable text is unchanged, so the filter only ever adds visible characters.
      assert.ok(out.length >= s.length);
    }),
  );
});

test("counts read as English: 1 signed checkpoint, 2 signed checkpoints, 0 records", () => {
  assert.equal(plural(1, "signed checkpoint"), "1 signed checkpoint");
  assert.equal(plural(2, "signed checkpoint"), "2 signed checkpoints");
  assert.equal(plural(0, "record"), "0 records");
});

test("vm list's ACCEL is shown for live VMs only, not the last run's of a stopped one", () => {
  // The CLI keeps its own copy of the live states; it must agree with the state machine's.
  for (const state of VM_STATES) assert.equal(accelCell({ state, accelerator: "tcg" }), isLive(state) ? "tcg" : undefined, state);
  assert.equal(accelCell({ state: "running", accelerator: null }), undefined);
});
