import { test } from "node:test";
import assert from "node:assert/strict";
import { cloneSpec } from "./clones.ts";
import { createVmRequestSchema, resolveSpec, vmSpecSchema } from "../vm/spec.ts";

test("a clone keeps each NIC's mode and network, with fresh MACs (its address is allocated at its first attach)", () => {
  const src = resolveSpec(createVmRequestSchema.parse({ name: "a", nics: [{ network: "lab" }, { restrict: false }] }), { name: "tiny", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
  const c = cloneSpec(src, "b", () => undefined);
  assert.equal(vmSpecSchema.safeParse(c).success, true);
  assert.deepEqual(c.nics.map(({ mac: _m, ...n }) => n), [{ name: "net0", mode: "bridge", network: "lab" }, { name: "net1", mode: "user", restrict: false }]);
  c.nics.forEach((n, i) => assert.notEqual(n.mac, src.nics[i]!.mac));
});
