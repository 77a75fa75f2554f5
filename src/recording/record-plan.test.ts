import { test } from "node:test";
import assert from "node:assert/strict";
import { recordRefusals } from "./record-plan.ts";
import { RecordingService } from "./recording-service.ts";
import type { VmSpec } from "../vm/spec.ts";

const spec = (over: Partial<VmSpec> = {}): VmSpec => ({
  version: 1, name: "r", machine: "pc-i440fx-7.2", cpu: "max", vcpus: 1, memoryMiB: 128, image: "tiny",
  boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "console=ttyS0" }, disks: [{ name: "root" }], nics: [], agent: true, vtime: true, ...over,
} as VmSpec);

test("what QEMU cannot record is refused with the field and the reason; a plain tiny spec is recordable", () => {
  assert.deepEqual(recordRefusals(spec()), []);
  assert.deepEqual(recordRefusals(spec({ vcpus: 2 })).map((r) => r.field), ["vcpus"]);
  assert.match(recordRefusals(spec({ vcpus: 2 }))[0]!.reason, /2 vCPUs; QEMU records and replays exactly one/);
  assert.deepEqual(recordRefusals(spec({ cpu: "host" })).map((r) => r.field), ["cpu"]);
  assert.deepEqual(recordRefusals(spec({ storage: "shared" })).map((r) => r.field), ["storage"]);
  assert.deepEqual(recordRefusals(spec({ vcpus: 4, cpu: "host" })).map((r) => r.field), ["vcpus", "cpu"]);
});

test("a replay point is an instruction count or a percentage; anything else names the field", () => {
  assert.equal(RecordingService.resolvePoint(undefined, 1000), 1000);
  assert.equal(RecordingService.resolvePoint("50%", 1000), 500);
  assert.equal(RecordingService.resolvePoint("12.5%", 1000), 125);
  assert.equal(RecordingService.resolvePoint("700", 1000), 700);
  assert.equal(RecordingService.resolvePoint(7, 1000), 7);
  for (const bad of ["101%", "-5", "ten", "1e9", ""]) assert.throws(() => RecordingService.resolvePoint(bad, 1000), { code: "VIGIL_BAD_REQUEST", field: "until" }, bad);
});
