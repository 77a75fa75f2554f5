/**
 * The offline scan on real data: the dormant Debian bookworm disk set-up builds (debootstrap minbase from the main
 * suite, ext4 on GPT in qcow2, with a linked overlay that plants one file and deletes another), read through the
 * whole chain, compared with dpkg's own tools and this machine's apt lists.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dormantFixture } from "../storage/testing/debian-dormant.ts";
import { loadAdvisories } from "./advisories.ts";
import { scanDormant } from "./offline-scan.ts";
import { compareVersions, parseVersion } from "./dpkg-version.ts";
import { pendingUpdates } from "./pending.ts";
import { runScanChild } from "./scan-runner.ts";
import type { ScanChildResult } from "./scan-types.ts";
import { compileRules, DEFAULT_SCAN_LIMITS } from "./signature-scan.ts";

const RULES = (marker: string) => `rule planted { strings: $m = "${marker.replace(/["\\]/g, "\\$&")}" condition: $m }`;

test("offline scan of the dormant Debian disk: packages as dpkg-query sees them, os-release, the planted file found and the deleted one not", (t) => {
  const f = dormantFixture();
  const r = scanDormant({ disks: [{ name: "root", path: f.overlay }], roots: [f.dir], rules: compileRules(RULES(f.marker)), signatureLimits: DEFAULT_SCAN_LIMITS });
  assert.equal(r.root, "root partition 1");
  assert.equal(r.os?.id, "debian");
  assert.equal(r.os?.versionId, "12");
  // dpkg's own reading of the same status file (copied out of the build root before the disk was made).
  const admin = mkdtempSync(join(tmpdir(), "vigil-admindir-"));
  t.after(() => rmSync(admin, { recursive: true, force: true }));
  copyFileSync(f.dpkgStatus, join(admin, "status"));
  const dpkg = execFileSync("dpkg-query", ["-W", `--admindir=${admin}`, "--showformat=${Package}\t${Version}\t${Architecture}\n"], { encoding: "utf8" }).trim().split("\n").sort();
  assert.deepEqual(r.installed.map((p) => `${p.name}\t${p.version}\t${p.architecture}`).sort(), dpkg);
  assert.equal(r.installed.length, f.manifest.packages);
  // The overlay's planted file is found; the file deleted in the overlay is not, though its bytes are still on disk.
  const s = r.signatures!;
  assert.equal(s.complete, true);
  assert.deepEqual([...new Set(s.findings.map((x) => x.path))], ["/opt/planted/eicar-like.txt"]);
  assert.ok(s.scannedFiles > 1000, `${s.scannedFiles} files scanned`);
  assert.ok(f.manifest.overlay.deleted.every((p) => !s.findings.some((x) => x.path === p)));
  // The base alone (no overlay) has no planted file: the backing chain matters.
  const base = scanDormant({ disks: [{ name: "root", path: f.base }], roots: [f.dir], rules: compileRules(RULES(f.marker)), signatureLimits: DEFAULT_SCAN_LIMITS });
  assert.deepEqual(base.signatures!.findings.map((x) => x.path), ["/opt/removed/eicar-like.txt"], "in the base, the later-deleted file is still there");
});

test("pending security updates of the dormant disk equal a comparison with dpkg --compare-versions against the apt lists' security index", async () => {
  const f = dormantFixture();
  const advisories = await loadAdvisories("/var/lib/apt/lists");
  const r = scanDormant({ disks: [{ name: "root", path: f.overlay }], roots: [f.dir], rules: compileRules(""), signatureLimits: DEFAULT_SCAN_LIMITS });
  const pending = pendingUpdates(r.installed, advisories.index, advisories.tracker);
  // The same comparison by dpkg itself: every installed package whose name and arch the security index has newer.
  const expected: string[] = [];
  for (const p of r.installed) {
    const cand = advisories.index.get(p.name)?.get(p.architecture) ?? advisories.index.get(p.name)?.get("all");
    if (!cand) continue;
    let newer = true;
    try {
      execFileSync("dpkg", ["--compare-versions", cand.version, "gt", p.version]);
    } catch {
      newer = false;
    }
    if (newer) expected.push(`${p.name} ${p.version} ${cand.version}`);
  }
  assert.ok(expected.length > 0, "a main-suite minbase lacks some security updates");
  assert.deepEqual(pending.map((p) => `${p.package} ${p.installed} ${p.candidate}`).sort(), expected.sort());
  for (const p of pending) assert.ok(compareVersions(parseVersion(p.candidate), parseVersion(p.installed)) > 0);
});

test("the scan process: the same answer over stdin/stdout, a clear error for a bad disk, killed at its deadline", async (t) => {
  const f = dormantFixture();
  const req = { disks: [{ name: "root", path: f.overlay }], roots: [f.dir], rules: RULES(f.marker), advisories: { from: "/var/lib/apt/lists" } };
  const r = await runScanChild<ScanChildResult>(req, 120_000);
  assert.equal(r.packages.length, f.manifest.packages);
  assert.ok(r.pending.length > 0);
  assert.deepEqual([...new Set(r.signatures!.findings.map((x) => x.path))], ["/opt/planted/eicar-like.txt"]);
  assert.match(r.advisoriesSha256, /^[0-9a-f]{64}$/);
  assert.ok(r.timings.packagesMs < 1000, `packages in ${r.timings.packagesMs} ms`);
  // A disk outside the allowed roots is refused by the chain reader, reported as a note; no disk at all is an error.
  const outside = mkdtempSync(join(tmpdir(), "vigil-outside-"));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  mkdirSync(join(outside, "d"));
  await assert.rejects(runScanChild({ ...req, roots: [join(outside, "d")] }, 60_000), (e: Error & { code?: string }) => e.code === "VIGIL_BAD_REQUEST" && /no disk of the VM could be read/.test(e.message) && /outside/.test(e.message));
  await assert.rejects(runScanChild({ ...req, rules: "rule x { condition: $y }" }, 60_000), /The YARA rules do not compile/);
  await assert.rejects(runScanChild(req, 50), (e: Error & { code?: string }) => e.code === "VIGIL_TIMEOUT" && /deadline of 50 ms/.test(e.message));
});
