import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { createVmRequestSchema, resolveSpec, vmSpecSchema, type ResolvableImage } from "./spec.ts";
import { parseOrThrow } from "../validation.ts";
import { VigilError } from "../errors.ts";

const tiny: ResolvableImage = { name: "tiny", boot: { kind: "kernel", kernel: "/c/vmlinuz", initrd: "/c/initrd.img", cmdline: "console=ttyS0" }, disk: "/c/disk.qcow2" };
const parse = (input: unknown) => parseOrThrow(createVmRequestSchema, input, "VM spec", "VIGIL_INVALID_SPEC");

test("a minimal request gets secure defaults and resolves to a valid spec", () => {
  const spec = resolveSpec(parse({ name: "web1" }), tiny, { cpu: "max" });
  assert.equal(vmSpecSchema.safeParse(spec).success, true);
  assert.equal(spec.memoryMiB, 256);
  assert.equal(spec.vcpus, 1);
  assert.equal(spec.nics.length, 1);
  assert.deepEqual({ ...spec.nics[0]!, mac: "" }, { name: "net0", mode: "user", restrict: true, mac: "" }, "no way out unless asked");
  assert.match(spec.nics[0]!.mac, /^52:54:00:/);
  assert.deepEqual(spec.disks, [{ name: "root", backing: "/c/disk.qcow2" }]);
  assert.match(spec.boot.kind === "kernel" ? spec.boot.cmdline : "", /vigil.hostname=web1/);
});

test("bad input names the field, says what is wrong and what is allowed", () => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ name: "Web" }, "name", /lower-case letters/],
    [{ name: "w", memoryMiB: 32 }, "memoryMiB", /too small/],
    [{ name: "w", memoryMiB: 100.5 }, "memoryMiB", /integer/],
    [{ name: "w", vcpus: 0 }, "vcpus", /too small/],
    [{ name: "w", extra: 1 }, "extra", /unknown field "extra"/],
    [{ name: "w", disks: [{ name: "d", sizeMiB: 1, path: "/etc/shadow" }] }, "disks.0.path", /unknown field/],
    [{ name: "w", nics: [{ restrict: "yes" }] }, "nics.0.restrict", /must be a boolean/],
    [{ name: "w", cmdline: "init=/bin/sh;reboot" }, "cmdline", /may contain only/],
    [{}, "name", /is required/],
  ];
  for (const [input, field, message] of cases) {
    assert.throws(() => parse(input), (err: unknown) => {
      assert.ok(err instanceof VigilError);
      assert.equal(err.field, field, JSON.stringify(input));
      assert.match(err.message, message);
      assert.match(err.message, /^Invalid VM spec: /);
      return true;
    });
  }
});

test("a data disk may not reuse the image's disk name", () => {
  assert.throws(() => resolveSpec(parse({ name: "w", disks: [{ name: "root", sizeMiB: 10 }] }), tiny, { cpu: "max" }), { field: "disks.0.name" });
});

test("property: any input either parses to a valid spec or fails with a field-naming VigilError", () => {
  fc.assert(
    fc.property(fc.anything(), (input) => {
      try {
        const spec = resolveSpec(parse(input), tiny, { cpu: "max" });
        assert.equal(vmSpecSchema.safeParse(spec).success, true);
      } catch (err) {
        assert.ok(err instanceof VigilError, String(err));
        assert.equal(err.code, "VIGIL_INVALID_SPEC");
      }
    }),
    { numRuns: 300 },
  );
});

test("a NIC naming a network is bridged; restrict with network is refused; the default is unchanged", () => {
  const spec = resolveSpec(parse({ name: "w", nics: [{ network: "lab" }, { restrict: false }, {}] }), tiny, { cpu: "max" });
  assert.equal(vmSpecSchema.safeParse(spec).success, true);
  assert.deepEqual(spec.nics.map(({ mac: _mac, ...n }) => n), [
    { name: "net0", mode: "bridge", network: "lab" },
    { name: "net1", mode: "user", restrict: false },
    { name: "net2", mode: "user", restrict: true },
  ]);
  assert.throws(() => parse({ name: "w", nics: [{ network: "lab", restrict: true }] }), (err: unknown) => err instanceof VigilError && err.field === "nics.0.restrict" && /network/.test(err.message));
  assert.throws(() => parse({ name: "w", nics: [{ network: "Lab_1" }] }), (err: unknown) => err instanceof VigilError && err.field === "nics.0.network" && /network name/.test(err.message));
  assert.throws(() => parse({ name: "w", nics: [{ network: "a-very-long-name" }] }), { field: "nics.0.network" });
});

test("spec version 1 stays: an old user-NIC spec parses unchanged, a bridged one round-trips", () => {
  const old = resolveSpec(parse({ name: "w" }), tiny, { cpu: "max" });
  assert.deepEqual(vmSpecSchema.parse(JSON.parse(JSON.stringify(old))), old);
  const bridged = { ...old, nics: [{ name: "net0", mode: "bridge", network: "lab", mac: "52:54:00:01:02:03" }] };
  assert.deepEqual(vmSpecSchema.parse(bridged), bridged);
  assert.equal(vmSpecSchema.safeParse({ ...old, nics: [{ name: "net0", mode: "bridge", network: "lab", restrict: true, mac: "52:54:00:01:02:03" }] }).success, false);
  assert.equal(vmSpecSchema.safeParse({ ...old, nics: [{ name: "net0", mode: "bridge", mac: "52:54:00:01:02:03" }] }).success, false);
});
