/**
 * The offline scan's own process (started by scan-runner.ts): reads one request as JSON on stdin, scans the dormant
 * disks (offline-scan.ts), compares the packages with the advisories, and writes one JSON answer on stdout. Nothing
 * else is written to stdout; errors are answers too (`{ok:false, error}`), so the daemon always gets a clear message.
 */
import { readFileSync } from "node:fs";
import { VigilError, messageOf } from "../errors.ts";
import { loadAdvisories } from "./advisories.ts";
import { pendingUpdates } from "./pending.ts";
import { scanDormant } from "./offline-scan.ts";
import { compileRules, DEFAULT_SCAN_LIMITS, type ScanLimits } from "./signature-scan.ts";
import type { ScanChildRequest, ScanChildResult } from "./scan-types.ts";

async function main(): Promise<ScanChildResult> {
  const req = JSON.parse(readFileSync(0, "utf8")) as ScanChildRequest;
  const t0 = performance.now();
  const rules = compileRules(req.rules);
  const limits: ScanLimits = { ...DEFAULT_SCAN_LIMITS, ...req.signatureLimits };
  const advisories = await loadAdvisories(req.advisories.from, { ...(req.advisories.tracker ? { tracker: req.advisories.tracker } : {}), ...(req.advisories.release ? { release: req.advisories.release } : {}) });
  const tAdvisories = performance.now();
  const scan = scanDormant({ disks: req.disks, roots: req.roots, rules, signatureLimits: limits });
  const pending = pendingUpdates(scan.installed, advisories.index, advisories.tracker);
  const tDone = performance.now();
  return {
    root: scan.root,
    os: scan.os,
    packages: scan.installed.map((p) => ({ name: p.name, version: p.version, arch: p.architecture })),
    pending: pending.map((p) => ({ package: p.package, installed: p.installed, candidate: p.candidate, severity: p.severity, cves: p.cves })),
    advisoriesSha256: advisories.sha256,
    advisories: advisories.indexes.map((d) => ({ path: d.path, contentSha256: d.contentSha256, signature: d.release?.signature ?? "unsigned", ...(d.release?.dateIso ? { date: d.release.dateIso } : {}) })),
    rulesSha256: rules.sha256,
    signatures: scan.signatures,
    notes: scan.notes,
    timings: { advisoriesMs: Math.round(tAdvisories - t0), scanMs: Math.round(tDone - tAdvisories), packagesMs: scan.packagesMs },
  };
}

main().then(
  (result) => process.stdout.write(JSON.stringify({ ok: true, result })),
  (err: unknown) => {
    const e = err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", `The scan failed: ${messageOf(err)}`);
    process.stdout.write(JSON.stringify({ ok: false, error: { code: e.code, message: e.message, ...(e.field ? { field: e.field } : {}) } }));
  },
);
