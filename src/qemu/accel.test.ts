import { test } from "node:test";
import assert from "node:assert/strict";
import { detectAccelerator } from "./accel.ts";

const probe = (opens: boolean, flags: string) => ({ kvmOpens: () => opens, cpuFlags: () => `flags\t: fpu ${flags} sse2` });

test("KVM needs both an openable /dev/kvm and vmx/svm", () => {
  assert.equal(detectAccelerator({}, probe(true, "vmx")).accel, "kvm");
  assert.equal(detectAccelerator({}, probe(true, "svm")).accel, "kvm");
  assert.equal(detectAccelerator({}, probe(true, "")).accel, "tcg");
  assert.equal(detectAccelerator({}, probe(false, "vmx")).accel, "tcg");
});

test("VIGIL_ACCEL overrides and is validated", () => {
  assert.deepEqual(detectAccelerator({ VIGIL_ACCEL: "tcg" }, probe(true, "vmx")), { accel: "tcg", reason: "set by VIGIL_ACCEL" });
  assert.throws(() => detectAccelerator({ VIGIL_ACCEL: "xen" }, probe(true, "vmx")), /allowed values are "kvm" and "tcg"/);
});
