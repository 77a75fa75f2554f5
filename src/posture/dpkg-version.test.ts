// Debian version ordering against dpkg itself: thousands of pairs (real versions from this machine's apt lists,
// near-misses made from them, and generated tricky ones) are compared by vigil and by `dpkg --compare-versions`
// in one batch; and generated strings are refused exactly when dpkg refuses them.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { MAX_VERSION_LENGTH, compareFragment, compareVersionStrings, formatVersion, parseVersion } from "./dpkg-version.ts";
import { dpkgCompareMany, dpkgValidityMany, realVersions } from "./testing/dpkg-oracle.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);

/** A tricky but valid version: epochs, `~`, long digit runs (beyond 2^53), letters, dots, pluses, revisions. */
const digits = fc.oneof(
  fc.constantFrom("0", "00", "1", "9", "10", "010", "99999999999999999999", "99999999999999999998", "000000000000000000001"),
  fc.integer({ min: 0, max: 1_000_000 }).map(String),
);
const nonDigits = fc.array(fc.constantFrom("~", "~~", ".", "+", "a", "b", "z", "A", "Z", "dfsg", "rc", "~rc", "+b1", "~bpo"), { minLength: 1, maxLength: 3 }).map((a) => a.join(""));
const fragment = (first: fc.Arbitrary<string>) =>
  fc.tuple(first, fc.array(fc.tuple(nonDigits, fc.option(digits, { nil: "" })), { maxLength: 4 })).map(([h, t]) => h + t.map(([a, b]) => a + b).join(""));
const upstream = fragment(digits);
const revision = fragment(fc.oneof(digits, fc.constantFrom("a", "~", "+", "deb")));
const trickyVersion = fc
  .tuple(fc.option(fc.oneof(fc.constantFrom("0", "1", "2", "00", "2147483647"), fc.integer({ min: 0, max: 40 }).map(String)), { nil: undefined }), upstream, fc.option(revision, { nil: undefined }))
  .map(([e, u, r]) => `${e !== undefined ? `${e}:` : ""}${u}${r !== undefined ? `-${r}` : ""}`);

/** Near-misses of a real version: the edits that decide security comparisons (+deb12u1 vs +deb12u2, ~ suffixes…). */
function nearMisses(v: string): string[] {
  const out = [`${v}~1`, `${v}+1`, `${v}.0`, `${v}~`, `1:${v}`, v.replace(/\d+(?!.*\d)/, (d) => String(BigInt(d) + 1n)), v.replace(/\d/, "0$&")];
  if (!v.includes("-")) out.push(`${v}-1`, `${v}-0`);
  else out.push(v.replace(/-([^-]*)$/, "-$1.1"), v.replace(/-([^-]*)$/, "-$1~1"));
  return out.filter((x) => !x.startsWith("-"));
}

test("vigil orders thousands of version pairs exactly as dpkg --compare-versions", { timeout: 120_000 }, () => {
  const real = realVersions();
  assert.ok(real.length > 1000, `expected many real versions in the apt lists, found ${real.length}`);
  const rnd = fc.sample(fc.integer({ min: 0, max: real.length - 1 }), { numRuns: 3000, seed: SEED });
  const pairs: Array<[string, string]> = [];
  // real × real (random), real × its near-misses, and generated × generated / generated × its near-misses
  for (let i = 0; i + 1 < 800; i += 2) pairs.push([real[rnd[i]!]!, real[rnd[i + 1]!]!]);
  for (let i = 800; i < 1000; i++) {
    const v = real[rnd[i]!]!;
    for (const m of nearMisses(v)) pairs.push(i % 2 ? [v, m] : [m, v]);
  }
  const gen = fc.sample(trickyVersion, { numRuns: 1200, seed: SEED });
  for (let i = 0; i + 1 < gen.length; i += 2) pairs.push([gen[i]!, gen[i + 1]!]);
  for (let i = 0; i < 150; i++) for (const m of nearMisses(gen[i]!)) pairs.push([gen[i]!, m]);
  assert.ok(pairs.length >= 3000, `${pairs.length} pairs`);
  const expected = dpkgCompareMany(pairs);
  assert.equal(expected.length, pairs.length);
  const wrong = pairs.map(([a, b], i) => ({ a, b, vigil: compareVersionStrings(a, b), dpkg: expected[i] })).filter((r) => r.vigil !== r.dpkg);
  assert.deepEqual(wrong.slice(0, 10), []);
  // the test can fail: dpkg saw all three outcomes
  for (const o of [-1, 0, 1] as const) assert.ok(expected.includes(o), `dpkg gave no ${o}`);
});

test("versions are refused exactly when dpkg refuses them; strict mode also refuses what dpkg warns about", { timeout: 60_000 }, () => {
  const ch = fc.constantFrom("0", "1", "9", "a", "Z", ":", ":", "-", "-", "~", ".", "+", "_", " ", "\t", "!", "é");
  const strings = fc.sample(fc.array(ch, { minLength: 1, maxLength: 8 }).map((a) => a.join("")), { numRuns: 1500, seed: SEED })
    .concat(["+1:2", "-0:1", "-1:2", "00:1", "2147483647:1", "2147483648:1", "99999999999999999999:1", "1:", ":1", "a:1", "1-", "1-a:b", "1:2:3", "1:2-3-4", " 1", "1 ", " \t1", "1 2", "a1", "1_2", "1-2_", "1:a", "~", "1-~"])
    .filter((s) => !s.startsWith("-") && s.trim() !== "");
  const verdicts = dpkgValidityMany(strings);
  assert.equal(verdicts.length, strings.length);
  const wrong: string[] = [];
  strings.forEach((s, i) => {
    const refusedLenient = throws(() => parseVersion(s, "v", "dpkg"));
    const refusedStrict = throws(() => parseVersion(s, "v", "strict"));
    const want = verdicts[i];
    if (refusedLenient !== (want === "error")) wrong.push(`dpkg mode ${JSON.stringify(s)}: dpkg says ${want}`);
    if (refusedStrict !== (want !== "ok") && !(want === "ok" && /^\s*[+-]/.test(s))) wrong.push(`strict ${JSON.stringify(s)}: dpkg says ${want}`);
  });
  assert.deepEqual(wrong.slice(0, 10), []);
  for (const v of ["ok", "warning", "error"]) assert.ok(verdicts.includes(v as never), `no ${v} among the generated strings`);
});

function throws(f: () => unknown): boolean {
  try {
    f();
    return false;
  } catch (e) {
    assert.ok(e instanceof VigilError, `not a VigilError: ${String(e)}`);
    return true;
  }
}

test("the parts, the canonical form and the messages", () => {
  assert.deepEqual(parseVersion("1:2.30-4+deb12u1"), { epoch: 1, upstream: "2.30", revision: "4+deb12u1" });
  assert.deepEqual(parseVersion("1:2:3-4-5"), { epoch: 1, upstream: "2:3-4", revision: "5" });
  assert.deepEqual(parseVersion("0:1.0"), { epoch: 0, upstream: "1.0", revision: "" });
  assert.equal(formatVersion(parseVersion("0:1.0-1")), "1.0-1");
  assert.throws(() => parseVersion("1:", "status line 3: Version"), (e: VigilError) => e.field === "status line 3: Version" && /nothing follows the epoch/.test(e.message));
  assert.throws(() => parseVersion("2147483648:1"), /epoch is larger than 2147483647/);
  assert.throws(() => parseVersion("a1"), /must start with a digit/);
  assert.throws(() => parseVersion("+1:2"), /epoch must be digits only/);
  assert.deepEqual(parseVersion("+1:2", "v", "dpkg"), { epoch: 1, upstream: "2", revision: "" });
  assert.throws(() => parseVersion(`1${"0".repeat(MAX_VERSION_LENGTH)}`), /longer than 256/);
});

test("digit runs compare by value at any length (no Number rounding), ~ sorts before the end", () => {
  assert.equal(compareVersionStrings("99999999999999999999", "99999999999999999998"), 1);
  assert.equal(compareVersionStrings("1.000000000000000000001", "1.1"), 0);
  assert.equal(compareVersionStrings("1.0~rc1", "1.0"), -1);
  assert.equal(compareVersionStrings("1.0~~", "1.0~"), -1);
  assert.equal(compareVersionStrings("1.0a", "1.0+"), -1);
  assert.equal(compareVersionStrings("1:0.1", "2.0"), 1);
  assert.equal(compareVersionStrings("2.36-9+deb12u9", "2.36-9+deb12u10"), -1);
});

test("property: the order is a total preorder consistent with equality of canonical forms", () => {
  fc.assert(
    fc.property(trickyVersion, trickyVersion, trickyVersion, (a, b, c) => {
      const ab = compareVersionStrings(a, b);
      assert.equal(compareVersionStrings(b, a), -ab as -1 | 0 | 1);
      assert.equal(compareVersionStrings(a, a), 0);
      if (ab <= 0 && compareVersionStrings(b, c) <= 0) assert.ok(compareVersionStrings(a, c) <= 0);
      assert.equal(compareVersionStrings(formatVersion(parseVersion(a)), a), 0);
    }),
    { seed: SEED, numRuns: 2000 },
  );
});

test("fuzz: any string is parsed or refused with a VigilError, quickly, even when long and hostile", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), fc.string({ maxLength: 300 }), (a, b) => {
      let pa;
      let pb;
      try {
        pa = parseVersion(a, "v", "dpkg");
        pb = parseVersion(b, "v", "dpkg");
      } catch (e) {
        assert.ok(e instanceof VigilError);
        return;
      }
      const r = compareFragment(pa.upstream, pb.upstream);
      assert.ok(Number.isFinite(r));
    }),
    { seed: SEED, numRuns: 3000 },
  );
  const long = `1${"0".repeat(MAX_VERSION_LENGTH - 2)}1`;
  const t0 = performance.now();
  for (let i = 0; i < 10_000; i++) compareVersionStrings(long, long);
  assert.ok(performance.now() - t0 < 2_000);
});
