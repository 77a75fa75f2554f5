// The security tracker JSON: the hand-written fixture (testdata/README.md) read for one release, its rules
// (resolved/open/undetermined, fixed "0", urgency mapping), refusals naming the JSON path, and fuzzing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { parseVersion } from "./dpkg-version.ts";
import { affecting, maxSeverity, parseSecurityTracker, severityOf, trackerSubsetJson } from "./security-tracker.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);
const FIXTURE = readFileSync(join(import.meta.dirname, "testdata", "security-tracker.json"));

test("the fixture for bookworm: other releases' entries are left out, the descriptor names the bytes", () => {
  const t = parseSecurityTracker(FIXTURE, "bookworm");
  assert.equal(t.sources.has("curl"), false, "curl has only a trixie entry");
  assert.deepEqual(t.sources.get("openssl")!.map((e) => e.id), ["CVE-2023-0286", "CVE-2026-10001", "CVE-2026-10002", "CVE-2026-10003"]);
  assert.match(t.descriptor.sha256, /^[0-9a-f]{64}$/);
  assert.equal(t.descriptor.bytes, FIXTURE.length);
  assert.equal(t.descriptor.release, "bookworm");
  assert.equal(parseSecurityTracker(FIXTURE, "trixie").sources.get("curl")![0]!.fixedVersion, "8.3.0-1");
});

test("which entries affect a source version: fixed after it, open; never fixed '0' or undetermined", () => {
  const t = parseSecurityTracker(FIXTURE, "bookworm");
  const ids = (src: string, v: string) => affecting(t, src, parseVersion(v)).map((e) => e.id);
  assert.deepEqual(ids("openssl", "3.0.19-1~deb12u2"), ["CVE-2026-10001", "CVE-2026-10002", "CVE-2026-10003"]);
  assert.deepEqual(ids("openssl", "3.0.22-1~deb12u1"), ["CVE-2026-10003"], "fixed_version itself is not affected");
  assert.deepEqual(ids("openssl", "3.0.7-1"), ["CVE-2023-0286", "CVE-2026-10001", "CVE-2026-10002", "CVE-2026-10003"]);
  assert.deepEqual(ids("xz-utils", "5.4.1-1"), ["CVE-2026-10006"], "fixed '0': bookworm never had the backdoor");
  assert.deepEqual(ids("glibc", "2.36-9"), ["CVE-2023-4911"], "undetermined entries are not reported");
  assert.deepEqual(ids("nonexistent", "1"), []);
});

test("urgencies map onto the posture severity scale", () => {
  assert.equal(severityOf("high"), "high");
  assert.equal(severityOf("low*"), "low");
  assert.equal(severityOf("medium**"), "medium");
  assert.equal(severityOf("not yet assigned"), "unknown");
  assert.equal(severityOf("end-of-life"), "unknown");
  assert.equal(severityOf("whatever"), "unknown");
  assert.equal(maxSeverity([{ severity: "low" }, { severity: "high" }, { severity: "unknown" }]), "high");
  assert.equal(maxSeverity([{ severity: "unimportant" }, { severity: "unknown" }]), "unknown");
  assert.equal(maxSeverity([]), "unknown");
});

test("malformed tracker data is refused with its JSON path", () => {
  const cases: Array<[string, RegExp]> = [
    ["[1]", /at \$: expected an object of source packages/],
    ["{", /not JSON/],
    ['{"Bad_Name": {}}', /invalid package name "Bad_Name"/],
    ['{"a": []}', /at \$\["a"\]: expected an object of CVE entries/],
    ['{"a": {"not an id": {}}}', /invalid advisory id "not an id"/],
    ['{"a": {"CVE-1-2": {"releases": {"bookworm": {"status": "fixed"}}}}}', /\$\["a"\]\["CVE-1-2"\]\.releases\.bookworm\.status: expected resolved, open or undetermined/],
    ['{"a": {"CVE-1-2": {"releases": {"bookworm": {"status": "resolved"}}}}}', /fixed_version: a resolved entry needs its fixed version/],
    ['{"a": {"CVE-1-2": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1:"}}}}}', /fixed_version/],
    ['{"a": {"CVE-1-2": {"releases": {"bookworm": {"status": "open", "urgency": 7}}}}}', /urgency: expected a short string/],
    ['{"a": {"CVE-1-2": {"description": 1}}}', /description: expected a string/],
    ['{"__proto__": {}}', /invalid package name "__proto__"/],
    [`${"[".repeat(100_000)}${"]".repeat(100_000)}`, /expected an object|not JSON/],
  ];
  for (const [text, re] of cases) assert.throws(() => parseSecurityTracker(text, "bookworm"), (e: unknown) => e instanceof VigilError && re.test(e.message), re.source);
  assert.equal(parseSecurityTracker('{"a": {"CVE-1-2": {"releases": {}}}}', "constructor").sources.size, 0, "an inherited property is not a release");
  assert.throws(() => parseSecurityTracker("{}", "Book worm"), /Invalid release name/);
});

test("fuzz: random JSON values and mutations of the fixture parse or are refused with a VigilError", () => {
  const text = FIXTURE.toString("utf8");
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue({ maxDepth: 5 }).map((v) => JSON.stringify({ openssl: { "CVE-2020-1": { releases: { bookworm: v } } } })), fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)), fc.tuple(fc.nat(text.length - 1), fc.constantFrom('"', "{", "}", ",", "0", ":", "x")).map(([i, c]) => text.slice(0, i) + c + text.slice(i + 1))), (input) => {
      try {
        const t = parseSecurityTracker(input, "bookworm");
        for (const [, list] of t.sources) for (const e of list) assert.ok(e.status === "open" || e.status === "undetermined" || e.parsedFixed);
      } catch (e) {
        assert.ok(e instanceof VigilError, String(e));
      }
    }),
    { seed: SEED, numRuns: 600 },
  );
});

test("one release's subset re-parses to the same entries, and is smaller", () => {
  const t = parseSecurityTracker(FIXTURE, "bookworm");
  const subset = trackerSubsetJson(t);
  assert.ok(subset.length < FIXTURE.length);
  const again = parseSecurityTracker(subset, "bookworm");
  assert.deepEqual([...again.sources], [...t.sources]);
  assert.equal(parseSecurityTracker(subset, "trixie").sources.size, 0);
});
