// Installed packages from a dpkg database, checked against dpkg-query over the same file: this machine's real
// status, and a copy whose entries were moved into every dpkg state (held, selected for removal, config-files,
// half-installed, unpacked, triggers-pending) so the "which count as installed" rule is exercised too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { ON_DISK_STATES, parseDpkgStatus, parseSourceField } from "./dpkg-status.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);
const REAL = readFileSync("/var/lib/dpkg/status");

/** dpkg-query's list of packages whose files are on disk, from a copy of `status` in a temporary admindir. */
function dpkgQuery(status: Buffer | string): string[] {
  const dir = mkdtempSync(join(tmpdir(), "vigil-dpkg-status-"));
  try {
    writeFileSync(join(dir, "status"), status);
    const out = execFileSync("dpkg-query", ["-W", `--admindir=${dir}`, "--showformat=${db:Status-Status}\\t${Package}\\t${Version}\\t${Architecture}\\n"], { encoding: "utf8", maxBuffer: 64 << 20, stdio: ["ignore", "pipe", "pipe"] });
    return out.split("\n").filter((l) => l !== "").map((l) => l.split("\t")).filter(([s]) => ON_DISK_STATES.has(s!)).map(([, p, v, a]) => `${p}\t${v}\t${a}`).sort();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const ours = (status: Buffer | string) => parseDpkgStatus(status).map((p) => `${p.name}\t${p.version}\t${p.architecture}`).sort();

test("the packages of this machine's real dpkg status equal dpkg-query's", () => {
  const pkgs = parseDpkgStatus(REAL);
  assert.ok(pkgs.length > 100, `${pkgs.length} packages`);
  assert.deepEqual(ours(REAL), dpkgQuery(REAL));
  // Source and its version: bash's status says "Source: bash (5.2.15-2)" on this machine when the binary differs
  const withSrcVersion = pkgs.filter((p) => p.sourceVersion !== p.version);
  assert.ok(withSrcVersion.length > 0);
  const libc = pkgs.find((p) => p.name === "libc6");
  assert.ok(libc && libc.source === "glibc" && libc.multiArch === "same");
});

test("every dpkg state: only packages with files on disk count, as dpkg-query's states say", () => {
  const states = ["hold ok installed", "deinstall ok installed", "deinstall ok config-files", "purge ok not-installed", "install reinstreq half-installed", "install ok unpacked", "install ok half-configured", "install ok triggers-pending\nTriggers-Pending: ldconfig", "install ok triggers-awaited\nTriggers-Awaited: libc-bin"];
  let i = 0;
  const text = REAL.toString("latin1").replace(/^Status: install ok installed$/gm, (m) => (i++ % 3 === 0 ? `Status: ${states[(i / 3) % states.length | 0]}` : m));
  const expected = dpkgQuery(Buffer.from(text, "latin1"));
  assert.deepEqual(ours(text), expected);
  assert.ok(expected.length < ours(REAL).length, "some entries were dropped by the state rule");
  const got = parseDpkgStatus(text);
  for (const s of ["unpacked", "half-configured", "triggers-pending", "triggers-awaited"]) assert.ok(got.some((p) => p.state === s), s);
});

test("malformed entries are refused with the line and field", () => {
  const base = "Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n";
  const cases: Array<[string, RegExp]> = [
    ["Status: install ok installed\nVersion: 1\n", /line 1: the stanza has no Package field/],
    [base.replace("Package: a", "Package: A_b"), /line 1: Package: invalid package name "A_b"/],
    [base.replace("install ok installed", "install ok"), /line 2: Status must be/],
    [base.replace("install ok installed", "install bad installed"), /line 2: Status must be/],
    [base.replace("Version: 1.0\n", ""), /has no Version field/],
    [base.replace("1.0", "1:"), /line 3: Version/],
    [base.replace("Architecture: amd64\n", ""), /has no Architecture field/],
    [base.replace("amd64", "AMD 64"), /line 4: Architecture: invalid architecture/],
    [`${base}Source: x (1:)\n`, /line 5: Source/],
    [`${base}Source: x(1)\n`, /line 5: Source: expected "name" or "name \(version\)"/],
    [`${base}Multi-Arch: maybe\n`, /line 5: Multi-Arch: expected no, same/],
    [`${base}\n${base}`, /line 6: package "a:amd64" appears twice/],
  ];
  for (const [input, re] of cases) assert.throws(() => parseDpkgStatus(input, "status"), (e: unknown) => e instanceof VigilError && re.test(e.message), `${re}`);
  assert.deepEqual(parseDpkgStatus(`${base}Status: purge ok not-installed\n`.replace("Status: install ok installed\n", "")), []);
  assert.deepEqual(parseSourceField("glibc (2.36-9+deb12u10)", "libc6", "2.36-9+deb12u10", "w"), { source: "glibc", sourceVersion: "2.36-9+deb12u10" });
  assert.deepEqual(parseSourceField(undefined, "bash", "5.2", "w"), { source: "bash", sourceVersion: "5.2" });
});

test("fuzz: line-level mutations of the real status parse or are refused with a VigilError, quickly", () => {
  const lines = REAL.toString("latin1").split("\n").slice(0, 3000);
  const junk = fc.constantFrom("Version: 1:", "Version: 2:1.0~rc1-1", "Status: hold ok installed", "Status: x", "Package: Zz", "", " cont", "Source: s (9)", "Architecture: all", "Multi-Arch: same", "Package: dup");
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(lines.length - 1), junk), { minLength: 1, maxLength: 10 }), (muts) => {
      const l = [...lines];
      for (const [at, s] of muts) l[at] = s;
      const t0 = performance.now();
      try {
        for (const p of parseDpkgStatus(l.join("\n"))) assert.ok(p.name.length > 0 && p.version.length > 0);
      } catch (e) {
        assert.ok(e instanceof VigilError, String(e));
      }
      assert.ok(performance.now() - t0 < 1_000);
    }),
    { seed: SEED, numRuns: 150 },
  );
});
