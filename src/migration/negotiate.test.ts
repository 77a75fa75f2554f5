import { strict as assert } from "node:assert";
import { test } from "node:test";
import fc from "fast-check";
import { formatPlan } from "../cli/commands/cluster.ts";
import { DECLINED_CAPABILITIES, OPTIONAL_CAPABILITIES, REQUIRED_CAPABILITIES, REQUIRED_OBJECT_TYPES, REQUIRED_PARAMETERS, negotiate, planMigration, type QemuReport } from "./negotiate.ts";

const ALL_CAPS = [...REQUIRED_CAPABILITIES, ...OPTIONAL_CAPABILITIES, ...Object.keys(DECLINED_CAPABILITIES), "x-colo", "block"];
const full = (host: string, over: Partial<QemuReport> = {}): QemuReport => ({
  host,
  version: "7.2.22",
  capabilities: [...ALL_CAPS],
  parameters: [...REQUIRED_PARAMETERS, "multifd-channels"],
  objectTypes: [...REQUIRED_OBJECT_TYPES],
  machines: ["pc-i440fx-7.2", "pc"],
  cpus: [{ name: "max", migrationSafe: false }, { name: "qemu64", migrationSafe: true }],
  ...over,
});
const vm = { machine: "pc-i440fx-7.2", cpu: "qemu64" };

test("two full QEMUs of one version: the required capabilities and auto-converge; multifd and the rest declined with a reason", () => {
  const plan = planMigration(full("h1"), full("h2"), vm);
  assert.deepEqual(plan.capabilities, ["return-path", "pause-before-switchover", "events", "auto-converge"]);
  assert.deepEqual(plan.declined.map((d) => d.capability).sort(), Object.keys(DECLINED_CAPABILITIES).sort());
  assert.ok(plan.declined.every((d) => d.reason.length > 10));
  assert.match(formatPlan(plan), /7\.2\.22 → 7\.2\.22, machine pc-i440fx-7\.2, cpu qemu64; capabilities return-path, .*auto-converge; off: /);
});

test("a required capability missing on the target is refused naming the capability and the host", () => {
  const target = full("h2", { capabilities: ALL_CAPS.filter((c) => c !== "return-path") });
  assert.throws(() => planMigration(full("h1"), target, vm), (e: Error & { code?: string }) => e.code === "VIGIL_CONFLICT" && /host "h2": its QEMU lacks the migration capability "return-path" \(required\)/.test(e.message));
});

test("auto-converge is only enabled when both ends have it", () => {
  const plan = planMigration(full("h1", { capabilities: ALL_CAPS.filter((c) => c !== "auto-converge") }), full("h2"), vm);
  assert.ok(!plan.capabilities.includes("auto-converge"));
  assert.deepEqual(plan.declined.find((d) => d.capability === "auto-converge"), { capability: "auto-converge", reason: 'not supported by "h1"' });
});

test("versions, machine type, CPU model and TLS: each mismatch refused with its reason", () => {
  const r = (s: Partial<QemuReport>, t: Partial<QemuReport>, hw = vm) => {
    const n = negotiate(full("h1", s), full("h2", t), hw);
    return n.ok ? [] : n.refusals;
  };
  assert.match(r({ version: "8.0.0" }, {}).join(), /QEMU 7\.2\.22 is older than the source's 8\.0\.0/);
  assert.deepEqual(r({ version: "7.1.0" }, {}), [], "a newer target is fine for a migration-safe CPU");
  assert.match(r({ version: "7.1.0" }, {}, { machine: "pc-i440fx-7.2", cpu: "max" }).join(), /"max" is not migration-safe, so both QEMUs must be the same version/);
  assert.match(r({}, { machines: ["pc-i440fx-7.1"] }).join(), /cannot run the VM's machine type "pc-i440fx-7\.2"/);
  assert.match(r({}, { cpus: [] }).join(), /does not know the VM's CPU model "qemu64"/);
  assert.match(r({ objectTypes: ["authz-simple"] }, {}).join(), /host "h1": its QEMU lacks the object type "tls-creds-x509" \(TLS is required\)/);
  assert.match(r({}, { parameters: ["tls-creds"] }).join(), /host "h2": its QEMU lacks the migration parameter "tls-authz"/);
  assert.match(r({ version: "unknown" }, {}).join(), /unreadable QEMU version/);
});

const caps = fc.subarray(ALL_CAPS);
const report = (host: string) =>
  fc.record({
    host: fc.constant(host),
    version: fc.constantFrom("7.2.22", "7.2.0", "8.0.2", "6.2.0"),
    capabilities: caps,
    parameters: fc.subarray([...REQUIRED_PARAMETERS, "multifd-channels"]),
    objectTypes: fc.subarray([...REQUIRED_OBJECT_TYPES]),
    machines: fc.subarray(["pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-6.2"]),
    cpus: fc.subarray([{ name: "max", migrationSafe: false }, { name: "qemu64", migrationSafe: true }]),
  });
const hardware = fc.record({ machine: fc.constantFrom("pc-i440fx-7.2", "pc-q35-7.2"), cpu: fc.constantFrom("max", "qemu64") });

test("property: a plan never enables a capability one end lacks", () => {
  fc.assert(
    fc.property(report("h1"), report("h2"), hardware, (s, t, hw) => {
      const n = negotiate(s, t, hw);
      if (!n.ok) return;
      for (const c of n.plan.capabilities) assert.ok(s.capabilities.includes(c) && t.capabilities.includes(c), c);
    }),
    { numRuns: 2000 },
  );
});

test("property: a required capability, parameter or TLS type missing at either end always refuses, and names it", () => {
  fc.assert(
    fc.property(report("h1"), report("h2"), hardware, (s, t, hw) => {
      const n = negotiate(s, t, hw);
      const missing = [s, t].flatMap((e) => [...REQUIRED_CAPABILITIES.filter((c) => !e.capabilities.includes(c)), ...REQUIRED_PARAMETERS.filter((p) => !e.parameters.includes(p)), ...REQUIRED_OBJECT_TYPES.filter((o) => !e.objectTypes.includes(o))].map((x) => [e.host, x] as const));
      if (missing.length === 0) return;
      assert.equal(n.ok, false);
      if (n.ok) return;
      for (const [host, x] of missing) assert.ok(n.refusals.some((r) => r.includes(`"${host}"`) && r.includes(`"${x}"`)), `${host} ${x}: ${n.refusals.join("; ")}`);
    }),
    { numRuns: 2000 },
  );
});

test("property: an older target QEMU or a machine type it lacks always refuses", () => {
  fc.assert(
    fc.property(report("h1"), report("h2"), hardware, (s, t, hw) => {
      const older = s.version.localeCompare(t.version, undefined, { numeric: true }) > 0;
      if (older || !t.machines.includes(hw.machine)) assert.equal(negotiate(s, t, hw).ok, false);
    }),
    { numRuns: 2000 },
  );
});
