// Pending security updates: exact values over hand-written inputs (testdata/), and this machine's real dpkg status
// against its real security index (and the tracker fixture), checked against dpkg-query and dpkg --compare-versions
// over the same inputs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { loadPackagesIndex, parsePackagesIndex } from "./apt-index.ts";
import { parseDpkgStatus } from "./dpkg-status.ts";
import { compareVersionStrings } from "./dpkg-version.ts";
import { pendingUpdates } from "./pending.ts";
import { parseSecurityTracker } from "./security-tracker.ts";
import { APT_HELPER, dpkgCompareMany, securityPackagesFile } from "./testing/dpkg-oracle.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);
const data = (f: string) => readFileSync(join(import.meta.dirname, "testdata", f));
const TRACKER = data("security-tracker.json");

test("hand-written inputs: which packages are pending, the CVEs their update fixes, the severity", () => {
  const got = pendingUpdates(parseDpkgStatus(data("status")), parsePackagesIndex(data("Packages")), parseSecurityTracker(TRACKER, "bookworm"));
  const brief = got.map((p) => [p.package, p.architecture, p.installed, p.candidate, p.source, p.cves.join(" "), p.severity, p.unfixed.join(" ")].join("|"));
  assert.deepEqual(brief, [
    "libkrb5-3|amd64|1.20.1-2+deb12u3|1.20.1-2+deb12u5|krb5||unknown|CVE-2026-10005", // held: still pending; fixed only later
    "libssl3|amd64|3.0.19-1~deb12u2|3.0.22-1~deb12u2|openssl|CVE-2026-10001 CVE-2026-10002|high|CVE-2026-10003", // newest of two candidates
    "openssh-client|amd64|1:9.2p1-2+deb12u6|1:9.2p1-2+deb12u9|openssh|CVE-2026-10004|medium|",
    "tzdata|all|2025b-0+deb12u2|2026f-0+deb12u1|tzdata||unknown|",
    "xz-utils|amd64|5.4.1-1|5.4.1-1+deb12u2|xz-utils|CVE-2026-10006|unknown|", // end-of-life → unknown
    "zlib1g|amd64|1:1.2.13.dfsg-1|1:1.2.13.dfsg-1+deb12u1|zlib|CVE-2023-45853|unknown|",
  ]);
  // not pending: libc6 amd64 (index older), libc6 i386 (no i386 entry: no cross-architecture match), bash (not in
  // the index), oldpkg (config-files only)
  const noTracker = pendingUpdates(parseDpkgStatus(data("status")), parsePackagesIndex(data("Packages")));
  assert.deepEqual(noTracker.map((p) => p.package), ["libkrb5-3", "libssl3", "openssh-client", "tzdata", "xz-utils", "zlib1g"]);
  assert.ok(noTracker.every((p) => p.severity === "unknown" && p.cves.length === 0));
});

/** What dpkg-query says is installed here, with source names and versions. */
function dpkgQueryInstalled(): Array<{ name: string; version: string; arch: string; source: string; sourceVersion: string }> {
  const out = execFileSync("dpkg-query", ["-W", "--showformat=${db:Status-Status}\\t${Package}\\t${Version}\\t${Architecture}\\t${source:Package}\\t${source:Version}\\n"], { encoding: "utf8", maxBuffer: 64 << 20 });
  return out.split("\n").filter((l) => l.startsWith("installed\t")).map((l) => {
    const [, name, version, arch, source, sourceVersion] = l.split("\t") as [string, string, string, string, string, string];
    return { name, version, arch, source, sourceVersion };
  });
}

test("the real status against the real security index (and the tracker fixture) equals dpkg's comparisons", { timeout: 120_000 }, async () => {
  const { index } = await loadPackagesIndex(securityPackagesFile());
  const tracker = parseSecurityTracker(TRACKER, "bookworm");
  const got = pendingUpdates(parseDpkgStatus(readFileSync("/var/lib/dpkg/status")), index, tracker);

  // the expected list, from dpkg-query and the index read by grep, decided by dpkg --compare-versions
  const text = execFileSync(APT_HELPER, ["cat-file", securityPackagesFile()], { maxBuffer: 64 << 20 }).toString("latin1");
  const listed = new Map<string, Array<{ version: string; sourceVersion: string }>>();
  for (const st of text.split("\n\n")) {
    const p = /^Package: (.+)$/m.exec(st)?.[1];
    const v = /^Version: (.+)$/m.exec(st)?.[1];
    const a = /^Architecture: (.+)$/m.exec(st)?.[1];
    const s = /^Source: \S+ \((.+)\)$/m.exec(st)?.[1] ?? v;
    if (p && v && a) listed.set(`${p}:${a}`, [...(listed.get(`${p}:${a}`) ?? []), { version: v, sourceVersion: s! }]);
  }
  const installed = dpkgQueryInstalled();
  const pairs: Array<[string, string]> = [];
  const owners: Array<{ key: string; candidate: string; candidateSource: string }> = [];
  for (const p of installed) for (const c of listed.get(`${p.name}:${p.arch}`) ?? []) {
    pairs.push([p.version, c.version]);
    owners.push({ key: `${p.name}:${p.arch}`, candidate: c.version, candidateSource: c.sourceVersion });
  }
  const verdicts = dpkgCompareMany(pairs);
  const newer = new Map<string, Array<{ candidate: string; candidateSource: string }>>();
  verdicts.forEach((v, i) => {
    if (v === -1) newer.set(owners[i]!.key, [...(newer.get(owners[i]!.key) ?? []), owners[i]!]);
  });
  assert.deepEqual(got.map((p) => `${p.package}:${p.architecture}`).sort(), [...newer.keys()].sort());
  assert.ok(got.length > 0, "this machine has pending security updates");
  for (const p of got) assert.ok(newer.get(`${p.package}:${p.architecture}`)!.some((c) => c.candidate === p.candidate));

  // CVEs: each tracker entry of the package's source, decided by dpkg: installed source < fixed ≤ candidate source
  const json = JSON.parse(TRACKER.toString("utf8")) as Record<string, Record<string, { releases: Record<string, { status: string; fixed_version?: string }> }>>;
  const byName = new Map(installed.map((p) => [`${p.name}:${p.arch}`, p]));
  const cvePairs: Array<[string, string]> = [];
  const cveOwners: Array<{ key: string; id: string; side: "installed" | "candidate" }> = [];
  for (const p of got) {
    const inst = byName.get(`${p.package}:${p.architecture}`)!;
    const candSource = listed.get(`${p.package}:${p.architecture}`)!.find((c) => c.version === p.candidate)!.sourceVersion;
    for (const [id, e] of Object.entries(json[inst.source] ?? {})) {
      const r = e.releases.bookworm;
      if (r?.status !== "resolved" || r.fixed_version === undefined || r.fixed_version === "0") continue;
      cvePairs.push([inst.sourceVersion, r.fixed_version], [r.fixed_version, candSource]);
      cveOwners.push({ key: p.package, id, side: "installed" }, { key: p.package, id, side: "candidate" });
    }
  }
  const cv = dpkgCompareMany(cvePairs);
  const expected = new Map<string, string[]>();
  for (let i = 0; i < cv.length; i += 2) {
    if (cv[i] === -1 && cv[i + 1]! <= 0) expected.set(cveOwners[i]!.key, [...(expected.get(cveOwners[i]!.key) ?? []), cveOwners[i]!.id].sort());
  }
  const gotCves = new Map(got.filter((p) => p.cves.length > 0).map((p) => [p.package, p.cves]));
  assert.deepEqual(gotCves, expected);
  assert.ok(gotCves.size > 0, "the fixture names CVEs for this machine's pending updates");
});

test("property: pending is exactly the installed packages whose candidate is newer, whatever the versions", () => {
  const ver = fc.tuple(fc.nat(3), fc.nat(12), fc.constantFrom("", "~1", "+deb12u1", "+deb12u2", "-1", "-1+b1")).map(([a, b, s]) => `${a}.${b}${s}`);
  fc.assert(
    fc.property(fc.uniqueArray(fc.tuple(fc.constantFrom("a", "b", "c", "d", "e"), fc.constantFrom("amd64", "all", "i386"), ver, fc.option(ver, { nil: undefined })), { selector: ([n, a]) => `${n}:${a}`, maxLength: 10 }), (rows) => {
      const status = rows.map(([n, a, v]) => `Package: ${n}\nStatus: install ok installed\nArchitecture: ${a}\nVersion: ${v}\n`).join("\n");
      const idx = rows.filter((r) => r[3] !== undefined).map(([n, a, , c]) => `Package: ${n}\nArchitecture: ${a}\nVersion: ${c}\n`).join("\n");
      const got = pendingUpdates(parseDpkgStatus(status), parsePackagesIndex(idx));
      const installed = parseDpkgStatus(status);
      for (const p of got) {
        const row = rows.find(([n, a]) => n === p.package && a === p.architecture)!;
        assert.equal(p.installed, row[2]);
        assert.equal(p.candidate, row[3]);
      }
      assert.ok(got.length <= installed.length);
      // and nothing else: every row whose candidate is newer (by the dpkg-checked order) is in the list
      const want = rows.filter(([, , v, c]) => c !== undefined && compareVersionStrings(v, c) < 0).map(([n, a]) => `${n}:${a}`).sort();
      assert.deepEqual(got.map((p) => `${p.package}:${p.architecture}`).sort(), want);
    }),
    { seed: SEED, numRuns: 300 },
  );
});
