import { test } from "node:test";
import assert from "node:assert/strict";
import { ALLOWED_FROM, assertAllowed, VM_STATES } from "./state-machine.ts";

test("every action's allowed states are real states", () => {
  for (const [action, states] of Object.entries(ALLOWED_FROM)) for (const s of states) assert.ok(VM_STATES.includes(s), `${action}: ${s}`);
});

test("an illegal transition is a clear error naming the VM, state and what is allowed", () => {
  assert.throws(() => assertAllowed("pause", "web1", "stopped"), {
    code: "VIGIL_INVALID_STATE",
    message: 'Cannot pause VM "web1": it is stopped (allowed when running)',
  });
  assert.throws(() => assertAllowed("start", "web1", "running"), /allowed when stopped or crashed/);
  assert.doesNotThrow(() => assertAllowed("resume", "web1", "paused"));
});

test("a longer list of allowed states reads as a sentence: commas, then \"or\" before the last", () => {
  assert.throws(() => assertAllowed("kill", "web1", "stopped"), {
    message: 'Cannot kill VM "web1": it is stopped (allowed when running, paused, starting or stopping)',
  });
});

test("an incoming VM is only started incoming, committed or aborted: no user lifecycle action applies to it", () => {
  for (const action of ["start", "stop", "kill", "destroy", "modify", "pause"] as const) assert.throws(() => assertAllowed(action, "web1", "incoming"), { code: "VIGIL_INVALID_STATE" });
  for (const action of ["start-incoming", "commit-incoming", "abort-incoming"] as const) {
    assert.doesNotThrow(() => assertAllowed(action, "web1", "incoming"));
    assert.throws(() => assertAllowed(action, "web1", "running"), /allowed when incoming/);
  }
  assert.throws(() => assertAllowed("migrate", "web1", "incoming"), /allowed when running, paused, stopped or crashed/);
});
