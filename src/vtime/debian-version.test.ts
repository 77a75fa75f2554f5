import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fc from "fast-check";
import { compareVersions } from "./debian-version.ts";

function dpkg(a: string, op: string, b: string): boolean {
  try {
    execFileSync("dpkg", ["--compare-versions", a, op, b], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("known orderings", () => {
  const ascending = ["1.0~rc1", "1.0", "1.0-1", "1.0-1+deb12u1", "1.0.1", "1:0.1", "2:1"];
  for (let i = 0; i + 1 < ascending.length; i++) assert.ok(compareVersions(ascending[i]!, ascending[i + 1]!) < 0, `${ascending[i]} < ${ascending[i + 1]}`);
  assert.equal(compareVersions("2.36-9+deb12u7", "2.36-9+deb12u7"), 0);
  assert.equal(compareVersions("01", "1"), 0);
});

test("agrees with dpkg --compare-versions on random versions", () => {
  const part = fc.stringMatching(/^[0-9][0-9a-z.+~]{0,6}$/);
  fc.assert(
    fc.property(part, part, fc.option(part, { nil: undefined }), fc.option(part, { nil: undefined }), (ua, ub, ra, rb) => {
      const a = ra ? `${ua}-${ra}` : ua;
      const b = rb ? `${ub}-${rb}` : ub;
      const ours = Math.sign(compareVersions(a, b));
      const theirs = dpkg(a, "lt", b) ? -1 : dpkg(a, "gt", b) ? 1 : 0;
      assert.equal(ours, theirs, `${a} vs ${b}`);
    }),
    { numRuns: 150 },
  );
});
