/**
 * Golden-file tests of the spec → argv builder: each testdata/argv/NAME.json holds a launch plan, NAME.args the
 * expected argv, one argument per line. `VIGIL_UPDATE_GOLDEN=1` rewrites the .args files (review the diff!).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildArgv, guestRamBytes, optValue, type LaunchPlan } from "./argv.ts";
import { vmSpecSchema } from "../vm/spec.ts";
import { VigilError } from "../errors.ts";

const dir = join(import.meta.dirname, "testdata", "argv");

for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  test(`argv golden: ${file}`, () => {
    const raw = JSON.parse(readFileSync(join(dir, file), "utf8")) as LaunchPlan;
    const plan = { ...raw, spec: vmSpecSchema.parse(raw.spec) }; // fixtures must be valid specs; defaults apply
    const got = buildArgv(plan).join("\n") + "\n";
    const goldenPath = join(dir, file.replace(/\.json$/, ".args"));
    if (process.env.VIGIL_UPDATE_GOLDEN === "1") writeFileSync(goldenPath, got);
    assert.equal(got, readFileSync(goldenPath, "utf8"));
  });
}

test("every VM gets the hardened baseline", () => {
  const plan = JSON.parse(readFileSync(join(dir, "tiny-tcg.json"), "utf8")) as LaunchPlan;
  const argv = buildArgv(plan);
  for (const flag of ["-S", "-nodefaults", "-no-user-config"]) assert.ok(argv.includes(flag), flag);
  assert.equal(argv[argv.indexOf("-sandbox") + 1], "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  assert.match(argv[argv.indexOf("-machine") + 1]!, /^pc-i440fx-7\.2,.*dump-guest-core=off/);
  assert.ok(argv.some((a) => a.startsWith("vmgenid,") && a.includes(`guid=${plan.vmgenid}`)));
  // Guest RAM is a sealed, shared memfd: no mem-path, so never a file on persistent storage (review finding 5).
  const ram = argv[argv.indexOf("-object") + 1]!;
  assert.match(ram, /^memory-backend-memfd,id=ram0,/);
  assert.ok(ram.includes("share=on") && ram.includes("seal=on"), ram);
  assert.equal(argv.some((a) => a.includes("mem-path") || a.includes("memory-backend-file")), false, "no RAM file");
});

test("under TCG the RAM block is not a multiple of 256 KiB (QEMU 7.2's dirty-bitmap fast path loses TCG writes)", () => {
  for (const mib of [64, 128, 256, 1024, 4096]) {
    const tcg = guestRamBytes(mib, "tcg");
    assert.notEqual(tcg % (256 * 1024), 0, `${mib} MiB under TCG`);
    assert.equal(tcg % 8192, 0, "QEMU rounds -m up to 8 KiB: the size must already be a multiple");
    assert.equal(tcg, mib * 1024 * 1024 - 8192);
    assert.equal(guestRamBytes(mib, "kvm"), mib * 1024 * 1024, "KVM keeps the exact size");
  }
  const plan = JSON.parse(readFileSync(join(dir, "tiny-tcg.json"), "utf8")) as LaunchPlan;
  for (const accel of ["tcg", "kvm"] as const) {
    const argv = buildArgv({ ...plan, accel });
    const size = accel === "tcg" ? "262136K" : "256M";
    assert.equal(argv[argv.indexOf("-m") + 1], size, "-m and the backend agree (QEMU refuses a mismatch)");
    assert.match(argv[argv.indexOf("-object") + 1]!, new RegExp(`^memory-backend-memfd,id=ram0,size=${size},`));
  }
});

test("commas in option values are escaped, control characters refused", () => {
  assert.equal(optValue("/a,b"), "/a,,b");
  assert.throws(() => optValue("a\nb"), /control character/);
});

test("a bridged NIC without a tap descriptor from the jail is refused, naming why", () => {
  const plan = JSON.parse(readFileSync(join(dir, "bridged-nics.json"), "utf8")) as LaunchPlan;
  for (const tapFds of [undefined, { net0: 4 }]) {
    assert.throws(() => buildArgv({ ...plan, spec: vmSpecSchema.parse(plan.spec), tapFds }), (err: unknown) => err instanceof VigilError && err.field === "nics" && /bridged NICs need the jail \(it opens the tap\)/.test(err.message));
  }
});
