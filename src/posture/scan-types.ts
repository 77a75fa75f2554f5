/** What the daemon sends the scan process and what it answers (scan-runner.ts ↔ scan-child.ts). */
import type { OsRelease } from "./offline-scan.ts";
import type { ScanLimits, ScanReport } from "./signature-scan.ts";
import type { Severity } from "./posture-state.ts";

export interface ScanChildRequest {
  disks: { name: string; path: string }[];
  roots: string[];
  /** YARA rules source ("" for none). */
  rules: string;
  signatureLimits?: Partial<ScanLimits>;
  advisories: { from: string; tracker?: string; release?: string };
}

export interface ScanChildResult {
  root: string | null;
  os: OsRelease | null;
  packages: { name: string; version: string; arch: string }[];
  pending: { package: string; installed: string; candidate: string; severity: Severity; cves: string[] }[];
  advisoriesSha256: string;
  advisories: { path: string; contentSha256: string; signature: string; date?: string }[];
  rulesSha256: string;
  signatures: ScanReport | null;
  notes: string[];
  timings: { advisoriesMs: number; scanMs: number; packagesMs: number };
}
